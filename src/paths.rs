//! Lexical path handling for comparing host paths against policy prefixes.

use std::path::{Component, Path, PathBuf};

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
