//! GPU inventory: which NVIDIA GPUs and device nodes this host has, and what a policy GPU
//! reference resolves to.
//!
//! Three sources fill the same `Snapshot`: a devfs scan (`devfs`), NVIDIA's /proc files
//! (`driver`: UUIDs, minors, MIG capability minors) and NVML (`nvml`: indices, UUIDs, MIG
//! UUIDs, running processes). `select` picks one per the policy's `[gpus] discovery`.

pub mod devfs;
pub mod driver;
pub mod nvml;
pub mod select;

use std::collections::BTreeSet;
use std::path::PathBuf;

use crate::policy::GpuRef;

pub use devfs::DevfsInventory;
pub use select::{inventory_for, Purpose};

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
    #[error("cannot scan GPU device directory {path}: {cause}")]
    Scan {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("GPU {id} is not present on this host (inventory from {source_name})")]
    Missing { id: String, source_name: String },
    #[error("GPU {id} needs {what}, which the {source_name} inventory does not have; set [gpus] discovery")]
    Unsupported {
        id: String,
        what: String,
        source_name: String,
    },
    #[error("cannot read {path}: {reason}")]
    Proc { path: PathBuf, reason: String },
    #[error("NVML ({lib}): {reason}")]
    Nvml { lib: String, reason: String },
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

impl DevNode {
    pub fn new(name: &str, dev_root: &std::path::Path, major: i64, minor: i64) -> Self {
        DevNode {
            container_path: format!("/dev/{name}"),
            host_path: dev_root.join(name),
            major,
            minor,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gpu {
    /// Device minor: /dev/nvidia<minor>. The stable identity labgpu stamps and audits.
    pub minor: u32,
    /// NVML index, when NVML reported it.
    pub index: Option<u32>,
    pub uuid: Option<String>,
    pub name: Option<String>,
    pub nodes: Vec<DevNode>,
    pub migs: Vec<Mig>,
}

impl Gpu {
    pub fn new(minor: u32, node: DevNode) -> Self {
        Gpu {
            minor,
            index: None,
            uuid: None,
            name: None,
            nodes: vec![node],
            migs: Vec::new(),
        }
    }
}

/// A MIG compute instance (or, with `ci` None, a GPU instance's access capability).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mig {
    pub gi: u32,
    pub ci: Option<u32>,
    pub uuid: Option<String>,
    /// The /dev/nvidia-caps/nvidia-capM node granting access to this instance.
    pub cap: DevNode,
}

/// What one policy reference grants: the GPU (by minor) and the nodes to allow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub minor: u32,
    pub nodes: Vec<DevNode>,
}

/// How integers in a policy's `gpus` are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Numbering {
    Minor,
    NvmlIndex,
}

pub trait Inventory {
    /// "devfs", "proc" or "nvml": named in errors so the admin knows what was looked at.
    fn source_name(&self) -> &str;
    fn gpus(&self) -> &[Gpu];
    fn control_nodes(&self) -> &[DevNode];
    /// Every major number that belongs to an NVIDIA driver, whether or not a node exists.
    fn nvidia_majors(&self) -> &BTreeSet<i64>;
    fn numbering(&self) -> Numbering {
        Numbering::Minor
    }

    /// Resolves a policy GPU reference, or says which one is missing and why.
    fn resolve(&self, r: &GpuRef) -> Result<Grant, GpuError> {
        let missing = || GpuError::Missing {
            id: r.to_string(),
            source_name: self.source_name().to_string(),
        };
        let unsupported = |what: &str| GpuError::Unsupported {
            id: r.to_string(),
            what: what.to_string(),
            source_name: self.source_name().to_string(),
        };
        let gpus = self.gpus();
        let whole = |g: &Gpu| Grant {
            minor: g.minor,
            nodes: g.nodes.clone(),
        };
        match r {
            GpuRef::Number(n) => {
                let found = match self.numbering() {
                    Numbering::Minor => gpus.iter().find(|g| g.minor == *n),
                    Numbering::NvmlIndex => gpus.iter().find(|g| g.index == Some(*n)),
                };
                found.map(whole).ok_or_else(missing)
            }
            GpuRef::Uuid(u) => {
                if gpus.iter().all(|g| g.uuid.is_none()) && !gpus.is_empty() {
                    return Err(unsupported("GPU UUIDs"));
                }
                gpus.iter()
                    .find(|g| g.uuid.as_deref() == Some(u))
                    .map(whole)
                    .ok_or_else(missing)
            }
            GpuRef::MigSlice { gpu, gi } => {
                let g = gpus.iter().find(|g| g.minor == *gpu).ok_or_else(missing)?;
                let caps: Vec<DevNode> = g
                    .migs
                    .iter()
                    .filter(|m| m.gi == *gi)
                    .map(|m| m.cap.clone())
                    .collect();
                if caps.is_empty() {
                    return Err(missing());
                }
                Ok(Grant {
                    minor: g.minor,
                    nodes: g.nodes.iter().cloned().chain(caps).collect(),
                })
            }
            GpuRef::MigUuid(u) => {
                if gpus.iter().flat_map(|g| &g.migs).all(|m| m.uuid.is_none()) {
                    return Err(unsupported("MIG UUIDs (NVML)"));
                }
                for g in gpus {
                    if let Some(ci) = g.migs.iter().find(|m| m.uuid.as_deref() == Some(u)) {
                        // The GI's access capability plus this CI's.
                        let gi_cap = g.migs.iter().filter(|m| m.gi == ci.gi && m.ci.is_none());
                        return Ok(Grant {
                            minor: g.minor,
                            nodes: g
                                .nodes
                                .iter()
                                .cloned()
                                .chain(gi_cap.map(|m| m.cap.clone()))
                                .chain(std::iter::once(ci.cap.clone()))
                                .collect(),
                        });
                    }
                }
                Err(missing())
            }
        }
    }
}

/// One inventory, from whichever source filled it.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub source: &'static str,
    pub gpus: Vec<Gpu>,
    pub control: Vec<DevNode>,
    pub majors: BTreeSet<i64>,
    pub numbering: Numbering,
}

impl Inventory for Snapshot {
    fn source_name(&self) -> &str {
        self.source
    }
    fn gpus(&self) -> &[Gpu] {
        &self.gpus
    }
    fn control_nodes(&self) -> &[DevNode] {
        &self.control
    }
    fn nvidia_majors(&self) -> &BTreeSet<i64> {
        &self.majors
    }
    fn numbering(&self) -> Numbering {
        self.numbering
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn snapshot() -> Snapshot {
        let dev = Path::new("/dev");
        let mut g0 = Gpu::new(0, DevNode::new("nvidia0", dev, 195, 0));
        g0.uuid = Some("GPU-aaaa".into());
        g0.index = Some(1);
        let cap = |m| DevNode::new(&format!("nvidia-caps/nvidia-cap{m}"), dev, 240, m);
        g0.migs = vec![
            Mig {
                gi: 1,
                ci: None,
                uuid: None,
                cap: cap(12),
            },
            Mig {
                gi: 1,
                ci: Some(0),
                uuid: Some("MIG-cccc".into()),
                cap: cap(13),
            },
            Mig {
                gi: 2,
                ci: None,
                uuid: None,
                cap: cap(21),
            },
        ];
        let mut g3 = Gpu::new(3, DevNode::new("nvidia3", dev, 195, 3));
        g3.uuid = Some("GPU-bbbb".into());
        g3.index = Some(0);
        Snapshot {
            source: "test",
            gpus: vec![g0, g3],
            control: Vec::new(),
            majors: BTreeSet::from([195, 240]),
            numbering: Numbering::Minor,
        }
    }

    fn minors(g: &Grant) -> Vec<i64> {
        g.nodes.iter().map(|n| n.minor).collect()
    }

    #[test]
    fn numbers_are_minors_or_indices() {
        let mut s = snapshot();
        assert_eq!(s.resolve(&GpuRef::Number(3)).unwrap().minor, 3);
        s.numbering = Numbering::NvmlIndex;
        assert_eq!(s.resolve(&GpuRef::Number(0)).unwrap().minor, 3);
        assert_eq!(s.resolve(&GpuRef::Number(1)).unwrap().minor, 0);
        let err = s.resolve(&GpuRef::Number(7)).unwrap_err().to_string();
        assert!(err.contains("GPU 7 is not present"), "{err}");
    }

    #[test]
    fn uuids_and_mig_resolve_to_parent_plus_caps() {
        let s = snapshot();
        assert_eq!(
            s.resolve(&GpuRef::Uuid("GPU-bbbb".into())).unwrap().minor,
            3
        );
        assert!(s.resolve(&GpuRef::Uuid("GPU-ffff".into())).is_err());
        let slice = s.resolve(&GpuRef::MigSlice { gpu: 0, gi: 1 }).unwrap();
        assert_eq!(minors(&slice), [0, 12, 13]);
        let ci = s.resolve(&GpuRef::MigUuid("MIG-cccc".into())).unwrap();
        assert_eq!(minors(&ci), [0, 12, 13]);
        assert!(s.resolve(&GpuRef::MigSlice { gpu: 0, gi: 9 }).is_err());
    }

    #[test]
    fn a_source_without_uuids_says_so() {
        let mut s = snapshot();
        for g in &mut s.gpus {
            g.uuid = None;
        }
        let err = s
            .resolve(&GpuRef::Uuid("GPU-bbbb".into()))
            .unwrap_err()
            .to_string();
        assert!(err.contains("needs GPU UUIDs"), "{err}");
    }
}
