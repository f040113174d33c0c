//! The real thing without Docker: labgpu in front of the real runc, a busybox bundle and fake
//! GPU nodes. What the container sees is what is asserted.

mod common;

use std::process::Command;

use common::*;
use serde_json::{json, Value};

const ALL_CAPS: [&str; 14] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_AUDIT_WRITE",
    "CAP_MKNOD",
    "CAP_SYS_ADMIN",
    "CAP_NET_ADMIN",
];

/// Runs `script` in a fresh container owned by `owner` through labgpu and returns its stdout.
fn run_as(owner: &str, script: &str) -> (String, String) {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let dev = fake_gpus(dir.path());
    let policy = policy(dir.path(), &dev, &runc_path(), "");
    // runc's example spec has no seccomp profile; Docker's always does (tested end to end).
    let text = std::fs::read_to_string(&policy).unwrap().replace(
        "[users.alice]\n",
        "[users.alice]\ncapabilities = [\"CAP_MKNOD\"]\n",
    ) + "[defaults]\nallow_unconfined = true\n";
    std::fs::write(&policy, text).unwrap();
    let bundle = dir.path().join("bundle");
    std::fs::create_dir_all(&bundle).unwrap();
    busybox_rootfs(&bundle);
    let status = Command::new(runc_path())
        .args(["spec"])
        .current_dir(&bundle)
        .status()
        .unwrap();
    assert!(status.success());
    let config = bundle.join("config.json");
    let mut spec: Value = serde_json::from_slice(&std::fs::read(&config).unwrap()).unwrap();
    spec["process"]["terminal"] = json!(false);
    spec["process"]["args"] = json!(["sh", "-c", script]);
    spec["process"]["env"] = json!(["PATH=/bin", "NVIDIA_VISIBLE_DEVICES=all"]);
    for set in [
        "bounding",
        "effective",
        "permitted",
        "inheritable",
        "ambient",
    ] {
        spec["process"]["capabilities"][set] = json!(ALL_CAPS);
    }
    spec["process"]["noNewPrivileges"] = json!(false);
    spec["mounts"].as_array_mut().unwrap().push(
        json!({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid"]}),
    );
    spec["annotations"] = json!({"labgpu.user": owner});
    // What `--device <dev>/nvidia2:/dev/nvidia2` and `--device-cgroup-rule 'c 195:* rwm'` add.
    spec["linux"]["devices"] = json!([{"path": "/dev/nvidia2", "type": "c", "major": 195, "minor": 2, "fileMode": 438, "uid": 0, "gid": 0}]);
    spec["linux"]["resources"]["devices"] = json!([
        {"allow": false, "access": "rwm"},
        {"allow": true, "type": "c", "major": 195, "access": "rwm"}
    ]);
    std::fs::write(&config, serde_json::to_vec(&spec).unwrap()).unwrap();
    let id = format!("labgpu-test-{owner}-{}", std::process::id());
    let root = dir.path().join("runc-root");
    let out = labgpu(
        &policy,
        &[
            "--root",
            root.to_str().unwrap(),
            "run",
            "--bundle",
            bundle.to_str().unwrap(),
            &id,
        ],
    )
    .output()
    .unwrap();
    let _ = Command::new(runc_path())
        .args(["--root", root.to_str().unwrap(), "delete", "-f", &id])
        .output();
    assert!(out.status.success(), "container failed: {}", stderr(&out));
    let err = stderr(&out);
    (String::from_utf8(out.stdout).unwrap(), err)
}

const PROBE: &str = r#"
echo "nodes: $(ls /dev | grep nvidia | tr '\n' ' ')"
for n in 0 1 2; do echo "open$n: $(cat /dev/nvidia$n 2>&1 | head -1)"; done
mknod /tmp/n2 c 195 2 && echo "mknod2: $(cat /tmp/n2 2>&1 | head -1)"
mknod /tmp/n0 c 195 0 && echo "mknod0: $(cat /tmp/n0 2>&1 | head -1)"
grep -E '^(CapEff|CapBnd|CapAmb|NoNewPrivs)' /proc/self/status
echo "env: $NVIDIA_VISIBLE_DEVICES"
"#;

fn cap_mask(bits: &[u32]) -> String {
    format!("{:016x}", bits.iter().fold(0u64, |m, b| m | (1 << b)))
}

#[test]
fn alice_sees_only_her_gpus_and_her_caps() {
    let (out, err) = run_as("alice", PROBE);
    assert!(
        out.contains("nodes: nvidia-uvm nvidia-uvm-tools nvidia0 nvidia1 nvidiactl \n"),
        "{out}\n{err}"
    );
    assert!(
        out.contains("open0: cat: can't open '/dev/nvidia0': No such device or address"),
        "{out}"
    );
    assert!(
        out.contains("open1: cat: can't open '/dev/nvidia1': No such device or address"),
        "{out}"
    );
    assert!(
        out.contains("open2: cat: can't open '/dev/nvidia2': No such file or directory"),
        "{out}"
    );
    // The cgroup, not just the missing node, stops her: a node she makes herself is denied.
    assert!(
        out.contains("mknod2: cat: can't open '/tmp/n2': Operation not permitted"),
        "{out}"
    );
    assert!(
        out.contains("mknod0: cat: can't open '/tmp/n0': No such device or address"),
        "{out}"
    );
    // Default allowlist plus her CAP_MKNOD; SYS_ADMIN and NET_ADMIN are gone.
    let mask = cap_mask(&[0, 1, 3, 4, 5, 6, 7, 8, 10, 18, 27, 29]);
    assert!(out.contains(&format!("CapEff:\t{mask}")), "{out}");
    assert!(out.contains(&format!("CapBnd:\t{mask}")), "{out}");
    assert!(out.contains("NoNewPrivs:\t1"), "{out}");
    assert!(out.contains("env: void"), "{out}");
}

#[test]
fn bob_sees_only_gpu_two_and_carol_none() {
    let (out, _) = run_as("bob", PROBE);
    assert!(
        out.contains("nodes: nvidia-uvm nvidia-uvm-tools nvidia2 nvidiactl \n"),
        "{out}"
    );
    assert!(
        out.contains("open2: cat: can't open '/dev/nvidia2': No such device or address"),
        "{out}"
    );
    assert!(
        out.contains("open0: cat: can't open '/dev/nvidia0': No such file or directory"),
        "{out}"
    );
    let mask = cap_mask(&[0, 1, 3, 4, 5, 6, 7, 8, 10, 18, 29]);
    assert!(out.contains(&format!("CapBnd:\t{mask}")), "{out}");
    // No CAP_MKNOD for bob: he cannot even make a node to try.
    assert!(!out.contains("mknod2:"), "{out}");
    let (out, _) = run_as(
        "carol",
        "echo \"nodes: $(ls /dev | grep nvidia | tr '\\n' ' ')\"",
    );
    assert_eq!(out, "nodes: \n");
}
