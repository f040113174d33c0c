//! `labgpu verify`: every running container audited against the policy from live kernel
//! state (runc's state files, /proc, the devices cgroup), not from what labgpu believes it did.
//! No Docker API call: the audit must work while dockerd is wedged and stay fast.

mod container;
mod devices;
mod fairshare;
mod mounts;
mod namespaces;
mod owner;
mod pools;
mod process;
mod slurm;
mod system_paths;
mod userns;

use std::path::{Path, PathBuf};

use procfs::process::MountInfo;
use serde::Serialize;

use crate::gpu::{inventory_for, nvml, Purpose};
use crate::policy::{GpuRef, Policy};

/// runc state roots of Docker, containerd (k8s.io and default namespaces) and plain runc.
pub const DEFAULT_ROOTS: [&str; 4] = [
    "/run/docker/runtime-runc/moby",
    "/run/containerd/runc/k8s.io",
    "/run/containerd/runc/default",
    "/run/runc",
];

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error(transparent)]
    Policy(#[from] crate::policy::PolicyError),
    #[error(transparent)]
    Gpu(#[from] crate::gpu::GpuError),
    #[error("cannot read the host mount table {path}: {reason}")]
    HostMounts { path: PathBuf, reason: String },
    #[error("cannot list runc state root {path}: {cause}")]
    Root {
        path: PathBuf,
        cause: std::io::Error,
    },
}

#[derive(Debug, Clone)]
pub struct Options {
    pub policy: PathBuf,
    pub roots: Vec<PathBuf>,
    /// Only containers whose id starts with this.
    pub container: Option<String>,
    /// /proc, or a fixture tree in tests.
    pub proc_root: PathBuf,
    /// Free pool GPUs whose container is gone (`--reclaim`).
    pub reclaim: bool,
}

#[derive(Debug, Serialize)]
pub struct Audit {
    pub policy: PathBuf,
    pub containers: Vec<ContainerAudit>,
    /// Compute processes NVML reports on each GPU and the container each runs in; `None`
    /// when NVML is not available (the inventory came from /proc or devfs).
    pub gpu_processes: Option<Vec<GpuProcessAudit>>,
    /// Pool GPUs still allocated to containers that are gone (`crate::pools`).
    pub stale_pool_gpus: Vec<pools::StaleAllocation>,
    pub summary: Summary,
}

#[derive(Debug, Serialize)]
pub struct GpuProcessAudit {
    /// GPU minor.
    pub gpu: u32,
    pub pid: u32,
    pub used_bytes: Option<u64>,
    /// The container whose pid namespace the process is in; `None` for a host process.
    pub container: Option<String>,
}

#[derive(Debug, Default, Serialize)]
pub struct Summary {
    pub containers: usize,
    pub ok: usize,
    pub violations: usize,
    pub errors: usize,
    pub stopped: usize,
    /// Stale pool allocations left (not freed by `--reclaim`).
    pub stale_pool_gpus: usize,
}

#[derive(Debug, Serialize)]
pub struct ContainerAudit {
    pub id: String,
    pub root: PathBuf,
    pub pid: Option<i32>,
    pub status: Status,
    /// Created through labgpu (stamp present).
    pub labgpu: bool,
    pub owner: Option<String>,
    /// GPUs the current policy grants the owner.
    pub granted_gpus: Vec<u32>,
    /// GPUs the container can open now, per the devices cgroup (or /dev on cgroup v2).
    pub reachable_gpus: Vec<u32>,
    pub findings: Vec<Finding>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Violation,
    Error,
    Stopped,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub kind: Kind,
    pub detail: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// Not created through labgpu and can reach a GPU.
    Bypass,
    /// Reaches a GPU its owner never had.
    ForeignGpu,
    /// Holds a GPU, or runs for an owner, the current policy no longer grants.
    Drift,
    Capabilities,
    NoNewPrivileges,
    User,
    /// Runs without a seccomp filter.
    Seccomp,
    /// Shares a host namespace the policy does not allow.
    Namespace,
    /// Can open a host device (a block device, /dev/mem) the policy does not give it.
    Device,
    /// /proc/sys writable, or a masked path visible.
    SystemPaths,
    Mount,
    /// A local volume with proc, an overlay, a bind ... mounted on it.
    Volume,
    /// Its owner is not the one the labgpu proxy recorded creating it for.
    Owner,
    /// Runs without the user namespace `userns = "owner"` asks for, or with other mappings.
    Userns,
    /// Its Slurm job is over or someone else's, or holds other GPUs than it can reach.
    Slurm,
    /// Its owner has fair-share ceilings, but it runs outside their parent cgroup.
    FairShare,
    /// A pool GPU allocated to a container that is gone.
    Pool,
    /// The container could not be audited.
    Unreadable,
}

impl Kind {
    /// Every kind, for reports that list kinds with no findings too (the metrics).
    pub const ALL: [Kind; 18] = [
        Kind::Bypass,
        Kind::ForeignGpu,
        Kind::Drift,
        Kind::Capabilities,
        Kind::NoNewPrivileges,
        Kind::User,
        Kind::Seccomp,
        Kind::Namespace,
        Kind::Device,
        Kind::SystemPaths,
        Kind::Mount,
        Kind::Volume,
        Kind::Owner,
        Kind::Userns,
        Kind::Slurm,
        Kind::FairShare,
        Kind::Pool,
        Kind::Unreadable,
    ];

    /// The kind as `verify --json` writes it (`foreign-gpu`).
    pub fn name(self) -> &'static str {
        match self {
            Kind::Bypass => "bypass",
            Kind::ForeignGpu => "foreign-gpu",
            Kind::Drift => "drift",
            Kind::Capabilities => "capabilities",
            Kind::NoNewPrivileges => "no-new-privileges",
            Kind::User => "user",
            Kind::Seccomp => "seccomp",
            Kind::Namespace => "namespace",
            Kind::Device => "device",
            Kind::SystemPaths => "system-paths",
            Kind::Mount => "mount",
            Kind::Volume => "volume",
            Kind::Owner => "owner",
            Kind::Userns => "userns",
            Kind::Slurm => "slurm",
            Kind::FairShare => "fair-share",
            Kind::Pool => "pool",
            Kind::Unreadable => "unreadable",
        }
    }
}

impl Audit {
    /// 0 all clean, 1 violations, 2 something could not be audited.
    pub fn exit_code(&self) -> i32 {
        if self.summary.violations > 0 || self.summary.stale_pool_gpus > 0 {
            1
        } else if self.summary.errors > 0 {
            2
        } else {
            0
        }
    }
}

pub fn run(opts: &Options) -> Result<Audit, VerifyError> {
    run_with(opts, &devices::attached_device_programs)
}

/// `run`, asking `device_programs` (the kernel, in `run`) how many device programs guard a
/// cgroup v2 directory.
fn run_with(
    opts: &Options,
    device_programs: &(dyn Fn(&Path) -> Result<u32, String> + Sync),
) -> Result<Audit, VerifyError> {
    let policy = Policy::load(&opts.policy)?;
    let refs: Vec<&GpuRef> = policy.users.values().flat_map(|u| &u.gpus).collect();
    let inventory = inventory_for(&policy.gpus, &refs, Purpose::Admin)?;
    let host_mounts_path = opts.proc_root.join("self/mountinfo");
    let host_mounts =
        read_mountinfo(&host_mounts_path).map_err(|reason| VerifyError::HostMounts {
            path: host_mounts_path.clone(),
            reason,
        })?;
    let docker_root =
        crate::owner::docker_root(policy.runtime.docker_root.as_ref().map(|r| r.as_path()));
    // One question to Slurm per job, however many containers it has.
    let jobs =
        crate::slurm::grant::Cached::new(crate::slurm::Scontrol::new(&policy.slurm_or_default()));
    let pool_state = pools::state(&policy).unwrap_or_else(|e| {
        tracing::warn!(error = %e, "pool state unreadable");
        crate::pools::State::default()
    });
    let ctx = container::Ctx {
        pool_state: &pool_state,
        policy: &policy,
        inventory: &inventory,
        host_mounts: &host_mounts,
        proc_root: &opts.proc_root,
        docker_root: &docker_root,
        device_programs,
        jobs: &jobs,
    };
    let mut subjects: Vec<(&Path, String)> = Vec::new();
    for root in &opts.roots {
        let entries = match std::fs::read_dir(root) {
            Ok(e) => e,
            // A runtime that is not installed has no state root: nothing to audit there.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(cause) => {
                return Err(VerifyError::Root {
                    path: root.clone(),
                    cause,
                })
            }
        };
        let mut ids: Vec<String> = entries
            .flatten()
            .filter(|e| e.path().join("state.json").is_file())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|id| {
                opts.container
                    .as_ref()
                    .is_none_or(|c| id.starts_with(c.as_str()))
            })
            .collect();
        ids.sort();
        subjects.extend(ids.into_iter().map(|id| (root.as_path(), id)));
    }
    let mut containers = audit_all(&ctx, &subjects);
    let gpu_processes = if inventory.source == "nvml" {
        let lib = policy.gpus.nvml_lib.as_ref().map(|l| l.as_path());
        let found = nvml::processes(lib, nvml::DEADLINE)?;
        Some(map_processes(found, &mut containers, &opts.proc_root))
    } else {
        None
    };
    let stale_pool_gpus =
        pools::stale(&policy, &pool_state, &opts.proc_root, opts.reclaim).unwrap_or_default();
    let mut summary = Summary {
        containers: containers.len(),
        stale_pool_gpus: stale_pool_gpus.iter().filter(|s| !s.freed).count(),
        ..Summary::default()
    };
    for c in &containers {
        match c.status {
            Status::Ok => summary.ok += 1,
            Status::Violation => summary.violations += 1,
            Status::Error => summary.errors += 1,
            Status::Stopped => summary.stopped += 1,
        }
    }
    Ok(Audit {
        policy: opts.policy.clone(),
        containers,
        gpu_processes,
        stale_pool_gpus,
        summary,
    })
}

/// Each container's audit, in `subjects`' order. The audits are independent reads of runc
/// state and /proc (a millisecond of mostly system time each), so they are spread over a few
/// threads: 1000 containers take a fraction of a second instead of most of one.
fn audit_all(ctx: &container::Ctx, subjects: &[(&Path, String)]) -> Vec<ContainerAudit> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 8)
        .min(subjects.len().div_ceil(16).max(1));
    if threads == 1 {
        return subjects.iter().map(|(r, id)| ctx.audit(r, id)).collect();
    }
    let next = AtomicUsize::new(0);
    let done: Mutex<Vec<(usize, ContainerAudit)>> = Mutex::new(Vec::with_capacity(subjects.len()));
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some((root, id)) = subjects.get(i) else {
                    break;
                };
                let audit = ctx.audit(root, id);
                done.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((i, audit));
            });
        }
    });
    let mut done = done.into_inner().unwrap_or_else(|p| p.into_inner());
    done.sort_by_key(|(i, _)| *i);
    done.into_iter().map(|(_, a)| a).collect()
}

/// Places each GPU process in the container sharing its pid namespace, and flags one running
/// on a GPU its container's owner is not granted: the device cgroup can say a GPU is
/// unreachable while a process that opened it before a policy change still computes on it.
fn map_processes(
    found: Vec<nvml::GpuProcess>,
    containers: &mut [ContainerAudit],
    proc_root: &Path,
) -> Vec<GpuProcessAudit> {
    let pid_ns = |pid: i64| std::fs::read_link(proc_root.join(pid.to_string()).join("ns/pid")).ok();
    let namespaces: Vec<Option<PathBuf>> = containers
        .iter()
        .map(|c| c.pid.and_then(|p| pid_ns(p.into())))
        .collect();
    let mut out = Vec::new();
    for p in found {
        let ns = pid_ns(p.pid.into());
        let index = ns
            .as_ref()
            .and_then(|ns| namespaces.iter().position(|c| c.as_ref() == Some(ns)));
        if let Some(c) = index.map(|i| &mut containers[i]) {
            if !c.granted_gpus.contains(&p.minor) {
                c.findings.push(finding(
                    Kind::ForeignGpu,
                    format!(
                        "process {} computes on GPU {}, which the policy does not grant its owner",
                        p.pid, p.minor
                    ),
                ));
                settle(c);
            }
        }
        out.push(GpuProcessAudit {
            gpu: p.minor,
            pid: p.pid,
            used_bytes: p.used_bytes,
            container: index.map(|i| containers[i].id.clone()),
        });
    }
    out
}

/// A container's status from its findings (a stopped one stays stopped).
fn settle(audit: &mut ContainerAudit) {
    if audit.status != Status::Stopped {
        audit.status = if audit.findings.iter().any(|f| f.kind != Kind::Unreadable) {
            Status::Violation
        } else if audit.findings.is_empty() {
            Status::Ok
        } else {
            Status::Error
        };
    }
}

fn finding(kind: Kind, detail: String) -> Finding {
    Finding { kind, detail }
}

fn read_mountinfo(path: &Path) -> Result<Vec<MountInfo>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| MountInfo::from_line(l).map_err(|e| format!("{e}: {l}")))
        .collect()
}

/// The table an admin reads.
pub fn render_table(audit: &Audit) -> String {
    let mut out = format!(
        "{:<14} {:<10} {:<9} {:<10} {:<10} FINDINGS\n",
        "CONTAINER", "OWNER", "GRANTED", "REACHABLE", "STATUS"
    );
    let gpus = |g: &[u32]| {
        if g.is_empty() {
            "-".to_string()
        } else {
            g.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
        }
    };
    for c in &audit.containers {
        let status = match c.status {
            Status::Ok => "ok",
            Status::Violation => "VIOLATION",
            Status::Error => "ERROR",
            Status::Stopped => "stopped",
        };
        let owner = match (&c.owner, c.labgpu) {
            (Some(o), _) => o.clone(),
            (None, true) => "(none)".into(),
            (None, false) => "(bypass)".into(),
        };
        let findings: Vec<String> = c.findings.iter().map(|f| f.detail.clone()).collect();
        let short: String = c.id.chars().take(12).collect();
        out.push_str(&format!(
            "{short:<14} {owner:<10} {:<9} {:<10} {status:<10} {}\n",
            gpus(&c.granted_gpus),
            gpus(&c.reachable_gpus),
            findings.join("; ")
        ));
    }
    for stale in &audit.stale_pool_gpus {
        out.push_str(&format!("pool: {}\n", pools::describe(stale)));
    }
    if let Some(procs) = &audit.gpu_processes {
        out.push_str(&format!(
            "\n{:<5} {:<8} {:<10} CONTAINER\n",
            "GPU", "PID", "MEMORY"
        ));
        for p in procs {
            let mem = p
                .used_bytes
                .map_or("-".to_string(), |b| format!("{}MiB", b >> 20));
            let container = p
                .container
                .as_deref()
                .map_or("(host)".to_string(), |c| c.chars().take(12).collect());
            out.push_str(&format!(
                "{:<5} {:<8} {mem:<10} {container}\n",
                p.gpu, p.pid
            ));
        }
    }
    let s = &audit.summary;
    out.push_str(&format!(
        "{} containers: {} ok, {} violations, {} could not be audited, {} stopped\n",
        s.containers, s.ok, s.violations, s.errors, s.stopped
    ));
    out
}

#[cfg(test)]
mod kind_tests {
    use super::Kind;

    #[test]
    fn kind_names_are_the_json_names() {
        for k in Kind::ALL {
            assert_eq!(serde_json::to_value(k).unwrap(), k.name());
        }
    }
}

#[cfg(test)]
mod fixture_tests {
    use super::*;
    use serde_json::json;

    /// A /proc tree with a host mount table and one container init process.
    struct Fixture {
        dir: tempfile::TempDir,
    }

    const PID: i32 = 4242;
    const START: u64 = 777_000;

    impl Fixture {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let f = Fixture { dir };
            std::fs::create_dir_all(f.proc().join("self")).unwrap();
            std::fs::write(
                f.proc().join("self/mountinfo"),
                "22 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw\n\
                 30 22 0:40 / /run/docker/x/shm rw - tmpfs shm rw\n",
            )
            .unwrap();
            f
        }
        fn proc(&self) -> PathBuf {
            self.dir.path().join("proc")
        }
        fn write_policy(&self, extra: &str) -> PathBuf {
            let dev = self.dir.path().join("dev");
            std::fs::create_dir_all(&dev).unwrap();
            let p = self.dir.path().join("policy.toml");
            std::fs::write(
                &p,
                format!(
                    "version = 1\n[runtime]\ndocker_root = \"/var/lib/docker\"\n[gpus]\ndev_root = \"{}\"\n[users.alice]\nuid = 1001\ngid = 1001\n{extra}",
                    dev.display()
                ),
            )
            .unwrap();
            p
        }
        /// Container `c1` owned by alice, init process with the given status lines and mounts.
        fn container(&self, cap_eff: &str, nnp: u8, mounts: &str, start: u64) -> PathBuf {
            let root = self.dir.path().join("runc");
            std::fs::create_dir_all(root.join("c1")).unwrap();
            let cg = self.dir.path().join("cgroup/c1");
            std::fs::create_dir_all(&cg).unwrap();
            std::fs::write(cg.join("devices.list"), "c 1:3 rwm\nc *:* m\n").unwrap();
            let state = json!({"id": "c1", "init_process_pid": PID, "init_process_start": START,
                "config": {"labels": ["io.labgpu.owner=alice", "io.labgpu.gpus=", "io.labgpu.policy-sha256=ab", "bundle=/b"],
                           "mounts": []},
                "cgroup_paths": {"devices": cg}});
            std::fs::write(root.join("c1/state.json"), state.to_string()).unwrap();
            let pdir = self.proc().join(PID.to_string());
            std::fs::create_dir_all(&pdir).unwrap();
            // Real stat/status files of this test process, with the fields under test replaced.
            let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
            let (head, tail) = stat.rsplit_once(") ").unwrap();
            let mut fields: Vec<String> = tail.split_whitespace().map(str::to_string).collect();
            fields[19] = start.to_string(); // starttime is field 22; `tail` starts at field 3
            std::fs::write(pdir.join("stat"), format!("{head}) {}\n", fields.join(" "))).unwrap();
            let status: String = std::fs::read_to_string("/proc/self/status")
                .unwrap()
                .lines()
                .map(|l| match l.split(':').next() {
                    Some("CapEff") => format!("CapEff:\t{cap_eff}"),
                    Some("NoNewPrivs") => format!("NoNewPrivs:\t{nnp}"),
                    Some("Uid") => "Uid:\t1001\t1001\t1001\t1001".into(),
                    Some("Seccomp") => "Seccomp:\t2".into(),
                    _ => l.to_string(),
                })
                .collect::<Vec<_>>()
                .join("\n");
            std::fs::write(pdir.join("status"), status + "\n").unwrap();
            std::fs::write(pdir.join("mountinfo"), mounts).unwrap();
            root
        }
        fn run(&self, policy: &Path, root: &Path) -> Audit {
            self.run_v2(policy, root, &|_| Err("no cgroup v2 here".into()))
        }
        fn run_v2(
            &self,
            policy: &Path,
            root: &Path,
            programs: &(dyn Fn(&Path) -> Result<u32, String> + Sync),
        ) -> Audit {
            run_with(
                &Options {
                    policy: policy.to_path_buf(),
                    roots: vec![root.to_path_buf()],
                    container: None,
                    proc_root: self.proc(),
                    reclaim: false,
                },
                programs,
            )
            .unwrap()
        }
    }

    const DOCKER_MOUNTS: &str = "500 400 0:99 / / rw - overlay overlay rw\n\
        501 500 0:100 / /proc rw - proc proc rw\n\
        502 500 0:101 / /dev rw - tmpfs tmpfs rw\n\
        503 500 8:1 /var/lib/docker/containers/c1/resolv.conf /etc/resolv.conf rw - ext4 /dev/sda1 rw\n\
        504 500 0:30 /docker/c1 /sys/fs/cgroup/devices ro - cgroup cgroup rw,devices\n";

    #[test]
    fn a_clean_container_is_ok() {
        let f = Fixture::new();
        let policy = f.write_policy("");
        let root = f.container("00000000200405fb", 1, DOCKER_MOUNTS, START);
        let audit = f.run(&policy, &root);
        assert_eq!(audit.containers[0].findings, vec![]);
        assert_eq!(audit.containers[0].status, Status::Ok);
        assert_eq!(audit.exit_code(), 0);
    }

    #[test]
    fn capabilities_nnp_and_host_binds_are_findings() {
        let f = Fixture::new();
        let policy = f.write_policy("");
        let mounts = format!("{DOCKER_MOUNTS}505 500 8:1 /etc /host-etc rw - ext4 /dev/sda1 rw\n");
        // CAP_SYS_ADMIN is bit 21.
        let root = f.container("00000000202405fb", 0, &mounts, START);
        let audit = f.run(&policy, &root);
        let kinds: Vec<Kind> = audit.containers[0]
            .findings
            .iter()
            .map(|f| f.kind)
            .collect();
        assert_eq!(
            kinds,
            [Kind::Capabilities, Kind::NoNewPrivileges, Kind::Mount],
            "{:?}",
            audit.containers[0].findings
        );
        assert!(audit.containers[0].findings[0]
            .detail
            .contains("CAP_SYS_ADMIN"));
        assert!(audit.containers[0].findings[2]
            .detail
            .contains("host path /etc is mounted at /host-etc"));
        assert_eq!(audit.exit_code(), 1);
        assert!(render_table(&audit).contains("VIOLATION"));
    }

    #[test]
    fn a_recycled_pid_is_a_stopped_container() {
        let f = Fixture::new();
        let policy = f.write_policy("");
        let root = f.container("00000000202405fb", 0, DOCKER_MOUNTS, START + 1);
        // state.json still says START: the process at that pid is someone else.
        let state = std::fs::read_to_string(root.join("c1/state.json")).unwrap();
        assert!(state.contains(&START.to_string()));
        let stat = std::fs::read_to_string(f.proc().join(format!("{PID}/stat"))).unwrap();
        assert!(stat.contains(&(START + 1).to_string()));
        let audit = f.run(&policy, &root);
        assert_eq!(audit.containers[0].status, Status::Stopped);
        assert_eq!(audit.exit_code(), 0);
    }

    #[test]
    fn an_owner_removed_from_the_policy_is_drift() {
        let f = Fixture::new();
        let policy = f.write_policy("");
        let root = f.container("00000000200405fb", 1, DOCKER_MOUNTS, START);
        std::fs::write(
            &policy,
            std::fs::read_to_string(&policy)
                .unwrap()
                .replace("[users.alice]\nuid = 1001\ngid = 1001\n", ""),
        )
        .unwrap();
        let audit = f.run(&policy, &root);
        assert_eq!(audit.containers[0].findings[0].kind, Kind::Drift);
        assert!(audit.containers[0].findings[0]
            .detail
            .contains("\"alice\" is no longer in the policy"));
    }

    /// Marks a host file the audit looks for (under the fixture's /proc).
    fn host_proc_file(f: &Fixture, name: &str) {
        std::fs::write(f.proc().join(name), "").unwrap();
    }

    fn kinds(audit: &Audit) -> Vec<Kind> {
        audit.containers[0]
            .findings
            .iter()
            .map(|f| f.kind)
            .collect()
    }

    fn edit_status(f: &Fixture, field: &str, value: &str) {
        let p = f.proc().join(format!("{PID}/status"));
        let text: String = std::fs::read_to_string(&p)
            .unwrap()
            .lines()
            .map(|l| {
                if l.starts_with(&format!("{field}:")) {
                    format!("{field}:\t{value}")
                } else {
                    l.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        std::fs::write(p, text + "\n").unwrap();
    }

    #[test]
    fn no_seccomp_host_namespaces_and_writable_proc_sys_are_findings() {
        let f = Fixture::new();
        let policy = f.write_policy("");
        host_proc_file(&f, "kcore");
        std::fs::create_dir_all(f.proc().join("sys")).unwrap();
        let masked = "510 500 0:5 /null /proc/kcore ro - devtmpfs udev rw\n";
        let root = f.container(
            "00000000200405fb",
            1,
            &format!("{DOCKER_MOUNTS}{masked}"),
            START,
        );
        // /proc/sys has no read-only mount: writable.
        edit_status(&f, "Seccomp", "0");
        std::fs::create_dir_all(f.proc().join("self/ns")).unwrap();
        std::fs::create_dir_all(f.proc().join(format!("{PID}/ns"))).unwrap();
        for (ns, host, theirs) in [("pid", "pid:[1]", "pid:[1]"), ("net", "net:[2]", "net:[9]")] {
            std::os::unix::fs::symlink(host, f.proc().join("self/ns").join(ns)).unwrap();
            std::os::unix::fs::symlink(theirs, f.proc().join(format!("{PID}/ns/{ns}"))).unwrap();
        }
        let audit = f.run(&policy, &root);
        assert_eq!(
            kinds(&audit),
            [Kind::Namespace, Kind::Seccomp, Kind::SystemPaths],
            "{:?}",
            audit.containers[0].findings
        );
        let text = render_table(&audit);
        assert!(text.contains("shares the host's pid namespace"), "{text}");
        assert!(text.contains("/proc/sys is writable"), "{text}");
    }

    #[test]
    fn a_proc_volume_and_a_block_device_are_findings() {
        let f = Fixture::new();
        let policy = f.write_policy("");
        let root = f.container(
            "00000000200405fb",
            1,
            &format!("{DOCKER_MOUNTS}520 500 0:77 / /x rw - proc proc rw\n"),
            START,
        );
        std::fs::write(
            f.dir.path().join("cgroup/c1/devices.list"),
            "c 1:3 rwm\nc *:* m\nb 7:0 rwm\n",
        )
        .unwrap();
        let audit = f.run(&policy, &root);
        assert_eq!(
            kinds(&audit),
            [Kind::Device, Kind::Volume],
            "{:?}",
            audit.containers[0].findings
        );
        let text = render_table(&audit);
        assert!(text.contains("can open block device"), "{text}");
        assert!(
            text.contains("a proc filesystem is mounted at /x"),
            "{text}"
        );
    }

    #[test]
    fn with_the_proxy_an_unrecorded_owner_is_a_finding() {
        let f = Fixture::new();
        let state = f.dir.path().join("state");
        let policy = f.write_policy("");
        let text = std::fs::read_to_string(&policy).unwrap().replace(
            "[gpus]",
            &format!("[proxy]\nstate_dir = \"{}\"\n[gpus]", state.display()),
        );
        std::fs::write(&policy, text).unwrap();
        let root = f.container("00000000200405fb", 1, DOCKER_MOUNTS, START);
        let audit = f.run(&policy, &root);
        assert_eq!(kinds(&audit), [Kind::Owner]);
        assert!(audit.containers[0].findings[0]
            .detail
            .contains("not created through the labgpu proxy"));
        crate::records::record(&state, "c1", "bob").unwrap();
        let audit = f.run(&policy, &root);
        assert!(audit.containers[0].findings[0]
            .detail
            .contains("differs from \"bob\""));
        crate::records::record(&state, "c1", "alice").unwrap();
        assert_eq!(f.run(&policy, &root).containers[0].findings, vec![]);
    }

    /// A Slurm user's container against the job the proxy recorded: over, someone else's,
    /// or made outside a job where `outside_job = "deny"`.
    #[test]
    fn a_slurm_container_whose_job_is_over_or_foreign_is_a_finding() {
        let f = Fixture::new();
        let d = f.dir.path();
        let state = d.join("state");
        let scontrol = d.join("scontrol");
        std::fs::write(
            &scontrol,
            "#!/bin/sh\ncase \"$1\" in --json) echo \"scontrol: unrecognized option '--json'\" >&2; exit 1;; esac\n\
             id=\"$4\"\n\
             job() { printf 'JobId=%s JobName=x\\n UserId=u(%s) JobState=%s\\n Nodes=vm CPU_IDs=0 Mem=0 GRES=\\n' \"$id\" \"$1\" \"$2\"; }\n\
             case \"$4\" in 17) job 1001 COMPLETED;; 18) job 1002 RUNNING;; 19) job 1001 RUNNING;;\n\
             *) echo 'slurm_load_jobs error: Invalid job id specified' >&2; exit 1;; esac\n",
        )
        .unwrap();
        std::fs::set_permissions(
            &scontrol,
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let policy = f.write_policy("gpus = \"slurm\"\n");
        let original = std::fs::read_to_string(&policy).unwrap();
        let with_tables = |outside: &str| {
            let text = original.replace(
                "[gpus]",
                &format!(
                    "[proxy]\nstate_dir = \"{}\"\n[slurm]\nscontrol = \"{}\"\nnode_name = \"vm\"\noutside_job = \"{outside}\"\n[gpus]",
                    state.display(),
                    scontrol.display()
                ),
            );
            std::fs::write(&policy, text).unwrap();
        };
        with_tables("no-gpu");
        let root = f.container("00000000200405fb", 1, DOCKER_MOUNTS, START);
        let audit_for = |job: Option<u32>| {
            let record = crate::records::Record {
                owner: "alice".into(),
                session: false,
                slurm_job: job,
            };
            crate::records::record_full(&state, "c1", &record).unwrap();
            f.run(&policy, &root).containers.remove(0)
        };
        let details = |a: &ContainerAudit| -> Vec<String> {
            a.findings.iter().map(|f| f.detail.clone()).collect()
        };
        let over = audit_for(Some(17));
        assert_eq!(over.findings[0].kind, Kind::Slurm);
        assert_eq!(
            details(&over),
            ["its Slurm job 17 is COMPLETED, not running"]
        );
        let gone = audit_for(Some(99));
        assert_eq!(
            details(&gone),
            ["its Slurm job 99 is over (Slurm no longer knows it)"]
        );
        let foreign = audit_for(Some(18));
        assert_eq!(
            details(&foreign),
            ["its Slurm job 18 belongs to uid 1002, not to its owner alice (uid 1001)"]
        );
        let fine = audit_for(Some(19));
        assert_eq!(fine.findings, vec![], "{:?}", fine.findings);
        assert_eq!(audit_for(None).findings, vec![]);
        with_tables("deny");
        let outside = audit_for(None);
        assert!(
            details(&outside)[0].contains("outside any Slurm job"),
            "{:?}",
            outside.findings
        );
    }

    /// cgroup v2: runc's recorded rules decide while a device program is attached; with none
    /// attached every device opens. A node planted in /dev changes nothing.
    #[test]
    fn cgroup_v2_reachability_comes_from_runcs_rules_and_the_kernel() {
        let f = Fixture::new();
        let dev = f.dir.path().join("dev");
        std::fs::create_dir_all(&dev).unwrap();
        let policy = f.write_policy("");
        let root = f.container("00000000200405fb", 1, DOCKER_MOUNTS, START);
        let state_path = root.join("c1/state.json");
        let mut state: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&state_path).unwrap()).unwrap();
        state["cgroup_paths"] = json!({"": f.dir.path().join("cgroup/c1")});
        state["config"]["cgroups"] = json!({"devices": [
            {"type": 97, "major": -1, "minor": -1, "permissions": "rwm", "allow": false},
            {"type": 99, "major": 1, "minor": 3, "permissions": "rwm", "allow": true},
            {"type": 98, "major": 7, "minor": 0, "permissions": "rw", "allow": true}]});
        std::fs::write(&state_path, state.to_string()).unwrap();
        let audit = f.run_v2(&policy, &root, &|_| Ok(1));
        assert_eq!(
            kinds(&audit),
            [Kind::Device],
            "{:?}",
            audit.containers[0].findings
        );
        let audit = f.run_v2(&policy, &root, &|_| Ok(0));
        assert!(
            audit.containers[0]
                .findings
                .iter()
                .any(|f| f.detail.contains("*:*")),
            "{:?}",
            audit.containers[0].findings
        );
    }
}
