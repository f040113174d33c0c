//! The NVML code path (nvml-wrapper, dlopen, the deadline thread) against a fake
//! libnvidia-ml.so built from tests/fixtures/fake_nvml.c: inventory by NVML index, UUID and
//! MIG UUID, and `labgpu gpus` / `labgpu policy check` on top of it.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use labgpu::gpu::nvml;
use serde_json::Value;

/// NVML's index order differs from the minors on purpose: index 0 is /dev/nvidia2.
const FIXTURE: &str = "gpu 0 2 GPU-0002 FakeGPU-A\n\
                       gpu 1 0 GPU-0000 FakeGPU-B\n\
                       gpu 2 1 GPU-0001 FakeGPU-C\n\
                       gpu 3 3 GPU-0003 FakeGPU-D\n\
                       mig 2 1 0 MIG-cccc\n\
                       proc 0 4242 1048576\n";

fn nvml_policy(dir: &Path, lib: &Path, users: &str) -> PathBuf {
    let dev = fake_gpus(dir);
    let proc = fake_proc(dir);
    let path = dir.join("policy.toml");
    std::fs::write(
        &path,
        format!(
            "version = 1\n[gpus]\ndiscovery = \"nvml\"\nnvml_lib = \"{}\"\ndev_root = \"{}\"\nproc_root = \"{}\"\n{users}",
            lib.display(),
            dev.display(),
            proc.display()
        ),
    )
    .unwrap();
    path
}

#[test]
fn nvml_reports_indices_uuids_mig_and_processes() {
    let dir = tempfile::tempdir().unwrap();
    let lib = fake_nvml(dir.path(), FIXTURE);
    let gpus = nvml::query(Some(&lib), nvml::DEADLINE).unwrap();
    let seen: Vec<(u32, u32, &str)> = gpus
        .iter()
        .map(|g| (g.index, g.minor, g.uuid.as_str()))
        .collect();
    assert_eq!(
        seen,
        [
            (0, 2, "GPU-0002"),
            (1, 0, "GPU-0000"),
            (2, 1, "GPU-0001"),
            (3, 3, "GPU-0003")
        ]
    );
    assert_eq!(gpus[0].name.as_deref(), Some("FakeGPU-A"));
    assert_eq!(gpus[2].migs, [(1, 0, "MIG-cccc".to_string())]);
    let procs = nvml::processes(Some(&lib), nvml::DEADLINE).unwrap();
    assert_eq!(
        procs,
        [nvml::GpuProcess {
            minor: 2,
            pid: 4242,
            used_bytes: Some(1048576)
        }]
    );
}

#[test]
fn a_hung_nvml_is_abandoned_at_the_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let lib = fake_nvml(dir.path(), "hang\n");
    let start = std::time::Instant::now();
    let err = nvml::query(Some(&lib), Duration::from_millis(300))
        .unwrap_err()
        .to_string();
    assert!(start.elapsed() < Duration::from_secs(5));
    assert!(err.contains("no answer within 300ms"), "{err}");
    assert!(err.contains("libnvidia-ml.so.1"), "{err}");
}

#[test]
fn gpus_command_resolves_index_uuid_and_mig_uuid_to_owners() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let lib = fake_nvml(dir.path(), FIXTURE);
    let policy = nvml_policy(
        dir.path(),
        &lib,
        "[users.alice]\ngpus = [0]\n[users.bob]\ngpus = [\"GPU-0000\"]\n[users.carol]\ngpus = [\"MIG-cccc\"]\n",
    );
    let out = labgpu(
        &policy,
        &["gpus", "--json", "--policy", policy.to_str().unwrap()],
    )
    .output()
    .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["source"], "nvml");
    let by_minor = |m: u64| {
        v["gpus"]
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["minor"] == m)
            .unwrap()
            .clone()
    };
    // Integers are NVML indices under discovery = "nvml": alice's 0 is /dev/nvidia2.
    assert_eq!(by_minor(2)["index"], 0);
    assert_eq!(by_minor(2)["owners"], serde_json::json!(["alice"]));
    assert_eq!(by_minor(0)["owners"], serde_json::json!(["bob"]));
    assert_eq!(by_minor(1)["owners"], serde_json::json!(["carol"]));
    assert_eq!(by_minor(1)["mig"][1]["uuid"], "MIG-cccc");
    assert_eq!(by_minor(3)["owners"], serde_json::json!([]));

    let table = labgpu(&policy, &["gpus", "--policy", policy.to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.contains("GPU-0002"), "{text}");
    assert!(text.contains("4 GPUs (from nvml)"), "{text}");
}

#[test]
fn policy_check_names_gpus_this_host_lacks() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let lib = fake_nvml(dir.path(), FIXTURE);
    let policy = nvml_policy(
        dir.path(),
        &lib,
        "[users.alice]\ngpus = [0, \"GPU-ffff\"]\n[users.bob]\ngpus = [\"MIG-dddd\", 7]\n",
    );
    let out = labgpu(&policy, &["policy", "check", policy.to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("[users.alice] gpus: GPU GPU-ffff is not present on this host"),
        "{text}"
    );
    assert!(text.contains("GPU MIG-dddd is not present"), "{text}");
    assert!(text.contains("GPU 7 is not present"), "{text}");
    assert!(text.contains("3 errors"), "{text}");
}

#[test]
fn nvml_sample_reports_load_memory_and_sm_share_per_process() {
    let dir = tempfile::tempdir().unwrap();
    let lib = fake_nvml(
        dir.path(),
        "gpu 0 2 GPU-0002 FakeGPU-A\ngpu 1 0 GPU-0000 FakeGPU-B\n\
         load 0 73 3221225472 17179869184\n\
         proc 0 4242 1073741824 45\nproc 0 4343 2048\n",
    );
    let s = nvml::sample(Some(&lib), nvml::DEADLINE).unwrap();
    assert_eq!(s.len(), 2);
    assert_eq!((s[0].minor, s[0].utilization), (2, Some(73)));
    assert_eq!(s[0].memory_used, Some(3 << 30));
    assert_eq!(s[0].memory_total, Some(16 << 30));
    assert_eq!(
        s[0].processes,
        [
            nvml::ProcessSample {
                pid: 4242,
                used_bytes: Some(1 << 30),
                sm_percent: Some(45)
            },
            nvml::ProcessSample {
                pid: 4343,
                used_bytes: Some(2048),
                sm_percent: None
            }
        ]
    );
    // A GPU that does not support the load queries still reports its processes (none).
    assert_eq!((s[1].utilization, s[1].memory_total), (None, None));
    assert!(s[1].processes.is_empty());
}

/// `labgpu top --json` as root: a process outside every container is its uid's policy user
/// (here root's uid is pinned to alice), with NVML's figures beside it.
#[test]
fn top_attributes_a_host_gpu_process_to_its_uids_user() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let me = std::process::id();
    let lib = fake_nvml(
        dir.path(),
        &format!("gpu 0 0 GPU-0000 FakeGPU-A\nload 0 55 1024 4096\nproc 0 {me} 1024 55\n"),
    );
    let policy = nvml_policy(
        dir.path(),
        &lib,
        "[users.alice]\nuid = 0\ngid = 0\ngpus = [0]\n[users.bob]\ngpus = []\n",
    );
    let p = policy.to_str().unwrap();
    let out = labgpu(&policy, &["top", "--json", "--policy", p])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["scope"], "all");
    let proc0 = &v["gpus"][0]["processes"][0];
    assert_eq!(proc0["pid"], me);
    assert_eq!(proc0["owner"], "alice");
    assert_eq!(proc0["container"], Value::Null);
    assert_eq!(v["gpus"][0]["utilization_percent"], 55);
    let alice = v["users"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["user"] == "alice")
        .unwrap();
    assert_eq!(alice["gpu_memory_bytes"], 1024);
    assert_eq!(alice["gpu_sm_percent"], 55);

    let text = labgpu(&policy, &["top", "--once", "--policy", p])
        .output()
        .unwrap();
    let screen = String::from_utf8_lossy(&text.stdout);
    let row = screen
        .lines()
        .find(|l| l.contains(&format!(" {me} ")))
        .unwrap();
    assert!(row.contains("alice") && row.contains("(host)"), "{screen}");
}

/// No NVML library: the view has no GPU figures and says why; nothing fails.
#[test]
fn top_without_nvml_has_no_gpu_figures() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let policy = nvml_policy(
        dir.path(),
        &dir.path().join("missing/libnvidia-ml.so.1"),
        "",
    );
    let p = policy.to_str().unwrap();
    std::fs::write(
        &policy,
        std::fs::read_to_string(&policy)
            .unwrap()
            .replace("discovery = \"nvml\"\n", ""),
    )
    .unwrap();
    let out = labgpu(&policy, &["top", "--json", "--policy", p])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["gpus"], Value::Null);
    assert!(
        v["gpu_error"]
            .as_str()
            .unwrap()
            .contains("missing/libnvidia-ml.so.1"),
        "{v}"
    );
    let m = labgpu(
        &policy,
        &[
            "metrics",
            "--policy",
            p,
            "--root",
            dir.path().to_str().unwrap(),
        ],
    )
    .output()
    .unwrap();
    let text = String::from_utf8_lossy(&m.stdout);
    assert!(m.status.success(), "{}", stderr(&m));
    assert!(text.contains("labgpu_nvml_up 0\n"), "{text}");
    assert!(text.contains("labgpu_verify_up 1\n"), "{text}");
}
