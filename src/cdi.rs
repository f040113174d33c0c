//! NVIDIA's CDI spec (`nvidia-ctk cdi generate`): the driver libraries, binaries and hooks a
//! container needs for its GPUs.
//!
//! labgpu reads the spec itself instead of letting a CDI-aware runtime expand
//! `nvidia.com/gpu=…` requests, so only the owner's GPUs are ever selected: the common edits
//! plus the per-device edits of owned GPUs, never the `all` device nor a device that names
//! another GPU's node. Device nodes in the spec are ignored: the inventory supplies them, and
//! the device cgroup is built from the inventory alone.
//!
//! The spec can put hooks on the host that run as root at container creation, so a spec file
//! anyone but root can write is refused, and every hook gets an explicit `env` (a hook
//! without one would inherit whatever environment its caller passes on; CVE-2025-23266).

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::gpu::Gpu;
use crate::policy::CdiSetting;

/// Where `cdi_spec = "auto"` looks, in order; the `*` entries are globbed and sorted.
pub const AUTO_DIRS: [&str; 2] = ["/etc/cdi", "/var/run/cdi"];

/// The environment a CDI hook gets when the spec gives it none.
pub const HOOK_PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// OCI hook stages a CDI hook may name.
const HOOK_STAGES: [&str; 6] = [
    "prestart",
    "createRuntime",
    "createContainer",
    "startContainer",
    "poststart",
    "poststop",
];

#[derive(Debug, thiserror::Error)]
pub enum CdiError {
    #[error("cannot read CDI spec {path}: {cause}")]
    Read {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("CDI spec {path} is malformed: {reason}")]
    Malformed { path: PathBuf, reason: String },
    #[error("CDI spec {path}: {reason}; its hooks run as root")]
    Untrusted { path: PathBuf, reason: String },
    #[error(
        "CDI spec {path}: {what} {value} {reason}; regenerate it with nvidia-ctk cdi generate"
    )]
    Invalid {
        path: PathBuf,
        what: &'static str,
        value: String,
        reason: &'static str,
    },
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
struct SpecFile {
    kind: String,
    #[serde(default)]
    devices: Vec<DeviceFile>,
    #[serde(default)]
    container_edits: EditsFile,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
struct DeviceFile {
    name: String,
    #[serde(default)]
    container_edits: EditsFile,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
struct EditsFile {
    #[serde(default)]
    env: Vec<String>,
    #[serde(default)]
    device_nodes: Vec<NodeFile>,
    #[serde(default)]
    mounts: Vec<Mount>,
    #[serde(default)]
    hooks: Vec<Hook>,
}

#[derive(Debug, Deserialize, Serialize)]
struct NodeFile {
    path: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Mount {
    pub host_path: PathBuf,
    pub container_path: String,
    #[serde(default)]
    pub options: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Hook {
    pub hook_name: String,
    pub path: PathBuf,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: Vec<String>,
    pub timeout: Option<i64>,
}

/// The edits one container gets from the spec, already checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Edits {
    /// The spec file they came from (for the decision log and errors).
    pub source: PathBuf,
    pub env: Vec<String>,
    pub mounts: Vec<Mount>,
    pub hooks: Vec<Hook>,
}

/// The spec file `setting` names, if any: "off" none, a file that one, "auto" the first of
/// /etc/cdi/nvidia.{yaml,json} and /var/run/cdi/nvidia*.{yaml,json} that exists.
pub fn spec_path(setting: &CdiSetting) -> Option<PathBuf> {
    match setting {
        CdiSetting::Off => None,
        CdiSetting::File(p) => Some(p.clone()),
        CdiSetting::Auto => auto_spec(&AUTO_DIRS.map(PathBuf::from)),
    }
}

fn auto_spec(dirs: &[PathBuf]) -> Option<PathBuf> {
    dirs.iter().find_map(|dir| {
        let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
            .ok()?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
                name.starts_with("nvidia") && (name.ends_with(".yaml") || name.ends_with(".json"))
            })
            .collect();
        found.sort();
        found.into_iter().next()
    })
}

/// The edits for a container owning `gpus` (none when it owns no GPU or there is no spec).
pub fn edits_for(setting: &CdiSetting, gpus: &[&Gpu]) -> Result<Option<Edits>, CdiError> {
    if gpus.is_empty() {
        return Ok(None);
    }
    let Some(path) = spec_path(setting) else {
        return Ok(None);
    };
    let spec = load(&path)?;
    select(&path, &spec, gpus).map(Some)
}

fn load(path: &Path) -> Result<SpecFile, CdiError> {
    let read = |cause| CdiError::Read {
        path: path.to_path_buf(),
        cause,
    };
    std::fs::metadata(path).map_err(read)?;
    let resolved = root_only(path).map_err(|reason| CdiError::Untrusted {
        path: path.to_path_buf(),
        reason,
    })?;
    let meta = std::fs::metadata(&resolved).map_err(read)?;
    if let Some(spec) = compiled::get(&resolved, &meta) {
        return Ok(spec);
    }
    let bytes = std::fs::read(&resolved).map_err(read)?;
    let malformed = |reason: String| CdiError::Malformed {
        path: path.to_path_buf(),
        reason,
    };
    let spec: SpecFile = if path.extension().is_some_and(|e| e == "json") {
        serde_json::from_slice(&bytes).map_err(|e| malformed(e.to_string()))?
    } else {
        serde_yaml_ng::from_slice(&bytes).map_err(|e| malformed(e.to_string()))?
    };
    if spec.kind != "nvidia.com/gpu" {
        return Err(malformed(format!(
            "kind is {:?}, not \"nvidia.com/gpu\"",
            spec.kind
        )));
    }
    compiled::put(&resolved, &meta, &spec);
    Ok(spec)
}

/// The spec as JSON in labgpu's root-only cache (`policy_cache`), keyed by the resolved
/// file's identity: YAML parsing was two fifths of a create's instructions. The trust
/// check above runs first on every create, and the per-create checks of `add` (mount
/// sources and hooks exist, hooks root-only) run on the cached spec as on a parsed one.
mod compiled {
    use std::fs::Metadata;
    use std::io::Read;
    use std::path::Path;

    use super::SpecFile;
    use crate::policy_cache::{named, open_named, write_named, Identity};

    const MAGIC: &str = "labgpu-cdi-cache 1";

    pub(super) fn get(resolved: &Path, meta: &Metadata) -> Option<SpecFile> {
        let mut bytes = Vec::new();
        open_named(&named(resolved, "cdi"))?
            .read_to_end(&mut bytes)
            .ok()?;
        let text = std::str::from_utf8(&bytes).ok()?;
        let (magic, rest) = text.split_once('\n')?;
        let (identity, json) = rest.split_once('\n')?;
        if magic != MAGIC || Identity::parse(identity)? != Identity::of(meta) {
            return None;
        }
        serde_json::from_str(json).ok()
    }

    /// Written only for a settled file that did not change while it was parsed.
    pub(super) fn put(resolved: &Path, before: &Metadata, spec: &SpecFile) {
        let Ok(after) = std::fs::metadata(resolved) else {
            return;
        };
        if Identity::of(&after) != Identity::of(before) || !Identity::settled(&after) {
            return;
        }
        let Ok(json) = serde_json::to_string(spec) else {
            return;
        };
        let entry = format!("{MAGIC}\n{}\n{json}", Identity::of(&after).line());
        let _ = write_named(&named(resolved, "cdi"), entry.as_bytes());
    }
}

/// `/dev/nvidiaN` minors a device's nodes name (control and caps nodes are not GPUs).
/// `path` with symlinks resolved, if only root can change what it names: the file and every
/// directory above it owned by root and not writable by group or others (a sticky
/// directory, like /tmp, is fine: others cannot rename root's entries in it).
fn root_only(path: &Path) -> Result<PathBuf, String> {
    let resolved = std::fs::canonicalize(path).map_err(|e| format!("{}: {e}", path.display()))?;
    for p in resolved.ancestors() {
        let meta = std::fs::metadata(p).map_err(|e| format!("{}: {e}", p.display()))?;
        let sticky_dir = meta.is_dir() && meta.mode() & 0o1000 != 0;
        if meta.uid() != 0 || (meta.mode() & 0o022 != 0 && !sticky_dir) {
            return Err(format!(
                "{} can be written by users other than root (owner uid {}, mode {:o})",
                p.display(),
                meta.uid(),
                meta.mode() & 0o7777
            ));
        }
    }
    Ok(resolved)
}

fn gpu_minors(edits: &EditsFile) -> BTreeSet<u32> {
    edits
        .device_nodes
        .iter()
        .filter_map(|n| n.path.strip_prefix("/dev/nvidia")?.parse().ok())
        .collect()
}

fn select(path: &Path, spec: &SpecFile, gpus: &[&Gpu]) -> Result<Edits, CdiError> {
    let owned: BTreeSet<u32> = gpus.iter().map(|g| g.minor).collect();
    let names_owned = |name: &str| {
        gpus.iter().any(|g| {
            g.uuid.as_deref() == Some(name) || g.index.is_some_and(|i| i.to_string() == name)
        })
    };
    let mut out = Edits {
        source: path.to_path_buf(),
        ..Edits::default()
    };
    add(&mut out, &spec.container_edits, path)?;
    for device in &spec.devices {
        if device.name == "all" {
            continue;
        }
        let minors = gpu_minors(&device.container_edits);
        // A device naming any GPU node the owner lacks is never taken, whatever its name.
        if !minors.is_subset(&owned) {
            continue;
        }
        if names_owned(&device.name) || !minors.is_empty() {
            add(&mut out, &device.container_edits, path)?;
        }
    }
    Ok(out)
}

fn add(out: &mut Edits, edits: &EditsFile, path: &Path) -> Result<(), CdiError> {
    let invalid = |what, value: String, reason| CdiError::Invalid {
        path: path.to_path_buf(),
        what,
        value,
        reason,
    };
    for e in &edits.env {
        if !e.contains('=') {
            return Err(invalid("env entry", e.clone(), "is not KEY=VALUE"));
        }
        if !out.env.contains(e) {
            out.env.push(e.clone());
        }
    }
    for m in &edits.mounts {
        if !m.host_path.is_absolute() || !m.container_path.starts_with('/') {
            return Err(invalid(
                "mount",
                m.host_path.display().to_string(),
                "is not an absolute host and container path",
            ));
        }
        if !m.host_path.exists() {
            return Err(invalid(
                "mount source",
                m.host_path.display().to_string(),
                "does not exist; regenerate the spec with nvidia-ctk cdi generate",
            ));
        }
        if !out.mounts.contains(m) {
            out.mounts.push(m.clone());
        }
    }
    for h in &edits.hooks {
        let value = h.path.display().to_string();
        if !HOOK_STAGES.contains(&h.hook_name.as_str()) {
            return Err(invalid("hook", value, "has an unknown hookName"));
        }
        if !h.path.is_absolute() {
            return Err(invalid("hook", value, "is not an absolute path"));
        }
        if !h.path.is_file() {
            return Err(invalid(
                "hook",
                value,
                "does not exist; regenerate the spec with nvidia-ctk cdi generate",
            ));
        }
        let resolved = root_only(&h.path).map_err(|reason| CdiError::Untrusted {
            path: path.to_path_buf(),
            reason,
        })?;
        let mut hook = h.clone();
        // runc runs the file that was checked, not whatever a symlink points to later.
        hook.path = resolved;
        if !hook.env.iter().any(|e| e.starts_with("PATH=")) {
            hook.env.insert(0, HOOK_PATH_ENV.to_string());
        }
        if !out.hooks.contains(&hook) {
            out.hooks.push(hook);
        }
    }
    Ok(())
}

/// What dockerd may already have written into a spec from CDI specs: Docker 26 with
/// `features.cdi` applies `--device nvidia.com/gpu=N` itself (the CDI library's
/// `ContainerEdits.Apply`: device nodes with their cgroup rules, mounts, env, hooks) before
/// any runtime sees the spec, and leaves no annotation saying so. labgpu recognises those
/// edits by the spec files they come from, so that a CDI-named GPU is treated like
/// `--device /dev/nvidiaN`: whatever dockerd applied is taken out again, and the owner gets
/// their own edits from `Edits` (the same as without `--device`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DockerApplied {
    /// (host path, container path) of every mount an NVIDIA CDI device or its spec adds.
    pub mounts: Vec<(PathBuf, String)>,
    pub env: Vec<String>,
    pub hooks: Vec<PathBuf>,
}

impl DockerApplied {
    pub fn is_empty(&self) -> bool {
        self.mounts.is_empty() && self.env.is_empty() && self.hooks.is_empty()
    }

    fn add(&mut self, edits: &EditsFile) {
        for m in &edits.mounts {
            let key = (m.host_path.clone(), m.container_path.clone());
            if !self.mounts.contains(&key) {
                self.mounts.push(key);
            }
        }
        for e in &edits.env {
            if !self.env.contains(e) {
                self.env.push(e.clone());
            }
        }
        for h in &edits.hooks {
            if !self.hooks.contains(&h.path) {
                self.hooks.push(h.path.clone());
            }
        }
    }
}

/// The CDI spec directories dockerd reads: daemon.json's `cdi-spec-dirs`, else Docker's
/// defaults (the same as `AUTO_DIRS`).
pub fn docker_spec_dirs(daemon_json: &Path) -> Vec<PathBuf> {
    let configured = std::fs::read(daemon_json)
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| {
            let dirs = v.get("cdi-spec-dirs")?.as_array()?.clone();
            Some(
                dirs.iter()
                    .filter_map(|d| d.as_str().filter(|d| d.starts_with('/')))
                    .map(PathBuf::from)
                    .collect::<Vec<_>>(),
            )
        });
    configured.unwrap_or_else(|| AUTO_DIRS.map(PathBuf::from).to_vec())
}

/// Every edit of every NVIDIA device (`kind: nvidia.com/…`, the `all` device and each
/// spec's common edits included) in the `*.yaml`/`*.json` files of `dirs`. Only files that
/// root alone can change count: the result decides what is taken out of every container.
/// A file that cannot be read or parsed is skipped, as dockerd skips it.
pub fn docker_applied(dirs: &[PathBuf]) -> DockerApplied {
    let mut out = DockerApplied::default();
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "json"))
            .collect();
        files.sort();
        for file in files {
            let Ok(spec) = load_any(&file) else { continue };
            if !spec.kind.starts_with("nvidia.com/") {
                continue;
            }
            out.add(&spec.container_edits);
            for device in &spec.devices {
                out.add(&device.container_edits);
            }
        }
    }
    out
}

/// A root-only spec file of any kind.
fn load_any(path: &Path) -> Result<SpecFile, String> {
    let resolved = root_only(path)?;
    let bytes = std::fs::read(resolved).map_err(|e| e.to_string())?;
    if path.extension().is_some_and(|e| e == "json") {
        serde_json::from_slice(&bytes).map_err(|e| e.to_string())
    } else {
        serde_yaml_ng::from_slice(&bytes).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::DevNode;

    /// The cache holds the spec as JSON: it must read back as the very spec YAML gave.
    #[test]
    fn the_cached_json_form_is_the_parsed_spec() {
        let spec: SpecFile = serde_yaml_ng::from_str(&SPEC.replace("@ROOT@", "/tmp")).unwrap();
        let json = serde_json::to_string(&spec).unwrap();
        let back: SpecFile = serde_json::from_str(&json).unwrap();
        assert_eq!(format!("{back:?}"), format!("{spec:?}"));
        assert!(!spec.devices.is_empty() && !spec.container_edits.hooks.is_empty());
    }

    /// Shaped like `nvidia-ctk cdi generate` output for a 2-GPU host.
    pub(crate) const SPEC: &str = r#"---
cdiVersion: 0.5.0
kind: nvidia.com/gpu
devices:
- name: "0"
  containerEdits:
    deviceNodes:
    - path: /dev/nvidia0
- name: GPU-aaaa
  containerEdits:
    deviceNodes:
    - path: /dev/nvidia0
    mounts:
    - hostPath: @ROOT@/gpu0-only
      containerPath: /usr/share/gpu0
      options: [ro, nosuid, nodev, bind]
- name: "1"
  containerEdits:
    deviceNodes:
    - path: /dev/nvidia1
    mounts:
    - hostPath: @ROOT@/gpu1-only
      containerPath: /usr/share/gpu1
      options: [ro, nosuid, nodev, bind]
- name: all
  containerEdits:
    deviceNodes:
    - path: /dev/nvidia0
    - path: /dev/nvidia1
    mounts:
    - hostPath: @ROOT@/all-only
      containerPath: /usr/share/all
      options: [ro, bind]
containerEdits:
  env:
  - NVIDIA_VISIBLE_DEVICES=void
  deviceNodes:
  - path: /dev/nvidiactl
  - path: /dev/nvidia-uvm
  hooks:
  - hookName: createContainer
    path: @ROOT@/nvidia-cdi-hook
    args: [nvidia-cdi-hook, update-ldcache, --folder, /usr/lib/x86_64-linux-gnu]
  - hookName: createContainer
    path: @ROOT@/nvidia-cdi-hook
    args: [nvidia-cdi-hook, create-symlinks]
    env: [NVIDIA_CTK_DEBUG=false]
  mounts:
  - hostPath: @ROOT@/libcuda.so.1
    containerPath: /usr/lib/x86_64-linux-gnu/libcuda.so.1
    options: [ro, nosuid, nodev, bind]
"#;

    fn fixture(dir: &Path) -> PathBuf {
        for f in [
            "gpu0-only",
            "gpu1-only",
            "all-only",
            "nvidia-cdi-hook",
            "libcuda.so.1",
        ] {
            std::fs::write(dir.join(f), "x").unwrap();
        }
        let path = dir.join("nvidia.yaml");
        let text = SPEC.replace("@ROOT@", dir.to_str().unwrap());
        std::fs::write(&path, text).unwrap();
        path
    }

    fn gpu(minor: u32, uuid: &str) -> Gpu {
        let mut g = Gpu::new(
            minor,
            DevNode::new(
                &format!("nvidia{minor}"),
                Path::new("/dev"),
                195,
                minor.into(),
            ),
        );
        g.uuid = Some(uuid.into());
        g
    }

    fn is_root() -> bool {
        nix::unistd::Uid::effective().is_root()
    }

    #[test]
    fn only_common_and_owned_device_edits_are_taken() {
        if !is_root() {
            return; // the spec must be root-owned; CI runs as root
        }
        let dir = tempfile::tempdir().unwrap();
        let path = fixture(dir.path());
        let setting = CdiSetting::File(path.clone());
        let g0 = gpu(0, "GPU-aaaa");
        let e = edits_for(&setting, &[&g0]).unwrap().unwrap();
        let dests: Vec<&str> = e.mounts.iter().map(|m| m.container_path.as_str()).collect();
        assert_eq!(
            dests,
            ["/usr/lib/x86_64-linux-gnu/libcuda.so.1", "/usr/share/gpu0"]
        );
        assert_eq!(e.mounts[0].options, ["ro", "nosuid", "nodev", "bind"]);
        assert_eq!(e.env, ["NVIDIA_VISIBLE_DEVICES=void"]);
        assert_eq!(e.hooks.len(), 2);
        assert_eq!(e.hooks[0].env, [HOOK_PATH_ENV]);
        assert_eq!(e.hooks[1].env, [HOOK_PATH_ENV, "NVIDIA_CTK_DEBUG=false"]);

        // By device node alone (a /proc inventory has no NVML index): GPU 1's edits.
        let g1 = Gpu::new(1, DevNode::new("nvidia1", Path::new("/dev"), 195, 1));
        let e = edits_for(&setting, &[&g1]).unwrap().unwrap();
        assert!(e
            .mounts
            .iter()
            .any(|m| m.container_path == "/usr/share/gpu1"));
        assert!(!e
            .mounts
            .iter()
            .any(|m| m.container_path == "/usr/share/gpu0"));
        assert!(!e
            .mounts
            .iter()
            .any(|m| m.container_path == "/usr/share/all"));

        // Owning both still never selects "all".
        let e = edits_for(&setting, &[&g0, &g1]).unwrap().unwrap();
        assert!(!e
            .mounts
            .iter()
            .any(|m| m.container_path == "/usr/share/all"));
        assert_eq!(e.mounts.len(), 3);

        assert_eq!(edits_for(&setting, &[]).unwrap(), None);
        assert_eq!(edits_for(&CdiSetting::Off, &[&g0]).unwrap(), None);
    }

    #[test]
    fn a_name_match_for_a_foreign_node_is_not_taken() {
        if !is_root() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = fixture(dir.path());
        // UUID says GPU-aaaa but the owner's GPU-aaaa is minor 1 here: the spec's device
        // for GPU-aaaa names /dev/nvidia0, which the owner does not hold.
        let g = gpu(1, "GPU-aaaa");
        let e = edits_for(&CdiSetting::File(path), &[&g]).unwrap().unwrap();
        assert!(!e
            .mounts
            .iter()
            .any(|m| m.container_path == "/usr/share/gpu0"));
    }

    #[test]
    fn bad_specs_are_refused_naming_the_file() {
        if !is_root() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = fixture(dir.path());
        let g0 = gpu(0, "GPU-aaaa");
        let setting = CdiSetting::File(path.clone());

        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        let e = edits_for(&setting, &[&g0]).unwrap_err().to_string();
        assert!(e.contains("can be written by users other than root"), "{e}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();

        let hook = dir.path().join("nvidia-cdi-hook");
        std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = edits_for(&setting, &[&g0]).unwrap_err().to_string();
        assert!(
            e.contains("nvidia-cdi-hook can be written by users other than root"),
            "{e}"
        );
        std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();

        // A directory above the spec that others can write is as bad as the file.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = edits_for(&setting, &[&g0]).unwrap_err().to_string();
        assert!(
            e.contains(&format!(
                "{} can be written by users other than root",
                dir.path().display()
            )),
            "{e}"
        );
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();

        std::fs::remove_file(dir.path().join("libcuda.so.1")).unwrap();
        let e = edits_for(&setting, &[&g0]).unwrap_err().to_string();
        assert!(e.contains("libcuda.so.1 does not exist"), "{e}");
        assert!(e.contains(path.to_str().unwrap()), "{e}");

        std::fs::write(&path, "kind: [").unwrap();
        let e = edits_for(&setting, &[&g0]).unwrap_err().to_string();
        assert!(e.contains("is malformed"), "{e}");

        std::fs::write(&path, "kind: other.com/x\n").unwrap();
        let e = edits_for(&setting, &[&g0]).unwrap_err().to_string();
        assert!(e.contains("not \"nvidia.com/gpu\""), "{e}");

        let missing = CdiSetting::File(dir.path().join("none.yaml"));
        let e = edits_for(&missing, &[&g0]).unwrap_err().to_string();
        assert!(e.contains("cannot read CDI spec"), "{e}");
    }

    #[test]
    fn auto_finds_nvidia_specs_in_order() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        assert_eq!(auto_spec(&[a.path().into(), b.path().into()]), None);
        std::fs::write(b.path().join("nvidia-b.json"), "{}").unwrap();
        std::fs::write(b.path().join("nvidia-a.yaml"), "").unwrap();
        std::fs::write(b.path().join("other.yaml"), "").unwrap();
        assert_eq!(
            auto_spec(&[a.path().into(), b.path().into()]),
            Some(b.path().join("nvidia-a.yaml"))
        );
        std::fs::write(a.path().join("nvidia.yaml"), "").unwrap();
        assert_eq!(
            auto_spec(&[a.path().into(), b.path().into()]),
            Some(a.path().join("nvidia.yaml"))
        );
    }

    #[test]
    fn docker_applied_collects_every_nvidia_device_in_dockers_dirs() {
        if !is_root() {
            return; // the spec must be root-owned; CI runs as root
        }
        let dir = tempfile::tempdir().unwrap();
        fixture(dir.path());
        // Docker reads every .yaml/.json file, whatever its name; other vendors' kinds are
        // left to the mount rules, and so is a file that is not a CDI spec.
        std::fs::rename(dir.path().join("nvidia.yaml"), dir.path().join("gpus.yaml")).unwrap();
        std::fs::write(
            dir.path().join("other.yaml"),
            "cdiVersion: 0.5.0\nkind: vendor.com/nic\ncontainerEdits:\n  mounts:\n  - {hostPath: /x, containerPath: /x}\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("broken.json"), "{").unwrap();
        let missing = dir.path().join("missing");
        let applied = docker_applied(&[missing, dir.path().to_path_buf()]);
        let dests: Vec<&str> = applied.mounts.iter().map(|(_, c)| c.as_str()).collect();
        assert_eq!(
            dests,
            [
                "/usr/lib/x86_64-linux-gnu/libcuda.so.1",
                "/usr/share/gpu0",
                "/usr/share/gpu1",
                "/usr/share/all"
            ]
        );
        assert_eq!(applied.env, ["NVIDIA_VISIBLE_DEVICES=void"]);
        assert_eq!(applied.hooks, [dir.path().join("nvidia-cdi-hook")]);

        // A file root does not own alone decides nothing.
        let loose = tempfile::tempdir().unwrap();
        fixture(loose.path());
        std::fs::set_permissions(
            loose.path().join("nvidia.yaml"),
            std::os::unix::fs::PermissionsExt::from_mode(0o666),
        )
        .unwrap();
        assert!(docker_applied(&[loose.path().to_path_buf()]).is_empty());
    }

    #[test]
    fn dockers_cdi_dirs_come_from_daemon_json() {
        let dir = tempfile::tempdir().unwrap();
        let json = dir.path().join("daemon.json");
        let defaults = [PathBuf::from("/etc/cdi"), PathBuf::from("/var/run/cdi")];
        assert_eq!(docker_spec_dirs(&json), defaults);
        std::fs::write(&json, r#"{"features": {"cdi": true}}"#).unwrap();
        assert_eq!(docker_spec_dirs(&json), defaults);
        std::fs::write(&json, r#"{"cdi-spec-dirs": ["/opt/cdi", "relative"]}"#).unwrap();
        assert_eq!(docker_spec_dirs(&json), [PathBuf::from("/opt/cdi")]);
    }
}
