//! The /proc inventory: NVIDIA's driver describes each GPU in
//! `driver/nvidia/gpus/<bus>/information` (UUID, device minor, model) and each MIG
//! instance's capability minor in `driver/nvidia-caps/mig-minors`. No NVML call, so it is
//! cheap enough for every container create.

use std::path::Path;

use super::devfs::{self, proc_major};
use super::{DevNode, Gpu, GpuError, Mig, Snapshot, NVIDIA_MAJOR};

pub fn scan(dev_root: &Path, proc_root: &Path) -> Result<Snapshot, GpuError> {
    // The driver's directory first: without it (no driver, fake GPUs) "auto" falls back to
    // a devfs scan, and the one done here would be wasted (/proc/devices is slow to read).
    let dir = proc_root.join("driver/nvidia/gpus");
    let entries = std::fs::read_dir(&dir).map_err(|e| GpuError::Proc {
        path: dir.clone(),
        reason: e.to_string(),
    })?;
    let mut snap = devfs::scan(dev_root, &proc_root.join("devices"))?;
    let mut gpus = Vec::new();
    for entry in entries.flatten() {
        let info_path = entry.path().join("information");
        let text = std::fs::read_to_string(&info_path).map_err(|e| GpuError::Proc {
            path: info_path.clone(),
            reason: e.to_string(),
        })?;
        let field = |key: &str| {
            text.lines()
                .filter_map(|l| l.split_once(':'))
                .find(|(k, _)| k.trim() == key)
                .map(|(_, v)| v.trim().to_string())
        };
        let minor: u32 = field("Device Minor")
            .and_then(|m| m.parse().ok())
            .ok_or_else(|| GpuError::Proc {
                path: info_path.clone(),
                reason: "no \"Device Minor:\" line".into(),
            })?;
        // The node the devfs scan saw, else the number the driver uses for it.
        let mut gpu = snap
            .gpus
            .iter()
            .find(|g| g.minor == minor)
            .cloned()
            .unwrap_or_else(|| {
                let name = format!("nvidia{minor}");
                Gpu::new(
                    minor,
                    DevNode::new(&name, dev_root, NVIDIA_MAJOR, minor.into()),
                )
            });
        gpu.uuid = field("GPU UUID").filter(|u| u.starts_with("GPU-"));
        gpu.name = field("Model");
        gpus.push(gpu);
    }
    gpus.sort_by_key(|g| g.minor);
    let mig_path = proc_root.join("driver/nvidia-caps/mig-minors");
    if let (Ok(text), Some(major)) = (
        std::fs::read_to_string(&mig_path),
        proc_major(&proc_root.join("devices"), "nvidia-caps"),
    ) {
        snap.majors.insert(major);
        for (gpu, gi, ci, minor) in parse_mig_minors(&text) {
            if let Some(g) = gpus.iter_mut().find(|g| g.minor == gpu) {
                let name = format!("nvidia-caps/nvidia-cap{minor}");
                g.migs.push(Mig {
                    gi,
                    ci,
                    uuid: None,
                    cap: DevNode::new(&name, dev_root, major, minor.into()),
                });
            }
        }
    }
    snap.gpus = gpus;
    snap.source = "proc";
    Ok(snap)
}

/// `gpu0/gi1/access 12` and `gpu0/gi1/ci0/access 13` lines as (gpu, gi, ci, minor).
pub fn parse_mig_minors(text: &str) -> Vec<(u32, u32, Option<u32>, u32)> {
    text.lines()
        .filter_map(|l| {
            let (path, minor) = l.split_once(' ')?;
            let minor = minor.trim().parse().ok()?;
            let parts: Vec<&str> = path.split('/').collect();
            let num = |s: &str, p: &str| s.strip_prefix(p)?.parse().ok();
            match parts.as_slice() {
                [g, gi, "access"] => Some((num(g, "gpu")?, num(gi, "gi")?, None, minor)),
                [g, gi, ci, "access"] => {
                    Some((num(g, "gpu")?, num(gi, "gi")?, Some(num(ci, "ci")?), minor))
                }
                _ => None,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::Inventory;
    use crate::policy::GpuRef;

    /// A /proc tree shaped like a two-GPU host with MIG on GPU 1.
    pub fn fixture(root: &Path) {
        for (bus, minor, uuid) in [
            ("0000:3b:00.0", 0, "GPU-11111111-2222"),
            ("0000:86:00.0", 1, "GPU-33333333-4444"),
        ] {
            let d = root.join("driver/nvidia/gpus").join(bus);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(
                d.join("information"),
                format!("Model: \t\t A100-SXM4-40GB\nIRQ:   \t\t 140\nGPU UUID: \t {uuid}\nVideo BIOS: \t 92.00.36.00.01\nBus Type: \t PCIe\nBus Location: \t {bus}\nDevice Minor: \t {minor}\nGPU Excluded:\t No\n"),
            )
            .unwrap();
        }
        std::fs::create_dir_all(root.join("driver/nvidia-caps")).unwrap();
        std::fs::write(
            root.join("driver/nvidia-caps/mig-minors"),
            "config 1\nmonitor 2\ngpu1/gi1/access 12\ngpu1/gi1/ci0/access 13\ngpu1/gi2/access 21\ngpu1/gi2/ci0/access 22\n",
        )
        .unwrap();
        std::fs::write(root.join("devices"), "Character devices:\n195 nvidia-frontend\n236 nvidia-caps\n509 nvidia-uvm\n\nBlock devices:\n  8 sd\n").unwrap();
    }

    #[test]
    fn gpus_uuids_and_mig_minors_are_read() {
        let d = tempfile::tempdir().unwrap();
        let proc = d.path().join("proc");
        fixture(&proc);
        let dev = d.path().join("dev");
        std::fs::create_dir_all(&dev).unwrap();
        let snap = scan(&dev, &proc).unwrap();
        assert_eq!(snap.source_name(), "proc");
        assert_eq!(snap.gpus.len(), 2);
        assert_eq!(snap.gpus[1].uuid.as_deref(), Some("GPU-33333333-4444"));
        assert_eq!(snap.gpus[1].name.as_deref(), Some("A100-SXM4-40GB"));
        assert!(snap.majors.contains(&236) && snap.majors.contains(&509));
        let g = snap
            .resolve(&GpuRef::Uuid("GPU-33333333-4444".into()))
            .unwrap();
        assert_eq!((g.nodes[0].major, g.nodes[0].minor), (195, 1));
        let mig = snap.resolve(&GpuRef::MigSlice { gpu: 1, gi: 2 }).unwrap();
        let paths: Vec<&str> = mig
            .nodes
            .iter()
            .map(|n| n.container_path.as_str())
            .collect();
        assert_eq!(
            paths,
            [
                "/dev/nvidia1",
                "/dev/nvidia-caps/nvidia-cap21",
                "/dev/nvidia-caps/nvidia-cap22"
            ]
        );
        assert_eq!(mig.nodes[1].major, 236);
    }

    #[test]
    fn no_driver_directory_is_an_error_naming_it() {
        let d = tempfile::tempdir().unwrap();
        let err = scan(d.path(), d.path()).unwrap_err().to_string();
        assert!(err.contains("driver/nvidia/gpus"), "{err}");
    }
}
