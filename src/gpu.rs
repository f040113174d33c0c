//! GPU inventory: which NVIDIA device nodes this host has, and which of them a policy id names.
//!
//! v1 scans a devfs directory. NVML and /proc/driver/nvidia inventories implement the same
//! trait so the runtime does not care where the facts came from.

use std::collections::BTreeSet;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Major number the nvidia driver registers for /dev/nvidiaN, nvidiactl and nvidia-modeset.
pub const NVIDIA_MAJOR: i64 = 195;

/// Control nodes a CUDA container needs besides its /dev/nvidiaN.
pub const CONTROL_NODES: [&str; 4] = [
    "nvidiactl",
    "nvidia-uvm",
    "nvidia-uvm-tools",
    "nvidia-modeset",
];

#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    #[error("cannot scan GPU device directory {path}: {source}")]
    Scan {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("GPU {id} is not present on this host (no /dev/nvidia{id} under {dev_root})")]
    Missing { id: u32, dev_root: PathBuf },
}

/// A character device node as the container should see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevNode {
    /// Path inside the container, always under /dev.
    pub container_path: String,
    pub host_path: PathBuf,
    pub major: i64,
    pub minor: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gpu {
    /// The id policy files use for this GPU (the device minor in v1).
    pub id: u32,
    pub nodes: Vec<DevNode>,
}

pub trait Inventory {
    fn gpus(&self) -> &[Gpu];
    fn control_nodes(&self) -> &[DevNode];
    /// Every major number that belongs to an NVIDIA driver, whether or not a node exists.
    fn nvidia_majors(&self) -> &BTreeSet<i64>;
    /// Resolves a policy GPU id to the GPU, or says which id is missing.
    fn resolve(&self, id: u32) -> Result<&Gpu, GpuError>;
}

#[derive(Debug, Clone)]
pub struct DevfsInventory {
    dev_root: PathBuf,
    gpus: Vec<Gpu>,
    control: Vec<DevNode>,
    majors: BTreeSet<i64>,
}

impl DevfsInventory {
    /// Scans `dev_root` for `nvidia[0-9]+` and the control nodes; majors of nodes found,
    /// plus every `nvidia*` driver in `proc_devices`, count as NVIDIA majors.
    pub fn scan(dev_root: &Path, proc_devices: &Path) -> Result<Self, GpuError> {
        let entries = std::fs::read_dir(dev_root).map_err(|source| GpuError::Scan {
            path: dev_root.to_path_buf(),
            source,
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
            let host_path = entry.path();
            let Ok(meta) = std::fs::metadata(&host_path) else {
                continue;
            };
            if !meta.file_type().is_char_device() {
                continue;
            }
            let rdev = meta.rdev();
            let node = DevNode {
                container_path: format!("/dev/{name}"),
                host_path,
                major: i64::from(libc::major(rdev)),
                minor: i64::from(libc::minor(rdev)),
            };
            majors.insert(node.major);
            if is_gpu {
                let Ok(id) = u32::try_from(node.minor) else {
                    continue;
                };
                gpus.push(Gpu {
                    id,
                    nodes: vec![node],
                });
            } else {
                control.push(node);
            }
        }
        majors.extend(nvidia_majors_from_proc(proc_devices));
        gpus.sort_by_key(|g| g.id);
        // The order CUDA expects: nvidiactl first, then uvm, then the rest.
        control.sort_by_key(|n| {
            CONTROL_NODES
                .iter()
                .position(|c| n.container_path.ends_with(c))
        });
        Ok(DevfsInventory {
            dev_root: dev_root.to_path_buf(),
            gpus,
            control,
            majors,
        })
    }
}

impl Inventory for DevfsInventory {
    fn gpus(&self) -> &[Gpu] {
        &self.gpus
    }

    fn control_nodes(&self) -> &[DevNode] {
        &self.control
    }

    fn nvidia_majors(&self) -> &BTreeSet<i64> {
        &self.majors
    }

    fn resolve(&self, id: u32) -> Result<&Gpu, GpuError> {
        self.gpus
            .iter()
            .find(|g| g.id == id)
            .ok_or_else(|| GpuError::Missing {
                id,
                dev_root: self.dev_root.clone(),
            })
    }
}

/// Majors of drivers named `nvidia*` in a /proc/devices-format file (character section only).
fn nvidia_majors_from_proc(path: &Path) -> Vec<i64> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    text.lines()
        .skip(1)
        .take_while(|l| !l.starts_with("Block devices"))
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let major = it.next()?.parse().ok()?;
            it.next()?.starts_with("nvidia").then_some(major)
        })
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
        let err = DevfsInventory::scan(Path::new("/nonexistent/dev"), Path::new("/proc/devices"))
            .unwrap_err();
        assert!(err.to_string().contains("/nonexistent/dev"));
    }
}
