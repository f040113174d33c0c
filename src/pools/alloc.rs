//! The allocator: which free pool GPUs a create gets, or the sentence saying why it gets
//! none. Pure: the caller holds the state's lock, has dropped the dead entries (`prune`) and
//! saves what this returns.

use std::collections::BTreeMap;
use std::path::Path;

use super::live::{self, Liveness, ProcId};
use super::state::{Entry, State};
use crate::policy::{GpuRef, PoolSection};

/// What a container asked for, beyond its owner's own GPUs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Want {
    /// This many pool GPUs.
    Count(u32),
    /// As many as the owner may still hold, of every pool they may use (`--gpus all`).
    All,
    /// These pool GPUs (`--gpus device=…`): pool name and GPU.
    Exact(Vec<(String, GpuRef)>),
}

/// One create's request, with everything the allocator needs to know about the policy.
#[derive(Debug, Clone)]
pub struct Ask<'a> {
    pub owner: &'a str,
    pub container: &'a str,
    pub runc_root: &'a Path,
    pub pools: &'a BTreeMap<String, PoolSection>,
    /// The owner's `pools`: the most of each they may hold at once.
    pub limits: &'a BTreeMap<String, u32>,
    /// Where those come from, for the refusals: `[users.NAME]` or `[groups.G]`.
    pub limits_table: &'a str,
    /// The GPUs of each pool the owner may use that this host has, in the policy's order,
    /// with their minors.
    pub gpus: &'a BTreeMap<String, Vec<(GpuRef, u32)>>,
    /// Only this pool (the `labgpu.pool` label).
    pub only_pool: Option<&'a str>,
    pub want: Want,
}

/// Drops the entries whose container is provably gone; returns them.
pub fn prune(state: &mut State, proc_root: &Path) -> Vec<Entry> {
    let (dead, live): (Vec<Entry>, Vec<Entry>) = std::mem::take(&mut state.entries)
        .into_iter()
        .partition(|e| live::liveness(e, proc_root) == Liveness::Dead);
    state.entries = live;
    dead
}

/// Allocates what `ask` wants and adds the entries to `state`; returns them. `Err` is the
/// refusal, one sentence.
pub fn allocate(
    state: &mut State,
    ask: &Ask,
    now: u64,
    creator: ProcId,
) -> Result<Vec<Entry>, String> {
    let mine = |e: &&Entry| e.container == ask.container && e.runc_root == ask.runc_root;
    if let Some(e) = state.entries.iter().find(mine) {
        return Err(format!(
            "container {} already holds GPU {} of pool {:?}",
            ask.container, e.gpu, e.pool
        ));
    }
    let picks = match &ask.want {
        Want::Exact(list) => exact(state, ask, list)?,
        Want::Count(0) => Vec::new(),
        Want::Count(n) => counted(state, ask, Some(*n))?,
        Want::All => counted(state, ask, None)?,
    };
    let entries: Vec<Entry> = picks
        .into_iter()
        .map(|(pool, gpu, minor)| Entry {
            pool,
            gpu: gpu.to_string(),
            minor,
            container: ask.container.to_string(),
            runc_root: ask.runc_root.to_path_buf(),
            owner: ask.owner.to_string(),
            since: now,
            creator,
            last_busy: None,
        })
        .collect();
    state.entries.extend(entries.iter().cloned());
    Ok(entries)
}

type Pick = (String, GpuRef, u32);

/// The pools this ask may draw from, in the owner's order.
fn usable<'a>(ask: &'a Ask) -> impl Iterator<Item = (&'a String, u32)> + 'a {
    ask.limits
        .iter()
        .filter(move |(p, _)| ask.only_pool.is_none_or(|o| o == p.as_str()))
        .filter(|(p, _)| ask.pools.contains_key(*p))
        .map(|(p, max)| (p, *max))
}

fn held_by(state: &State, owner: &str, pool: &str) -> u32 {
    state
        .entries
        .iter()
        .filter(|e| e.owner == owner && e.pool == pool)
        .count() as u32
}

fn holders(state: &State, gpu: &str) -> usize {
    state.entries.iter().filter(|e| e.gpu == gpu).count()
}

/// `n` pool GPUs (`None`: all the owner may still hold), drawn pool by pool.
fn counted(state: &State, ask: &Ask, n: Option<u32>) -> Result<Vec<Pick>, String> {
    let pools: Vec<_> = usable(ask).collect();
    if pools.is_empty() {
        return Err(no_pool(ask));
    }
    let mut picks: Vec<Pick> = Vec::new();
    let mut why = Vec::new();
    let mut full = Vec::new();
    let mut left = n;
    for (pool, max) in pools {
        if left == Some(0) {
            break;
        }
        let held = held_by(state, ask.owner, pool);
        let room = max.saturating_sub(held);
        if n.is_none() && room == 0 {
            full.push(over_max(ask, pool, held, max, 1));
            continue;
        }
        let free = free_gpus(state, ask, pool, &picks);
        let wanted = left.unwrap_or(room);
        let take = wanted.min(room).min(free.len() as u32);
        if take < wanted {
            why.push(shortfall(
                state,
                ask,
                pool,
                held,
                max,
                wanted,
                free.len() as u32,
            ));
            if n.is_none() {
                // `all` is exact: each pool's whole remaining share, or nothing.
                continue;
            }
        }
        picks.extend(
            free.into_iter()
                .take(take as usize)
                .map(|(g, m)| (pool.clone(), g, m)),
        );
        left = left.map(|l| l - take);
    }
    let short = match n {
        Some(_) => left.is_some_and(|l| l > 0),
        None => !why.is_empty() || picks.is_empty(),
    };
    if short {
        why.extend(full);
        return Err(why.join("; "));
    }
    Ok(picks)
}

/// The GPUs of `pool` a new holder may take, least held first (for a shared pool).
fn free_gpus(state: &State, ask: &Ask, pool: &str, picked: &[Pick]) -> Vec<(GpuRef, u32)> {
    let shared = ask.pools.get(pool).is_some_and(|p| p.shared);
    let mut free: Vec<(usize, (GpuRef, u32))> = ask
        .gpus
        .get(pool)
        .into_iter()
        .flatten()
        .filter(|(g, _)| !picked.iter().any(|(_, p, _)| p == g))
        .map(|(g, m)| (holders(state, &g.to_string()), (g.clone(), *m)))
        .filter(|(n, _)| shared || *n == 0)
        .collect();
    free.sort_by_key(|(n, _)| *n);
    free.into_iter().map(|(_, g)| g).collect()
}

/// Exactly these GPUs, each free and within its pool's per-user maximum.
fn exact(state: &State, ask: &Ask, list: &[(String, GpuRef)]) -> Result<Vec<Pick>, String> {
    let mut picks: Vec<Pick> = Vec::new();
    for (pool, gpu) in list {
        let Some(max) = usable(ask).find(|(p, _)| *p == pool).map(|(_, m)| m) else {
            return Err(format!(
                "GPU {gpu} is in pool {pool:?}, which {} may not use ({} pools)",
                ask.owner, ask.limits_table
            ));
        };
        if picks.iter().any(|(_, g, _)| g == gpu) {
            continue;
        }
        let held = held_by(state, ask.owner, pool);
        let asked = 1 + picks.iter().filter(|(p, _, _)| p == pool).count() as u32;
        if held + asked > max {
            return Err(over_max(ask, pool, held, max, asked));
        }
        let Some((_, minor)) = free_gpus(state, ask, pool, &picks)
            .into_iter()
            .find(|(g, _)| g == gpu)
        else {
            let by = owners_of(state, &gpu.to_string());
            return Err(if by.is_empty() {
                format!("GPU {gpu} of pool {pool:?} is not present on this host")
            } else {
                format!("GPU {gpu} of pool {pool:?} is busy ({by})")
            });
        };
        picks.push((pool.clone(), gpu.clone(), minor));
    }
    Ok(picks)
}

/// Why `pool` could not give `wanted` GPUs: the owner's maximum, or too few free.
fn shortfall(
    state: &State,
    ask: &Ask,
    pool: &str,
    held: u32,
    max: u32,
    wanted: u32,
    free: u32,
) -> String {
    if held + wanted > max && free >= wanted.min(max.saturating_sub(held)) {
        return over_max(ask, pool, held, max, wanted);
    }
    let total = ask.pools.get(pool).map_or(0, |p| p.gpus.len());
    let busy = ask.pools.get(pool).map_or(0, |p| {
        p.gpus
            .iter()
            .filter(|g| holders(state, &g.to_string()) > 0)
            .count()
    });
    let by = pool_holders(state, ask, pool);
    let by = if by.is_empty() {
        String::new()
    } else {
        format!(" ({by})")
    };
    match free {
        0 => format!("pool {pool:?} has no free GPU: {busy} of {total} busy{by}"),
        1 => format!(
            "pool {pool:?} has 1 free GPU and {wanted} were asked for: {busy} of {total} busy{by}"
        ),
        n => format!(
            "pool {pool:?} has {n} free GPUs and {wanted} were asked for: {busy} of {total} busy{by}"
        ),
    }
}

fn over_max(ask: &Ask, pool: &str, held: u32, max: u32, wanted: u32) -> String {
    let gpus = |n: u32| if n == 1 { "GPU" } else { "GPUs" };
    if held >= max {
        format!(
            "{} already holds {held} {} of pool {pool:?}, the most allowed ({} pools)",
            ask.owner,
            gpus(held),
            ask.limits_table
        )
    } else {
        format!(
            "{} may hold at most {max} {} of pool {pool:?} ({} pools) and holds {held}: {wanted} more were asked for",
            ask.owner,
            gpus(max),
            ask.limits_table
        )
    }
}

fn no_pool(ask: &Ask) -> String {
    match ask.only_pool {
        Some(p) => format!(
            "pool {p:?} (label labgpu.pool) is not a pool {} may use ({} pools)",
            ask.owner, ask.limits_table
        ),
        None => format!(
            "{} may use no GPU pool ({} pools)",
            ask.owner, ask.limits_table
        ),
    }
}

/// "alice 2, bob 1": who holds how many of `pool`'s GPUs (user names only).
fn pool_holders(state: &State, ask: &Ask, pool: &str) -> String {
    let mut by: BTreeMap<&str, usize> = BTreeMap::new();
    let gpus: Vec<String> = ask
        .pools
        .get(pool)
        .map(|p| p.gpus.iter().map(|g| g.to_string()).collect())
        .unwrap_or_default();
    for e in state.entries.iter().filter(|e| gpus.contains(&e.gpu)) {
        *by.entry(e.owner.as_str()).or_default() += 1;
    }
    by.iter()
        .map(|(o, n)| format!("{o} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn owners_of(state: &State, gpu: &str) -> String {
    let mut owners: Vec<&str> = state
        .entries
        .iter()
        .filter(|e| e.gpu == gpu)
        .map(|e| e.owner.as_str())
        .collect();
    owners.dedup();
    owners.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(gpus: &[u32], shared: bool) -> PoolSection {
        PoolSection {
            gpus: gpus.iter().map(|g| GpuRef::Number(*g)).collect(),
            shared,
            idle_after: None,
            max_runtime: None,
        }
    }

    struct Setup {
        pools: BTreeMap<String, PoolSection>,
        gpus: BTreeMap<String, Vec<(GpuRef, u32)>>,
        limits: BTreeMap<String, u32>,
    }

    fn setup(shared: bool) -> Setup {
        let pools = BTreeMap::from([
            ("shared".to_string(), pool(&[0, 1, 2, 3], shared)),
            ("big".to_string(), pool(&[4], false)),
        ]);
        let gpus = pools
            .iter()
            .map(|(n, p)| {
                let list = p
                    .gpus
                    .iter()
                    .map(|g| match g {
                        GpuRef::Number(m) => (g.clone(), *m),
                        _ => unreachable!(),
                    })
                    .collect();
                (n.clone(), list)
            })
            .collect();
        Setup {
            pools,
            gpus,
            limits: BTreeMap::from([("shared".to_string(), 2)]),
        }
    }

    const ME: ProcId = ProcId { pid: 1, start: 1 };

    fn ask<'a>(s: &'a Setup, owner: &'a str, id: &'a str, want: Want) -> Ask<'a> {
        Ask {
            owner,
            container: id,
            runc_root: Path::new("/run/runc"),
            pools: &s.pools,
            limits: &s.limits,
            // Every test user's maximum is written in their own table here.
            limits_table: match owner {
                "alice" => "[users.alice]",
                "bob" => "[users.bob]",
                _ => "[users.other]",
            },
            gpus: &s.gpus,
            only_pool: None,
            want,
        }
    }

    fn gpus(entries: &[Entry]) -> Vec<&str> {
        entries.iter().map(|e| e.gpu.as_str()).collect()
    }

    #[test]
    fn two_users_get_different_gpus_and_a_third_is_told_who_holds_them() {
        let s = setup(false);
        let mut st = State::default();
        let a = allocate(&mut st, &ask(&s, "alice", "a1", Want::Count(2)), 5, ME).unwrap();
        let b = allocate(&mut st, &ask(&s, "bob", "b1", Want::Count(2)), 5, ME).unwrap();
        assert_eq!(gpus(&a), ["0", "1"]);
        assert_eq!(gpus(&b), ["2", "3"]);
        assert_eq!((a[0].owner.as_str(), a[0].since), ("alice", 5));
        let err = allocate(&mut st, &ask(&s, "carol", "c1", Want::Count(1)), 5, ME).unwrap_err();
        assert_eq!(
            err,
            "pool \"shared\" has no free GPU: 4 of 4 busy (alice 2, bob 2)"
        );
        assert_eq!(st.entries.len(), 4);
    }

    #[test]
    fn the_per_user_maximum_counts_every_container_of_the_user() {
        let s = setup(false);
        let mut st = State::default();
        allocate(&mut st, &ask(&s, "alice", "a1", Want::Count(1)), 0, ME).unwrap();
        allocate(&mut st, &ask(&s, "alice", "a2", Want::Count(1)), 0, ME).unwrap();
        let err = allocate(&mut st, &ask(&s, "alice", "a3", Want::Count(1)), 0, ME).unwrap_err();
        assert_eq!(
            err,
            "alice already holds 2 GPUs of pool \"shared\", the most allowed ([users.alice] pools)"
        );
        let mut st = State::default();
        let err = allocate(&mut st, &ask(&s, "alice", "a1", Want::Count(3)), 0, ME).unwrap_err();
        assert!(
            err.contains("may hold at most 2 GPUs of pool \"shared\""),
            "{err}"
        );
        assert!(st.entries.is_empty(), "a refusal allocates nothing");
    }

    #[test]
    fn too_few_free_names_how_many_are_free() {
        let s = setup(false);
        let mut st = State::default();
        allocate(&mut st, &ask(&s, "bob", "b1", Want::Count(2)), 0, ME).unwrap();
        allocate(&mut st, &ask(&s, "carol", "c1", Want::Count(1)), 0, ME).unwrap();
        let err = allocate(&mut st, &ask(&s, "alice", "a1", Want::Count(2)), 0, ME).unwrap_err();
        assert_eq!(
            err,
            "pool \"shared\" has 1 free GPU and 2 were asked for: 3 of 4 busy (bob 2, carol 1)"
        );
    }

    #[test]
    fn exact_gpus_must_be_free_and_in_a_usable_pool() {
        let s = setup(false);
        let mut st = State::default();
        let want = |g: u32, p: &str| Want::Exact(vec![(p.to_string(), GpuRef::Number(g))]);
        let a = allocate(&mut st, &ask(&s, "alice", "a1", want(3, "shared")), 0, ME).unwrap();
        assert_eq!(gpus(&a), ["3"]);
        let err = allocate(&mut st, &ask(&s, "bob", "b1", want(3, "shared")), 0, ME).unwrap_err();
        assert_eq!(err, "GPU 3 of pool \"shared\" is busy (alice)");
        let err = allocate(&mut st, &ask(&s, "bob", "b1", want(4, "big")), 0, ME).unwrap_err();
        assert!(
            err.contains("which bob may not use ([users.bob] pools)"),
            "{err}"
        );
    }

    #[test]
    fn a_shared_pool_hands_out_the_least_held_gpu_and_still_counts_the_maximum() {
        let mut s = setup(true);
        s.limits.insert("shared".into(), 8);
        let mut st = State::default();
        for i in 0..6 {
            let id = format!("c{i}");
            allocate(&mut st, &ask(&s, "alice", &id, Want::Count(1)), 0, ME).unwrap();
        }
        let per_gpu: Vec<usize> = (0..4).map(|g| holders(&st, &g.to_string())).collect();
        assert_eq!(per_gpu, [2, 2, 1, 1]);
    }

    #[test]
    fn all_is_the_whole_remaining_share_or_nothing() {
        let s = setup(false);
        let mut st = State::default();
        let a = allocate(&mut st, &ask(&s, "alice", "a1", Want::All), 0, ME).unwrap();
        assert_eq!(gpus(&a), ["0", "1"]);
        let err = allocate(&mut st, &ask(&s, "alice", "a2", Want::All), 0, ME).unwrap_err();
        assert!(err.contains("already holds 2 GPUs"), "{err}");
        allocate(&mut st, &ask(&s, "bob", "b1", Want::Count(1)), 0, ME).unwrap();
        let err = allocate(&mut st, &ask(&s, "carol", "c1", Want::All), 0, ME).unwrap_err();
        assert!(err.contains("has 1 free GPU and 2 were asked for"), "{err}");
    }

    #[test]
    fn a_container_cannot_hold_twice_and_count_zero_takes_nothing() {
        let s = setup(false);
        let mut st = State::default();
        allocate(&mut st, &ask(&s, "alice", "a1", Want::Count(1)), 0, ME).unwrap();
        let err = allocate(&mut st, &ask(&s, "alice", "a1", Want::Count(1)), 0, ME).unwrap_err();
        assert!(err.contains("already holds GPU 0"), "{err}");
        let none = allocate(&mut st, &ask(&s, "bob", "b1", Want::Count(0)), 0, ME).unwrap();
        assert!(none.is_empty());
    }

    #[test]
    fn a_pool_label_names_a_pool_the_user_may_use() {
        let s = setup(false);
        let mut st = State::default();
        let mut a = ask(&s, "alice", "a1", Want::Count(1));
        a.only_pool = Some("big");
        let err = allocate(&mut st, &a, 0, ME).unwrap_err();
        assert!(err.contains("pool \"big\" (label labgpu.pool) is not a pool alice may use"));
    }

    #[test]
    fn pruning_drops_only_provably_dead_entries() {
        let s = setup(false);
        let proc = Path::new("/proc");
        let me = ProcId::current(proc).unwrap();
        let gone = ProcId {
            pid: i32::MAX - 1,
            start: 1,
        };
        let mut st = State::default();
        allocate(&mut st, &ask(&s, "alice", "live", Want::Count(1)), 0, me).unwrap();
        allocate(&mut st, &ask(&s, "bob", "killed", Want::Count(2)), 0, gone).unwrap();
        let dead = prune(&mut st, proc);
        assert_eq!(gpus(&dead), ["1", "2"]);
        assert_eq!(gpus(&st.entries), ["0"]);
        let b = allocate(&mut st, &ask(&s, "bob", "b2", Want::Count(2)), 0, me).unwrap();
        assert_eq!(gpus(&b), ["1", "2"]);
    }
}
