//! `labgpu top` and the metrics: who uses which GPU, and how much of the host each user's
//! containers take.
//!
//! `collect` builds one `View` of the whole host from the kernel and the proxy's records:
//! every process's `/proc/<pid>/cgroup` names its container (`procs`), the container's
//! owner is the proxy's record (the label without a `[proxy]`), its cgroup files give its
//! usage (`cgroup`), and NVML, when it loads, each GPU's load and compute processes. A GPU
//! process is attributed through its container, never through its uid alone (only a
//! process outside every container is its uid's policy user). `restrict` cuts a view down
//! to what one user may see; `render` draws it for a terminal, `metrics` writes it in
//! Prometheus's text format, and `cmd` is the command line around them.

pub mod ceilings;
pub mod cgroup;
pub mod cmd;
pub mod metrics;
pub mod procs;
pub mod render;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::gpu::nvml;
use crate::policy::{GpuSource, Policy};
use ceilings::Ceilings;
use cgroup::Usage;

/// Where `collect` reads the host from (fixture trees in tests).
#[derive(Debug, Clone)]
pub struct Sources {
    pub proc_root: PathBuf,
    pub cgroup_root: PathBuf,
}

impl Default for Sources {
    fn default() -> Self {
        Sources {
            proc_root: PathBuf::from("/proc"),
            cgroup_root: PathBuf::from("/sys/fs/cgroup"),
        }
    }
}

/// One look at the host, or at one user's part of it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct View {
    /// `all` for the administrator, else the policy user the view was cut for.
    pub scope: String,
    /// Milliseconds since the epoch.
    pub taken_at_ms: u64,
    /// `None` when NVML is not available (no driver, no library): why is in `gpu_error`.
    pub gpus: Option<Vec<GpuView>>,
    pub gpu_error: Option<String>,
    pub containers: Vec<ContainerView>,
    pub users: Vec<UserView>,
    /// Pool GPUs, free or busy with their holders (`crate::pools`); empty without pools.
    #[serde(default)]
    pub pools: Vec<crate::pools::PoolGpu>,
    /// Containers `labgpu reclaim` stopped, by reason (`idle`, `max_runtime`).
    #[serde(default)]
    pub pool_reclaims: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GpuView {
    pub index: u32,
    pub minor: u32,
    pub uuid: Option<String>,
    pub name: Option<String>,
    /// Whole-GPU figures; left out of a user's view when others' processes share the GPU.
    pub utilization_percent: Option<u32>,
    pub memory_used_bytes: Option<u64>,
    pub memory_total_bytes: Option<u64>,
    pub processes: Vec<GpuProcess>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GpuProcess {
    pub pid: u32,
    /// The policy user: the container's owner, or for a process in no container its uid's.
    pub owner: Option<String>,
    /// The container the process runs in; `None` for a host process.
    pub container: Option<String>,
    pub uid: Option<u32>,
    pub command: Option<String>,
    pub used_bytes: Option<u64>,
    pub sm_percent: Option<u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ContainerView {
    pub id: String,
    pub owner: Option<String>,
    // Nested, not flattened: serde_json's arbitrary_precision cannot read a flattened f64.
    pub usage: Usage,
    /// Cores in use (1.0 = one core), from two looks; `None` in a single look.
    pub cpu_cores: Option<f64>,
    /// GPUs (minors) its processes compute on.
    pub gpus: Vec<u32>,
}

/// One user's totals over their containers and GPU processes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UserView {
    pub user: String,
    pub containers: usize,
    pub cpu_seconds: f64,
    pub cpu_cores: Option<f64>,
    pub memory_bytes: u64,
    pub pids: u64,
    pub gpu_processes: usize,
    pub gpu_memory_bytes: u64,
    /// Sum of the user's processes' SM shares (200 = two GPUs' worth).
    pub gpu_sm_percent: u32,
    /// `None` while the policy sets no ceilings (`ceilings::for_user`).
    pub ceilings: Option<Ceilings>,
}

/// The whole host as `policy` sees it.
pub fn collect(policy: &Policy, src: &Sources) -> View {
    let docker_root =
        crate::owner::docker_root(policy.runtime.docker_root.as_ref().map(|r| r.as_path()));
    let mut containers: Vec<ContainerView> = procs::containers(&src.proc_root)
        .into_iter()
        .map(|(id, m)| ContainerView {
            owner: owner_of(policy, &id, &docker_root),
            usage: cgroup::usage(&src.cgroup_root, &m),
            id,
            cpu_cores: None,
            gpus: Vec::new(),
        })
        .collect();
    let lib = policy.gpus.nvml_lib.as_ref().map(|l| l.as_path());
    let (gpus, gpu_error) = match nvml::sample(lib, nvml::DEADLINE) {
        Ok(samples) => {
            let gpus = samples
                .into_iter()
                .map(|s| gpu_view(s, policy, &src.proc_root, &mut containers))
                .collect();
            (Some(gpus), None)
        }
        Err(e) => (None, Some(e.to_string())),
    };
    let mut view = View {
        scope: "all".into(),
        taken_at_ms: now_ms(),
        gpus,
        gpu_error,
        containers,
        users: Vec::new(),
        pools: Vec::new(),
        pool_reclaims: BTreeMap::new(),
    };
    pool_part(policy, &mut view);
    view.users = totals(&view, policy.users.keys().cloned());
    for u in &mut view.users {
        u.ceilings = ceilings::for_user(policy, &u.user);
    }
    view
}

/// The pool GPUs and reclaim counts, from the pool state (nothing without pools).
fn pool_part(policy: &Policy, view: &mut View) {
    if policy.pools.is_empty() {
        return;
    }
    let refs: Vec<_> = policy.pools.values().flat_map(|p| &p.gpus).collect();
    let inventory =
        match crate::gpu::inventory_for(&policy.gpus, &refs, crate::gpu::Purpose::Runtime) {
            Ok(i) => i,
            Err(e) => {
                tracing::warn!(error = %e, "no GPU inventory for the pools");
                return;
            }
        };
    match crate::pools::view(policy, &inventory) {
        Ok(p) => view.pools = p,
        Err(e) => tracing::warn!(error = %e, "pool state unreadable"),
    }
    if let Ok(state) = crate::pools::Store::for_policy(&policy.path).read() {
        view.pool_reclaims = state.reclaimed;
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Who owns container `id`: the proxy's record with a `[proxy]` table (as the runtime
/// believes it), else its owner label.
fn owner_of(policy: &Policy, id: &str, docker_root: &Path) -> Option<String> {
    match &policy.proxy {
        Some(p) => crate::records::recorded_owner(p.state_dir.as_path(), id)
            .ok()
            .flatten(),
        None => crate::owner::find_owner(
            &serde_json::Value::Null,
            id,
            &policy.runtime.owner_label,
            docker_root,
        )
        .ok()
        .flatten(),
    }
}

/// One GPU with each of its processes placed in its container (found by `collect` or, for
/// one that started since, read now) and given an owner.
fn gpu_view(
    s: nvml::GpuSample,
    policy: &Policy,
    proc_root: &Path,
    containers: &mut [ContainerView],
) -> GpuView {
    let processes = s
        .processes
        .iter()
        .map(|p| {
            let info = procs::read(proc_root, p.pid);
            let container = info.as_ref().and_then(|i| i.membership.container.clone());
            let uid = info.as_ref().and_then(|i| i.uid);
            let owner = match &container {
                Some(id) => {
                    let c = containers.iter_mut().find(|c| &c.id == id);
                    c.and_then(|c| {
                        if !c.gpus.contains(&s.minor) {
                            c.gpus.push(s.minor);
                        }
                        c.owner.clone()
                    })
                }
                None => uid.and_then(|u| {
                    let name = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(u))
                        .ok()
                        .flatten()
                        .map(|p| p.name);
                    policy.user_for_uid(u, name.as_deref()).map(str::to_string)
                }),
            };
            GpuProcess {
                pid: p.pid,
                owner,
                container,
                uid,
                command: info.and_then(|i| i.comm),
                used_bytes: p.used_bytes,
                sm_percent: p.sm_percent,
            }
        })
        .collect();
    GpuView {
        index: s.index,
        minor: s.minor,
        uuid: s.uuid,
        name: s.name,
        utilization_percent: s.utilization,
        memory_used_bytes: s.memory_used,
        memory_total_bytes: s.memory_total,
        processes,
    }
}

/// Per-user totals: every name in `always` (zeros included, so that a scraper's series do
/// not come and go), and every other owner seen.
fn totals(view: &View, always: impl Iterator<Item = String>) -> Vec<UserView> {
    let mut users: BTreeMap<String, UserView> = always
        .map(|u| {
            let v = UserView {
                user: u.clone(),
                ..UserView::default()
            };
            (u, v)
        })
        .collect();
    for c in &view.containers {
        let Some(owner) = &c.owner else { continue };
        let u = user_entry(&mut users, owner);
        u.containers += 1;
        u.cpu_seconds += c.usage.cpu_seconds.unwrap_or(0.0);
        u.memory_bytes += c.usage.memory_bytes.unwrap_or(0);
        u.pids += c.usage.pids.unwrap_or(0);
        if let Some(cores) = c.cpu_cores {
            *u.cpu_cores.get_or_insert(0.0) += cores;
        }
    }
    for p in view.gpus.iter().flatten().flat_map(|g| &g.processes) {
        let Some(owner) = &p.owner else { continue };
        let u = user_entry(&mut users, owner);
        u.gpu_processes += 1;
        u.gpu_memory_bytes += p.used_bytes.unwrap_or(0);
        u.gpu_sm_percent += p.sm_percent.unwrap_or(0);
    }
    users.into_values().collect()
}

fn user_entry<'a>(users: &'a mut BTreeMap<String, UserView>, name: &str) -> &'a mut UserView {
    users.entry(name.to_string()).or_insert_with(|| UserView {
        user: name.to_string(),
        ..UserView::default()
    })
}

/// The GPUs (minors) `policy` grants `user`; none for a Slurm user (their job's GPUs show
/// through their processes) or when the inventory cannot be read.
pub fn granted_minors(policy: &Policy, user: &str) -> Vec<u32> {
    let Some(u) = policy.user(user) else {
        return Vec::new();
    };
    let GpuSource::List(list) = policy.gpu_source(u) else {
        return Vec::new();
    };
    let refs: Vec<_> = list.iter().collect();
    use crate::gpu::Inventory;
    let Ok(inv) = crate::gpu::inventory_for(&policy.gpus, &refs, crate::gpu::Purpose::Runtime)
    else {
        return Vec::new();
    };
    let mut minors: Vec<u32> = refs
        .iter()
        .filter_map(|r| inv.resolve(r).ok().map(|g| g.minor))
        .collect();
    minors.sort_unstable();
    minors.dedup();
    minors
}

/// What `user` may see of `view`: their containers, their GPU processes, the GPUs they are
/// granted or compute on, their totals. A GPU's whole-GPU load is left out when another
/// user's process shares it: it would tell them about that process.
pub fn restrict(view: &View, user: &str, granted: &[u32]) -> View {
    let mine = |o: &Option<String>| o.as_deref() == Some(user);
    let gpus = view.gpus.as_ref().map(|gpus| {
        gpus.iter()
            .filter_map(|g| {
                let processes: Vec<GpuProcess> = g
                    .processes
                    .iter()
                    .filter(|p| mine(&p.owner))
                    .cloned()
                    .collect();
                if processes.is_empty() && !granted.contains(&g.minor) {
                    return None;
                }
                let shared = processes.len() < g.processes.len();
                Some(GpuView {
                    utilization_percent: g.utilization_percent.filter(|_| !shared),
                    memory_used_bytes: g.memory_used_bytes.filter(|_| !shared),
                    processes,
                    ..g.clone()
                })
            })
            .collect()
    });
    View {
        scope: user.to_string(),
        taken_at_ms: view.taken_at_ms,
        gpus,
        gpu_error: view.gpu_error.clone(),
        containers: view
            .containers
            .iter()
            .filter(|c| mine(&c.owner))
            .cloned()
            .collect(),
        users: view
            .users
            .iter()
            .filter(|u| u.user == user)
            .cloned()
            .collect(),
        // Who holds a pool GPU is what a refusal tells anyone; others' containers are not.
        pools: view
            .pools
            .iter()
            .map(|g| crate::pools::PoolGpu {
                holders: g
                    .holders
                    .iter()
                    .map(|h| crate::pools::Holder {
                        container: if h.owner == user {
                            h.container.clone()
                        } else {
                            String::new()
                        },
                        ..h.clone()
                    })
                    .collect(),
                ..g.clone()
            })
            .collect(),
        pool_reclaims: BTreeMap::new(),
    }
}

/// Fills in the cores each container and user used between `prev` and `cur` (CPU seconds
/// are counters: a rate needs two looks).
pub fn fill_rates(prev: &View, cur: &mut View) {
    let dt = cur.taken_at_ms.saturating_sub(prev.taken_at_ms) as f64 / 1000.0;
    if dt <= 0.0 {
        return;
    }
    let before: BTreeMap<&str, f64> = prev
        .containers
        .iter()
        .filter_map(|c| Some((c.id.as_str(), c.usage.cpu_seconds?)))
        .collect();
    for c in &mut cur.containers {
        c.cpu_cores = match (before.get(c.id.as_str()), c.usage.cpu_seconds) {
            (Some(b), Some(now)) if now >= *b => Some((now - b) / dt),
            _ => None,
        };
    }
    let containers = &cur.containers;
    for u in &mut cur.users {
        let cores: Vec<f64> = containers
            .iter()
            .filter(|c| c.owner.as_deref() == Some(u.user.as_str()))
            .filter_map(|c| c.cpu_cores)
            .collect();
        u.cpu_cores = (!cores.is_empty()).then(|| cores.iter().sum());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proc(pid: u32, owner: &str, container: Option<&str>, used: u64) -> GpuProcess {
        GpuProcess {
            pid,
            owner: Some(owner.into()),
            container: container.map(str::to_string),
            uid: Some(1000),
            command: Some("python".into()),
            used_bytes: Some(used),
            sm_percent: Some(30),
        }
    }

    fn container(id: &str, owner: &str, cpu: f64) -> ContainerView {
        ContainerView {
            id: id.into(),
            owner: Some(owner.into()),
            usage: Usage {
                cpu_seconds: Some(cpu),
                memory_bytes: Some(100),
                pids: Some(2),
            },
            cpu_cores: None,
            gpus: vec![0],
        }
    }

    /// alice on GPU 0 alone, alice and bob sharing GPU 1, GPU 2 idle.
    fn host() -> View {
        let gpu = |minor: u32, processes: Vec<GpuProcess>| GpuView {
            index: minor,
            minor,
            utilization_percent: Some(50),
            memory_used_bytes: Some(1 << 30),
            memory_total_bytes: Some(8 << 30),
            processes,
            ..GpuView::default()
        };
        let mut v = View {
            scope: "all".into(),
            taken_at_ms: 10_000,
            gpus: Some(vec![
                gpu(0, vec![proc(11, "alice", Some("ca"), 100)]),
                gpu(
                    1,
                    vec![
                        proc(12, "alice", Some("ca"), 200),
                        proc(21, "bob", Some("cb"), 400),
                    ],
                ),
                gpu(2, vec![]),
            ]),
            gpu_error: None,
            containers: vec![container("ca", "alice", 10.0), container("cb", "bob", 5.0)],
            users: Vec::new(),
            ..View::default()
        };
        v.users = totals(&v, ["carol".to_string()].into_iter());
        v
    }

    #[test]
    fn totals_per_user_include_idle_policy_users() {
        let v = host();
        let names: Vec<&str> = v.users.iter().map(|u| u.user.as_str()).collect();
        assert_eq!(names, ["alice", "bob", "carol"]);
        let alice = &v.users[0];
        assert_eq!(
            (
                alice.containers,
                alice.gpu_processes,
                alice.gpu_memory_bytes
            ),
            (1, 2, 300)
        );
        assert_eq!(alice.gpu_sm_percent, 60);
        assert_eq!(v.users[2].containers, 0);
    }

    #[test]
    fn a_user_sees_only_their_own_and_no_shared_gpu_totals() {
        let v = restrict(&host(), "bob", &[2]);
        assert_eq!(v.scope, "bob");
        assert_eq!(v.containers.len(), 1);
        assert_eq!(v.containers[0].id, "cb");
        let gpus = v.gpus.unwrap();
        // GPU 0 is alice's alone: not shown. GPU 1 is shared: bob's process only, and no
        // whole-GPU load. GPU 2 is granted to bob and idle.
        assert_eq!(gpus.iter().map(|g| g.minor).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(gpus[0].processes.len(), 1);
        assert_eq!(gpus[0].processes[0].pid, 21);
        assert_eq!(gpus[0].utilization_percent, None);
        assert_eq!(gpus[0].memory_used_bytes, None);
        assert_eq!(gpus[0].memory_total_bytes, Some(8 << 30));
        assert_eq!(gpus[1].utilization_percent, Some(50));
        assert_eq!(v.users.len(), 1);
        assert_eq!(v.users[0].user, "bob");
    }

    #[test]
    fn a_gpu_used_by_one_user_alone_keeps_its_load_in_their_view() {
        let v = restrict(&host(), "alice", &[]);
        let gpus = v.gpus.unwrap();
        assert_eq!(gpus[0].minor, 0);
        assert_eq!(gpus[0].utilization_percent, Some(50));
        assert_eq!(gpus[1].utilization_percent, None);
    }

    #[test]
    fn rates_come_from_two_looks() {
        let prev = host();
        let mut cur = host();
        cur.taken_at_ms += 2000;
        cur.containers[0].usage.cpu_seconds = Some(13.0);
        fill_rates(&prev, &mut cur);
        assert_eq!(cur.containers[0].cpu_cores, Some(1.5));
        assert_eq!(cur.containers[1].cpu_cores, Some(0.0));
        assert_eq!(cur.users[0].cpu_cores, Some(1.5));
        assert_eq!(cur.users[2].cpu_cores, None);
    }

    #[test]
    fn the_view_round_trips_as_json() {
        let v = host();
        let back: View = serde_json::from_str(&serde_json::to_string(&v).unwrap()).unwrap();
        assert_eq!(back, v);
    }
}
