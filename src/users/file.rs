//! Replacing the policy file safely: one editor at a time (a lock file next to it), the file
//! read again under the lock, and the new text written to a temporary file in the same
//! directory, with the old file's mode and owner, synced and renamed over it. Readers (the
//! runtime, the proxy) see the old file or the new one, never half of either.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("cannot read policy file {path}: {cause}")]
    Read {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("cannot lock {path}: {cause}")]
    Lock {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("cannot write policy file {path}: {cause}")]
    Write {
        path: PathBuf,
        cause: std::io::Error,
    },
}

/// The policy file, locked against other `labgpu user` edits while this one lasts.
pub struct Locked {
    /// The file itself (a symlinked policy is edited where it really is).
    pub path: PathBuf,
    _lock: Flock<File>,
}

/// Takes the edit lock of the policy at `path` (waiting for another editor to finish).
pub fn lock(path: &Path) -> Result<Locked, FileError> {
    let real = std::fs::canonicalize(path).map_err(|source| FileError::Read {
        path: path.to_path_buf(),
        cause: source,
    })?;
    let lock_path = lock_path(&real);
    let lock_err = |source| FileError::Lock {
        path: lock_path.clone(),
        cause: source,
    };
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&lock_path)
        .map_err(lock_err)?;
    let lock = Flock::lock(file, FlockArg::LockExclusive)
        .map_err(|(_, errno)| lock_err(std::io::Error::from(errno)))?;
    Ok(Locked {
        path: real,
        _lock: lock,
    })
}

/// `.policy.toml.lock` next to `policy.toml`: renaming the policy replaces its inode, so
/// the lock cannot be on the policy file itself.
fn lock_path(policy: &Path) -> PathBuf {
    let name = policy
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "policy".into());
    policy.with_file_name(format!(".{name}.lock"))
}

impl Locked {
    /// The file's text as it is now, under the lock.
    pub fn read(&self) -> Result<String, FileError> {
        std::fs::read_to_string(&self.path).map_err(|source| FileError::Read {
            path: self.path.clone(),
            cause: source,
        })
    }

    /// Replaces the file with `text`, keeping its mode and owner.
    pub fn replace(&self, text: &str) -> Result<(), FileError> {
        let write_err = |source| FileError::Write {
            path: self.path.clone(),
            cause: source,
        };
        let meta = std::fs::metadata(&self.path).map_err(write_err)?;
        let dir = self.path.parent().unwrap_or(Path::new("/"));
        let name = self
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = dir.join(format!(".{name}.labgpu-{}", std::process::id()));
        let result = (|| {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(&tmp)?;
            f.write_all(text.as_bytes())?;
            std::os::unix::fs::fchown(&f, Some(meta.uid()), Some(meta.gid()))?;
            f.set_permissions(std::fs::Permissions::from_mode(meta.mode() & 0o7777))?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.path)?;
            File::open(dir)?.sync_all()
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result.map_err(write_err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replace_keeps_mode_and_follows_a_symlinked_policy() {
        let d = tempfile::tempdir().unwrap();
        let real = d.path().join("real.toml");
        std::fs::write(&real, "version = 1\n").unwrap();
        std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o640)).unwrap();
        let link = d.path().join("policy.toml");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let locked = lock(&link).unwrap();
        assert_eq!(locked.read().unwrap(), "version = 1\n");
        locked.replace("version = 1\n# edited\n").unwrap();
        drop(locked);
        assert!(std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(
            std::fs::read_to_string(&real).unwrap(),
            "version = 1\n# edited\n"
        );
        assert_eq!(std::fs::metadata(&real).unwrap().mode() & 0o7777, 0o640);
        assert!(d.path().join(".real.toml.lock").exists());
        let left: Vec<_> = std::fs::read_dir(d.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().into_string().unwrap())
            .filter(|n| n.contains("labgpu-"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
        assert!(lock(&d.path().join("missing.toml")).is_err());
    }

    /// Two editors: the second waits for the first's lock.
    #[test]
    fn the_lock_is_exclusive() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("policy.toml");
        std::fs::write(&p, "version = 1\n").unwrap();
        let first = lock(&p).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let p2 = p.clone();
        let t = std::thread::spawn(move || {
            let _second = lock(&p2).unwrap();
            tx.send(()).unwrap();
        });
        assert!(rx
            .recv_timeout(std::time::Duration::from_millis(200))
            .is_err());
        drop(first);
        rx.recv_timeout(std::time::Duration::from_secs(5)).unwrap();
        t.join().unwrap();
    }
}
