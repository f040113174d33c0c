//! `labgpu reclaim` (a systemd timer runs it; never the runtime): stops a container that has
//! held a pool GPU without using it for `[pools.NAME] idle_after`, or held one longer than
//! `max_runtime`. "Used" is NVML's word: the GPU's utilisation above 0, or a compute process
//! with memory on it (of that very container, on a `shared` pool). Without NVML nothing is
//! judged idle: a container is never stopped for want of a measurement. The stop goes through
//! Docker (`POST /containers/<id>/stop`), so Docker knows why its container ended; the GPU is
//! then freed by the container's `delete` like any other.

use std::collections::BTreeMap;
use std::path::Path;

use crate::gpu::nvml::GpuSample;
use crate::policy::{Policy, Span};

use super::state::{Entry, State};

/// Why a container is reclaimed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Idle { secs: u64, limit: Span },
    MaxRuntime { secs: u64, limit: Span },
}

impl Reason {
    /// The metric's label: `idle` or `max_runtime`.
    pub fn key(&self) -> &'static str {
        match self {
            Reason::Idle { .. } => "idle",
            Reason::MaxRuntime { .. } => "max_runtime",
        }
    }

    pub fn describe(&self) -> String {
        let span = |s: u64| Span(std::time::Duration::from_secs(s));
        match self {
            Reason::Idle { secs, limit } => {
                format!(
                    "its pool GPUs were idle for {} (idle_after = {limit})",
                    span(*secs)
                )
            }
            Reason::MaxRuntime { secs, limit } => format!(
                "it has held pool GPUs for {} (max_runtime = {limit})",
                span(*secs)
            ),
        }
    }
}

/// A container to stop, with its pool GPUs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub container: String,
    pub owner: String,
    pub gpus: Vec<String>,
    pub pool: String,
    pub reason: Reason,
}

/// Whether process `pid` runs in container `id` (its /proc/<pid>/cgroup names the id).
pub type InContainer<'a> = &'a dyn Fn(u32, &str) -> bool;

/// Notes when each entry's GPU was last used (`last_busy`, when `usage` is known) and returns
/// the containers to stop, one verdict each. `state` holds live entries only.
pub fn judge(
    policy: &Policy,
    state: &mut State,
    usage: Option<&[GpuSample]>,
    now: u64,
    in_container: InContainer,
) -> Vec<Verdict> {
    for e in &mut state.entries {
        let shared = policy.pools.get(&e.pool).is_some_and(|p| p.shared);
        if usage.is_some_and(|u| used(e, shared, u, in_container)) {
            e.last_busy = Some(now);
        }
    }
    let mut by_container: BTreeMap<(&Path, &str), Vec<&Entry>> = BTreeMap::new();
    for e in &state.entries {
        by_container
            .entry((e.runc_root.as_path(), e.container.as_str()))
            .or_default()
            .push(e);
    }
    let mut out = Vec::new();
    for ((_, id), entries) in by_container {
        let first = entries[0];
        let reason = entries.iter().find_map(|e| {
            let pool = policy.pools.get(&e.pool)?;
            let held = now.saturating_sub(e.since);
            pool.max_runtime
                .filter(|limit| held >= limit.secs())
                .map(|limit| Reason::MaxRuntime { secs: held, limit })
        });
        let reason = reason.or_else(|| {
            usage?;
            // Idle only when every pool GPU it holds under an idle_after has been idle so long.
            let limited: Vec<(u64, Span)> = entries
                .iter()
                .filter_map(|e| {
                    let limit = policy.pools.get(&e.pool)?.idle_after?;
                    let idle = now.saturating_sub(e.since.max(e.last_busy.unwrap_or(0)));
                    Some((idle, limit))
                })
                .collect();
            let idle = limited.iter().map(|(i, _)| *i).min()?;
            let limit = limited.iter().map(|(_, l)| *l).min()?;
            (idle >= limit.secs()).then_some(Reason::Idle { secs: idle, limit })
        });
        if let Some(reason) = reason {
            out.push(Verdict {
                container: id.to_string(),
                owner: first.owner.clone(),
                gpus: entries.iter().map(|e| e.gpu.clone()).collect(),
                pool: first.pool.clone(),
                reason,
            });
        }
    }
    out
}

/// Whether the entry's GPU was used in NVML's last look.
fn used(e: &Entry, shared: bool, usage: &[GpuSample], in_container: InContainer) -> bool {
    let Some(gpu) = usage.iter().find(|g| g.minor == e.minor) else {
        return false;
    };
    let procs = gpu
        .processes
        .iter()
        .filter(|p| !shared || in_container(p.pid, &e.container));
    let any_proc = procs.into_iter().next().is_some();
    // On a shared GPU the utilisation may be another holder's.
    any_proc || (!shared && gpu.utilization.is_some_and(|u| u > 0))
}

/// A verdict, and whether Docker stopped the container (why not, when it did not).
pub type Done = (Verdict, Result<(), String>);

/// `labgpu reclaim`: frees what is dead, notes what is used, stops what is idle or overdue
/// (only says so with `dry_run`). Returns each verdict and whether its stop went through.
pub fn run(policy: &Policy, docker: &Path, dry_run: bool) -> Result<Vec<Done>, super::PoolError> {
    let store = super::Store::for_policy(&policy.path);
    let wants_usage = policy.pools.values().any(|p| p.idle_after.is_some());
    let lib = policy.gpus.nvml_lib.as_ref().map(|l| l.as_path());
    let usage = if wants_usage {
        match crate::gpu::nvml::sample(lib, crate::gpu::nvml::DEADLINE) {
            Ok(u) => Some(u),
            Err(e) => {
                tracing::warn!(error = %e, "no GPU usage from NVML: no container is judged idle");
                eprintln!(
                    "labgpu reclaim: no GPU usage from NVML ({e}): no container is judged idle"
                );
                None
            }
        }
    } else {
        None
    };
    let proc = Path::new("/proc");
    let verdicts = {
        let mut locked = store.lock()?;
        let dead = super::alloc::prune(&mut locked.state, proc);
        super::log_freed(&dead, "its container is gone");
        let verdicts = judge(
            policy,
            &mut locked.state,
            usage.as_deref(),
            super::now(),
            &proc_in_container(proc),
        );
        locked.save()?;
        locked.unmark_released(&dead.iter().map(|e| e.container.clone()).collect::<Vec<_>>());
        verdicts
    };
    // The stops run without the lock: each ends in the container's `delete`, which takes it.
    let mut out = Vec::new();
    for v in verdicts {
        tracing::warn!(
            container = %v.container,
            owner = %v.owner,
            pool = %v.pool,
            gpus = ?v.gpus,
            reason = v.reason.key(),
            dry_run,
            "reclaiming pool GPUs: {}",
            v.reason.describe()
        );
        let stopped = if dry_run {
            Ok(())
        } else {
            let path = format!("/containers/{}/stop?t=10", v.container);
            crate::docker_api::request_within(
                docker,
                "POST",
                &path,
                std::time::Duration::from_secs(30),
            )
            .map(drop)
            .map_err(|e| e.to_string())
        };
        if stopped.is_ok() && !dry_run {
            let mut locked = store.lock()?;
            *locked
                .state
                .reclaimed
                .entry(v.reason.key().to_string())
                .or_default() += 1;
            locked.save()?;
        }
        out.push((v, stopped));
    }
    Ok(out)
}

/// The default `in_container`: the process's cgroup path names the container id.
pub fn proc_in_container(proc_root: &Path) -> impl Fn(u32, &str) -> bool + '_ {
    move |pid, id| {
        std::fs::read_to_string(proc_root.join(pid.to_string()).join("cgroup"))
            .is_ok_and(|c| c.contains(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::nvml::ProcessSample;
    use crate::pools::live::ProcId;

    fn policy(extra: &str) -> Policy {
        Policy::parse(
            Path::new("/p.toml"),
            format!(
                "version = 1\n[pools.p]\ngpus = [0, 1]\n{extra}\n[users.alice]\npools = {{ p = 2 }}\n"
            )
            .as_bytes(),
        )
        .unwrap()
    }

    fn entry(id: &str, gpu: u32, since: u64) -> Entry {
        Entry {
            pool: "p".into(),
            gpu: gpu.to_string(),
            minor: gpu,
            container: id.into(),
            runc_root: "/run/runc".into(),
            owner: "alice".into(),
            since,
            creator: ProcId { pid: 1, start: 1 },
            last_busy: None,
        }
    }

    fn sample(minor: u32, util: u32, pids: &[u32]) -> GpuSample {
        GpuSample {
            index: minor,
            minor,
            uuid: None,
            name: None,
            utilization: Some(util),
            memory_used: None,
            memory_total: None,
            processes: pids
                .iter()
                .map(|&pid| ProcessSample {
                    pid,
                    used_bytes: Some(1 << 20),
                    sm_percent: None,
                })
                .collect(),
        }
    }

    const NOWHERE: InContainer = &|_, _| false;

    #[test]
    fn an_idle_container_is_reclaimed_and_a_busy_one_is_not() {
        let p = policy("idle_after = \"2h\"");
        let mut st = State {
            version: 1,
            entries: vec![entry("idle", 0, 0), entry("busy", 1, 0)],
            ..State::default()
        };
        let usage = [sample(0, 0, &[]), sample(1, 30, &[])];
        let v = judge(&p, &mut st, Some(&usage), 7200, NOWHERE);
        assert_eq!(v.len(), 1, "{v:?}");
        assert_eq!(v[0].container, "idle");
        assert_eq!(
            v[0].reason.describe(),
            "its pool GPUs were idle for 2h (idle_after = 2h)"
        );
        assert_eq!(st.entries[1].last_busy, Some(7200));
        // Used an hour ago: idle for one hour only.
        st.entries[0].last_busy = Some(3600);
        assert!(judge(&p, &mut st, Some(&[sample(0, 0, &[])]), 7200, NOWHERE).is_empty());
    }

    #[test]
    fn without_nvml_nothing_is_idle_but_max_runtime_still_counts() {
        let p = policy("idle_after = \"1m\"\nmax_runtime = \"1d\"");
        let mut st = State {
            version: 1,
            entries: vec![entry("c", 0, 0)],
            ..State::default()
        };
        assert!(judge(&p, &mut st, None, 3600, NOWHERE).is_empty());
        let v = judge(&p, &mut st, None, 86400, NOWHERE);
        assert_eq!(v[0].reason.key(), "max_runtime");
    }

    #[test]
    fn a_process_keeps_a_gpu_busy_and_on_a_shared_pool_only_the_holders_own_count() {
        let p = policy("idle_after = \"1m\"\nshared = true");
        let mut st = State {
            version: 1,
            entries: vec![entry("mine", 0, 0), entry("theirs", 0, 0)],
            ..State::default()
        };
        let usage = [sample(0, 90, &[42])];
        let only_mine: InContainer = &|pid, id| pid == 42 && id == "mine";
        let v = judge(&p, &mut st, Some(&usage), 600, only_mine);
        let ids: Vec<&str> = v.iter().map(|v| v.container.as_str()).collect();
        assert_eq!(ids, ["theirs"]);
    }
}
