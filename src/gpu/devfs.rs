//! The devfs inventory: GPUs are the `nvidia[0-9]+` character devices under `dev_root`,
//! identified by their minor number; no UUIDs, no MIG.

use std::collections::BTreeSet;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::{DevNode, Gpu, GpuError, Numbering, Snapshot, CONTROL_NODES, NVIDIA_MAJOR};

/// The devfs-only inventory (`[gpus] discovery = "devfs"`).
pub type DevfsInventory = Snapshot;

/// Scans `dev_root` for `nvidia[0-9]+` and the control nodes; majors of nodes found, plus
/// every `nvidia*` driver in `proc_devices`, count as NVIDIA majors.
pub fn scan(dev_root: &Path, proc_devices: &Path) -> Result<Snapshot, GpuError> {
    let entries = std::fs::read_dir(dev_root).map_err(|cause| GpuError::Scan {
        path: dev_root.to_path_buf(),
        cause,
    })?;
    let mut gpus = Vec::new();
    let mut control = Vec::new();
    let mut majors = BTreeSet::from([NVIDIA_MAJOR]);
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let is_gpu = name
            .strip_prefix("nvidia")
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        if !is_gpu && !CONTROL_NODES.contains(&name) {
            continue;
        }
        let Ok(meta) = std::fs::metadata(entry.path()) else {
            continue;
        };
        if !meta.file_type().is_char_device() {
            continue;
        }
        let rdev = meta.rdev();
        let node = DevNode::new(
            name,
            dev_root,
            i64::from(libc::major(rdev)),
            i64::from(libc::minor(rdev)),
        );
        majors.insert(node.major);
        if is_gpu {
            let Ok(minor) = u32::try_from(node.minor) else {
                continue;
            };
            gpus.push(Gpu::new(minor, node));
        } else {
            control.push(node);
        }
    }
    majors.extend(nvidia_majors_from_proc(proc_devices));
    gpus.sort_by_key(|g| g.minor);
    // The order CUDA expects: nvidiactl first, then uvm, then the rest.
    control.sort_by_key(|n| {
        CONTROL_NODES
            .iter()
            .position(|c| n.container_path == format!("/dev/{c}"))
    });
    Ok(Snapshot {
        source: "devfs",
        gpus,
        control,
        majors,
        numbering: Numbering::Minor,
    })
}

/// The major the kernel gave driver `name` in a /proc/devices-format file (character section).
pub fn proc_major(path: &Path, name: &str) -> Option<i64> {
    let text = std::fs::read_to_string(path).ok()?;
    let major = char_devices(&text)
        .find(|(_, n)| *n == name)
        .map(|(m, _)| m);
    major
}

fn char_devices(text: &str) -> impl Iterator<Item = (i64, &str)> {
    text.lines()
        .skip(1)
        .take_while(|l| !l.starts_with("Block devices"))
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            Some((it.next()?.parse().ok()?, it.next()?))
        })
}

/// Majors of drivers named `nvidia*` in a /proc/devices-format file (character section only).
fn nvidia_majors_from_proc(path: &Path) -> Vec<i64> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    char_devices(&text)
        .filter(|(_, n)| n.starts_with("nvidia"))
        .map(|(m, _)| m)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_devices_majors_are_read_from_the_character_section() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("devices");
        std::fs::write(
            &p,
            "Character devices:\n  1 mem\n195 nvidia-frontend\n508 nvidia-uvm\n\nBlock devices:\n509 nvidia-fake\n",
        )
        .unwrap();
        assert_eq!(nvidia_majors_from_proc(&p), vec![195, 508]);
    }

    #[test]
    fn missing_dev_root_is_an_error_naming_it() {
        let err = scan(Path::new("/nonexistent/dev"), Path::new("/proc/devices")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/dev"));
    }
}
