//! What backs a Docker local volume, from the kernel's mount table.
//!
//! A plain volume is a directory Docker made under `<docker-root>/volumes/<name>/_data`. The
//! `local` driver's options (`-o type=… -o device=… -o o=…`) instead mount *anything* there
//! when a container starts: `proc`, `sysfs`, an `overlay` over another user's home, a bind of
//! a relative path resolved against dockerd's working directory. The options file says what
//! was asked; only the mount table says what is there, so that is what is checked, just
//! before runc binds it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use procfs::process::MountInfo;
use serde_json::Value;

use crate::decide::resolve_host;
use crate::spec::str_field;

/// Filesystems that carry no host data: a volume mounted as one of these is as safe as a
/// plain directory.
const HARMLESS: [&str; 1] = ["tmpfs"];

#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("cannot read the mount table {path}: {reason}")]
    MountTable { path: PathBuf, reason: String },
}

/// A mount found at or below a volume's `_data`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backing {
    pub mount_point: PathBuf,
    pub fs_type: String,
    /// The mount source as the kernel reports it (`/dev/sda1`, `proc`, `server:/export`).
    pub source: String,
    /// The part of the source filesystem that is mounted (`/home/bob` for a bind).
    pub root: PathBuf,
    /// Another mount in the table shows the same filesystem: this is a bind of it.
    pub shared: bool,
}

impl Backing {
    /// One phrase for a refusal: "a proc mount", "a bind of /home/bob on /dev/sda1".
    pub fn describe(&self) -> String {
        if self.root != Path::new("/") {
            format!(
                "{} (a {} mount of {} from {})",
                self.mount_point.display(),
                self.fs_type,
                self.root.display(),
                self.source
            )
        } else {
            format!(
                "{} (a {} mount of {})",
                self.mount_point.display(),
                self.fs_type,
                self.source
            )
        }
    }

    /// A tmpfs of its own: the whole filesystem, seen nowhere else. A bind of a directory
    /// on an existing tmpfs (`/run`, `/dev/shm`) is a host path like any other.
    pub fn harmless(&self) -> bool {
        HARMLESS.contains(&self.fs_type.as_str()) && self.root == Path::new("/") && !self.shared
    }
}

/// The volume name and `_data` directory a host path lies in, if it is under
/// `<docker_root>/volumes/<name>/_data`.
pub fn volume_of(source: &Path, docker_root: &Path) -> Option<(String, PathBuf)> {
    let volumes = docker_root.join("volumes");
    let rest = source.strip_prefix(&volumes).ok()?;
    let mut parts = rest.components();
    let name = parts.next()?.as_os_str().to_str()?.to_string();
    let data = parts.next()?;
    (data.as_os_str() == "_data").then(|| (name.clone(), volumes.join(&name).join("_data")))
}

/// Reads a mountinfo file (`/proc/self/mountinfo`: the table runc, which this process
/// becomes, will bind from).
pub fn read_table(path: &Path) -> Result<Vec<MountInfo>, VolumeError> {
    let err = |reason: String| VolumeError::MountTable {
        path: path.to_path_buf(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| MountInfo::from_line(l).map_err(|e| err(format!("{e}: {l}"))))
        .collect()
}

/// Every mount at `data` or below it (runc binds volumes recursively, so a mount below
/// `_data` comes along).
pub fn backings(table: &[MountInfo], data: &Path) -> Vec<Backing> {
    table
        .iter()
        .filter(|m| m.mount_point.starts_with(data))
        .map(|m| Backing {
            mount_point: m.mount_point.clone(),
            fs_type: m.fs_type.clone(),
            source: m.mount_source.clone().unwrap_or_default(),
            root: PathBuf::from(&m.root),
            shared: table
                .iter()
                .any(|o| o.majmin == m.majmin && o.mount_point != m.mount_point),
        })
        .collect()
}

/// What backs each local volume the spec binds: `None` when it binds none (the mount table
/// is then not read at all).
pub fn spec_backings(
    spec: &Value,
    docker_root: &Path,
    table: &Path,
) -> Result<BTreeMap<String, Vec<Backing>>, VolumeError> {
    let mounts = spec.get("mounts").and_then(Value::as_array);
    let volumes: BTreeMap<String, PathBuf> = mounts
        .into_iter()
        .flatten()
        .filter_map(|m| str_field(m, "source"))
        .filter(|s| s.starts_with('/'))
        .filter_map(|s| volume_of(&resolve_host(Path::new(s)), docker_root))
        .collect();
    if volumes.is_empty() {
        return Ok(BTreeMap::new());
    }
    let table = read_table(table)?;
    Ok(volumes
        .into_iter()
        .map(|(name, data)| (name, backings(&table, &data)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(lines: &[&str]) -> Vec<MountInfo> {
        lines
            .iter()
            .map(|l| MountInfo::from_line(l).unwrap())
            .collect()
    }

    #[test]
    fn volume_paths_are_recognised() {
        let root = Path::new("/var/lib/docker");
        assert_eq!(
            volume_of(Path::new("/var/lib/docker/volumes/v1/_data"), root),
            Some((
                "v1".to_string(),
                PathBuf::from("/var/lib/docker/volumes/v1/_data")
            ))
        );
        assert!(volume_of(Path::new("/var/lib/docker/volumes/v1/_data/sub"), root).is_some());
        assert_eq!(
            volume_of(Path::new("/var/lib/docker/volumes/v1/opts.json"), root),
            None
        );
        assert_eq!(volume_of(Path::new("/var/lib/docker/volumes"), root), None);
        assert_eq!(volume_of(Path::new("/srv/volumes/v1/_data"), root), None);
    }

    #[test]
    fn mounts_at_and_below_data_are_found() {
        let t = table(&[
            "22 1 8:1 / / rw - ext4 /dev/sda1 rw",
            "30 22 0:5 / /var/lib/docker/volumes/p/_data rw - proc proc rw",
            "31 22 8:1 /home/bob /var/lib/docker/volumes/b/_data rw - ext4 /dev/sda1 rw",
            "32 22 0:40 / /var/lib/docker/volumes/t/_data rw - tmpfs tmpfs rw,size=1024k",
            "33 22 0:41 / /var/lib/docker/volumes/n/_data/deep rw - sysfs sysfs rw",
            "34 22 0:42 / /var/lib/docker/volumes/pp/_data rw - tmpfs tmpfs rw",
            "35 22 0:24 / /run rw - tmpfs tmpfs rw",
            "36 22 0:24 /secrets /var/lib/docker/volumes/r/_data rw - tmpfs tmpfs rw",
            "37 22 0:43 / /var/lib/docker/volumes/w/_data rw - tmpfs tmpfs rw",
            "38 22 0:43 / /elsewhere rw - tmpfs tmpfs rw",
        ]);
        let root = Path::new("/var/lib/docker/volumes");
        let b = backings(&t, &root.join("p/_data"));
        assert_eq!(b.len(), 1);
        assert_eq!(b[0].fs_type, "proc");
        assert!(!b[0].harmless());
        let b = backings(&t, &root.join("b/_data"));
        assert!(
            b[0].describe()
                .contains("mount of /home/bob from /dev/sda1"),
            "{}",
            b[0].describe()
        );
        assert!(backings(&t, &root.join("t/_data"))[0].harmless());
        assert_eq!(backings(&t, &root.join("n/_data"))[0].fs_type, "sysfs");
        // A bind of a directory of /run, and a tmpfs also mounted elsewhere, are host paths.
        assert!(!backings(&t, &root.join("r/_data"))[0].harmless());
        assert!(!backings(&t, &root.join("w/_data"))[0].harmless());
        assert!(backings(&t, &root.join("plain/_data")).is_empty());
        // "p" is not a prefix of "pp": whole components only.
        assert_eq!(backings(&t, &root.join("p/_data")).len(), 1);
    }
}
