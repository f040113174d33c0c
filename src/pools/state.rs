//! The pool state: one JSON file of allocations per policy file, in a directory only root can
//! write (`/run/labgpu/pools/<hash of the policy path>/`), changed only under an exclusive
//! `flock` of its `lock` file and replaced atomically (temp file, fsync, rename, fsync of the
//! directory), so that a crash at any point leaves the old state or the new one.
//!
//! Beside it, one empty `held-<container id>` marker per container that holds pool GPUs:
//! `delete` (a passthrough, kept cheap) looks for it with one stat and touches the state only
//! when it is there.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::live::ProcId;
use super::PoolError;

/// Where every policy's pool state lives: root's, on /run (a tmpfs: gone at reboot, as are
/// the containers it describes).
pub const STATE_PARENT: &str = "/run/labgpu";
const POOLS: &str = "pools";
const STATE: &str = "state.json";
const LOCK: &str = "lock";
const MARKER: &str = "held-";
/// The state file's format.
const VERSION: u32 = 1;

/// The allocations of one policy's pools.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    pub version: u32,
    pub entries: Vec<Entry>,
    /// Containers `labgpu reclaim` stopped, by reason (`idle`, `max_runtime`): the metric.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub reclaimed: BTreeMap<String, u64>,
}

/// One pool GPU held by one container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    pub pool: String,
    /// The GPU as `[pools.NAME] gpus` names it.
    pub gpu: String,
    /// Its device minor (/dev/nvidia<minor>), for `labgpu gpus` and the device audit.
    pub minor: u32,
    pub container: String,
    /// runc's state root of the container (its `--root`): where its init is found.
    pub runc_root: PathBuf,
    pub owner: String,
    /// Seconds since the epoch when the GPU was allocated.
    pub since: u64,
    /// The labgpu process doing the create (it becomes runc create, same pid): the entry is
    /// live while it runs, before runc has written the container's state.
    pub creator: ProcId,
    /// When `labgpu reclaim` last saw the GPU used (seconds since the epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_busy: Option<u64>,
}

/// The state directory of one policy file.
#[derive(Debug, Clone)]
pub struct Store {
    /// The parent that is configuration (trusted as named, like a policy path).
    parent: PathBuf,
    /// The components below it, each opened without following symlinks.
    below: Vec<String>,
}

/// The state, read and locked: changes are written by `save`; the lock goes with the value.
pub struct Locked {
    dir: OwnedFd,
    path: PathBuf,
    _lock: Flock<File>,
    pub state: State,
}

impl Store {
    /// The store of the policy at `policy_path`.
    pub fn for_policy(policy_path: &Path) -> Store {
        let digest = Sha256::digest(policy_path.as_os_str().as_bytes());
        let name = crate::policy::hex(&digest[..16]);
        Store {
            parent: PathBuf::from(STATE_PARENT),
            below: vec![POOLS.to_string(), name],
        }
    }

    /// A store directly in `dir` (tests; `dir`'s parent must exist).
    pub fn at(dir: &Path) -> Store {
        Store {
            parent: dir.parent().unwrap_or(Path::new("/")).to_path_buf(),
            below: vec![dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()],
        }
    }

    pub fn dir(&self) -> PathBuf {
        self.below
            .iter()
            .fold(self.parent.clone(), |p, c| p.join(c))
    }

    fn marker(&self, id: &str) -> PathBuf {
        self.dir().join(format!("{MARKER}{id}"))
    }

    /// Whether container `id` may hold pool GPUs: one stat, for `delete`.
    pub fn may_hold(&self, id: &str) -> bool {
        std::fs::symlink_metadata(self.marker(id)).is_ok()
    }

    /// The state under an exclusive lock, the directory made (root's, 0700) if missing.
    pub fn lock(&self) -> Result<Locked, PoolError> {
        let dir = self.open_dir(true)?.expect("created");
        self.locked(dir, FlockArg::LockExclusive)
    }

    /// The state as it is now (a shared lock while reading); empty when there is none yet.
    pub fn read(&self) -> Result<State, PoolError> {
        match self.open_dir(false)? {
            Some(dir) => Ok(self.locked(dir, FlockArg::LockShared)?.state),
            None => Ok(State::default()),
        }
    }

    fn locked(&self, dir: OwnedFd, how: FlockArg) -> Result<Locked, PoolError> {
        let path = self.dir();
        let io = |what: &str, cause: std::io::Error| PoolError::Io {
            path: path.join(what),
            cause,
        };
        let lock = File::from(
            openat(&dir, LOCK, libc::O_RDWR | libc::O_CREAT, 0o600).map_err(|e| io(LOCK, e))?,
        );
        let lock = Flock::lock(lock, how).map_err(|(_, e)| io(LOCK, e.into()))?;
        let state = match openat(&dir, STATE, libc::O_RDONLY, 0) {
            Ok(fd) => {
                let mut bytes = Vec::new();
                File::from(fd)
                    .read_to_end(&mut bytes)
                    .map_err(|e| io(STATE, e))?;
                serde_json::from_slice(&bytes).map_err(|e| PoolError::Malformed {
                    path: path.join(STATE),
                    reason: e.to_string(),
                })?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => State::default(),
            Err(e) => return Err(io(STATE, e)),
        };
        Ok(Locked {
            dir,
            path,
            _lock: lock,
            state,
        })
    }

    /// The directory, each component below the parent opened without following a symlink
    /// and believed only when it is ours and writable by no one else; made when `create`.
    /// `None` when it does not exist and `create` is false.
    fn open_dir(&self, create: bool) -> Result<Option<OwnedFd>, PoolError> {
        if create {
            let _ = std::fs::create_dir(&self.parent);
        }
        let mut path = self.parent.clone();
        let mut dir = match open_path_dir(&self.parent) {
            Ok(fd) => fd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !create => return Ok(None),
            Err(cause) => return Err(PoolError::Io { path, cause }),
        };
        trusted(&dir, &path)?;
        for name in &self.below {
            path.push(name);
            if create {
                let c = cname(name);
                // SAFETY: a NUL-terminated name relative to an open directory.
                unsafe { libc::mkdirat(dir.as_raw_fd(), c.as_ptr(), 0o700) };
            }
            dir = match openat(&dir, name, libc::O_RDONLY | libc::O_DIRECTORY, 0) {
                Ok(fd) => fd,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && !create => return Ok(None),
                Err(cause) => return Err(PoolError::Io { path, cause }),
            };
            trusted(&dir, &path)?;
        }
        Ok(Some(dir))
    }
}

impl Locked {
    /// Writes the state atomically: a reader (or a crash) sees the old file or the new one.
    pub fn save(&mut self) -> Result<(), PoolError> {
        self.state.version = VERSION;
        let tmp = format!(".{STATE}.{}", std::process::id());
        let io = |cause| PoolError::Io {
            path: self.path.join(STATE),
            cause,
        };
        let bytes = serde_json::to_vec_pretty(&self.state).map_err(|e| io(e.into()))?;
        let (c_tmp, c_state) = (cname(&tmp), cname(STATE));
        let _ = unlinkat(&self.dir, &c_tmp);
        let fd = openat(
            &self.dir,
            &tmp,
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL,
            0o600,
        )
        .map_err(io)?;
        let mut file = File::from(fd);
        let written = file.write_all(&bytes).and_then(|_| file.sync_all());
        drop(file);
        let renamed = written.and_then(|_| {
            // SAFETY: NUL-terminated names relative to an open directory.
            let rc = unsafe {
                libc::renameat(
                    self.dir.as_raw_fd(),
                    c_tmp.as_ptr(),
                    self.dir.as_raw_fd(),
                    c_state.as_ptr(),
                )
            };
            if rc == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
        if let Err(e) = renamed {
            let _ = unlinkat(&self.dir, &c_tmp);
            return Err(io(e));
        }
        nix::unistd::fsync(self.dir.as_raw_fd()).map_err(|e| io(e.into()))
    }

    /// Marks container `id` as holding pool GPUs (see the module doc).
    pub fn mark(&self, id: &str) -> Result<(), PoolError> {
        let name = format!("{MARKER}{id}");
        openat(&self.dir, &name, libc::O_WRONLY | libc::O_CREAT, 0o600)
            .map(drop)
            .map_err(|cause| PoolError::Io {
                path: self.path.join(&name),
                cause,
            })
    }

    /// Removes the markers of containers that hold nothing any more.
    pub fn unmark_released(&self, ids: &[String]) {
        for id in ids {
            if !self.state.entries.iter().any(|e| &e.container == id) {
                let _ = unlinkat(&self.dir, &cname(&format!("{MARKER}{id}")));
            }
        }
    }
}

fn cname(name: &str) -> CString {
    CString::new(name).unwrap_or_default()
}

fn open_path_dir(path: &Path) -> std::io::Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC;
    // SAFETY: a NUL-terminated path.
    let fd = unsafe { libc::open(c.as_ptr(), flags) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened and is owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `openat` without following a symlink in `name`.
fn openat(dir: &OwnedFd, name: &str, flags: i32, mode: libc::c_uint) -> std::io::Result<OwnedFd> {
    let c = cname(name);
    let flags = flags | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    // SAFETY: a NUL-terminated name relative to an open directory.
    let fd = unsafe { libc::openat(dir.as_raw_fd(), c.as_ptr(), flags, mode) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened and is owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn unlinkat(dir: &OwnedFd, name: &CString) -> std::io::Result<()> {
    // SAFETY: a NUL-terminated name relative to an open directory.
    if unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), 0) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// A directory is believed when this process's user (root, for the runtime) owns it and no
/// one else can write to it: whoever else could would choose who holds which GPU.
fn trusted(dir: &OwnedFd, path: &Path) -> Result<(), PoolError> {
    let meta = nix::sys::stat::fstat(dir.as_raw_fd()).map_err(|e| PoolError::Io {
        path: path.to_path_buf(),
        cause: e.into(),
    })?;
    let me = nix::unistd::geteuid().as_raw();
    if meta.st_uid != me || meta.st_mode & 0o022 != 0 {
        return Err(PoolError::Untrusted {
            path: path.to_path_buf(),
            uid: meta.st_uid,
            mode: meta.st_mode & 0o7777,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, gpu: &str) -> Entry {
        Entry {
            pool: "shared".into(),
            gpu: gpu.into(),
            minor: gpu.parse().unwrap_or(0),
            container: id.into(),
            runc_root: "/run/runc".into(),
            owner: "alice".into(),
            since: 1,
            creator: ProcId { pid: 1, start: 2 },
            last_busy: None,
        }
    }

    #[test]
    fn saved_state_reads_back_and_markers_follow_entries() {
        let d = tempfile::tempdir().unwrap();
        let store = Store::at(&d.path().join("p"));
        assert_eq!(store.read().unwrap(), State::default());
        let mut l = store.lock().unwrap();
        l.state.entries.push(entry("c1", "0"));
        l.save().unwrap();
        l.mark("c1").unwrap();
        drop(l);
        assert!(store.may_hold("c1"));
        assert!(!store.may_hold("c2"));
        assert_eq!(store.read().unwrap().entries, [entry("c1", "0")]);
        let mut l = store.lock().unwrap();
        l.state.entries.clear();
        l.save().unwrap();
        l.unmark_released(&["c1".into()]);
        drop(l);
        assert!(!store.may_hold("c1"));
        let left: Vec<_> = std::fs::read_dir(store.dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(
            left.iter().all(|n| n == "lock" || n == "state.json"),
            "{left:?}"
        );
    }

    #[test]
    fn a_directory_others_can_write_is_not_believed() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("p");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = Store::at(&dir).lock().err().unwrap().to_string();
        assert!(err.contains("writable by no one else"), "{err}");
    }

    #[test]
    fn a_symlinked_state_directory_is_refused() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("elsewhere")).unwrap();
        std::os::unix::fs::symlink(d.path().join("elsewhere"), d.path().join("p")).unwrap();
        assert!(Store::at(&d.path().join("p")).lock().is_err());
    }

    #[test]
    fn a_malformed_state_is_an_error_naming_the_file() {
        let d = tempfile::tempdir().unwrap();
        let store = Store::at(&d.path().join("p"));
        drop(store.lock().unwrap());
        std::fs::write(store.dir().join("state.json"), "{").unwrap();
        let err = store.lock().err().unwrap().to_string();
        assert!(err.contains("state.json"), "{err}");
    }

    #[test]
    fn stores_differ_by_policy_path() {
        let a = Store::for_policy(Path::new("/etc/labgpu/policy.toml")).dir();
        let b = Store::for_policy(Path::new("/tmp/x/policy.toml")).dir();
        assert_ne!(a, b);
        assert!(a.starts_with("/run/labgpu/pools"), "{}", a.display());
    }
}
