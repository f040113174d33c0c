//! Choosing the inventory source per `[gpus] discovery`.

use super::{devfs, driver, nvml, GpuError, Numbering, Snapshot};
use crate::policy::{Discovery, GpuRef, GpusSection};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// A container create or exec: NVML only when the references need it.
    Runtime,
    /// `labgpu gpus`, `verify`, `policy check`: the richest source that answers.
    Admin,
}

/// The inventory for resolving `refs`. Under "auto", NVML is tried first for admin commands
/// and, at runtime, only when a reference needs it (a MIG UUID); otherwise /proc, then devfs.
pub fn inventory_for(
    gpus: &GpusSection,
    refs: &[&GpuRef],
    purpose: Purpose,
) -> Result<Snapshot, GpuError> {
    let dev = gpus.dev_root.as_path();
    let proc = gpus.proc_root.as_path();
    let lib = gpus.nvml_lib.as_ref().map(|l| l.as_path());
    match gpus.discovery {
        Discovery::Devfs => devfs::scan(dev, &proc.join("devices")),
        Discovery::Proc => driver::scan(dev, proc),
        Discovery::Nvml => nvml::scan(lib, dev, proc, Numbering::NvmlIndex),
        Discovery::Auto => {
            let wants_nvml =
                purpose == Purpose::Admin || refs.iter().any(|r| matches!(r, GpuRef::MigUuid(_)));
            if wants_nvml {
                if let Ok(s) = nvml::scan(lib, dev, proc, Numbering::Minor) {
                    return Ok(s);
                }
            }
            driver::scan(dev, proc).or_else(|_| devfs::scan(dev, &proc.join("devices")))
        }
    }
}
