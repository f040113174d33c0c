//! Docker's overlay2 layers of a container, from Docker's own metadata: the container layer
//! (`<root>/overlay2/<id>`, holding `diff` and `work`) and the lower layers its `lower` file
//! names. Not from the mount table: after a restart the rootfs may be labgpu's own overlay.

use std::path::{Component, Path, PathBuf};

use crate::decide::resolve_host;

#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    #[error("the rootfs {rootfs} is not an overlay2 layer under {root}/overlay2; userns = \"owner\" needs Docker's overlay2 storage driver")]
    NotOverlay2 { rootfs: PathBuf, root: PathBuf },
    #[error("Docker's layer metadata {path} cannot be used: {reason}")]
    Metadata { path: PathBuf, reason: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layers {
    /// `<root>/overlay2/<id>`: the container's layer, with `diff` (upper) and `work`.
    pub dir: PathBuf,
    /// `<dir>/merged`, where Docker mounts the rootfs.
    pub merged: PathBuf,
    /// The lower layers' `diff` directories, uppermost first (overlay's lowerdir order).
    pub lowers: Vec<PathBuf>,
}

/// The layers behind `rootfs` (the spec's `root.path`, Docker's `merged`).
pub fn from_rootfs(docker_root: &Path, rootfs: &Path) -> Result<Layers, LayerError> {
    let overlay2 = resolve_host(&docker_root.join("overlay2"));
    let merged = resolve_host(rootfs);
    let not_overlay2 = || LayerError::NotOverlay2 {
        rootfs: rootfs.to_path_buf(),
        root: docker_root.to_path_buf(),
    };
    let rest = merged.strip_prefix(&overlay2).map_err(|_| not_overlay2())?;
    let parts: Vec<Component> = rest.components().collect();
    let [Component::Normal(id), Component::Normal(m)] = parts.as_slice() else {
        return Err(not_overlay2());
    };
    if *m != "merged" || *id == "l" {
        return Err(not_overlay2());
    }
    let dir = overlay2.join(id);
    for sub in ["diff", "work"] {
        if !dir.join(sub).is_dir() {
            return Err(LayerError::Metadata {
                path: dir.join(sub),
                reason: "not a directory".into(),
            });
        }
    }
    let lower_file = dir.join("lower");
    let meta_err = |reason: String| LayerError::Metadata {
        path: lower_file.clone(),
        reason,
    };
    let text = std::fs::read_to_string(&lower_file).map_err(|e| meta_err(e.to_string()))?;
    let lowers = text
        .trim()
        .split(':')
        .map(|l| lower_dir(&overlay2, l).map_err(&meta_err))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Layers {
        dir,
        merged,
        lowers,
    })
}

/// `l/<short>` (a symlink Docker keeps to `../<layer>/diff`) as the layer's `diff` directory.
fn lower_dir(overlay2: &Path, entry: &str) -> Result<PathBuf, String> {
    let short = entry
        .strip_prefix("l/")
        .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric()))
        .ok_or_else(|| format!("{entry:?} is not an l/<name> entry"))?;
    let link = overlay2.join("l").join(short);
    let target = std::fs::read_link(&link).map_err(|e| format!("{}: {e}", link.display()))?;
    let parts: Vec<Component> = target.components().collect();
    match parts.as_slice() {
        [Component::ParentDir, Component::Normal(layer), Component::Normal(d)]
            if *d == "diff" && *layer != "l" =>
        {
            let diff = overlay2.join(layer).join("diff");
            if diff.is_dir() {
                Ok(diff)
            } else {
                Err(format!("{} is not a directory", diff.display()))
            }
        }
        _ => Err(format!(
            "{} points at {}, not ../<layer>/diff",
            link.display(),
            target.display()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(root: &Path, id: &str, short: &str) {
        std::fs::create_dir_all(root.join("overlay2").join(id).join("diff")).unwrap();
        std::fs::create_dir_all(root.join("overlay2/l")).unwrap();
        std::os::unix::fs::symlink(format!("../{id}/diff"), root.join("overlay2/l").join(short))
            .unwrap();
    }

    #[test]
    fn lowers_come_from_dockers_lower_file_in_order() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        layer(root, "base", "AAA");
        layer(root, "c1-init", "BBB");
        let c = root.join("overlay2/c1");
        for s in ["diff", "work", "merged"] {
            std::fs::create_dir_all(c.join(s)).unwrap();
        }
        std::fs::write(c.join("lower"), "l/BBB:l/AAA\n").unwrap();
        let l = from_rootfs(root, &c.join("merged")).unwrap();
        let root = resolve_host(root);
        assert_eq!(l.dir, root.join("overlay2/c1"));
        assert_eq!(
            l.lowers,
            [
                root.join("overlay2/c1-init/diff"),
                root.join("overlay2/base/diff")
            ]
        );
    }

    #[test]
    fn anything_else_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        let err = from_rootfs(root, Path::new("/srv/rootfs")).unwrap_err();
        assert!(err.to_string().contains("overlay2 storage driver"), "{err}");
        let c = root.join("overlay2/c1");
        for s in ["diff", "work", "merged"] {
            std::fs::create_dir_all(c.join(s)).unwrap();
        }
        std::fs::create_dir_all(root.join("overlay2/l")).unwrap();
        std::os::unix::fs::symlink("/etc", root.join("overlay2/l/EVIL")).unwrap();
        std::fs::write(c.join("lower"), "l/EVIL").unwrap();
        let err = from_rootfs(root, &c.join("merged")).unwrap_err();
        assert!(err.to_string().contains("not ../<layer>/diff"), "{err}");
        std::fs::write(c.join("lower"), "../../etc").unwrap();
        assert!(from_rootfs(root, &c.join("merged")).is_err());
    }
}
