//! Shared fixtures for the integration tests: fake GPU nodes, policies, bundles.
#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const BIN: &str = env!("CARGO_BIN_EXE_labgpu");

pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root: it creates device nodes and runs runc (CI runs as root)"
    );
}

/// nvidia0..3 (195:N), nvidiactl (195:255), nvidia-uvm (511:0), nvidia-uvm-tools (511:1).
pub fn fake_gpus(dir: &Path) -> PathBuf {
    let dev = dir.join("dev");
    std::fs::create_dir_all(&dev).unwrap();
    let mut nodes: Vec<(String, u64, u64)> =
        (0..4).map(|n| (format!("nvidia{n}"), 195, n)).collect();
    nodes.push(("nvidiactl".into(), 195, 255));
    nodes.push(("nvidia-uvm".into(), 511, 0));
    nodes.push(("nvidia-uvm-tools".into(), 511, 1));
    for (name, major, minor) in nodes {
        let path = dev.join(name);
        if !path.exists() {
            nix::sys::stat::mknod(
                &path,
                nix::sys::stat::SFlag::S_IFCHR,
                nix::sys::stat::Mode::from_bits_truncate(0o666),
                nix::sys::stat::makedev(major, minor),
            )
            .unwrap();
        }
    }
    dev
}

/// A policy with alice (GPUs 0, 1), bob (GPU 2) and carol (none); `extra` is appended.
pub fn policy(dir: &Path, dev_root: &Path, runc: &Path, extra: &str) -> PathBuf {
    let text = format!(
        r#"version = 1
[runtime]
runc = "{runc}"
log = "{log}"
[gpus]
dev_root = "{dev}"
[users.alice]
uid = 1001
gid = 1001
gpus = [0, 1]
[users.bob]
gpus = [2]
[users.carol]
{extra}
"#,
        runc = runc.display(),
        log = dir.join("labgpu.log").display(),
        dev = dev_root.display(),
    );
    let path = dir.join("policy.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// A fake runc that records its argv (NUL-separated), env, stdin and, when `FAKE_CONFIG`
/// names a file, a copy of it as runc would have read it.
pub fn fake_runc(dir: &Path) -> PathBuf {
    let path = dir.join("fake-runc");
    let out = dir.join("runc-out");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(
        &path,
        format!(
            r#"#!/bin/sh
out="{out}"
for a in "$@"; do printf '%s\0' "$a"; done > "$out/argv"
env > "$out/env"
if [ -n "$FAKE_STDIN" ]; then cat > "$out/stdin"; fi
if [ -n "$FAKE_CONFIG" ]; then cp "$FAKE_CONFIG" "$out/config.json"; fi
echo "fake runc stdout"
exit 7
"#,
            out = out.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

pub fn recorded_argv(dir: &Path) -> Option<Vec<String>> {
    let bytes = std::fs::read(dir.join("runc-out/argv")).ok()?;
    Some(
        bytes
            .split(|b| *b == 0)
            .filter(|s| !s.is_empty())
            .map(|s| String::from_utf8(s.to_vec()).unwrap())
            .collect(),
    )
}

pub fn labgpu(policy: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args).env("LABGPU_POLICY", policy);
    cmd
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn runc_path() -> PathBuf {
    [
        "/usr/sbin/runc",
        "/usr/bin/runc",
        "/usr/local/sbin/runc",
        "/usr/local/bin/runc",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
    .expect("runc is not installed (apt-get install runc)")
}

pub fn busybox_rootfs(dir: &Path) -> PathBuf {
    let rootfs = dir.join("rootfs");
    let bin = rootfs.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    for d in ["proc", "dev", "tmp", "sys", "etc"] {
        std::fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .iter()
        .find(|p| Path::new(p).exists())
        .expect("busybox is not installed (apt-get install busybox-static)");
    std::fs::copy(busybox, bin.join("busybox")).unwrap();
    for applet in [
        "sh", "ls", "cat", "grep", "mknod", "id", "echo", "head", "tr", "sleep", "true",
    ] {
        let link = bin.join(applet);
        if !link.exists() {
            std::os::unix::fs::symlink("busybox", link).unwrap();
        }
    }
    rootfs
}

/// Builds tests/fixtures/fake_nvml.c into `dir/libnvidia-ml.so.1`, answering from
/// `dir/nvml-fixture` (written from `fixture`; rewrite it to change later answers).
pub fn fake_nvml(dir: &Path, fixture: &str) -> PathBuf {
    let fixture_path = dir.join("nvml-fixture");
    std::fs::write(&fixture_path, fixture).unwrap();
    let lib = dir.join("libnvidia-ml.so.1");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fake_nvml.c");
    let out = Command::new("cc")
        .args(["-shared", "-fPIC", "-o"])
        .arg(&lib)
        .arg(&src)
        .arg(format!("-DFIXTURE=\"{}\"", fixture_path.display()))
        .output()
        .expect("cc is not installed (apt-get install gcc)");
    assert!(
        out.status.success(),
        "cc {}: {}",
        src.display(),
        stderr(&out)
    );
    lib
}

/// A /proc tree for the driver inventory: nvidia0..3 with `GPU-000N` UUIDs, MIG instances on
/// GPU 1 (gi 1 access 12, ci 0 access 13), nvidia-caps major 236.
pub fn fake_proc(dir: &Path) -> PathBuf {
    let proc = dir.join("proc");
    for minor in 0..4 {
        let d = proc.join(format!("driver/nvidia/gpus/0000:0{minor}:00.0"));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(
            d.join("information"),
            format!("Model: \t\t FakeGPU\nGPU UUID: \t GPU-000{minor}\nDevice Minor: \t {minor}\n"),
        )
        .unwrap();
    }
    std::fs::create_dir_all(proc.join("driver/nvidia-caps")).unwrap();
    std::fs::write(
        proc.join("driver/nvidia-caps/mig-minors"),
        "config 1\nmonitor 2\ngpu1/gi1/access 12\ngpu1/gi1/ci0/access 13\n",
    )
    .unwrap();
    std::fs::write(
        proc.join("devices"),
        "Character devices:\n195 nvidia-frontend\n236 nvidia-caps\n511 nvidia-uvm\n\nBlock devices:\n  8 sd\n",
    )
    .unwrap();
    proc
}
