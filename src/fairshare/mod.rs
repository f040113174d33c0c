//! Fair share: ceilings on the sum of all of a user's containers, and host ports per user.
//!
//! `cpus`, `memory` and `pids` (in `[defaults]`, replaced per user) limit one cgroup that is
//! the parent of every container of that user (`cgroup`: a directory per controller under
//! the cgroupfs driver, a slice under systemd's), so ten containers share one user's share
//! instead of taking ten. Each container's own request is kept when it is below the ceiling
//! and cut to it when above (`cap`), at create and at `docker update`: a container then
//! shows the limit it really has. `shm_size` caps each container's /dev/shm (its pages count
//! toward `memory` anyway). `ports` are the host ports a user may publish through the proxy.
//!
//! The runtime places each new container under its owner's parent and sets the parent's
//! limits before runc runs; the proxy re-applies the limits within seconds of a policy
//! change and removes parents that have become empty (`cgroup::sweep`).

pub mod cap;
pub mod cgroup;
pub mod units;

use crate::policy::{Policy, UserPolicy};
pub use units::{ByteSize, Cpus, PortRange};

/// One ceiling and the policy key it came from, for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ceiling<T> {
    pub value: T,
    /// `[users.alice] memory` or `[defaults] memory`.
    pub key: String,
}

/// A user's ceilings, each from their own table or else `[defaults]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ceilings {
    pub cpus: Option<Ceiling<Cpus>>,
    pub memory: Option<Ceiling<ByteSize>>,
    pub pids: Option<Ceiling<u64>>,
    pub shm_size: Option<Ceiling<ByteSize>>,
}

impl Ceilings {
    /// `name`'s ceilings (`user` is their table). A container without an owner gets none
    /// (`Ceilings::default()`): it has no user to share with.
    pub fn for_user(policy: &Policy, name: &str, user: &UserPolicy) -> Ceilings {
        let d = &policy.defaults;
        fn pick<T: Copy>(
            own: Option<T>,
            default: Option<T>,
            name: &str,
            field: &str,
        ) -> Option<Ceiling<T>> {
            match (own, default) {
                (Some(value), _) => Some(Ceiling {
                    value,
                    key: format!("[users.{name}] {field}"),
                }),
                (None, Some(value)) => Some(Ceiling {
                    value,
                    key: format!("[defaults] {field}"),
                }),
                (None, None) => None,
            }
        }
        Ceilings {
            cpus: pick(user.cpus, d.cpus, name, "cpus"),
            memory: pick(user.memory, d.memory, name, "memory"),
            pids: pick(user.pids, d.pids, name, "pids"),
            shm_size: pick(user.shm_size, d.shm_size, name, "shm_size"),
        }
    }

    /// Whether the user's containers go under a parent cgroup of their own.
    pub fn needs_parent(&self) -> bool {
        self.cpus.is_some() || self.memory.is_some() || self.pids.is_some()
    }

    pub fn is_empty(&self) -> bool {
        !self.needs_parent() && self.shm_size.is_none()
    }
}

/// The host ports `name` may publish: `[defaults] ports` plus their own.
pub fn ports_for(policy: &Policy, user: &UserPolicy) -> Vec<PortRange> {
    policy
        .defaults
        .ports
        .iter()
        .chain(&user.ports)
        .copied()
        .collect()
}

/// Two users' own port ranges must not overlap, nor one user's the shared `[defaults]`
/// ranges: otherwise one could take the ports another's published services were promised.
pub fn check_ports(policy: &Policy) -> Result<(), String> {
    let mut owned: Vec<(&str, PortRange)> = Vec::new();
    for (name, user) in &policy.users {
        for r in &user.ports {
            if let Some(d) = policy.defaults.ports.iter().find(|d| d.overlaps(r)) {
                return Err(format!(
                    "[users.{name}] ports {r} overlaps [defaults] ports {d}, which every user may publish"
                ));
            }
            if let Some((other, o)) = owned
                .iter()
                .find(|(o, range)| *o != name && range.overlaps(r))
            {
                return Err(format!(
                    "[users.{name}] ports {r} overlaps [users.{other}] ports {o}: each user's host ports must be their own"
                ));
            }
        }
        owned.extend(user.ports.iter().map(|r| (name.as_str(), *r)));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn parse(text: &str) -> Result<Policy, crate::policy::PolicyError> {
        Policy::parse(Path::new("/p.toml"), text.as_bytes())
    }

    #[test]
    fn a_users_value_replaces_the_default() {
        let p = parse(
            "version = 1\n[defaults]\ncpus = 4\nmemory = \"8g\"\nshm_size = \"1g\"\n\
             [users.alice]\nmemory = \"16g\"\npids = 500\n[users.bob]\n",
        )
        .unwrap();
        let a = Ceilings::for_user(&p, "alice", &p.users["alice"]);
        assert_eq!(a.memory.as_ref().unwrap().value.0, 16 << 30);
        assert_eq!(a.memory.unwrap().key, "[users.alice] memory");
        assert_eq!(a.cpus.as_ref().unwrap().key, "[defaults] cpus");
        assert_eq!(a.pids.unwrap().value, 500);
        let b = Ceilings::for_user(&p, "bob", &p.users["bob"]);
        assert!(b.pids.is_none() && b.needs_parent());
        let p = parse("version = 1\n[defaults]\nshm_size = \"1g\"\n[users.c]\n").unwrap();
        let c = Ceilings::for_user(&p, "c", &p.users["c"]);
        assert!(!c.needs_parent() && !c.is_empty());
    }

    #[test]
    fn overlapping_port_ranges_are_policy_errors() {
        let ok = parse(
            "version = 1\n[defaults]\nports = [\"30000-30099\"]\n[users.a]\nports = [\"20000-20099\"]\n\
             [users.b]\nports = [\"20100-20199\", \"8080\"]\n",
        )
        .unwrap();
        let ports = ports_for(&ok, &ok.users["b"]);
        assert_eq!(ports.len(), 3);
        for (text, want) in [
            (
                "[users.a]\nports = [\"20000-20099\"]\n[users.b]\nports = [\"20050\"]\n",
                "[users.b] ports 20050 overlaps [users.a] ports 20000-20099",
            ),
            (
                "[defaults]\nports = [\"20000-20099\"]\n[users.a]\nports = [\"20099-20100\"]\n",
                "overlaps [defaults] ports 20000-20099",
            ),
            ("[users.a]\nports = [\"0-10\"]\n", "within 1-65535"),
        ] {
            let e = parse(&format!("version = 1\n{text}"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{text}: {e}");
        }
        // One user's own ranges may touch each other.
        parse("version = 1\n[users.a]\nports = [\"1000-1010\", \"1005\"]\n").unwrap();
    }
}
