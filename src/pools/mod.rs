//! GPUs on demand: `[pools.NAME] gpus = [...]` are GPUs no one owns. A container whose owner
//! may use a pool (`[users.NAME] pools = { shared = 2 }`) and that asks for GPUs (`--gpus 2`,
//! `--gpus device=…`, the `labgpu.gpus` label: `request`) gets free pool GPUs at create,
//! on top of its owner's own. The allocation is one entry per GPU in a root-only state file
//! (`state`), changed under a lock, so that two creates never get the same GPU; an entry lives
//! as long as its container's init, or the create that made it (`live`), and is dropped
//! once provably dead: at the next allocation, at `delete`, or by `labgpu verify --reclaim`.
//! `alloc` decides who gets what, or says why not; `reclaim` stops containers that sat idle
//! on a pool GPU (or held one too long).

pub mod alloc;
pub mod live;
pub mod reclaim;
pub mod request;
pub mod span;
pub mod state;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::gpu::{Grant, Inventory};
use crate::policy::{GpuRef, Policy, UserPolicy};
use alloc::{Ask, Want};
use live::ProcId;
use request::{Count, Request};
pub use state::{Entry, State, Store};

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("cannot use the pool state at {path}: {cause}")]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error(
        "pool state {path} is malformed ({reason}); remove it if no container holds a pool GPU"
    )]
    Malformed { path: PathBuf, reason: String },
    #[error("pool state directory {path} must be root's and writable by no one else (it is uid {uid}, mode {mode:o})")]
    Untrusted { path: PathBuf, uid: u32, mode: u32 },
    /// A request the policy or the pool cannot meet: one sentence.
    #[error("{0}")]
    Refused(String),
}

/// Where the runtime reads processes from.
const PROC: &str = "/proc";

/// The policy's pools and the users' `pools` keys make sense together.
pub fn check_policy(policy: &Policy) -> Result<(), String> {
    let mut seen: BTreeMap<String, &str> = BTreeMap::new();
    for (name, pool) in &policy.pools {
        if !crate::policy::valid_user_name(name) {
            return Err(format!("[pools.{name}] is not a valid pool name"));
        }
        if pool.gpus.is_empty() {
            return Err(format!("[pools.{name}] gpus is empty"));
        }
        for g in &pool.gpus {
            if let Some(other) = seen.insert(g.to_string(), name) {
                return Err(format!(
                    "GPU {g} is in [pools.{other}] and [pools.{name}]: a GPU belongs to one pool"
                ));
            }
        }
    }
    // Group tables are checked as written: a group with no member yet is in no user's table.
    let users = policy
        .users
        .iter()
        .map(|(n, u)| (format!("[users.{n}]"), u));
    let groups = policy
        .groups
        .iter()
        .map(|g| (format!("[groups.{}]", g.name), &g.settings));
    for (table, u) in users.chain(groups) {
        for g in u.gpus.iter() {
            if let Some(pool) = seen.get(&g.to_string()) {
                return Err(format!(
                    "GPU {g} is in {table} gpus and in [pools.{pool}] gpus: a GPU is owned or pooled, not both"
                ));
            }
        }
        for (pool, max) in &u.pools {
            if !policy.pools.contains_key(pool) {
                return Err(format!(
                    "{table} pools names {pool:?}, which is not a [pools.{pool}] table"
                ));
            }
            if *max == 0 {
                return Err(format!(
                    "{table} pools = {{ {pool} = 0 }} allows nothing; leave the pool out"
                ));
            }
        }
    }
    Ok(())
}

/// What a create got from the pools.
#[derive(Debug, Default)]
pub struct Allocation {
    pub entries: Vec<Entry>,
    pub grants: Vec<Grant>,
}

/// Where a create stands: who, which container, and what its owner has already.
pub struct Create<'a> {
    pub policy: &'a Policy,
    pub owner: &'a str,
    pub user: &'a UserPolicy,
    pub inventory: &'a dyn Inventory,
    /// The GPUs the owner gets anyway (their own, or their Slurm job's).
    pub owned: &'a [Grant],
    pub docker_root: &'a Path,
    pub id: &'a str,
    pub runc_root: &'a Path,
}

/// Allocates the pool GPUs the container asked for. Nothing when its owner may use no pool
/// or it asked for no more than their own GPUs: pool GPUs are never handed out unasked.
pub fn allocate_for_create(c: &Create) -> Result<Allocation, PoolError> {
    if c.user.pools.is_empty() {
        return Ok(Allocation::default());
    }
    let req = request::read(c.docker_root, c.id).map_err(PoolError::Refused)?;
    if req.is_empty() {
        return Ok(Allocation::default());
    }
    let candidates = pool_gpus(c);
    let want = want(c, &req, &candidates).map_err(PoolError::Refused)?;
    if want == Want::Count(0) {
        return Ok(Allocation::default());
    }
    let gpus: BTreeMap<String, Vec<(GpuRef, u32)>> = candidates
        .iter()
        .map(|(p, list)| {
            let l = list.iter().map(|(g, gr)| (g.clone(), gr.minor)).collect();
            (p.clone(), l)
        })
        .collect();
    let limits_table = c.policy.table_of(c.owner, "pools");
    let ask = Ask {
        owner: c.owner,
        limits_table: &limits_table,
        container: c.id,
        runc_root: c.runc_root,
        pools: &c.policy.pools,
        limits: &c.user.pools,
        gpus: &gpus,
        only_pool: req.pool.as_deref(),
        want,
    };
    let proc = Path::new(PROC);
    let creator = ProcId::current(proc).ok_or_else(|| PoolError::Io {
        path: proc.join("self/stat"),
        cause: std::io::Error::other("cannot read this process's start time"),
    })?;
    let store = Store::for_policy(&c.policy.path);
    let mut locked = store.lock()?;
    let dead = alloc::prune(&mut locked.state, proc);
    log_freed(&dead, "its container is gone");
    let result = alloc::allocate(&mut locked.state, &ask, now(), creator);
    if let Ok(entries) = &result {
        if !entries.is_empty() {
            // The marker first: a crash between the two leaves a marker without entries
            // (harmless), never entries that `delete` would not look for.
            locked.mark(c.id)?;
        }
    }
    if result.is_ok() || !dead.is_empty() {
        locked.save()?;
    }
    locked.unmark_released(&dead.iter().map(|e| e.container.clone()).collect::<Vec<_>>());
    let entries = result.map_err(PoolError::Refused)?;
    let grants = entries
        .iter()
        .filter_map(|e| {
            candidates
                .get(&e.pool)?
                .iter()
                .find(|(g, _)| g.to_string() == e.gpu)
                .map(|(_, grant)| grant.clone())
        })
        .collect();
    Ok(Allocation { entries, grants })
}

/// Gives back what container `id` was allocated (a create that failed after allocating).
pub fn release(policy_path: &Path, id: &str, runc_root: &Path) {
    let store = Store::for_policy(policy_path);
    let Ok(mut locked) = store.lock() else {
        return;
    };
    let before = locked.state.entries.len();
    locked
        .state
        .entries
        .retain(|e| !(e.container == id && e.runc_root == runc_root));
    if locked.state.entries.len() != before && locked.save().is_ok() {
        locked.unmark_released(&[id.to_string()]);
    }
}

/// `delete` of container `id`: when it may hold pool GPUs (one stat otherwise), drops every
/// entry whose container is gone. Best effort, and never in the way of the delete: an entry
/// left behind is dropped at the next allocation.
pub fn on_delete(policy_path: &Path, id: &str) {
    let store = Store::for_policy(policy_path);
    if !crate::owner::valid_container_id(id) || !store.may_hold(id) {
        return;
    }
    let _ = free_dead(&store, "its container was deleted");
}

/// Drops the entries whose container is gone; returns them.
pub fn free_dead(store: &Store, why: &str) -> Result<Vec<Entry>, PoolError> {
    let mut locked = store.lock()?;
    let dead = alloc::prune(&mut locked.state, Path::new(PROC));
    if !dead.is_empty() {
        locked.save()?;
        let ids: Vec<String> = dead.iter().map(|e| e.container.clone()).collect();
        locked.unmark_released(&ids);
        log_freed(&dead, why);
    }
    Ok(dead)
}

fn log_freed(dead: &[Entry], why: &str) {
    for e in dead {
        tracing::info!(
            pool = %e.pool,
            gpu = %e.gpu,
            container = %e.container,
            owner = %e.owner,
            "pool GPU freed: {why}"
        );
    }
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The GPUs of each pool the owner may use that this host has, with what they grant.
type Candidates = BTreeMap<String, Vec<(GpuRef, Grant)>>;

fn pool_gpus(c: &Create) -> Candidates {
    c.user
        .pools
        .keys()
        .filter_map(|name| Some((name, c.policy.pools.get(name)?)))
        .map(|(name, pool)| {
            let list = pool
                .gpus
                .iter()
                .filter_map(|g| match c.inventory.resolve(g) {
                    Ok(grant) => Some((g.clone(), grant)),
                    Err(e) => {
                        tracing::warn!(pool = %name, gpu = %g, error = %e, "pool GPU skipped");
                        None
                    }
                })
                .collect();
            (name.clone(), list)
        })
        .collect()
}

/// The request as the allocator wants it. A number counts the owner's own GPUs first
/// (`--gpus 2` with one GPU of their own takes one pool GPU); named GPUs that are theirs
/// are theirs anyway; any other named GPU must be in a pool they may use.
fn want(c: &Create, req: &Request, candidates: &Candidates) -> Result<Want, String> {
    if !req.devices.is_empty() {
        let mut list = Vec::new();
        for id in &req.devices {
            let r: GpuRef = id
                .parse()
                .map_err(|e: String| format!("{} device={id}: {e}", req.source))?;
            let grant = c
                .inventory
                .resolve(&r)
                .map_err(|e| format!("{} device={id}: {e}", req.source))?;
            if c.owned.contains(&grant) {
                continue;
            }
            let found = candidates.iter().find_map(|(pool, list)| {
                let (g, _) = list.iter().find(|(_, gr)| *gr == grant)?;
                Some((pool.clone(), g.clone()))
            });
            match found {
                Some(p) => list.push(p),
                None => {
                    return Err(format!(
                        "GPU {id} ({} device=) is not {o}'s nor in a pool {o} may use ([users.{o}] gpus and pools)",
                        req.source,
                        o = c.owner
                    ))
                }
            }
        }
        return Ok(Want::Exact(list));
    }
    Ok(match req.count {
        Some(Count::All) => Want::All,
        Some(Count::N(n)) => Want::Count(n.saturating_sub(c.owned.len() as u32)),
        None => Want::Count(0),
    })
}

/// One pool GPU as the admin's views show it (`labgpu gpus`, `labgpu top`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PoolGpu {
    pub pool: String,
    /// The GPU as the pool names it.
    pub gpu: String,
    /// Its device minor, when this host has it.
    pub minor: Option<u32>,
    pub shared: bool,
    /// Who holds it now (live allocations only).
    pub holders: Vec<Holder>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Holder {
    pub owner: String,
    pub container: String,
    /// Seconds since the epoch.
    pub since: u64,
}

impl PoolGpu {
    /// "pool shared: free", "pool shared: busy (bob 3f2a1c9e8b7d)".
    pub fn describe(&self) -> String {
        if self.holders.is_empty() {
            return format!("pool {}: free", self.pool);
        }
        let who: Vec<String> = self
            .holders
            .iter()
            .map(|h| format!("{} {}", h.owner, short(&h.container)))
            .collect();
        format!("pool {}: busy ({})", self.pool, who.join(", "))
    }
}

pub fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

/// Every pool GPU of the policy, with its live holders from the state as it is now.
pub fn view(policy: &Policy, inventory: &dyn Inventory) -> Result<Vec<PoolGpu>, PoolError> {
    let state = if policy.pools.is_empty() {
        State::default()
    } else {
        Store::for_policy(&policy.path).read()?
    };
    Ok(view_of(policy, inventory, &state, Path::new(PROC)))
}

fn view_of(policy: &Policy, inventory: &dyn Inventory, state: &State, proc: &Path) -> Vec<PoolGpu> {
    let live: Vec<&Entry> = state
        .entries
        .iter()
        .filter(|e| live::liveness(e, proc) != live::Liveness::Dead)
        .collect();
    let mut out = Vec::new();
    for (name, pool) in &policy.pools {
        for g in &pool.gpus {
            let gpu = g.to_string();
            out.push(PoolGpu {
                pool: name.clone(),
                minor: inventory.resolve(g).ok().map(|gr| gr.minor),
                shared: pool.shared,
                holders: live
                    .iter()
                    .filter(|e| e.gpu == gpu)
                    .map(|e| Holder {
                        owner: e.owner.clone(),
                        container: e.container.clone(),
                        since: e.since,
                    })
                    .collect(),
                gpu,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Policy, String> {
        Policy::parse(Path::new("/p.toml"), text.as_bytes()).map_err(|e| e.to_string())
    }

    #[test]
    fn pools_and_users_pools_are_checked_together() {
        let p = parse(
            "version = 1\n[pools.shared]\ngpus = [2, 3]\nshared = true\nidle_after = \"2h\"\n\
             [users.alice]\ngpus = [0]\npools = { shared = 2 }\n",
        )
        .unwrap();
        assert_eq!(p.pools["shared"].gpus.len(), 2);
        assert_eq!(p.pools["shared"].idle_after.unwrap().secs(), 7200);
        assert_eq!(p.users["alice"].pools["shared"], 2);
        for (text, want) in [
            ("[pools.a]\ngpus = []\n", "[pools.a] gpus is empty"),
            (
                "[pools.a]\ngpus = [1]\n[pools.b]\ngpus = [1]\n",
                "GPU 1 is in [pools.a] and [pools.b]",
            ),
            (
                "[pools.a]\ngpus = [1]\n[users.bob]\ngpus = [1]\n",
                "GPU 1 is in [users.bob] gpus and in [pools.a] gpus",
            ),
            (
                "[groups.ml]\npools = { big = 1 }\n",
                "[groups.ml] pools names \"big\", which is not a [pools.big] table",
            ),
            (
                "[pools.a]\ngpus = [1]\n[groups.ml]\ngpus = [1]\n",
                "GPU 1 is in [groups.ml] gpus and in [pools.a] gpus",
            ),
            (
                "[users.bob]\npools = { big = 1 }\n",
                "[users.bob] pools names \"big\", which is not a [pools.big] table",
            ),
            (
                "[pools.a]\ngpus = [1]\n[users.bob]\npools = { a = 0 }\n",
                "allows nothing",
            ),
            ("[pools.a]\ngpus = [1]\nidle_after = \"soon\"\n", "line 4"),
            ("[pools.a]\ngpus = [1]\nexclusive = true\n", "exclusive"),
        ] {
            let err = parse(&format!("version = 1\n{text}")).unwrap_err();
            assert!(err.contains(want), "{text}: {err}");
        }
    }
}
