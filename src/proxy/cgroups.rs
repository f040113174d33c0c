//! The users' parent cgroups follow the policy: every `EVERY`, each parent that exists gets
//! its user's current ceilings (a user no longer in the policy, or without ceilings, gets
//! none), and a parent with no container left is removed. The runtime sets a parent up at
//! each create; this is what makes a policy change reach running containers.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use super::limits::PolicyCache;
use crate::fairshare::cgroup::{Cgroups, Driver, Placement};
use crate::fairshare::Ceilings;

/// Well within the 5 s a policy change may take to reach the parents.
pub const EVERY: Duration = Duration::from_secs(2);

/// What was last written to each parent, so that unchanged limits are not written again
/// (under systemd each write is a `systemctl` run).
type Applied = HashMap<(bool, String), Ceilings>;

pub async fn follow_policy(policy: PathBuf, cache: Arc<PolicyCache>) {
    let mut tick = tokio::time::interval(EVERY);
    let mut applied = Applied::new();
    loop {
        tick.tick().await;
        let (policy, cache) = (policy.clone(), cache.clone());
        let mut state = std::mem::take(&mut applied);
        let done = tokio::task::spawn_blocking(move || {
            if let Ok(p) = cache.load(&policy) {
                one_pass(&p, &Cgroups::system(), &mut state);
            }
            state
        })
        .await;
        if let Ok(state) = done {
            applied = state;
        }
    }
}

/// One look at every parent under `[runtime] user_cgroups`.
pub fn one_pass(policy: &crate::policy::Policy, cg: &Cgroups, applied: &mut Applied) {
    for p in cg.parents(&policy.runtime.user_cgroups.0) {
        let key = (p.driver == Driver::Systemd, p.user.clone());
        match cg.remove_if_empty(&p) {
            Ok(true) => {
                info!(user = %p.user, "removed the empty parent cgroup");
                applied.remove(&key);
                continue;
            }
            Ok(false) => {}
            Err(e) => warn!(user = %p.user, error = %e, "cannot remove the empty parent cgroup"),
        }
        let want = ceilings(policy, &p);
        if applied.get(&key) == Some(&want) {
            continue;
        }
        match cg.apply(&p, &want) {
            Ok(()) => {
                info!(user = %p.user, ceilings = ?want, "parent cgroup limits set from the policy");
                applied.insert(key, want);
            }
            // Lowering memory below what is in use fails until the kernel has reclaimed
            // it: tried again next time.
            Err(e) => warn!(user = %p.user, error = %e, "cannot set the parent cgroup's limits"),
        }
    }
}

fn ceilings(policy: &crate::policy::Policy, p: &Placement) -> Ceilings {
    policy
        .user(&p.user)
        .map(|u| Ceilings::for_user(policy, &p.user, u))
        .filter(Ceilings::needs_parent)
        .unwrap_or_default()
}
