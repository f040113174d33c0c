//! Pool GPUs in the audit: a container's allocation (the pool state, root's) counts as
//! granted, and an allocation whose container is gone is a finding of its own, freed with
//! `labgpu verify --reclaim`.

use std::path::Path;

use serde::Serialize;

use crate::policy::Policy;
use crate::pools::live::{liveness, Liveness};
use crate::pools::{State, Store};

/// An allocation whose container is gone.
#[derive(Debug, Clone, Serialize)]
pub struct StaleAllocation {
    pub pool: String,
    pub gpu: String,
    pub container: String,
    pub owner: String,
    pub since: u64,
    /// Freed by this run (`--reclaim`).
    pub freed: bool,
}

/// The pool state of `policy` (empty without pools); an unreadable state is an error string.
pub fn state(policy: &Policy) -> Result<State, String> {
    if policy.pools.is_empty() {
        return Ok(State::default());
    }
    Store::for_policy(&policy.path)
        .read()
        .map_err(|e| e.to_string())
}

/// The minors container `id` (under runc root `root`) holds from the pools.
pub fn held(state: &State, root: &Path, id: &str) -> Vec<u32> {
    state
        .entries
        .iter()
        .filter(|e| e.container == id && same_dir(&e.runc_root, root))
        .map(|e| e.minor)
        .collect()
}

/// Whether two runc roots are one directory: dockerd's default exec root is
/// /var/run/docker (the shim passes that to runc, and the entry records it), while verify
/// scans /run/docker, its target on every systemd host.
fn same_dir(a: &Path, b: &Path) -> bool {
    a == b
        || matches!(
            (std::fs::canonicalize(a), std::fs::canonicalize(b)),
            (Ok(x), Ok(y)) if x == y
        )
}

/// The allocations whose container is gone; freed when `reclaim`.
pub fn stale(
    policy: &Policy,
    state: &State,
    proc_root: &Path,
    reclaim: bool,
) -> Result<Vec<StaleAllocation>, String> {
    let mut out: Vec<StaleAllocation> = state
        .entries
        .iter()
        .filter(|e| liveness(e, proc_root) == Liveness::Dead)
        .map(|e| StaleAllocation {
            pool: e.pool.clone(),
            gpu: e.gpu.clone(),
            container: e.container.clone(),
            owner: e.owner.clone(),
            since: e.since,
            freed: false,
        })
        .collect();
    if reclaim && !out.is_empty() {
        let store = Store::for_policy(&policy.path);
        let freed = crate::pools::free_dead(&store, "labgpu verify --reclaim")
            .map_err(|e| e.to_string())?;
        for s in &mut out {
            s.freed = freed
                .iter()
                .any(|f| f.container == s.container && f.gpu == s.gpu);
        }
    }
    Ok(out)
}

pub fn describe(s: &StaleAllocation) -> String {
    format!(
        "GPU {} of pool {:?} is held for container {} ({}), which is gone{}",
        s.gpu,
        s.pool,
        crate::pools::short(&s.container),
        s.owner,
        if s.freed {
            ": freed"
        } else {
            " (labgpu verify --reclaim frees it)"
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_runc_root_named_through_a_symlink_is_the_same_root() {
        let d = tempfile::tempdir().unwrap();
        let real = d.path().join("run/docker/runtime-runc/moby");
        std::fs::create_dir_all(&real).unwrap();
        std::os::unix::fs::symlink(d.path().join("run"), d.path().join("var-run")).unwrap();
        let via_link = d.path().join("var-run/docker/runtime-runc/moby");
        assert!(same_dir(&via_link, &real));
        assert!(same_dir(&real, &real));
        assert!(!same_dir(&real, d.path()));
        assert!(!same_dir(&d.path().join("gone"), &real));
    }
}
