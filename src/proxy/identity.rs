//! Who is on the other end of a connection: SO_PEERCRED's uid and pid, decided once per
//! connection; which policy user that uid is, decided per request (the policy may change).
//! The uid's passwd name is remembered for a few seconds while /etc/passwd stays the same
//! file (`NameCache`): the docker CLI opens a connection per request.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::policy::Policy;
use crate::policy_cache::Identity;
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

/// How long a passwd name is believed without asking NSS again, when /etc/passwd is
/// unchanged: what an LDAP or SSSD source may change in the meantime (their own caches keep
/// names far longer: nscd 10 minutes, SSSD 90).
pub const PASSWD_TTL: Duration = Duration::from_secs(5);

/// Entries kept at most (one per uid that connected); beyond, the cache starts over.
const NAME_CACHE_MAX: usize = 4096;

/// Passwd names by uid. An entry holds while `file` (/etc/passwd) has the identity it had
/// when the name was looked up (device, inode, size, mtime and ctime to the nanosecond: any
/// write or replacement moves one) and for at most `ttl`. A name is remembered only when the
/// file's ctime was a second old and the file unchanged across the lookup, so that a second
/// write within one timestamp tick cannot leave a stale name under an unchanged identity
/// (as in `policy_cache`).
pub struct NameCache {
    file: PathBuf,
    ttl: Duration,
    names: Mutex<HashMap<u32, Named>>,
}

struct Named {
    file: Identity,
    at: Instant,
    name: Option<String>,
}

impl Default for NameCache {
    fn default() -> Self {
        NameCache::new(Path::new("/etc/passwd"), PASSWD_TTL)
    }
}

impl NameCache {
    pub fn new(file: &Path, ttl: Duration) -> Self {
        NameCache {
            file: file.to_path_buf(),
            ttl,
            names: Mutex::default(),
        }
    }

    /// The remembered name of `uid` (`Some(None)`: it has none), or `None` when it must be
    /// looked up. One stat: cheap enough for the async workers.
    pub fn get(&self, uid: u32) -> Option<Option<String>> {
        let now = Identity::of(&std::fs::metadata(&self.file).ok()?);
        let names = self.names.lock().unwrap_or_else(|p| p.into_inner());
        let n = names.get(&uid)?;
        (n.file == now && n.at.elapsed() < self.ttl).then(|| n.name.clone())
    }

    /// Looks `uid` up with `lookup` (which may block: NSS) and remembers the answer when the
    /// file allows it (see the type's doc).
    pub fn lookup(&self, uid: u32, lookup: impl FnOnce(u32) -> Option<String>) -> Option<String> {
        let before = std::fs::metadata(&self.file).ok();
        let at = Instant::now();
        let name = lookup(uid);
        let after = std::fs::metadata(&self.file).ok();
        if let (Some(b), Some(a)) = (before, after) {
            let file = Identity::of(&b);
            if file == Identity::of(&a) && Identity::settled(&b) {
                let mut names = self.names.lock().unwrap_or_else(|p| p.into_inner());
                if names.len() >= NAME_CACHE_MAX {
                    names.clear();
                }
                let name = name.clone();
                names.insert(uid, Named { file, at, name });
            }
        }
        name
    }
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

    /// A passwd file as a test's NSS: the name the lookup returns is the file's first line.
    fn nss(file: &Path) -> impl Fn(u32) -> Option<String> + '_ {
        move |_| {
            std::fs::read_to_string(file)
                .ok()
                .and_then(|s| s.lines().next().map(str::to_string))
        }
    }

    /// Makes the file look a second old, as /etc/passwd is between edits: its ctime cannot be
    /// set, so the test waits for it.
    fn settle() {
        std::thread::sleep(crate::policy_cache::SETTLE + Duration::from_millis(50));
    }

    #[test]
    fn a_renamed_uid_is_seen_at_once() {
        // The administrator renames uid 1001 from alice to bob (and makes another account
        // alice): the next connection of uid 1001 must be bob's, not alice's from the cache.
        let d = tempfile::tempdir().unwrap();
        let passwd = d.path().join("passwd");
        std::fs::write(&passwd, "alice\n").unwrap();
        settle();
        let cache = NameCache::new(&passwd, Duration::from_secs(3600));
        assert_eq!(cache.get(1001), None);
        assert_eq!(cache.lookup(1001, nss(&passwd)).as_deref(), Some("alice"));
        assert_eq!(cache.get(1001), Some(Some("alice".into())));
        // In place, same size, within the same second: the ctime moves all the same.
        std::fs::write(&passwd, "bobby\n").unwrap();
        assert_eq!(cache.get(1001), None, "an edited passwd is a miss");
        // Too fresh to be remembered: a second write in the same tick could hide.
        assert_eq!(cache.lookup(1001, nss(&passwd)).as_deref(), Some("bobby"));
        assert_eq!(cache.get(1001), None);
        // Replaced by rename, as usermod and vipw do.
        let new = d.path().join("passwd.new");
        std::fs::write(&new, "carol\n").unwrap();
        settle();
        assert_eq!(cache.lookup(1001, nss(&passwd)).as_deref(), Some("bobby"));
        assert_eq!(cache.get(1001), Some(Some("bobby".into())));
        std::fs::rename(&new, &passwd).unwrap();
        assert_eq!(cache.get(1001), None, "a replaced passwd is a miss");
    }

    #[test]
    fn a_name_changed_elsewhere_is_seen_after_the_ttl() {
        // LDAP or SSSD: /etc/passwd does not move, the name does.
        let d = tempfile::tempdir().unwrap();
        let passwd = d.path().join("passwd");
        std::fs::write(&passwd, "").unwrap();
        settle();
        let cache = NameCache::new(&passwd, Duration::from_millis(200));
        assert_eq!(
            cache.lookup(7, |_| Some("alice".into())).as_deref(),
            Some("alice")
        );
        assert_eq!(cache.get(7), Some(Some("alice".into())));
        assert_eq!(cache.get(8), None, "names are per uid");
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(cache.get(7), None);
        // No name is remembered too (a uid known to the policy by number alone).
        assert_eq!(cache.lookup(8, |_| None), None);
        assert_eq!(cache.get(8), Some(None));
        // Without the file nothing is remembered: every connection asks NSS.
        let cache = NameCache::new(&d.path().join("missing"), Duration::from_secs(60));
        assert_eq!(
            cache.lookup(7, |_| Some("alice".into())).as_deref(),
            Some("alice")
        );
        assert_eq!(cache.get(7), None);
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
