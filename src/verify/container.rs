//! One container's audit: read what the kernel and runc say about it once (`Subject`), then
//! run the checks, one module per edit they mirror (`devices`, `namespaces`, `process`,
//! `system_paths`, `mounts`, `owner`), and for a Slurm user's container its job (`slurm`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use procfs::process::{MountInfo, Process, Status as ProcStatus};
use serde::Deserialize;
use serde_json::Value;

use super::{
    devices, fairshare, finding, mounts, namespaces, owner, process, settle, slurm, system_paths,
    userns,
};
use super::{ContainerAudit, Finding, Kind, Status};
use crate::decide::{decide_for_user, Decision};
use crate::edits::stamp;
use crate::gpu::{Inventory, Snapshot};
use crate::policy::{GpuSource, Policy, UserPolicy};
use crate::slurm::Jobs;

/// What every container's audit shares: the policy, the inventory, the host's view.
pub struct Ctx<'a> {
    pub policy: &'a Policy,
    /// Pool GPUs allocated now (`crate::pools`), granted to their containers.
    pub pool_state: &'a crate::pools::State,
    pub inventory: &'a Snapshot,
    pub host_mounts: &'a [MountInfo],
    pub proc_root: &'a Path,
    pub docker_root: &'a Path,
    /// Device programs attached to a cgroup v2 directory (the kernel; a stub in tests).
    pub device_programs: &'a (dyn Fn(&Path) -> Result<u32, String> + Sync),
    /// Slurm, for `gpus = "slurm"` owners' containers.
    pub jobs: &'a (dyn Jobs + Sync),
}

/// A running container as read once from runc's state and /proc.
pub struct Subject {
    pub id: String,
    pub root: PathBuf,
    pub pid: i32,
    /// The parts of runc's state.json the checks read (see [`StateFile`]).
    pub state: Value,
    /// runc's `config.labels` (the spec annotations as `key=value`).
    pub labels: HashMap<String, String>,
    pub status: ProcStatus,
    pub mounts: Vec<MountInfo>,
    /// /proc/<pid>, under the audit's proc root.
    pub proc_dir: PathBuf,
}

impl Subject {
    /// Created through labgpu: the runtime stamped it.
    pub fn labgpu(&self) -> bool {
        self.labels.contains_key(stamp::POLICY_SHA256)
    }

    pub fn stamped_owner(&self) -> Option<&str> {
        self.labels
            .get(stamp::OWNER)
            .map(String::as_str)
            .filter(|o| !o.is_empty())
    }
}

impl Ctx<'_> {
    pub fn audit(&self, root: &Path, id: &str) -> ContainerAudit {
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
        match self.read(root, id) {
            Ok(Some(subject)) => self.check(&subject, &mut audit),
            Ok(None) => audit.status = Status::Stopped,
            Err(reason) => audit.findings.push(Finding {
                kind: Kind::Unreadable,
                detail: reason,
            }),
        }
        settle(&mut audit);
        audit
    }

    /// `None` for a container whose init is gone (or whose pid was recycled).
    fn read(&self, root: &Path, id: &str) -> Result<Option<Subject>, String> {
        let state_path = root.join(id).join("state.json");
        let state = std::fs::read(&state_path)
            .map_err(|e| e.to_string())
            .and_then(|b| {
                serde_json::from_slice::<StateFile>(&b)
                    .map(StateFile::into_value)
                    .map_err(|e| e.to_string())
            })
            .map_err(|e| format!("cannot read {}: {e}", state_path.display()))?;
        let pid = state["init_process_pid"].as_i64().unwrap_or(0) as i32;
        let start = state["init_process_start"].as_u64();
        let proc_dir = self.proc_root.join(pid.to_string());
        let Ok(process) = Process::new_with_root(proc_dir.clone()) else {
            return Ok(None);
        };
        // A pid whose start time differs is a recycled pid, not the container.
        if process.stat().ok().map(|s| s.starttime) != start || pid <= 0 {
            return Ok(None);
        }
        let status = process
            .status()
            .map_err(|e| format!("cannot read /proc/{pid}/status: {e}"))?;
        let mounts = process
            .mountinfo()
            .map_err(|e| format!("cannot read /proc/{pid}/mountinfo: {e}"))?
            .into_iter()
            .collect();
        Ok(Some(Subject {
            id: id.to_string(),
            root: root.to_path_buf(),
            pid,
            labels: labels(&state),
            state,
            status,
            mounts,
            proc_dir,
        }))
    }

    fn check(&self, s: &Subject, a: &mut ContainerAudit) {
        a.pid = Some(s.pid);
        a.labgpu = s.labgpu();
        a.owner = s.stamped_owner().map(str::to_string);
        let user = owner::check(self, s, a);
        let owner_name = user.and(a.owner.as_deref());
        let decision = decide_for_user(
            self.policy,
            owner_name,
            user,
            self.inventory,
            self.docker_root.to_path_buf(),
            &s.id,
        )
        .map(|mut d| {
            // Where the containers whose files it may share (container:X) are found.
            d.runc_root = Some(s.root.clone());
            d
        });
        let d = match decision {
            Ok(d) => d,
            Err(e) => {
                a.findings.push(finding(
                    Kind::Drift,
                    format!("the policy cannot be applied to it: {e}"),
                ));
                return;
            }
        };
        let slurm_owner = owner_name
            .map(str::to_string)
            .zip(user)
            .filter(|(_, u)| self.policy.gpu_source(u) == GpuSource::Slurm);
        a.granted_gpus = match &slurm_owner {
            Some((name, u)) => slurm::granted(self, s, name, u, a),
            None => granted(self, user, a),
        };
        a.granted_gpus
            .extend(super::pools::held(self.pool_state, &s.root, &s.id));
        a.granted_gpus.sort_unstable();
        a.granted_gpus.dedup();
        self.run_checks(s, &d, a);
        if slurm_owner.is_some() {
            slurm::missing_gpus(a);
        }
    }

    fn run_checks(&self, s: &Subject, d: &Decision, a: &mut ContainerAudit) {
        match devices::reachable_gpus(self, s) {
            Ok(gpus) => a.reachable_gpus = gpus,
            Err(reason) => a.findings.push(finding(Kind::Unreadable, reason)),
        }
        let mut found = devices::gpu_findings(s, a);
        match devices::other_devices(self, s, d) {
            Ok(f) => found.extend(f),
            Err(reason) => found.push(finding(Kind::Unreadable, reason)),
        }
        found.extend(namespaces::check(self, s, d));
        found.extend(process::check(s, d));
        found.extend(system_paths::check(self, s, d));
        found.extend(mounts::check(self, s, d));
        found.extend(fairshare::check(&s.proc_dir, d));
        found.extend(userns::check(self, s, d));
        a.findings.extend(found);
    }
}

/// GPUs the current policy grants the owner; unresolvable ones are drift.
fn granted(ctx: &Ctx, user: Option<&UserPolicy>, a: &mut ContainerAudit) -> Vec<u32> {
    let mut gpus = Vec::new();
    for r in user.map(|u| u.gpus.as_slice()).unwrap_or_default() {
        match ctx.inventory.resolve(r) {
            Ok(g) => gpus.push(g.minor),
            Err(e) => a.findings.push(finding(
                Kind::Drift,
                format!("the policy's GPU {r} cannot be resolved: {e}"),
            )),
        }
    }
    gpus.sort_unstable();
    gpus.dedup();
    gpus
}

/// What the checks read of runc's state.json. The rest (the whole spec, tens of KiB with
/// its seccomp profile) is skipped, not built: building it as a `Value` was four fifths of
/// verify's instructions.
#[derive(Deserialize)]
struct StateFile {
    #[serde(default)]
    init_process_pid: Value,
    #[serde(default)]
    init_process_start: Value,
    #[serde(default)]
    cgroup_paths: Value,
    #[serde(default)]
    config: StateConfig,
}

#[derive(Deserialize, Default)]
struct StateConfig {
    #[serde(default)]
    labels: Value,
    #[serde(default)]
    cgroups: StateCgroups,
}

#[derive(Deserialize, Default)]
struct StateCgroups {
    #[serde(default)]
    devices: Value,
}

impl StateFile {
    /// The same paths as in the file, for the checks' pointer lookups; moved in, not
    /// through `json!`, which would serialise each part again.
    fn into_value(self) -> Value {
        let obj = |pairs: Vec<(&str, Value)>| {
            Value::Object(pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
        };
        let cgroups = obj(vec![("devices", self.config.cgroups.devices)]);
        let config = obj(vec![("labels", self.config.labels), ("cgroups", cgroups)]);
        obj(vec![
            ("init_process_pid", self.init_process_pid),
            ("init_process_start", self.init_process_start),
            ("cgroup_paths", self.cgroup_paths),
            ("config", config),
        ])
    }
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
