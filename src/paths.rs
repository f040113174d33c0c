//! Lexical path handling for comparing host paths against policy prefixes.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use nix::fcntl::{openat, OFlag};
use nix::sys::stat::Mode;

/// Folds `//`, `/./`, `..` and a trailing `/` without touching the filesystem.
/// `..` at the root stays at the root, as the kernel resolves it.
pub fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in p.components() {
        match c {
            Component::Normal(s) => out.push(s),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

/// Whether `path` is `prefix` or below it, by whole components (`/data1` is not under `/data`).
pub fn is_under(path: &Path, prefix: &Path) -> bool {
    path.starts_with(prefix)
}

/// Opens `root/rel` read-only without following a symlink in any component of `rel` (`root`
/// itself is configuration and may be one). `..` and absolute components are refused. A
/// symlink anywhere below `root` fails with ELOOP or ENOTDIR.
pub fn open_beneath(root: &Path, rel: &Path) -> std::io::Result<File> {
    let mut dir: OwnedFd = File::open(root)?.into();
    let parts: Vec<_> = rel.components().collect();
    for (i, c) in parts.iter().enumerate() {
        let Component::Normal(name) = c else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{} is not a plain relative path", rel.display()),
            ));
        };
        let last = i + 1 == parts.len();
        let mut flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        if !last {
            flags |= OFlag::O_DIRECTORY;
        }
        let fd = openat(Some(dir.as_raw_fd()), *name, flags, Mode::empty())
            .map_err(std::io::Error::from)?;
        // SAFETY: openat returned a fresh descriptor that nothing else owns.
        dir = unsafe { OwnedFd::from_raw_fd(fd) };
    }
    Ok(File::from(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_folds_dots_and_slashes() {
        assert_eq!(
            normalize(Path::new("//srv/./data/../x/")),
            PathBuf::from("/srv/x")
        );
        assert_eq!(normalize(Path::new("/../../etc")), PathBuf::from("/etc"));
        assert_eq!(normalize(Path::new("/")), PathBuf::from("/"));
    }

    #[test]
    fn prefixes_match_whole_components() {
        assert!(is_under(
            Path::new("/srv/datasets/a"),
            Path::new("/srv/datasets")
        ));
        assert!(is_under(
            Path::new("/srv/datasets"),
            Path::new("/srv/datasets")
        ));
        assert!(!is_under(
            Path::new("/srv/datasets2"),
            Path::new("/srv/datasets")
        ));
        assert!(is_under(Path::new("/anything"), Path::new("/")));
    }
}
