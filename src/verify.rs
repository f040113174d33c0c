//! `labgpu verify`: every running container audited against the policy from live kernel
//! state (runc's state files, /proc, the devices cgroup), not from what labgpu believes it did.
//! No Docker API call: the audit must work while dockerd is wedged and stay fast.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use procfs::process::{MountInfo, Process};
use serde::Serialize;
use serde_json::Value;

use crate::decide::{decide_for_user, process_rules, resolve_host, Decision};
use crate::edits::mounts::host_path_allowed;
use crate::edits::stamp;
use crate::gpu::{inventory_for, nvml, Inventory, Purpose, Snapshot};
use crate::owner;
use crate::policy::{GpuRef, Policy};

/// runc state roots of Docker, containerd (k8s.io and default namespaces) and plain runc.
pub const DEFAULT_ROOTS: [&str; 4] = [
    "/run/docker/runtime-runc/moby",
    "/run/containerd/runc/k8s.io",
    "/run/containerd/runc/default",
    "/run/runc",
];

/// Filesystems whose mounts in a container are its own instances or the cgroup view, not
/// host data.
const NOT_HOST_DATA: [&str; 6] = ["proc", "sysfs", "devpts", "mqueue", "cgroup", "cgroup2"];

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error(transparent)]
    Policy(#[from] crate::policy::PolicyError),
    #[error(transparent)]
    Gpu(#[from] crate::gpu::GpuError),
    #[error("cannot read the host mount table {path}: {reason}")]
    HostMounts { path: PathBuf, reason: String },
    #[error("cannot list runc state root {path}: {source}")]
    Root {
        path: PathBuf,
        source: std::io::Error,
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
}

#[derive(Debug, Serialize)]
pub struct Audit {
    pub policy: PathBuf,
    pub containers: Vec<ContainerAudit>,
    /// Compute processes NVML reports on each GPU and the container each runs in; `None`
    /// when NVML is not available (the inventory came from /proc or devfs).
    pub gpu_processes: Option<Vec<GpuProcessAudit>>,
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
    Mount,
    /// The container could not be audited.
    Unreadable,
}

impl Audit {
    /// 0 all clean, 1 violations, 2 something could not be audited.
    pub fn exit_code(&self) -> i32 {
        if self.summary.violations > 0 {
            1
        } else if self.summary.errors > 0 {
            2
        } else {
            0
        }
    }
}

pub fn run(opts: &Options) -> Result<Audit, VerifyError> {
    let policy = Policy::load(&opts.policy)?;
    let refs: Vec<&GpuRef> = policy.users.values().flat_map(|u| &u.gpus).collect();
    let inventory = inventory_for(&policy.gpus, &refs, Purpose::Admin)?;
    let host_mounts_path = opts.proc_root.join("self/mountinfo");
    let host_mounts =
        read_mountinfo(&host_mounts_path).map_err(|reason| VerifyError::HostMounts {
            path: host_mounts_path.clone(),
            reason,
        })?;
    let ctx = Ctx {
        policy: &policy,
        inventory: &inventory,
        host_mounts: &host_mounts,
        proc_root: &opts.proc_root,
    };
    let mut containers = Vec::new();
    for root in &opts.roots {
        let entries = match std::fs::read_dir(root) {
            Ok(e) => e,
            // A runtime that is not installed has no state root: nothing to audit there.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => {
                return Err(VerifyError::Root {
                    path: root.clone(),
                    source,
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
        for id in ids {
            containers.push(ctx.audit(root, &id));
        }
    }
    let gpu_processes = if inventory.source == "nvml" {
        let lib = policy.gpus.nvml_lib.as_ref().map(|l| l.as_path());
        let found = nvml::processes(lib, nvml::DEADLINE)?;
        Some(map_processes(found, &mut containers, &opts.proc_root))
    } else {
        None
    };
    let mut summary = Summary {
        containers: containers.len(),
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
        summary,
    })
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

struct Ctx<'a> {
    policy: &'a Policy,
    inventory: &'a Snapshot,
    host_mounts: &'a [MountInfo],
    proc_root: &'a Path,
}

impl Ctx<'_> {
    fn audit(&self, root: &Path, id: &str) -> ContainerAudit {
        let mut audit = ContainerAudit {
            id: id.to_string(),
            root: root.to_path_buf(),
            pid: None,
            status: Status::Ok,
            labgpu: false,
            owner: None,
            granted_gpus: Vec::new(),
            reachable_gpus: Vec::new(),
            findings: Vec::new(),
        };
        if let Err(reason) = self.audit_into(root, id, &mut audit) {
            audit.findings.push(Finding {
                kind: Kind::Unreadable,
                detail: reason,
            });
        }
        settle(&mut audit);
        audit
    }

    fn audit_into(&self, root: &Path, id: &str, a: &mut ContainerAudit) -> Result<(), String> {
        let state_path = root.join(id).join("state.json");
        let state: Value = std::fs::read(&state_path)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
            .map_err(|e| format!("cannot read {}: {e}", state_path.display()))?;
        let pid = state["init_process_pid"].as_i64().unwrap_or(0) as i32;
        let start = state["init_process_start"].as_u64();
        let process = Process::new_with_root(self.proc_root.join(pid.to_string()));
        // A pid whose start time differs is a recycled pid, not the container.
        let alive = process
            .as_ref()
            .ok()
            .and_then(|p| p.stat().ok())
            .filter(|s| Some(s.starttime) == start);
        let (Some(_), Ok(process)) = (alive, process) else {
            a.status = Status::Stopped;
            return Ok(());
        };
        a.pid = Some(pid);
        let labels = labels(&state);
        a.labgpu = labels.contains_key(stamp::POLICY_SHA256);
        a.owner = labels.get(stamp::OWNER).filter(|o| !o.is_empty()).cloned();
        let stamped_gpus: BTreeSet<u32> = labels
            .get(stamp::GPUS)
            .map(|g| g.split(',').filter_map(|n| n.parse().ok()).collect())
            .unwrap_or_default();

        let user = match &a.owner {
            Some(o) => match self.policy.user(o) {
                Some(u) => Some(u),
                None => {
                    a.findings.push(finding(
                        Kind::Drift,
                        format!("owner {o:?} is no longer in the policy"),
                    ));
                    None
                }
            },
            None => None,
        };
        for r in user.map(|u| u.gpus.as_slice()).unwrap_or_default() {
            match self.inventory.resolve(r) {
                Ok(g) => a.granted_gpus.push(g.minor),
                Err(e) => a.findings.push(finding(
                    Kind::Drift,
                    format!("the policy's GPU {r} cannot be resolved: {e}"),
                )),
            }
        }
        a.granted_gpus.sort_unstable();
        a.granted_gpus.dedup();
        a.reachable_gpus = self.reachable_gpus(&state, pid)?;
        for gpu in &a.reachable_gpus {
            let f = if !a.labgpu {
                finding(
                    Kind::Bypass,
                    format!("not created through labgpu and can reach GPU {gpu}"),
                )
            } else if a.granted_gpus.contains(gpu) {
                continue;
            } else if stamped_gpus.contains(gpu) {
                finding(
                    Kind::Drift,
                    format!("holds GPU {gpu}, which the policy no longer grants its owner"),
                )
            } else {
                finding(
                    Kind::ForeignGpu,
                    format!("can reach GPU {gpu}, which its owner was never granted"),
                )
            };
            a.findings.push(f);
        }

        let owner = user.and(a.owner.as_deref());
        let rules = process_rules(self.policy, owner, user).map_err(|e| e.to_string())?;
        let status = process
            .status()
            .map_err(|e| format!("cannot read /proc/{pid}/status: {e}"))?;
        let allowed_mask = rules
            .capabilities
            .iter()
            .filter_map(|c| caps::Capability::from_str(c).ok())
            .fold(0u64, |m, c| m | c.bitmask());
        let extra: Vec<String> = caps::all()
            .into_iter()
            .filter(|c| status.capeff & c.bitmask() != 0 && allowed_mask & c.bitmask() == 0)
            .map(|c| c.to_string())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        if !extra.is_empty() {
            a.findings.push(finding(
                Kind::Capabilities,
                format!("pid 1 has {} beyond the allowlist", extra.join(",")),
            ));
        }
        if rules.no_new_privileges && status.nonewprivs != Some(1) {
            a.findings.push(finding(
                Kind::NoNewPrivileges,
                "pid 1 runs without no-new-privileges".into(),
            ));
        }
        if let Some((uid, _)) = rules.user {
            if status.euid != uid {
                a.findings.push(finding(
                    Kind::User,
                    format!("pid 1 runs as uid {}, not the owner's {uid}", status.euid),
                ));
            }
        }

        let docker_root = owner::docker_root(
            self.policy
                .runtime
                .docker_root
                .as_ref()
                .map(|r| r.as_path()),
        );
        let decision = decide_for_user(self.policy, owner, user, self.inventory, docker_root, id)
            .map(|mut d| {
                // Where the containers whose files it may share (container:X) are found.
                d.runc_root = Some(root.to_path_buf());
                d
            })
            .map_err(|e| e.to_string());
        match decision {
            Ok(d) => self.check_mounts(&process, pid, &d, a)?,
            Err(e) => a.findings.push(finding(
                Kind::Drift,
                format!("the policy cannot be applied to it: {e}"),
            )),
        }
        Ok(())
    }

    /// GPU ids the container may open: its devices cgroup on v1, its /dev on v2.
    fn reachable_gpus(&self, state: &Value, pid: i32) -> Result<Vec<u32>, String> {
        let gpus = self.inventory.gpus();
        if let Some(cg) = state
            .pointer("/cgroup_paths/devices")
            .and_then(Value::as_str)
        {
            let list = Path::new(cg).join("devices.list");
            let text = std::fs::read_to_string(&list)
                .map_err(|e| format!("cannot read {}: {e}", list.display()))?;
            let rules = parse_devices_list(&text);
            return Ok(gpus
                .iter()
                .filter(|g| {
                    g.nodes
                        .iter()
                        .any(|n| cgroup_allows_rw(&rules, n.major, n.minor))
                })
                .map(|g| g.minor)
                .collect());
        }
        // cgroup v2 has no readable device list (it is an eBPF program): fall back to the
        // nodes present in the container's /dev.
        let dev = self.proc_root.join(pid.to_string()).join("root/dev");
        let present: BTreeSet<(i64, i64)> = std::fs::read_dir(&dev)
            .map_err(|e| format!("cannot list {}: {e}", dev.display()))?
            .flatten()
            .filter_map(|e| {
                use std::os::unix::fs::MetadataExt;
                let m = std::fs::metadata(e.path()).ok()?;
                Some((
                    i64::from(libc::major(m.rdev())),
                    i64::from(libc::minor(m.rdev())),
                ))
            })
            .collect();
        Ok(gpus
            .iter()
            .filter(|g| {
                g.nodes
                    .iter()
                    .any(|n| present.contains(&(n.major, n.minor)))
            })
            .map(|g| g.minor)
            .collect())
    }

    /// Every container mount backed by a host filesystem must map to a host path the
    /// policy allows.
    fn check_mounts(
        &self,
        process: &Process,
        pid: i32,
        d: &Decision,
        a: &mut ContainerAudit,
    ) -> Result<(), String> {
        let mounts = process
            .mountinfo()
            .map_err(|e| format!("cannot read /proc/{pid}/mountinfo: {e}"))?;
        for m in mounts.iter() {
            if m.mount_point == Path::new("/") || NOT_HOST_DATA.contains(&m.fs_type.as_str()) {
                continue;
            }
            let Some(host) = host_path(self.host_mounts, m) else {
                continue;
            };
            let destination = m.mount_point.to_string_lossy();
            match host_path_allowed(&resolve_host(&host), &destination, d) {
                Ok(true) => {}
                Ok(false) => a.findings.push(finding(
                    Kind::Mount,
                    format!(
                        "host path {} is mounted at {destination}, which the policy does not allow",
                        host.display()
                    ),
                )),
                Err(e) => a.findings.push(finding(Kind::Mount, e.to_string())),
            }
        }
        Ok(())
    }
}

fn finding(kind: Kind, detail: String) -> Finding {
    Finding { kind, detail }
}

/// runc's `config.labels` (`key=value`, the spec annotations plus `bundle=`).
fn labels(state: &Value) -> HashMap<String, String> {
    state
        .pointer("/config/labels")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn read_mountinfo(path: &Path) -> Result<Vec<MountInfo>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| MountInfo::from_line(l).map_err(|e| format!("{e}: {l}")))
        .collect()
}

/// The host path behind a container mount: a host mount of the same filesystem whose root
/// is a prefix of the container mount's root. `None` for filesystems only the container has.
fn host_path(host: &[MountInfo], m: &MountInfo) -> Option<PathBuf> {
    host.iter()
        .filter(|h| h.majmin == m.majmin)
        .filter_map(|h| {
            let rest = Path::new(&m.root).strip_prefix(&h.root).ok()?;
            Some((h.root.len(), h.mount_point.join(rest)))
        })
        .max_by_key(|(len, _)| *len)
        .map(|(_, p)| p)
}

/// One line of a v1 `devices.list`: `c 195:0 rwm`, `a *:* rwm`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct DevRule {
    kind: char,
    major: Option<i64>,
    minor: Option<i64>,
    access: String,
}

fn parse_devices_list(text: &str) -> Vec<DevRule> {
    text.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let kind = it.next()?.chars().next()?;
            let (major, minor) = it.next()?.split_once(':')?;
            let num = |s: &str| if s == "*" { None } else { s.parse().ok() };
            Some(DevRule {
                kind,
                major: num(major),
                minor: num(minor),
                access: it.next().unwrap_or("").to_string(),
            })
        })
        .collect()
}

fn cgroup_allows_rw(rules: &[DevRule], major: i64, minor: i64) -> bool {
    rules.iter().any(|r| {
        (r.kind == 'a' || r.kind == 'c')
            && r.major.is_none_or(|m| m == major)
            && r.minor.is_none_or(|m| m == minor)
            && (r.access.contains('r') || r.access.contains('w'))
    })
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
mod tests {
    use super::*;

    #[test]
    fn devices_list_grants() {
        let rules = parse_devices_list("c 1:3 rwm\nc 195:0 rwm\nc 195:* m\nc 136:* rwm\n");
        assert!(cgroup_allows_rw(&rules, 195, 0));
        assert!(!cgroup_allows_rw(&rules, 195, 2));
        assert!(cgroup_allows_rw(&parse_devices_list("a *:* rwm\n"), 195, 2));
        assert!(cgroup_allows_rw(
            &parse_devices_list("c 195:* rw\n"),
            195,
            3
        ));
    }

    #[test]
    fn host_path_maps_through_the_longest_root() {
        let host = [
            MountInfo::from_line("22 1 8:1 / / rw - ext4 /dev/sda1 rw").unwrap(),
            MountInfo::from_line("40 22 8:1 /srv /data rw - ext4 /dev/sda1 rw").unwrap(),
            MountInfo::from_line("41 22 0:50 / /run/x rw - tmpfs tmpfs rw").unwrap(),
        ];
        let c = MountInfo::from_line("100 90 8:1 /srv/a /mnt rw - ext4 /dev/sda1 rw").unwrap();
        assert_eq!(host_path(&host, &c), Some(PathBuf::from("/data/a")));
        let private = MountInfo::from_line("101 90 0:99 / /dev rw - tmpfs tmpfs rw").unwrap();
        assert_eq!(host_path(&host, &private), None);
        let shm = MountInfo::from_line("102 90 0:50 / /dev/shm rw - tmpfs tmpfs rw").unwrap();
        assert_eq!(host_path(&host, &shm), Some(PathBuf::from("/run/x")));
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
                    _ => l.to_string(),
                })
                .collect::<Vec<_>>()
                .join("\n");
            std::fs::write(pdir.join("status"), status + "\n").unwrap();
            std::fs::write(pdir.join("mountinfo"), mounts).unwrap();
            root
        }
        fn run(&self, policy: &Path, root: &Path) -> Audit {
            run(&Options {
                policy: policy.to_path_buf(),
                roots: vec![root.to_path_buf()],
                container: None,
                proc_root: self.proc(),
            })
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
}
