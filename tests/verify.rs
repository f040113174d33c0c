//! `labgpu verify` against real runc containers: clean when created through labgpu, a bypass
//! when created by runc directly with a GPU, drift when the policy takes a GPU away.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::*;
use serde_json::{json, Value};

struct Containers {
    root: PathBuf,
    ids: Vec<String>,
}

impl Drop for Containers {
    fn drop(&mut self) {
        for id in &self.ids {
            let _ = Command::new(runc_path())
                .args(["--root", self.root.to_str().unwrap(), "delete", "-f", id])
                .output();
        }
    }
}

fn bundle(dir: &Path, name: &str, owner: Option<&str>, gpu2: bool) -> PathBuf {
    let b = dir.join(name);
    std::fs::create_dir_all(&b).unwrap();
    busybox_rootfs(&b);
    assert!(Command::new(runc_path())
        .arg("spec")
        .current_dir(&b)
        .status()
        .unwrap()
        .success());
    let config = b.join("config.json");
    let mut spec: Value = serde_json::from_slice(&std::fs::read(&config).unwrap()).unwrap();
    spec["process"]["terminal"] = json!(false);
    spec["process"]["args"] = json!(["sleep", "600"]);
    if let Some(o) = owner {
        spec["annotations"] = json!({"labgpu.user": o});
    }
    if gpu2 {
        spec["linux"]["devices"] = json!([{"path": "/dev/nvidia2", "type": "c", "major": 195, "minor": 2, "fileMode": 438}]);
        spec["linux"]["resources"]["devices"] = json!([{"allow": false, "access": "rwm"},
            {"allow": true, "type": "c", "major": 195, "minor": 2, "access": "rwm"}]);
    }
    std::fs::write(&config, serde_json::to_vec(&spec).unwrap()).unwrap();
    b
}

fn start(program: &str, policy: &Path, root: &Path, bundle: &Path, id: &str) {
    // A file, not a pipe: the detached container inherits it and would hold a pipe open.
    let err_path = bundle.join("stderr");
    let err = std::fs::File::create(&err_path).unwrap();
    let status = Command::new(program)
        .env("LABGPU_POLICY", policy)
        .args([
            "--root",
            root.to_str().unwrap(),
            "run",
            "-d",
            "--bundle",
            bundle.to_str().unwrap(),
            id,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(err)
        .status()
        .unwrap();
    let msg = std::fs::read_to_string(&err_path).unwrap();
    assert!(status.success(), "{program} run {id} failed: {msg}");
}

fn verify(policy: &Path, root: &Path) -> (i32, Value, String) {
    let out = Command::new(BIN)
        .args([
            "verify",
            "--policy",
            policy.to_str().unwrap(),
            "--root",
            root.to_str().unwrap(),
            "--json",
        ])
        .output()
        .unwrap();
    let json =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", stderr(&out)));
    let table = Command::new(BIN)
        .args([
            "verify",
            "--policy",
            policy.to_str().unwrap(),
            "--root",
            root.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    (
        out.status.code().unwrap(),
        json,
        String::from_utf8(table.stdout).unwrap(),
    )
}

fn container<'a>(audit: &'a Value, id: &str) -> &'a Value {
    audit["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == id)
        .unwrap()
}

#[test]
fn verify_reports_clean_bypass_and_drift() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let dev = fake_gpus(dir.path());
    let policy = policy(
        dir.path(),
        &dev,
        &runc_path(),
        "[defaults]\nallow_unconfined = true\n",
    );
    let root = dir.path().join("state");
    let tag = std::process::id();
    let mut running = Containers {
        root: root.clone(),
        ids: Vec::new(),
    };
    for owner in ["alice", "bob"] {
        let id = format!("v-{owner}-{tag}");
        let b = bundle(dir.path(), owner, Some(owner), false);
        start(BIN, &policy, &root, &b, &id);
        running.ids.push(id);
    }
    let (code, audit, table) = verify(&policy, &root);
    assert_eq!(code, 0, "{table}");
    let alice = container(&audit, &format!("v-alice-{tag}"));
    assert_eq!(alice["status"], "ok");
    assert_eq!(alice["labgpu"], true);
    assert_eq!(alice["reachable_gpus"], json!([0, 1]));
    assert_eq!(
        container(&audit, &format!("v-bob-{tag}"))["reachable_gpus"],
        json!([2])
    );
    assert!(
        table.contains("2 containers: 2 ok, 0 violations"),
        "{table}"
    );

    // Straight to runc, with someone's GPU: what `docker run --runtime runc --device` does.
    let id = format!("v-bypass-{tag}");
    let b = bundle(dir.path(), "bypass", None, true);
    start(runc_path().to_str().unwrap(), &policy, &root, &b, &id);
    running.ids.push(id.clone());
    let (code, audit, table) = verify(&policy, &root);
    assert_eq!(code, 1, "{table}");
    let bypass = container(&audit, &id);
    assert_eq!(bypass["status"], "violation");
    assert_eq!(bypass["labgpu"], false);
    assert_eq!(bypass["findings"][0]["kind"], "bypass");
    assert!(
        table.contains("not created through labgpu and can reach GPU 2"),
        "{table}"
    );
    running.ids.pop();
    drop(
        Command::new(runc_path())
            .args(["--root", root.to_str().unwrap(), "delete", "-f", &id])
            .output(),
    );

    // The admin takes GPU 1 from alice while her container runs.
    let text = std::fs::read_to_string(&policy).unwrap();
    std::fs::write(&policy, text.replace("gpus = [0, 1]", "gpus = [0]")).unwrap();
    let (code, audit, table) = verify(&policy, &root);
    assert_eq!(code, 1, "{table}");
    let alice = container(&audit, &format!("v-alice-{tag}"));
    assert_eq!(
        alice["findings"],
        json!([{"kind": "drift", "detail": "holds GPU 1, which the policy no longer grants its owner"}])
    );
    assert_eq!(container(&audit, &format!("v-bob-{tag}"))["status"], "ok");
}

#[test]
fn unreadable_policy_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args([
            "verify",
            "--policy",
            dir.path().join("missing.toml").to_str().unwrap(),
            "--root",
            dir.path().to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("could not audit: cannot read policy file"),
        "{}",
        stderr(&out)
    );
}

/// `--pid/--ipc/--network container:X` reach X's processes and files: only X's owner may join.
#[test]
fn joining_another_owners_namespaces_is_refused() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let dev = fake_gpus(dir.path());
    let policy = policy(
        dir.path(),
        &dev,
        &runc_path(),
        "[defaults]\nallow_unconfined = true\n",
    );
    let root = dir.path().join("state");
    let tag = std::process::id();
    let mut running = Containers {
        root: root.clone(),
        ids: Vec::new(),
    };
    let donor = format!("ns-bob-{tag}");
    start(
        BIN,
        &policy,
        &root,
        &bundle(dir.path(), "bob", Some("bob"), false),
        &donor,
    );
    running.ids.push(donor.clone());
    let state: Value =
        serde_json::from_slice(&std::fs::read(root.join(&donor).join("state.json")).unwrap())
            .unwrap();
    let pid = state["init_process_pid"].as_i64().unwrap();
    for (owner, ns, proc_name, allowed) in [
        ("carol", "pid", "pid", false),
        ("carol", "ipc", "ipc", false),
        ("carol", "network", "net", false),
        ("bob", "pid", "pid", true),
    ] {
        let b = bundle(dir.path(), &format!("{owner}-{ns}"), Some(owner), false);
        let config = b.join("config.json");
        let mut spec: Value = serde_json::from_slice(&std::fs::read(&config).unwrap()).unwrap();
        let namespaces = spec["linux"]["namespaces"].as_array_mut().unwrap();
        let entry = namespaces.iter_mut().find(|n| n["type"] == ns).unwrap();
        entry["path"] = json!(format!("/proc/{pid}/ns/{proc_name}"));
        std::fs::write(&config, serde_json::to_vec(&spec).unwrap()).unwrap();
        let id = format!("ns-{owner}-{ns}-{tag}");
        // A file, not a pipe: a created container inherits stderr and would hold a pipe open.
        let err_path = b.join("stderr");
        let status = Command::new(BIN)
            .env("LABGPU_POLICY", &policy)
            .args([
                "--root",
                root.to_str().unwrap(),
                "create",
                "--bundle",
                b.to_str().unwrap(),
                &id,
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&err_path).unwrap())
            .status()
            .unwrap();
        let msg = std::fs::read_to_string(&err_path).unwrap();
        if allowed {
            running.ids.push(id.clone());
            assert!(status.success(), "{owner} joining {ns}: {msg}");
        } else {
            assert_eq!(
                status.code(),
                Some(1),
                "{owner} joining {ns} was not refused"
            );
            assert!(
                msg.contains(&format!(
                    "joining the {ns} namespace of container {donor} (bob) is not allowed"
                )),
                "{msg}"
            );
        }
    }
}

/// With NVML (a fake libnvidia-ml here), verify lists each GPU process with the container
/// whose pid namespace it is in, and flags one computing on a GPU its owner is not granted.
#[test]
fn verify_maps_gpu_processes_to_containers() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let dev = fake_gpus(dir.path());
    let proc = fake_proc(dir.path());
    let lib = fake_nvml(dir.path(), "");
    let fixture = dir.path().join("nvml-fixture");
    let gpus = "gpu 0 0 GPU-0000 Fake\ngpu 1 1 GPU-0001 Fake\ngpu 2 2 GPU-0002 Fake\ngpu 3 3 GPU-0003 Fake\n";
    std::fs::write(&fixture, gpus).unwrap();
    let policy = policy(
        dir.path(),
        &dev,
        &runc_path(),
        "[defaults]\nallow_unconfined = true\n",
    );
    let text = std::fs::read_to_string(&policy).unwrap().replace(
        "[gpus]\n",
        &format!(
            "[gpus]\ndiscovery = \"nvml\"\nnvml_lib = \"{}\"\nproc_root = \"{}\"\n",
            lib.display(),
            proc.display()
        ),
    );
    std::fs::write(&policy, text).unwrap();
    let root = dir.path().join("state");
    let id = format!("v-nvml-{}", std::process::id());
    let _running = Containers {
        root: root.clone(),
        ids: vec![id.clone()],
    };
    start(
        BIN,
        &policy,
        &root,
        &bundle(dir.path(), "alice", Some("alice"), false),
        &id,
    );
    let state: Value =
        serde_json::from_slice(&std::fs::read(root.join(&id).join("state.json")).unwrap()).unwrap();
    let pid = state["init_process_pid"].as_i64().unwrap();
    let host = std::process::id();
    std::fs::write(
        &fixture,
        format!("{gpus}proc 0 {pid} 1048576\nproc 2 {host} 2097152\n"),
    )
    .unwrap();
    let (code, audit, table) = verify(&policy, &root);
    assert_eq!(code, 0, "{table}");
    assert_eq!(
        audit["gpu_processes"],
        json!([{"gpu": 0, "pid": pid, "used_bytes": 1048576, "container": id},
               {"gpu": 2, "pid": host, "used_bytes": 2097152, "container": null}])
    );
    assert!(table.contains("(host)"), "{table}");

    // A process of alice's container computing on GPU 3, which she was never granted.
    std::fs::write(&fixture, format!("{gpus}proc 3 {pid} 1048576\n")).unwrap();
    let (code, audit, table) = verify(&policy, &root);
    assert_eq!(code, 1, "{table}");
    assert_eq!(
        container(&audit, &id)["findings"],
        json!([{"kind": "foreign-gpu",
                "detail": format!("process {pid} computes on GPU 3, which the policy does not grant its owner")}])
    );
}
