//! Fixtures shared by benches/rewrite.rs (Criterion) and benches/timings.rs (runc, docker and
//! verify timings): policies of N users, fake GPU nodes, a busybox bundle.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};

// The fake GPU nodes and the busybox rootfs are the integration tests' own.
#[path = "../../tests/common/mod.rs"]
mod shared;
// Each bench uses its own subset, as with the rest of this module's `dead_code`.
#[allow(unused_imports)]
pub use shared::{busybox_rootfs, fake_gpus};

/// The owner of every benchmarked container: GPU 1, no extra capabilities.
pub const OWNER: &str = "u1";

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

pub fn runc_path() -> Option<PathBuf> {
    labgpu::runtime::RUNC_CANDIDATES
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

/// A policy of `users` users u0..u{N-1}: each with uid/gid, one GPU (`K % 4`), a bind_allow
/// prefix, and every third one an extra capability. The shape of a lab policy, N times.
pub fn policy_text(users: usize, dev_root: &Path, log: &Path, runc: Option<&Path>) -> String {
    policy_text_cdi(users, dev_root, log, runc, None)
}

/// `policy_text`, with `[gpus] cdi_spec` when `cdi` is given.
pub fn policy_text_cdi(
    users: usize,
    dev_root: &Path,
    log: &Path,
    runc: Option<&Path>,
    cdi: Option<&Path>,
) -> String {
    let mut t = String::from("version = 1\n\n[runtime]\n");
    if let Some(r) = runc {
        t += &format!("runc = \"{}\"\n", r.display());
    }
    t += &format!(
        "owner_label = \"labgpu.user\"\nunlabeled = \"deny\"\nlog = \"{}\"\n\n[gpus]\ndev_root = \"{}\"\n",
        log.display(),
        dev_root.display()
    );
    if let Some(c) = cdi {
        t += &format!("cdi_spec = \"{}\"\n", c.display());
    }
    t += "\n";
    t += "[defaults]\nno_new_privileges = true\nrun_as = \"image\"\nbind_allow = [\"/srv/shared\"]\n\n";
    for k in 0..users {
        t += &format!(
            "[users.u{k}]\nuid = {uid}\ngid = {uid}\ngpus = [{gpu}]\nbind_allow = [\"/srv/data/u{k}\"]\n",
            uid = 20000 + k,
            gpu = k % 4
        );
        if k % 3 == 0 {
            t += "capabilities = [\"CAP_SYS_PTRACE\"]\n";
        }
        t += "\n";
    }
    t
}

pub fn write_policy(dir: &Path, users: usize, dev_root: &Path, runc: Option<&Path>) -> PathBuf {
    let path = dir.join(format!("policy-{users}.toml"));
    let text = policy_text(users, dev_root, &dir.join("labgpu.log"), runc);
    std::fs::write(&path, text).unwrap();
    path
}

/// `write_policy` with a CDI spec (`cdi_fixture`), as on a host where the NVIDIA toolkit
/// generated one: every create of a GPU owner reads it.
pub fn write_policy_cdi(
    dir: &Path,
    users: usize,
    dev_root: &Path,
    runc: Option<&Path>,
    cdi: &Path,
) -> PathBuf {
    let path = dir.join(format!("policy-{users}-cdi.toml"));
    let text = policy_text_cdi(users, dev_root, &dir.join("labgpu.log"), runc, Some(cdi));
    std::fs::write(&path, text).unwrap();
    path
}

/// A CDI spec shaped like `nvidia-ctk cdi generate` on a 4-GPU host (about 180 lines): per
/// GPU a device node and a hook, common env, nodes, 3 hooks and 40 library mounts, with
/// the host files they name under `dir/cdi`.
pub fn cdi_fixture(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let files = dir.join("cdi");
    std::fs::create_dir_all(&files).unwrap();
    let hook = files.join("nvidia-cdi-hook");
    std::fs::write(&hook, "#!/bin/sh\nexit 0\n").unwrap();
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
    let hook = hook.display();
    let mut y = String::from("cdiVersion: 0.5.0\nkind: nvidia.com/gpu\ndevices:\n");
    for n in 0..4 {
        y += &format!(
            "- name: \"{n}\"\n  containerEdits:\n    deviceNodes:\n    - path: /dev/nvidia{n}\n    \
             hooks:\n    - hookName: createContainer\n      path: {hook}\n      \
             args: [nvidia-cdi-hook, create-symlinks, --link, ../card{n}::/dev/dri/by-path/card]\n"
        );
    }
    y += "- name: all\n  containerEdits:\n    deviceNodes:\n";
    for n in 0..4 {
        y += &format!("    - path: /dev/nvidia{n}\n");
    }
    y += "containerEdits:\n  env:\n  - NVIDIA_VISIBLE_DEVICES=void\n  deviceNodes:\n  \
          - path: /dev/nvidiactl\n  - path: /dev/nvidia-uvm\n  hooks:\n";
    for args in [
        "update-ldcache",
        "create-symlinks --link libcuda.so.1::/usr/lib/libcuda.so",
        "chmod --mode 755 --path /dev/dri",
    ] {
        y += &format!("  - hookName: createContainer\n    path: {hook}\n    args: [nvidia-cdi-hook, {args}]\n");
    }
    y += "  mounts:\n";
    for i in 0..40 {
        let lib = files.join(format!("lib{i}.so"));
        std::fs::write(&lib, "x").unwrap();
        y += &format!(
            "  - hostPath: {}\n    containerPath: /usr/lib/x86_64-linux-gnu/lib{i}.so\n    options: [ro, nosuid, nodev, bind]\n",
            lib.display()
        );
    }
    let spec = dir.join("nvidia.yaml");
    std::fs::write(&spec, y).unwrap();
    spec
}

/// `runc spec` for `bundle`, made to look like what Docker hands the runtime: Docker's
/// default seccomp profile (from the captured fixture), the owner annotation, `--gpus all`
/// style env and another user's GPU by `--device` (which labgpu removes).
pub fn bundle_spec(bundle: &Path, runc: &Path, args: &[&str]) -> Vec<u8> {
    std::fs::create_dir_all(bundle).unwrap();
    let _ = std::fs::remove_file(bundle.join("config.json"));
    let ok = Command::new(runc)
        .args(["spec", "--bundle"])
        .arg(bundle)
        .status()
        .unwrap()
        .success();
    assert!(ok, "runc spec failed");
    let mut spec: Value =
        serde_json::from_slice(&std::fs::read(bundle.join("config.json")).unwrap()).unwrap();
    let docker: Value = serde_json::from_slice(
        &std::fs::read(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/docker20/plain.json"),
        )
        .unwrap(),
    )
    .unwrap();
    // Docker resolved its default profile for its default capabilities: the two go together
    // (labgpu recognises the default only for the capabilities it was resolved for).
    spec["linux"]["seccomp"] = docker["linux"]["seccomp"].clone();
    spec["process"]["capabilities"] = docker["process"]["capabilities"].clone();
    spec["process"]["terminal"] = json!(false);
    spec["process"]["args"] = json!(args);
    spec["process"]["env"] = json!(["PATH=/bin", "NVIDIA_VISIBLE_DEVICES=all"]);
    spec["annotations"] = json!({ "labgpu.user": OWNER });
    spec["linux"]["devices"] = json!([{"path": "/dev/nvidia2", "type": "c", "major": 195,
        "minor": 2, "fileMode": 438, "uid": 0, "gid": 0}]);
    let bytes = serde_json::to_vec(&spec).unwrap();
    std::fs::write(bundle.join("config.json"), &bytes).unwrap();
    bytes
}
