//! The NVML inventory: indices, UUIDs, MIG instance UUIDs, and the processes running on each
//! GPU. NVML can block for seconds (no nvidia-persistenced, a GPU falling off the bus), so
//! every query runs on its own thread and is abandoned after a deadline.

use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use nvml_wrapper::Nvml;

use super::{devfs, driver, DevNode, Gpu, GpuError, Numbering, Snapshot, NVIDIA_MAJOR};

/// The library NVML is loaded from when the policy does not name one.
pub const DEFAULT_LIB: &str = "libnvidia-ml.so.1";

/// How long any NVML query may take before labgpu gives up on it.
pub const DEADLINE: Duration = Duration::from_secs(5);

/// What NVML said about one GPU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NvmlGpu {
    pub index: u32,
    pub minor: u32,
    pub uuid: String,
    pub name: Option<String>,
    /// (GPU instance id, compute instance id, MIG device UUID).
    pub migs: Vec<(u32, u32, String)>,
}

/// A compute process NVML sees on a GPU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuProcess {
    pub minor: u32,
    pub pid: u32,
    pub used_bytes: Option<u64>,
}

fn lib_name(lib: Option<&Path>) -> String {
    lib.map_or(DEFAULT_LIB.to_string(), |p| p.display().to_string())
}

/// Runs `f` against an initialized NVML on a helper thread, bounded by `deadline`.
fn with_nvml<T: Send + 'static>(
    lib: Option<&Path>,
    deadline: Duration,
    f: impl FnOnce(&Nvml) -> Result<T, nvml_wrapper::error::NvmlError> + Send + 'static,
) -> Result<T, GpuError> {
    let name = lib_name(lib);
    let path = lib.map(Path::to_path_buf);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let result = (|| {
            let mut builder = Nvml::builder();
            if let Some(p) = &path {
                builder.lib_path(p.as_os_str());
            }
            let nvml = builder.init()?;
            f(&nvml)
        })();
        let _ = tx.send(result.map_err(|e| e.to_string()));
    });
    match rx.recv_timeout(deadline) {
        Ok(r) => r.map_err(|reason| GpuError::Nvml { lib: name, reason }),
        Err(_) => Err(GpuError::Nvml {
            lib: name,
            reason: format!("no answer within {deadline:?}"),
        }),
    }
}

/// Whether NVML loads and initializes at all (auto discovery's first question).
pub fn available(lib: Option<&Path>) -> bool {
    with_nvml(lib, DEADLINE, |_| Ok(())).is_ok()
}

pub fn query(lib: Option<&Path>, deadline: Duration) -> Result<Vec<NvmlGpu>, GpuError> {
    with_nvml(lib, deadline, |nvml| {
        let mut gpus = Vec::new();
        for index in 0..nvml.device_count()? {
            let d = nvml.device_by_index(index)?;
            gpus.push(NvmlGpu {
                index,
                minor: d.minor_number()?,
                uuid: d.uuid()?,
                name: d.name().ok(),
                migs: mig_devices(nvml, &d),
            });
        }
        Ok(gpus)
    })
}

/// MIG devices of a GPU with their GI/CI ids. nvml-wrapper has no safe wrapper for the id
/// getters, so they are called through its loaded symbol table; a driver without MIG
/// support simply reports none.
fn mig_devices(nvml: &Nvml, d: &nvml_wrapper::Device) -> Vec<(u32, u32, String)> {
    let lib = nvml.lib();
    let (Ok(max), Ok(gi_id), Ok(ci_id)) = (
        lib.nvmlDeviceGetMaxMigDeviceCount.as_ref(),
        lib.nvmlDeviceGetGpuInstanceId.as_ref(),
        lib.nvmlDeviceGetComputeInstanceId.as_ref(),
    ) else {
        return Vec::new();
    };
    let mut count = 0;
    // SAFETY: the handle comes from this NVML instance and outlives the calls; out-pointers
    // are valid locals.
    if unsafe { max(d.handle(), &mut count) } != 0 {
        return Vec::new();
    }
    (0..count)
        .filter_map(|i| {
            let mig = d.mig_device_by_index(i).ok()?;
            let (mut gi, mut ci) = (0, 0);
            // SAFETY: as above, for the MIG device handle.
            let ok =
                unsafe { gi_id(mig.handle(), &mut gi) == 0 && ci_id(mig.handle(), &mut ci) == 0 };
            ok.then(|| Some((gi, ci, mig.uuid().ok()?)))?
        })
        .collect()
}

pub fn processes(lib: Option<&Path>, deadline: Duration) -> Result<Vec<GpuProcess>, GpuError> {
    with_nvml(lib, deadline, |nvml| {
        let mut out = Vec::new();
        for index in 0..nvml.device_count()? {
            let d = nvml.device_by_index(index)?;
            let minor = d.minor_number()?;
            for p in d.running_compute_processes()? {
                out.push(GpuProcess {
                    minor,
                    pid: p.pid,
                    used_bytes: match p.used_gpu_memory {
                        nvml_wrapper::enums::device::UsedGpuMemory::Used(b) => Some(b),
                        nvml_wrapper::enums::device::UsedGpuMemory::Unavailable => None,
                    },
                });
            }
        }
        Ok(out)
    })
}

/// One GPU's load as NVML reports it now, for `labgpu top` and the metrics. Each figure is
/// optional: a driver or GPU that does not support a query leaves it out, not the GPU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuSample {
    pub index: u32,
    pub minor: u32,
    pub uuid: Option<String>,
    pub name: Option<String>,
    /// Percent of the last sample period a kernel ran (nvmlDeviceGetUtilizationRates).
    pub utilization: Option<u32>,
    pub memory_used: Option<u64>,
    pub memory_total: Option<u64>,
    pub processes: Vec<ProcessSample>,
}

/// A compute process on a GPU, with its share of the SM when the driver samples it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessSample {
    pub pid: u32,
    pub used_bytes: Option<u64>,
    pub sm_percent: Option<u32>,
}

/// Every GPU's load and compute processes.
pub fn sample(lib: Option<&Path>, deadline: Duration) -> Result<Vec<GpuSample>, GpuError> {
    with_nvml(lib, deadline, |nvml| {
        let mut out = Vec::new();
        for index in 0..nvml.device_count()? {
            let d = nvml.device_by_index(index)?;
            let memory = d.memory_info().ok();
            out.push(GpuSample {
                index,
                minor: d.minor_number()?,
                uuid: d.uuid().ok(),
                name: d.name().ok(),
                utilization: d.utilization_rates().ok().map(|u| u.gpu),
                memory_used: memory.as_ref().map(|m| m.used),
                memory_total: memory.as_ref().map(|m| m.total),
                processes: process_samples(&d),
            });
        }
        Ok(out)
    })
}

/// The device's compute processes; the SM share is the newest of the driver's buffered
/// samples for that pid (none when the driver keeps none, as without accounting).
fn process_samples(d: &nvml_wrapper::Device) -> Vec<ProcessSample> {
    let mut newest: std::collections::HashMap<u32, (u64, u32)> = Default::default();
    for s in d.process_utilization_stats(None).unwrap_or_default() {
        let e = newest.entry(s.pid).or_insert((s.timestamp, s.sm_util));
        if s.timestamp >= e.0 {
            *e = (s.timestamp, s.sm_util);
        }
    }
    d.running_compute_processes()
        .unwrap_or_default()
        .into_iter()
        .map(|p| ProcessSample {
            pid: p.pid,
            used_bytes: match p.used_gpu_memory {
                nvml_wrapper::enums::device::UsedGpuMemory::Used(b) => Some(b),
                nvml_wrapper::enums::device::UsedGpuMemory::Unavailable => None,
            },
            sm_percent: newest.get(&p.pid).map(|(_, sm)| *sm),
        })
        .collect()
}

/// NVML's facts on top of the /proc (or devfs) inventory, which still supplies the control
/// nodes, the majors and the MIG capability minors NVML does not report.
pub fn scan(
    lib: Option<&Path>,
    dev_root: &Path,
    proc_root: &Path,
    numbering: Numbering,
) -> Result<Snapshot, GpuError> {
    let facts = query(lib, DEADLINE)?;
    let mut snap = driver::scan(dev_root, proc_root)
        .or_else(|_| devfs::scan(dev_root, &proc_root.join("devices")))?;
    let mut gpus = Vec::new();
    for f in facts {
        let mut gpu = snap
            .gpus
            .iter()
            .find(|g| g.minor == f.minor)
            .cloned()
            .unwrap_or_else(|| {
                let name = format!("nvidia{}", f.minor);
                Gpu::new(
                    f.minor,
                    DevNode::new(&name, dev_root, NVIDIA_MAJOR, f.minor.into()),
                )
            });
        gpu.index = Some(f.index);
        gpu.uuid = Some(f.uuid);
        gpu.name = f.name.or(gpu.name);
        for (gi, ci, uuid) in f.migs {
            if let Some(m) = gpu.migs.iter_mut().find(|m| m.gi == gi && m.ci == Some(ci)) {
                m.uuid = Some(uuid);
            }
        }
        gpus.push(gpu);
    }
    gpus.sort_by_key(|g| g.minor);
    snap.gpus = gpus;
    snap.source = "nvml";
    snap.numbering = numbering;
    Ok(snap)
}
