//! Who is on the other end of a connection: SO_PEERCRED's uid and pid, decided once per
//! connection; which policy user that uid is, decided per request (the policy may change).

use std::path::{Path, PathBuf};

use crate::policy::Policy;
use crate::slurm::CgroupJob;

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("uid {uid}{} is not a user in {policy} [users]; ask the administrator to add it", passwd.as_ref().map(|n| format!(" ({n})")).unwrap_or_default())]
    UnknownUser {
        uid: u32,
        passwd: Option<String>,
        policy: PathBuf,
    },
}

/// The caller as the kernel reported it when the connection was accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// Root in the host's pid namespace: passes through unfiltered.
    Admin,
    /// Anyone else, root in a container included.
    Uid {
        uid: u32,
        /// The uid's host passwd name, looked up once.
        passwd: Option<String>,
        /// The Slurm job the connecting process runs in, from its cgroups at accept.
        job: CgroupJob,
    },
}

impl Caller {
    pub fn describe(&self) -> String {
        match self {
            Caller::Admin => "admin".into(),
            Caller::Uid {
                uid,
                passwd: Some(n),
                ..
            } => format!("uid {uid} ({n})"),
            Caller::Uid {
                uid, passwd: None, ..
            } => format!("uid {uid}"),
        }
    }
}

/// Identifies a peer from SO_PEERCRED. A uid-0 peer whose pid namespace differs from ours
/// is a container that mounted the socket; an unknown pid namespace (the process already
/// exited, or no pid) is not trusted either.
pub fn identify(uid: u32, pid: Option<i32>, proc_root: &Path) -> Caller {
    if is_admin(uid, pid, proc_root) {
        return Caller::Admin;
    }
    Caller::Uid {
        uid,
        passwd: passwd_name(uid),
        job: crate::slurm::cgroup::job_of(proc_root, pid, uid),
    }
}

/// Root in our pid namespace. Cheap (two readlinks), so it runs as soon as the connection is
/// accepted, before the peer's pid could be reused.
pub fn is_admin(uid: u32, pid: Option<i32>, proc_root: &Path) -> bool {
    if uid != 0 {
        return false;
    }
    let own = pid_ns(&proc_root.join("self"));
    let peer = pid
        .filter(|p| *p > 0)
        .and_then(|p| pid_ns(&proc_root.join(p.to_string())));
    is_host_root(uid, peer.as_deref(), own.as_deref())
}

/// The uid's passwd name. May block (NSS can be LDAP or SSSD): callers in async code run it
/// on the blocking pool.
pub fn passwd_name(uid: u32) -> Option<String> {
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|u| u.name)
}

/// The uid's primary group in the host's passwd. May block, like `passwd_name`.
pub fn primary_gid(uid: u32) -> Option<u32> {
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|u| u.gid.as_raw())
}

fn pid_ns(proc_pid: &Path) -> Option<String> {
    std::fs::read_link(proc_pid.join("ns/pid"))
        .ok()
        .map(|l| l.to_string_lossy().into_owned())
}

/// Only a known, equal pid namespace makes root the admin.
pub fn is_host_root(uid: u32, peer_ns: Option<&str>, own_ns: Option<&str>) -> bool {
    uid == 0 && peer_ns.is_some() && peer_ns == own_ns
}

/// The policy user a non-admin caller is, or why they are refused.
pub fn policy_user<'p>(policy: &'p Policy, caller: &Caller) -> Result<&'p str, IdentityError> {
    let Caller::Uid { uid, passwd, .. } = caller else {
        unreachable!("admins are not mapped to policy users")
    };
    policy
        .user_for_uid(*uid, passwd.as_deref())
        .ok_or_else(|| IdentityError::UnknownUser {
            uid: *uid,
            passwd: passwd.clone(),
            policy: policy.path.clone(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_is_admin_only_in_our_pid_namespace() {
        let host = Some("pid:[4026531836]");
        assert!(is_host_root(0, host, host));
        assert!(!is_host_root(0, Some("pid:[4026532201]"), host));
        assert!(!is_host_root(0, None, host));
        assert!(!is_host_root(0, None, None));
        assert!(!is_host_root(1000, host, host));
    }

    #[test]
    fn identify_reads_proc() {
        let dir = tempfile::tempdir().unwrap();
        let mk = |name: &str, target: &str| {
            std::fs::create_dir_all(dir.path().join(name).join("ns")).unwrap();
            std::os::unix::fs::symlink(target, dir.path().join(name).join("ns/pid")).unwrap();
        };
        mk("self", "pid:[1]");
        mk("10", "pid:[1]");
        mk("20", "pid:[2]");
        assert_eq!(identify(0, Some(10), dir.path()), Caller::Admin);
        assert!(matches!(
            identify(0, Some(20), dir.path()),
            Caller::Uid { uid: 0, .. }
        ));
        assert!(matches!(
            identify(0, Some(30), dir.path()),
            Caller::Uid { uid: 0, .. }
        ));
        assert!(matches!(
            identify(0, None, dir.path()),
            Caller::Uid { uid: 0, .. }
        ));
        assert!(matches!(
            identify(4242, Some(10), dir.path()),
            Caller::Uid { uid: 4242, .. }
        ));
    }

    #[test]
    fn unknown_uid_message_names_uid_and_policy() {
        let p = Policy::parse(
            Path::new("/etc/labgpu/policy.toml"),
            b"version = 1\n[users.alice]\n",
        )
        .unwrap();
        let caller = Caller::Uid {
            uid: 1234,
            passwd: Some("mallory".into()),
            job: CgroupJob::Outside,
        };
        let e = policy_user(&p, &caller).unwrap_err();
        assert_eq!(
            e.to_string(),
            "uid 1234 (mallory) is not a user in /etc/labgpu/policy.toml [users]; ask the administrator to add it"
        );
        let caller = Caller::Uid {
            uid: 1001,
            passwd: Some("alice".into()),
            job: CgroupJob::Outside,
        };
        assert_eq!(policy_user(&p, &caller).unwrap(), "alice");
    }
}
