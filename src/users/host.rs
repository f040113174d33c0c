//! What `labgpu user` does to the host besides the policy: host accounts looked up, a user's
//! mount sources created, and their login shell set.

use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::process::Command;

use nix::errno::Errno;
use nix::fcntl::{openat, OFlag};
use nix::sys::stat::{mkdirat, Mode};
use nix::unistd::{Uid, User};

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("{name} is not an account on this host: give --uid and --gid")]
    NoAccount { name: String },
    #[error("uid {uid} has no account on this host to take the group from: give --gid too")]
    NoGroup { uid: u32 },
    #[error("cannot create {path} for uid {uid}: {reason}")]
    MakeDir {
        path: PathBuf,
        uid: u32,
        reason: String,
    },
    #[error("no host account has uid {uid}, so there is no login shell to set")]
    NoLoginAccount { uid: u32 },
    #[error("the login shell {path} is not installed (install the labgpu package, or give --shell-path)")]
    NoShell { path: PathBuf },
    #[error("usermod -s {shell} {account} failed: {reason}")]
    Usermod {
        shell: PathBuf,
        account: String,
        reason: String,
    },
}

/// A host account's name, uid, primary gid and login shell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub shell: PathBuf,
}

impl From<User> for Account {
    fn from(u: User) -> Self {
        Account {
            name: u.name,
            uid: u.uid.as_raw(),
            gid: u.gid.as_raw(),
            shell: u.shell,
        }
    }
}

pub fn account_by_name(name: &str) -> Option<Account> {
    User::from_name(name).ok().flatten().map(Account::from)
}

pub fn account_by_uid(uid: u32) -> Option<Account> {
    User::from_uid(Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(Account::from)
}

/// The uid and gid to write for a new user: the options', else the host account's.
pub fn ids_for(name: &str, uid: Option<u32>, gid: Option<u32>) -> Result<(u32, u32), HostError> {
    match (uid, gid) {
        (Some(u), Some(g)) => Ok((u, g)),
        (Some(u), None) => account_by_uid(u)
            .map(|a| (u, a.gid))
            .ok_or(HostError::NoGroup { uid: u }),
        (None, g) => account_by_name(name)
            .map(|a| (a.uid, g.unwrap_or(a.gid)))
            .ok_or_else(|| HostError::NoAccount {
                name: name.to_string(),
            }),
    }
}

/// The host account a policy user logs in as: the one with their pinned uid, else the one
/// named like them.
pub fn login_account(name: &str, uid: Option<u32>) -> Option<Account> {
    match uid {
        Some(u) => account_by_uid(u),
        None => account_by_name(name),
    }
}

/// Creates `path` and any missing parents. Parents are root's (0755); `path` itself is the
/// user's (0700). Nothing is followed through a symlink that appears while this runs: the
/// existing part of the path is resolved once and walked again without following symlinks.
pub fn make_dir(path: &Path, uid: u32, gid: u32) -> Result<(), HostError> {
    let fail = |reason: String| HostError::MakeDir {
        path: path.to_path_buf(),
        uid,
        reason,
    };
    let (existing, missing) = split_existing(path);
    if missing.is_empty() {
        return Ok(());
    }
    if let Some(link) = foreign_symlink(&existing) {
        return Err(fail(format!(
            "{} is a symlink another user owns",
            link.display()
        )));
    }
    let real = std::fs::canonicalize(&existing).map_err(|e| fail(e.to_string()))?;
    let mut dir = open_dir_nofollow(&real).map_err(|e| fail(e.to_string()))?;
    for (i, name) in missing.iter().enumerate() {
        let last = i + 1 == missing.len();
        let mode = if last { 0o700 } else { 0o755 };
        match mkdirat(
            Some(dir.as_raw_fd()),
            name.as_os_str(),
            Mode::from_bits_truncate(mode),
        ) {
            Ok(()) => {}
            Err(Errno::EEXIST) => {
                return Err(fail(format!(
                    "{} appeared while it was being created",
                    name.to_string_lossy()
                )))
            }
            Err(e) => return Err(fail(e.to_string())),
        }
        let fd = openat(
            Some(dir.as_raw_fd()),
            name.as_os_str(),
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| fail(e.to_string()))?;
        // SAFETY: openat returned a fresh descriptor that nothing else owns.
        let next = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        // The umask may have narrowed mkdir's mode: set it exactly.
        next.set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(|e| fail(e.to_string()))?;
        if last {
            std::os::unix::fs::fchown(&next, Some(uid), Some(gid))
                .map_err(|e| fail(e.to_string()))?;
        }
        dir = next;
    }
    Ok(())
}

/// The first component of `path` that is a symlink not owned by root: a user could point it
/// anywhere (the new directory would then be made there, and given to the user).
fn foreign_symlink(path: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let mut at = PathBuf::from("/");
    for c in path.components() {
        let Component::Normal(name) = c else {
            continue;
        };
        at.push(name);
        let m = std::fs::symlink_metadata(&at).ok()?;
        if m.file_type().is_symlink() && m.uid() != 0 {
            return Some(at);
        }
        if m.file_type().is_symlink() {
            // A root-owned link: the admin's. Follow it for the components below.
            at = std::fs::canonicalize(&at).ok()?;
        }
    }
    None
}

/// The longest prefix of `path` that exists, and the names below it that do not.
fn split_existing(path: &Path) -> (PathBuf, Vec<PathBuf>) {
    let mut existing = path.to_path_buf();
    let mut missing = Vec::new();
    while std::fs::symlink_metadata(&existing).is_err() {
        match existing.file_name() {
            Some(n) => missing.push(PathBuf::from(n)),
            None => break,
        }
        if !existing.pop() {
            break;
        }
    }
    missing.reverse();
    (existing, missing)
}

/// Opens a symlink-free absolute path component by component, refusing any symlink.
fn open_dir_nofollow(path: &Path) -> std::io::Result<File> {
    let mut dir = File::open("/")?;
    for c in path.components() {
        let Component::Normal(name) = c else {
            continue;
        };
        let fd = openat(
            Some(dir.as_raw_fd()),
            name,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        // SAFETY: openat returned a fresh descriptor that nothing else owns.
        dir = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    }
    Ok(dir)
}

/// The labgpu-shell `--login` sets: the option's, else the one next to this labgpu (a
/// package installs both in /usr/bin), else /usr/bin/labgpu-shell.
pub fn shell_path(option: Option<&Path>) -> Result<PathBuf, HostError> {
    let path = match option {
        Some(p) => p.to_path_buf(),
        None => std::env::current_exe()
            .ok()
            .and_then(|exe| Some(exe.parent()?.join(crate::shell::SHELL_NAME)))
            .filter(|p| p.exists())
            .unwrap_or_else(|| PathBuf::from(crate::shell::SHELL_PATH)),
    };
    let executable =
        std::fs::metadata(&path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
    let named_right = crate::shell::is_login_shell_name(path.as_os_str());
    if !path.is_absolute() || !executable || !named_right {
        return Err(HostError::NoShell { path });
    }
    Ok(path)
}

/// Sets `account`'s login shell with usermod (which takes the passwd lock as every other
/// account tool does).
pub fn set_login_shell(account: &Account, shell: &Path) -> Result<(), HostError> {
    if account.shell == shell {
        return Ok(());
    }
    let failed = |reason: String| HostError::Usermod {
        shell: shell.to_path_buf(),
        account: account.name.clone(),
        reason,
    };
    let out = Command::new("usermod")
        .arg("-s")
        .arg(shell)
        .arg(&account.name)
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .output()
        .map_err(|e| failed(e.to_string()))?;
    if !out.status.success() {
        return Err(failed(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    Ok(())
}

/// Whether /etc/shells lists `shell` (chsh and some PAM setups refuse other shells).
pub fn in_etc_shells(shell: &Path) -> bool {
    std::fs::read("/etc/shells").is_ok_and(|text| {
        text.split(|b| *b == b'\n')
            .any(|l| OsStr::from_bytes(l.trim_ascii()) == shell.as_os_str())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn make_dir_creates_parents_for_root_and_the_leaf_for_the_user() {
        let d = tempfile::tempdir().unwrap();
        let leaf = d.path().join("data/users/alice");
        let (uid, gid) = (
            nix::unistd::getuid().as_raw(),
            nix::unistd::getgid().as_raw(),
        );
        make_dir(&leaf, uid, gid).unwrap();
        let m = std::fs::metadata(&leaf).unwrap();
        assert_eq!(m.mode() & 0o7777, 0o700);
        assert_eq!(m.uid(), uid);
        let parent = std::fs::metadata(d.path().join("data/users")).unwrap();
        assert_eq!(parent.mode() & 0o7777, 0o755);
        // Existing: left as it is.
        std::fs::set_permissions(&leaf, std::fs::Permissions::from_mode(0o750)).unwrap();
        make_dir(&leaf, uid, gid).unwrap();
        assert_eq!(std::fs::metadata(&leaf).unwrap().mode() & 0o7777, 0o750);
    }

    #[test]
    fn make_dir_creates_through_an_existing_symlink_only_where_it_points_now() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("real")).unwrap();
        std::os::unix::fs::symlink(d.path().join("real"), d.path().join("link")).unwrap();
        let (uid, gid) = (
            nix::unistd::getuid().as_raw(),
            nix::unistd::getgid().as_raw(),
        );
        make_dir(&d.path().join("link/bob"), uid, gid).unwrap();
        assert!(d.path().join("real/bob").is_dir());
    }

    #[test]
    fn existing_part_and_missing_names() {
        let d = tempfile::tempdir().unwrap();
        let (e, m) = split_existing(&d.path().join("a/b"));
        assert_eq!(e, d.path());
        assert_eq!(m, [PathBuf::from("a"), PathBuf::from("b")]);
    }

    #[test]
    fn ids_from_options_or_the_host() {
        assert_eq!(ids_for("x", Some(5), Some(6)).unwrap(), (5, 6));
        let root = ids_for("root", None, None).unwrap();
        assert_eq!(root, (0, 0));
        assert_eq!(ids_for("x", Some(0), None).unwrap(), (0, 0));
        assert!(matches!(
            ids_for("no-such-account-xyz", None, None),
            Err(HostError::NoAccount { .. })
        ));
    }

    #[test]
    fn the_login_shell_must_be_labgpu_shell() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("labgpu-shell");
        std::fs::write(&p, "#!/bin/sh\n").unwrap();
        assert!(shell_path(Some(&p)).is_err(), "not executable");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(shell_path(Some(&p)).unwrap(), p);
        assert!(shell_path(Some(Path::new("/bin/sh"))).is_err());
        assert!(shell_path(Some(Path::new("labgpu-shell"))).is_err());
    }
}
