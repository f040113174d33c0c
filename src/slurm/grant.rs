//! What a `gpus = "slurm"` user's container may have: the GPUs Slurm allocated, on this
//! node, to the job it was created from; checked the same way by the proxy at create, by the
//! runtime at every start, and by `labgpu verify`.

use std::collections::HashMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::{gres, scontrol, Job, JobId, SlurmError};
use crate::gpu::{Inventory, NVIDIA_MAJOR};
use crate::policy::{GpuSource, OutsideJob, Policy, SlurmSection, UserPolicy};

/// Where job facts come from: scontrol, or a stand-in in tests.
pub trait Jobs {
    /// `None` when Slurm does not know the job.
    fn show(&self, id: JobId) -> Result<Option<Job>, SlurmError>;
}

/// The policy's scontrol, run with its slurm.conf.
pub struct Scontrol {
    pub path: PathBuf,
    pub slurm_conf: PathBuf,
}

impl Scontrol {
    pub fn new(slurm: &SlurmSection) -> Self {
        Scontrol {
            path: slurm.scontrol.0.clone(),
            slurm_conf: slurm.slurm_conf.0.clone(),
        }
    }
}

impl Jobs for Scontrol {
    fn show(&self, id: JobId) -> Result<Option<Job>, SlurmError> {
        scontrol::show_job(&self.path, &self.slurm_conf, id)
    }
}

/// Remembers the jobs `inner` found (not its failures), for `labgpu verify`.
pub struct Cached<J> {
    inner: J,
    // A Mutex, not a RefCell: verify audits containers on several threads.
    seen: Mutex<HashMap<JobId, Option<Job>>>,
}

impl<J: Jobs> Cached<J> {
    pub fn new(inner: J) -> Self {
        Cached {
            inner,
            seen: Mutex::new(HashMap::new()),
        }
    }
}

impl<J: Jobs> Jobs for Cached<J> {
    fn show(&self, id: JobId) -> Result<Option<Job>, SlurmError> {
        let seen = || self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(known) = seen().get(&id) {
            return Ok(known.clone());
        }
        let found = self.inner.show(id)?;
        seen().insert(id, found.clone());
        Ok(found)
    }
}

/// gres.conf, which Slurm always reads from slurm.conf's directory.
pub fn gres_conf(slurm: &SlurmSection) -> PathBuf {
    slurm
        .slurm_conf
        .as_path()
        .parent()
        .unwrap_or(Path::new("/"))
        .join("gres.conf")
}

const HOSTNAME: &str = "/proc/sys/kernel/hostname";

/// This node's name in Slurm: `[slurm] node_name`, else the host name up to its first dot
/// (slurmd's default), so one policy file serves every node.
pub fn node_name(slurm: &SlurmSection) -> Result<String, SlurmError> {
    if let Some(n) = &slurm.node_name {
        return Ok(n.clone());
    }
    // The kernel's host name, as gethostname(2) reads it.
    let host = std::fs::read_to_string(HOSTNAME).map_err(|e| SlurmError::NodeName {
        reason: format!("cannot read {HOSTNAME}: {e}"),
    })?;
    let short = host.trim().split('.').next().unwrap_or_default();
    if short.is_empty() {
        return Err(SlurmError::NodeName {
            reason: "the host name is empty".into(),
        });
    }
    Ok(short.to_string())
}

/// The uid of policy user `name`: `[users.<name>] uid`, else the host account's.
pub fn user_uid(name: &str, user: &UserPolicy) -> Result<u32, SlurmError> {
    if let Some(uid) = user.uid {
        return Ok(uid);
    }
    match nix::unistd::User::from_name(name) {
        Ok(Some(u)) => Ok(u.uid.as_raw()),
        _ => Err(SlurmError::NoUid {
            user: name.to_string(),
        }),
    }
}

/// Job `id`, which must be running and belong to `user` (`uid`).
pub fn running_job(jobs: &dyn Jobs, id: JobId, user: &str, uid: u32) -> Result<Job, SlurmError> {
    let job = jobs.show(id)?.ok_or_else(|| SlurmError::UnknownJob {
        job: id,
        user: user.to_string(),
    })?;
    if !job.running() {
        return Err(SlurmError::NotRunning {
            job: id,
            state: job.state,
            user: user.to_string(),
        });
    }
    if job.uid != uid {
        return Err(SlurmError::NotOwners {
            job: id,
            job_uid: job.uid,
            user: user.to_string(),
            uid,
        });
    }
    Ok(job)
}

/// Device minors of `job`'s GPUs on `node`: Slurm's indices through gres.conf's File= order.
pub fn job_minors(job: &Job, node: &str, gres_conf: &Path) -> Result<Vec<u32>, SlurmError> {
    let indices = job.gpus_on(node).map_err(|reason| SlurmError::Allocation {
        job: job.id,
        node: node.to_string(),
        reason,
    })?;
    if indices.is_empty() {
        return Ok(Vec::new());
    }
    let gpus = gres::node_gpus(gres_conf, node)?;
    let mut minors = Vec::new();
    for index in indices {
        let file = gpus
            .files
            .get(index as usize)
            .ok_or_else(|| SlurmError::NoSuchIndex {
                job: job.id,
                index,
                node: node.to_string(),
                path: gres_conf.to_path_buf(),
                count: gpus.files.len(),
            })?;
        minors.push(gpu_minor(gres_conf, file)?);
    }
    minors.sort_unstable();
    minors.dedup();
    Ok(minors)
}

/// The minor of an NVIDIA GPU node (major 195): any other device would grant the GPU that
/// happens to share its minor.
fn gpu_minor(gres_conf: &Path, file: &Path) -> Result<u32, SlurmError> {
    let bad = |reason: String| SlurmError::DeviceFile {
        path: gres_conf.to_path_buf(),
        file: file.to_path_buf(),
        reason,
    };
    let meta = std::fs::metadata(file).map_err(|e| bad(e.to_string()))?;
    if !meta.file_type().is_char_device() {
        return Err(bad("it is not a device node".into()));
    }
    let (major, minor) = (libc::major(meta.rdev()), libc::minor(meta.rdev()));
    if i64::from(major) != NVIDIA_MAJOR {
        return Err(bad(format!(
            "its major number is {major}, not the NVIDIA GPUs' {NVIDIA_MAJOR}"
        )));
    }
    Ok(minor)
}

/// The GPU minors a `gpus = "slurm"` user's container gets on this node: those of `job`
/// (checked with Slurm: running, the owner's), or, with no job, none under
/// `outside_job = "no-gpu"` and a refusal under "deny".
pub fn minors_for(
    policy: &Policy,
    jobs: &dyn Jobs,
    user: &str,
    uid: u32,
    job: Option<JobId>,
) -> Result<Vec<u32>, SlurmError> {
    let slurm = policy.slurm_or_default();
    let Some(id) = job else {
        return match slurm.outside_job {
            OutsideJob::NoGpu => Ok(Vec::new()),
            OutsideJob::Deny => Err(SlurmError::OutsideJob {
                policy: policy.path.clone(),
            }),
        };
    };
    let job = running_job(jobs, id, user, uid)?;
    job_minors(&job, &node_name(&slurm)?, &gres_conf(&slurm))
}

/// For the runtime: the GPU minors of `owner`'s container on this node when their GPUs come
/// from Slurm (`None` otherwise), `job` being the one the proxy recorded.
pub fn for_owner(
    policy: &Policy,
    owner: Option<&str>,
    job: Option<JobId>,
) -> Result<Option<Vec<u32>>, SlurmError> {
    let Some((name, user)) = owner.and_then(|o| Some(o).zip(policy.user(o))) else {
        return Ok(None);
    };
    if policy.gpu_source(user) != GpuSource::Slurm {
        return Ok(None);
    }
    let uid = user_uid(name, user)?;
    let scontrol = Scontrol::new(&policy.slurm_or_default());
    minors_for(policy, &scontrol, name, uid, job).map(Some)
}

/// `labgpu policy check` on a node with `gpus = "slurm"` users: what would make their
/// containers fail here. Errors first, then warnings; none when no user's GPUs come from
/// Slurm.
pub fn check_node(policy: &Policy, inventory: &dyn Inventory) -> (Vec<String>, Vec<String>) {
    let (mut errors, mut warnings) = (Vec::new(), Vec::new());
    let slurm_users = policy
        .users
        .values()
        .any(|u| policy.gpu_source(u) == GpuSource::Slurm);
    if !slurm_users {
        return (errors, warnings);
    }
    let slurm = policy.slurm_or_default();
    let scontrol = slurm.scontrol.as_path();
    let runnable = std::fs::metadata(scontrol).is_ok_and(|m| m.is_file() && m.mode() & 0o111 != 0);
    if !runnable {
        errors.push(format!(
            "[slurm] scontrol {} is not an executable file",
            scontrol.display()
        ));
    }
    let node = match node_name(&slurm) {
        Ok(n) => n,
        Err(e) => {
            errors.push(e.to_string());
            return (errors, warnings);
        }
    };
    let path = gres_conf(&slurm);
    let gpus = match gres::node_gpus(&path, &node) {
        Ok(g) => g,
        Err(e @ SlurmError::GresConf { .. }) if !path.exists() => {
            warnings.push(format!("{e}: jobs get no GPU on node {node}"));
            return (errors, warnings);
        }
        Err(e) => {
            errors.push(e.to_string());
            return (errors, warnings);
        }
    };
    for file in &gpus.files {
        match gpu_minor(&path, file) {
            Ok(m) if inventory.gpus().iter().any(|g| g.minor == m) => {}
            Ok(m) => errors.push(format!(
                "gres.conf {} names {} (GPU minor {m}), which is not in this host's GPU inventory ([gpus])",
                path.display(),
                file.display()
            )),
            Err(e) => errors.push(e.to_string()),
        }
    }
    (errors, warnings)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Jobs by id, as a test's Slurm would answer.
    pub struct FakeJobs(pub HashMap<JobId, Job>);

    impl Jobs for FakeJobs {
        fn show(&self, id: JobId) -> Result<Option<Job>, SlurmError> {
            Ok(self.0.get(&id).cloned())
        }
    }

    pub fn job(id: JobId, uid: u32, state: &str, node: &str, gpus: &[u32]) -> Job {
        Job::new(
            id,
            uid,
            state.into(),
            vec![(vec![node.to_string()], gpus.to_vec())],
        )
    }

    fn policy(dir: &Path, extra: &str) -> Policy {
        let conf = dir.join("slurm.conf");
        Policy::parse(
            &dir.join("policy.toml"),
            format!(
                "version = 1\n[proxy]\n[slurm]\nslurm_conf = \"{}\"\nnode_name = \"vm\"\n{extra}\n[users.alice]\nuid = 1001\ngid = 1001\ngpus = \"slurm\"\n",
                conf.display()
            )
            .as_bytes(),
        )
        .unwrap()
    }

    #[test]
    fn a_running_jobs_gpus_through_gres_conf() {
        let d = tempfile::tempdir().unwrap();
        // Character devices cannot be made without root; /dev/null stands in for the
        // wrong-major case and the minors come from the index check alone otherwise.
        std::fs::write(
            d.path().join("gres.conf"),
            "NodeName=vm Name=gpu File=/dev/null\n",
        )
        .unwrap();
        let p = policy(d.path(), "");
        let jobs = FakeJobs(HashMap::from([
            (5, job(5, 1001, "RUNNING", "vm", &[0])),
            (6, job(6, 1002, "RUNNING", "vm", &[0])),
            (7, job(7, 1001, "COMPLETED", "vm", &[])),
            (8, job(8, 1001, "RUNNING", "vm", &[3])),
            (9, job(9, 1001, "RUNNING", "other", &[0])),
        ]));
        let err = |j| {
            minors_for(&p, &jobs, "alice", 1001, Some(j))
                .unwrap_err()
                .to_string()
        };
        assert!(err(5).contains("not the NVIDIA GPUs' 195"), "{}", err(5));
        assert_eq!(
            err(6),
            "Slurm job 6 belongs to uid 1002, not to alice (uid 1001)"
        );
        assert!(
            err(7).starts_with("Slurm job 7 is COMPLETED, not running"),
            "{}",
            err(7)
        );
        assert!(err(8).contains("lists only 1 Name=gpu File="), "{}", err(8));
        assert!(err(4).contains("Slurm no longer knows it"), "{}", err(4));
        // A job with no GPU on this node: no GPU, and gres.conf is not even needed.
        assert_eq!(
            minors_for(&p, &jobs, "alice", 1001, Some(9)).unwrap(),
            Vec::<u32>::new()
        );
    }

    #[test]
    fn indices_follow_the_file_order_not_the_minors() {
        if !nix::unistd::geteuid().is_root() {
            return; // mknod needs root
        }
        let d = tempfile::tempdir().unwrap();
        for m in [0u32, 2] {
            nix::sys::stat::mknod(
                &d.path().join(format!("nvidia{m}")),
                nix::sys::stat::SFlag::S_IFCHR,
                nix::sys::stat::Mode::from_bits_truncate(0o600),
                nix::sys::stat::makedev(NVIDIA_MAJOR as u64, u64::from(m)),
            )
            .unwrap();
        }
        std::fs::write(
            d.path().join("gres.conf"),
            format!(
                "NodeName=vm Name=gpu File={}/nvidia[2,0]\n",
                d.path().display()
            ),
        )
        .unwrap();
        let p = policy(d.path(), "");
        let jobs = FakeJobs(HashMap::from([
            (5, job(5, 1001, "RUNNING", "vm", &[1])),
            (6, job(6, 1001, "RUNNING", "vm", &[0, 1])),
        ]));
        assert_eq!(minors_for(&p, &jobs, "alice", 1001, Some(5)).unwrap(), [0]);
        assert_eq!(
            minors_for(&p, &jobs, "alice", 1001, Some(6)).unwrap(),
            [0, 2]
        );
    }

    #[test]
    fn outside_a_job_per_outside_job() {
        let d = tempfile::tempdir().unwrap();
        let jobs = FakeJobs(HashMap::new());
        let p = policy(d.path(), "");
        assert!(minors_for(&p, &jobs, "alice", 1001, None)
            .unwrap()
            .is_empty());
        let p = policy(d.path(), "outside_job = \"deny\"");
        let err = minors_for(&p, &jobs, "alice", 1001, None).unwrap_err();
        assert!(
            err.to_string().contains("[slurm] outside_job = \"deny\""),
            "{err}"
        );
    }

    #[test]
    fn policy_check_names_what_would_fail_here() {
        let d = tempfile::tempdir().unwrap();
        let inv = crate::gpu::devfs::scan(d.path(), &d.path().join("devices")).unwrap();
        let p = policy(d.path(), "scontrol = \"/nonexistent/scontrol\"");
        let (errors, warnings) = check_node(&p, &inv);
        assert_eq!(
            errors,
            ["[slurm] scontrol /nonexistent/scontrol is not an executable file"]
        );
        assert!(
            warnings[0].contains("jobs get no GPU on node vm"),
            "{warnings:?}"
        );
        std::fs::write(d.path().join("gres.conf"), "Name=gpu File=/dev/null\n").unwrap();
        let (errors, _) = check_node(&p, &inv);
        assert!(errors[1].contains("not the NVIDIA GPUs' 195"), "{errors:?}");
        let none = Policy::parse(Path::new("/p"), b"version = 1\n[users.a]\ngpus = [0]\n").unwrap();
        assert_eq!(check_node(&none, &inv), (vec![], vec![]));
    }

    #[test]
    fn node_name_defaults_to_the_short_host_name() {
        let s = SlurmSection::default();
        let n = node_name(&s).unwrap();
        assert!(!n.is_empty() && !n.contains('.'), "{n}");
        let s = SlurmSection {
            node_name: Some("gpu07".into()),
            ..SlurmSection::default()
        };
        assert_eq!(node_name(&s).unwrap(), "gpu07");
        assert_eq!(gres_conf(&s), PathBuf::from("/etc/slurm/gres.conf"));
    }
}
