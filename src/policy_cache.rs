//! The compiled policy: what the runtime needs of the policy file, kept in a root-only cache
//! so that neither a passthrough (`start`, `kill`, `delete`, `state`, …) nor a create pays for
//! parsing every user's table.
//!
//! A create or exec that finds no usable entry parses the whole file, as before, and then
//! writes one: the file's identity (device, inode, size, mtime and ctime to the nanosecond),
//! its sha256, the runc that create resolved, the policy without `[users]` and each user's
//! table on its own. The next create with the same identity parses the small part and the
//! owner's table only; a passthrough reads the first lines and execs runc.
//!
//! Why this is safe:
//! - A changed policy is seen on the very next create: any write changes the ctime, which no
//!   caller can set, and a replaced file has another inode. An entry is written only for a
//!   file whose ctime is at least [`SETTLE`] old and unchanged while it was read, so that a
//!   second write within the same timestamp tick cannot leave the identity unchanged.
//! - A broken policy fails closed on create: its identity is new, so it is parsed in full
//!   and refused. A passthrough with no matching entry reads `[runtime] runc` leniently, as
//!   before, so a broken policy never blocks stop, kill or delete.
//! - Only root can make labgpu believe an entry: the cache lives in
//!   `/run/labgpu/policy-cache`, opened component by component without following symlinks,
//!   and the directories and the entry must be owned by root and writable by nobody else.
//!   Users (and their containers' root) cannot write there; whoever can could as well
//!   rewrite the policy itself.
//! - Anything unexpected in an entry (a short file, a bad number, a table that does not
//!   parse) makes it a miss, never an error.

use std::ffi::CString;
use std::fs::{File, Metadata};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};

use crate::policy::{hex, Policy, PolicyError, UserPolicy};

/// Where the cache lives: root's, on the tmpfs /run on a systemd host (gone at reboot).
pub const CACHE_PARENT: &str = "/run/labgpu";
pub const CACHE_DIR: &str = "policy-cache";

/// How old a policy's ctime must be before an entry is written for it (see the module doc).
pub const SETTLE: Duration = Duration::from_secs(1);

const MAGIC: &str = "labgpu-policy-cache 1";
const END: &str = "end\n";

/// The fields of a file's stat that any change to it moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Identity([i64; 7]);

impl Identity {
    pub(crate) fn of(m: &Metadata) -> Identity {
        Identity([
            m.dev() as i64,
            m.ino() as i64,
            m.size() as i64,
            m.mtime(),
            m.mtime_nsec(),
            m.ctime(),
            m.ctime_nsec(),
        ])
    }

    pub(crate) fn line(&self) -> String {
        let v: Vec<String> = self.0.iter().map(i64::to_string).collect();
        v.join(" ")
    }

    pub(crate) fn parse(line: &str) -> Option<Identity> {
        let ids: Vec<i64> = line
            .split(' ')
            .map(str::parse)
            .collect::<Result<_, _>>()
            .ok()?;
        Some(Identity(ids.try_into().ok()?))
    }

    /// Whether an entry may be written for a file with this stat (see the module doc).
    pub(crate) fn settled(m: &Metadata) -> bool {
        let ctime = SystemTime::UNIX_EPOCH
            + Duration::new(
                m.ctime().max(0) as u64,
                m.ctime_nsec().clamp(0, 999_999_999) as u32,
            );
        SystemTime::now()
            .duration_since(ctime)
            .is_ok_and(|age| age >= SETTLE)
    }
}

/// Where the entry for the policy at `policy_path` lives (for tests and `labgpu` admins
/// wondering what is in /run/labgpu).
pub fn entry_path(policy_path: &Path) -> PathBuf {
    Path::new(CACHE_PARENT)
        .join(CACHE_DIR)
        .join(entry_name(policy_path))
}

/// The entry's file name: one entry per policy path (LABGPU_POLICY may name several).
fn entry_name(policy_path: &Path) -> String {
    named(policy_path, "cache")
}

/// An entry's file name for the file at `path`, of kind `ext`.
pub(crate) fn named(path: &Path, ext: &str) -> String {
    let digest = Sha256::digest(path.as_os_str().as_bytes());
    format!("{}.{ext}", &hex(&digest)[..32])
}

/// The policy as the runtime sees it: in full after a parse, or without the users' tables
/// when it came from the cache, each added by [`RuntimePolicy::with_user`] when needed.
pub struct RuntimePolicy {
    pub policy: Policy,
    /// The cached users' section, when the policy came from the cache.
    users: Option<UserTables>,
    /// What a full parse read, for [`RuntimePolicy::remember`] to write an entry from.
    parsed: Option<Parsed>,
}

struct Parsed {
    identity: Identity,
    bytes: Vec<u8>,
}

/// `name len\n<toml>` records, as written by [`compile`].
struct UserTables(Vec<u8>);

impl UserTables {
    fn find(&self, name: &str) -> Option<&[u8]> {
        let mut rest = &self.0[..];
        while !rest.is_empty() {
            let nl = rest.iter().position(|&b| b == b'\n')?;
            let head = std::str::from_utf8(&rest[..nl]).ok()?;
            let (n, len) = head.split_once(' ')?;
            let len: usize = len.parse().ok()?;
            let body = rest.get(nl + 1..nl + 1 + len)?;
            if n == name {
                return Some(body);
            }
            rest = &rest[nl + 1 + len..];
        }
        None
    }
}

impl RuntimePolicy {
    /// The policy at `path`: from the cache when an entry matches the file's identity, else
    /// parsed in full (a broken file is refused here, as by [`Policy::load`]).
    pub fn load(path: &Path) -> Result<RuntimePolicy, PolicyError> {
        if let Some(hit) = std::fs::metadata(path)
            .ok()
            .and_then(|m| from_cache(path, Identity::of(&m)))
        {
            return Ok(hit);
        }
        let read_err = |cause| PolicyError::Read {
            path: path.to_path_buf(),
            cause,
        };
        let mut file = File::open(path).map_err(read_err)?;
        let before = file.metadata().map_err(read_err)?;
        let mut bytes = Vec::with_capacity(before.len() as usize);
        file.read_to_end(&mut bytes).map_err(read_err)?;
        let policy = Policy::parse(path, &bytes)?;
        let after = file.metadata().map_err(read_err)?;
        let identity = Identity::of(&after);
        let parsed = (identity == Identity::of(&before) && Identity::settled(&after))
            .then_some(Parsed { identity, bytes });
        Ok(RuntimePolicy {
            policy,
            users: None,
            parsed,
        })
    }

    /// Makes `name`'s `[users]` table present in `self.policy` when the policy came from the
    /// cache (after a full parse every user is there already). A damaged entry falls back to
    /// the full parse.
    pub fn with_user(&mut self, name: &str) -> Result<(), PolicyError> {
        let Some(users) = &self.users else {
            return Ok(());
        };
        let Some(body) = users.find(name) else {
            return Ok(()); // not a user of this policy: the callers refuse as before
        };
        match parse_user(body) {
            Some(user) => {
                self.policy.users.insert(name.to_string(), user);
                Ok(())
            }
            None => {
                *self = RuntimePolicy {
                    policy: Policy::load(&self.policy.path)?,
                    users: None,
                    parsed: None,
                };
                Ok(())
            }
        }
    }

    /// Makes every user's table present: for the checks that compare the owner with all
    /// other users (a user namespace's subordinate ids must be nobody's id). A policy from
    /// the cache is parsed in full.
    pub fn with_all_users(&mut self) -> Result<(), PolicyError> {
        if self.users.is_some() {
            *self = RuntimePolicy {
                policy: Policy::load(&self.policy.path)?,
                users: None,
                parsed: None,
            };
        }
        Ok(())
    }

    /// After a full parse of a settled file, writes its entry with the `runc` that was
    /// resolved for it. Best effort: a cache that cannot be written costs speed only.
    pub fn remember(&self, runc: &Path) {
        if let Some(parsed) = &self.parsed {
            let _ = store(&self.policy, parsed, runc);
        }
    }

    /// Whether this policy came from the cache (for tests and the benchmark's sanity checks).
    pub fn from_cache(&self) -> bool {
        self.users.is_some()
    }
}

fn parse_user(body: &[u8]) -> Option<UserPolicy> {
    let text = std::str::from_utf8(body).ok()?;
    let table: toml::Table = toml::from_str(text).ok()?;
    table.try_into().ok()
}

/// The runc a create resolved for the policy at `path` as it is now, if the cache has it and
/// it is still a file. `None` is a miss: the caller reads the policy itself.
pub fn cached_runc(path: &Path) -> Option<PathBuf> {
    let identity = Identity::of(&std::fs::metadata(path).ok()?);
    let mut file = open_entry(path)?;
    // The head lines fit in one page; the users' tables are not read.
    let mut head = [0u8; 4096];
    let n = read_full(&mut file, &mut head)?;
    let head = Head::parse(&head[..n])?;
    (head.identity == identity && head.runc.is_file()).then_some(head.runc)
}

fn read_full(file: &mut File, buf: &mut [u8]) -> Option<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
    Some(n)
}

/// The first lines of an entry: magic, identity, sha256, runc, sizes.
struct Head {
    identity: Identity,
    sha256: String,
    runc: PathBuf,
    header_len: usize,
    /// Offset of the policy-without-users TOML in the entry.
    body_at: usize,
}

impl Head {
    fn parse(bytes: &[u8]) -> Option<Head> {
        // The byte after the fifth newline starts the policy without users.
        let body_at = bytes
            .iter()
            .enumerate()
            .filter(|(_, &b)| b == b'\n')
            .nth(4)?
            .0
            + 1;
        let mut lines = bytes[..body_at - 1].split(|&b| b == b'\n');
        let mut next = || std::str::from_utf8(lines.next()?).ok();
        if next()? != MAGIC {
            return None;
        }
        let identity = Identity::parse(next()?)?;
        let sha256 = next()?.to_string();
        let runc = PathBuf::from(next()?);
        let header_len = next()?.parse().ok()?;
        if sha256.len() != 64 || !runc.is_absolute() {
            return None;
        }
        Some(Head {
            identity,
            sha256,
            runc,
            header_len,
            body_at,
        })
    }
}

fn from_cache(path: &Path, identity: Identity) -> Option<RuntimePolicy> {
    let mut file = open_entry(path)?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).ok()?;
    let head = Head::parse(&bytes)?;
    if head.identity != identity || !bytes.ends_with(END.as_bytes()) {
        return None;
    }
    let header_end = head.body_at.checked_add(head.header_len)?;
    let header = std::str::from_utf8(bytes.get(head.body_at..header_end)?).ok()?;
    let users = bytes.get(header_end..bytes.len() - END.len())?.to_vec();
    let table: toml::Table = toml::from_str(header).ok()?;
    let mut policy: Policy = table.try_into().ok()?;
    policy.sha256 = head.sha256;
    policy.path = path.to_path_buf();
    Some(RuntimePolicy {
        policy,
        users: Some(UserTables(users)),
        parsed: None,
    })
}

/// The entry for `policy_path`, if root alone can have written it: each of /run/labgpu, its
/// cache directory and the entry opened without following a symlink, and each owned by root
/// and not writable by group or others.
fn open_entry(policy_path: &Path) -> Option<File> {
    open_named(&entry_name(policy_path))
}

/// The entry called `name`, checked as [`open_entry`] says.
pub(crate) fn open_named(name: &str) -> Option<File> {
    let parent = open_checked(None, CACHE_PARENT, true)?;
    let dir = open_checked(Some(&parent), CACHE_DIR, true)?;
    let entry = open_checked(Some(&dir), name, false)?;
    Some(File::from(entry))
}

fn open_checked(at: Option<&OwnedFd>, name: &str, dir: bool) -> Option<OwnedFd> {
    let mut flags = libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    if dir {
        flags |= libc::O_DIRECTORY;
    }
    let c = CString::new(name).ok()?;
    let dirfd = at.map_or(libc::AT_FDCWD, |fd| fd.as_raw_fd());
    // SAFETY: `c` is a NUL-terminated path and `dirfd` an open directory or AT_FDCWD.
    let fd = unsafe { libc::openat(dirfd, c.as_ptr(), flags) };
    if fd < 0 {
        return None;
    }
    // SAFETY: `fd` was just opened and is owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let meta = nix::sys::stat::fstat(fd.as_raw_fd()).ok()?;
    let kind = meta.st_mode & libc::S_IFMT;
    let kind_ok = kind == if dir { libc::S_IFDIR } else { libc::S_IFREG };
    (kind_ok && meta.st_uid == 0 && meta.st_mode & 0o022 == 0).then_some(fd)
}

/// Opens (creating, mode 0700) the cache directory, refusing one that is not root's alone.
fn open_dir_for_writing() -> Option<OwnedFd> {
    let _ = std::fs::create_dir(CACHE_PARENT);
    let parent = open_checked(None, CACHE_PARENT, true)?;
    let c = CString::new(CACHE_DIR).ok()?;
    // SAFETY: a NUL-terminated name relative to an open directory.
    unsafe { libc::mkdirat(parent.as_raw_fd(), c.as_ptr(), 0o700) };
    open_checked(Some(&parent), CACHE_DIR, true)
}

/// The entry's bytes: head lines, the policy without `[users]`, each user's table, "end".
fn compile(policy: &Policy, parsed: &Parsed, runc: &Path) -> Option<Vec<u8>> {
    let runc = runc.to_str().filter(|r| !r.contains('\n'))?;
    let text = std::str::from_utf8(&parsed.bytes).ok()?;
    let mut table: toml::Table = toml::from_str(text).ok()?;
    let users = match table.remove("users") {
        Some(toml::Value::Table(t)) => t,
        None => toml::Table::new(),
        Some(_) => return None,
    };
    let header = toml::to_string(&table).ok()?;
    let mut out = format!(
        "{MAGIC}\n{}\n{}\n{runc}\n{}\n{header}",
        parsed.identity.line(),
        policy.sha256,
        header.len()
    )
    .into_bytes();
    for (name, user) in users {
        let toml::Value::Table(user) = user else {
            return None;
        };
        let body = toml::to_string(&user).ok()?;
        out.extend_from_slice(format!("{name} {}\n{body}", body.len()).as_bytes());
    }
    out.extend_from_slice(END.as_bytes());
    Some(out)
}

fn store(policy: &Policy, parsed: &Parsed, runc: &Path) -> Option<()> {
    let bytes = compile(policy, parsed, runc)?;
    write_named(&entry_name(&policy.path), &bytes)
}

/// Writes the entry `name` atomically (a temp file renamed over it). Best effort.
pub(crate) fn write_named(name: &str, bytes: &[u8]) -> Option<()> {
    let dir = open_dir_for_writing()?;
    let tmp = format!(".{name}.{}", std::process::id());
    let c_tmp = CString::new(tmp.as_str()).ok()?;
    let c_name = CString::new(name).ok()?;
    let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    // SAFETY: NUL-terminated names relative to an open directory.
    let fd = unsafe { libc::openat(dir.as_raw_fd(), c_tmp.as_ptr(), flags, 0o600) };
    if fd < 0 {
        return None;
    }
    // SAFETY: `fd` was just opened and is owned by nothing else.
    let mut file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    let written = file.write_all(bytes).is_ok();
    drop(file);
    // SAFETY: as above; renameat replaces the entry atomically, so readers see old or new.
    let ok = written
        && unsafe {
            libc::renameat(
                dir.as_raw_fd(),
                c_tmp.as_ptr(),
                dir.as_raw_fd(),
                c_name.as_ptr(),
            )
        } == 0;
    if !ok {
        // SAFETY: as above.
        unsafe { libc::unlinkat(dir.as_raw_fd(), c_tmp.as_ptr(), 0) };
        return None;
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = r#"version = 1
[runtime]
runc = "/bin/true"
unlabeled = "no-gpu"
[gpus]
dev_root = "/tmp/labgpu-test-dev"
[defaults]
capabilities = ["CAP_NET_RAW"]
bind_allow = ["/srv/shared"]
[users.alice]
uid = 1001
gid = 1001
gpus = [0, 1]
bind_allow = ["/srv/alice"]
[users.bob]
gpus = [2]
[users."carol"]
"#;

    fn parsed(text: &str) -> (Policy, Parsed) {
        let policy = Policy::parse(Path::new("/etc/labgpu/policy.toml"), text.as_bytes()).unwrap();
        let parsed = Parsed {
            identity: Identity([1, 2, 3, 4, 5, 6, 7]),
            bytes: text.as_bytes().to_vec(),
        };
        (policy, parsed)
    }

    /// Reads an entry the way `from_cache` does, minus the file system.
    fn reload(bytes: &[u8]) -> RuntimePolicy {
        let head = Head::parse(bytes).unwrap();
        assert_eq!(head.identity, Identity([1, 2, 3, 4, 5, 6, 7]));
        let end = head.body_at + head.header_len;
        let table: toml::Table =
            toml::from_str(std::str::from_utf8(&bytes[head.body_at..end]).unwrap()).unwrap();
        let mut policy: Policy = table.try_into().unwrap();
        policy.sha256 = head.sha256;
        policy.path = PathBuf::from("/etc/labgpu/policy.toml");
        RuntimePolicy {
            policy,
            users: Some(UserTables(bytes[end..bytes.len() - END.len()].to_vec())),
            parsed: None,
        }
    }

    #[test]
    fn an_entry_gives_back_the_policy_one_user_at_a_time() {
        let (full, p) = parsed(POLICY);
        let bytes = compile(&full, &p, Path::new("/usr/bin/runc")).unwrap();
        let mut rp = reload(&bytes);
        assert!(rp.policy.users.is_empty());
        assert_eq!(rp.policy.sha256, full.sha256);
        assert_eq!(
            format!("{:?}", rp.policy.defaults),
            format!("{:?}", full.defaults)
        );
        assert_eq!(
            format!("{:?}", rp.policy.runtime),
            format!("{:?}", full.runtime)
        );
        for name in ["alice", "bob", "carol"] {
            rp.with_user(name).unwrap();
            assert_eq!(
                format!("{:?}", rp.policy.users[name]),
                format!("{:?}", full.users[name]),
                "{name}"
            );
        }
        rp.with_user("mallory").unwrap();
        assert!(rp.policy.user("mallory").is_none());
        assert_eq!(
            Head::parse(&bytes).unwrap().runc,
            Path::new("/usr/bin/runc")
        );
    }

    #[test]
    fn a_damaged_head_is_a_miss() {
        let (full, p) = parsed(POLICY);
        let bytes = compile(&full, &p, Path::new("/usr/bin/runc")).unwrap();
        assert!(Head::parse(&bytes[..20]).is_none());
        let mut wrong = bytes.clone();
        wrong[0] = b'X';
        assert!(Head::parse(&wrong).is_none());
        let text = String::from_utf8(bytes).unwrap();
        assert!(Head::parse(text.replacen(" 2 ", " x ", 1).as_bytes()).is_none());
        assert!(Head::parse(text.replacen("/usr/bin/runc", "runc", 1).as_bytes()).is_none());
    }

    #[test]
    fn a_runc_path_with_a_newline_is_not_cached() {
        let (full, p) = parsed(POLICY);
        assert!(compile(&full, &p, Path::new("/usr/bin/ru\nnc")).is_none());
    }

    #[test]
    fn user_tables_stop_at_a_truncated_record() {
        let t = UserTables(b"alice 6\nuid=1\nbob 40\nuid=2\n".to_vec());
        assert_eq!(t.find("alice"), Some(&b"uid=1\n"[..]));
        assert_eq!(t.find("bob"), None);
    }

    #[test]
    fn entry_names_differ_by_policy_path() {
        assert_ne!(
            entry_name(Path::new("/etc/labgpu/policy.toml")),
            entry_name(Path::new("/tmp/x/policy.toml"))
        );
    }
}
