//! The per-user ceilings `labgpu top` and the metrics set usage against: the fair-share
//! keys (`cpus`, `memory`, `pids`, a user's own over `[defaults]`), read through
//! `fairshare::Ceilings`, the same resolution the runtime applies to the user's parent
//! cgroup.

use serde::{Deserialize, Serialize};

use crate::policy::Policy;

/// A user's ceilings; a field is `None` where the policy sets none.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Ceilings {
    /// CPUs (1.5 = one and a half cores) all of the user's containers may use together.
    pub cpus: Option<f64>,
    pub memory_bytes: Option<u64>,
    pub pids: Option<u64>,
}

/// The ceilings `policy` sets for `user`: `None` when it sets none of them (or `user` is
/// not a policy user).
pub fn for_user(policy: &Policy, user: &str) -> Option<Ceilings> {
    let u = policy.user(user)?;
    let c = crate::fairshare::Ceilings::for_user(policy, user, u);
    let out = Ceilings {
        cpus: c.cpus.map(|x| f64::from(x.value.hundredths()) / 100.0),
        memory_bytes: c.memory.map(|x| x.value.0),
        pids: c.pids.map(|x| x.value),
    };
    (out.cpus.is_some() || out.memory_bytes.is_some() || out.pids.is_some()).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn a_users_own_ceiling_replaces_the_default() {
        let text = "version = 1\n[defaults]\ncpus = 4\nmemory = \"1g\"\n\
                    [users.alice]\npids = 64\ncpus = 1.5\n[users.bob]\n";
        let p = Policy::parse(Path::new("/p.toml"), text.as_bytes()).unwrap();
        let a = for_user(&p, "alice").unwrap();
        assert_eq!(a.cpus, Some(1.5));
        assert_eq!(a.memory_bytes, Some(1 << 30));
        assert_eq!(a.pids, Some(64));
        assert_eq!(for_user(&p, "bob").unwrap().cpus, Some(4.0));
        assert_eq!(for_user(&p, "mallory"), None);
        let none = Policy::parse(Path::new("/p.toml"), b"version = 1\n[users.a]\n").unwrap();
        assert_eq!(for_user(&none, "a"), None);
    }
}
