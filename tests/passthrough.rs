//! labgpu hands runc the exact argv it was given, for every subcommand; create-like commands
//! only after config.json was rewritten; refusals never reach runc.

mod common;

use std::io::Write;
use std::process::Stdio;

use common::*;
use serde_json::{json, Value};

struct Env {
    dir: tempfile::TempDir,
    policy: std::path::PathBuf,
}

fn setup(extra: &str) -> Env {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let dev = fake_gpus(dir.path());
    let runc = fake_runc(dir.path());
    let policy = policy(dir.path(), &dev, &runc, extra);
    Env { dir, policy }
}

fn bundle(env: &Env, annotations: Value) -> std::path::PathBuf {
    let b = env.dir.path().join("bundle");
    std::fs::create_dir_all(&b).unwrap();
    let spec = json!({
        "ociVersion": "1.0.2-dev",
        "process": {"user": {"uid": 0, "gid": 0}, "args": ["sh"], "env": ["PATH=/bin"], "cwd": "/",
            "capabilities": {"bounding": ["CAP_CHOWN", "CAP_SYS_ADMIN"], "effective": ["CAP_CHOWN", "CAP_SYS_ADMIN"]}},
        "root": {"path": "rootfs"},
        "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
        "annotations": annotations,
        "linux": {
            "namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}],
            "seccomp": {"defaultAction": "SCMP_ACT_ERRNO", "syscalls": []},
            "maskedPaths": ["/proc/kcore"], "readonlyPaths": ["/proc/sys"],
            "resources": {"devices": [{"allow": false, "access": "rwm"}]}
        },
        "x-future-field": {"keep": [1, 2, 3]}
    });
    std::fs::write(
        b.join("config.json"),
        serde_json::to_vec_pretty(&spec).unwrap(),
    )
    .unwrap();
    b
}

#[test]
fn non_create_subcommands_reach_runc_byte_for_byte() {
    let env = setup("");
    let cases: Vec<Vec<&str>> = vec![
        vec![
            "--root",
            "/run/x",
            "--log",
            "/tmp/l.json",
            "--log-format",
            "json",
            "start",
            "id1",
        ],
        vec![
            "--root=/run/x",
            "--systemd-cgroup",
            "kill",
            "--all",
            "id1",
            "SIGKILL",
        ],
        vec!["delete", "--force", "id1"],
        vec!["state", "id1"],
        vec!["ps", "--format", "json", "id1"],
        vec!["pause", "id1"],
        vec!["resume", "id1"],
        vec!["features"],
        vec!["events", "--stats", "id1"],
        vec!["list", "-q"],
        vec!["checkpoint", "--image-path", "/tmp/img", "id1"],
        vec!["--debug", "spec", "--rootless"],
        vec!["update", "--memory", "1000000", "id1"],
        vec![
            "--brand-new-global-flag",
            "start",
            "weird arg with spaces",
            "ünïcode",
        ],
    ];
    for args in cases {
        let out = labgpu(&env.policy, &args).output().unwrap();
        assert_eq!(out.status.code(), Some(7), "{args:?}: {}", stderr(&out));
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "fake runc stdout\n",
            "{args:?}"
        );
        assert_eq!(recorded_argv(env.dir.path()).unwrap(), args, "{args:?}");
    }
    let runc_env = std::fs::read_to_string(env.dir.path().join("runc-out/env")).unwrap();
    assert!(
        runc_env.contains("LABGPU_POLICY="),
        "environment not passed through"
    );
}

#[test]
fn passthrough_works_with_a_broken_policy() {
    let env = setup("");
    std::fs::write(
        &env.policy,
        format!(
            "version = 1\n[runtime]\nrunc = \"{}\"\n[users.x]\nbogus = 1\n",
            env.dir.path().join("fake-runc").display()
        ),
    )
    .unwrap();
    let out = labgpu(&env.policy, &["delete", "--force", "id1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    assert_eq!(
        recorded_argv(env.dir.path()).unwrap(),
        ["delete", "--force", "id1"]
    );
}

#[test]
fn create_rewrites_before_runc_and_keeps_argv() {
    let env = setup("");
    let b = bundle(
        &env,
        json!({"labgpu.user": "alice", "cdi.k8s.io/x": "nvidia.com/gpu=all"}),
    );
    let log = env.dir.path().join("log.json");
    let args = [
        "--root",
        "/run/labgpu-test",
        "--log",
        log.to_str().unwrap(),
        "--log-format",
        "json",
        "create",
        "--bundle",
        b.to_str().unwrap(),
        "--pid-file",
        "/tmp/x.pid",
        "c1",
    ];
    let out = labgpu(&env.policy, &args)
        .env("FAKE_CONFIG", b.join("config.json"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    assert_eq!(recorded_argv(env.dir.path()).unwrap(), args);
    let seen: Value = serde_json::from_slice(
        &std::fs::read(env.dir.path().join("runc-out/config.json")).unwrap(),
    )
    .unwrap();
    let devices: Vec<&str> = seen["linux"]["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        devices,
        [
            "/dev/nvidia0",
            "/dev/nvidia1",
            "/dev/nvidiactl",
            "/dev/nvidia-uvm",
            "/dev/nvidia-uvm-tools"
        ]
    );
    assert_eq!(
        seen["process"]["capabilities"]["bounding"],
        json!(["CAP_CHOWN"])
    );
    assert_eq!(seen["process"]["noNewPrivileges"], true);
    assert_eq!(seen["annotations"]["io.labgpu.owner"], "alice");
    assert_eq!(seen["annotations"]["io.labgpu.gpus"], "0,1");
    assert!(seen["annotations"].get("cdi.k8s.io/x").is_none());
    assert_eq!(seen["x-future-field"], json!({"keep": [1, 2, 3]}));
    // Key order survives the rewrite.
    let keys: Vec<&String> = seen.as_object().unwrap().keys().collect();
    assert_eq!(keys[..4], ["ociVersion", "process", "root", "mounts"]);
    assert!(!log.exists(), "nothing logged as an error on success");
    let decisions = std::fs::read_to_string(env.dir.path().join("labgpu.log")).unwrap();
    assert!(
        decisions.contains("c1") && decisions.contains("alice"),
        "{decisions}"
    );
}

#[test]
fn bundle_defaults_to_cwd_and_equals_form_works() {
    let env = setup("");
    let b = bundle(&env, json!({"labgpu.user": "bob"}));
    let out = labgpu(&env.policy, &["run", "--detach", "c2"])
        .current_dir(&b)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    let spec: Value =
        serde_json::from_slice(&std::fs::read(b.join("config.json")).unwrap()).unwrap();
    assert_eq!(spec["annotations"]["io.labgpu.owner"], "bob");
    let b2 = bundle(&env, json!({"labgpu.user": "carol"}));
    let arg = format!("--bundle={}", b2.display());
    let out = labgpu(&env.policy, &["restore", &arg, "c3"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    let spec: Value =
        serde_json::from_slice(&std::fs::read(b2.join("config.json")).unwrap()).unwrap();
    assert_eq!(
        spec["linux"]["devices"],
        json!([]),
        "carol has no GPU, so no control nodes either"
    );
}

/// A refusal: exit non-zero, runc never runs, config.json untouched, one JSON error line in
/// the --log file and the same sentence on stderr.
fn assert_refused(env: &Env, annotations: Value, expect: &str) {
    let _ = std::fs::remove_file(env.dir.path().join("runc-out/argv"));
    let b = bundle(env, annotations);
    let before = std::fs::read(b.join("config.json")).unwrap();
    let log = env.dir.path().join("refusal.json");
    let _ = std::fs::remove_file(&log);
    let out = labgpu(
        &env.policy,
        &[
            "--log",
            log.to_str().unwrap(),
            "--log-format",
            "json",
            "create",
            "--bundle",
            b.to_str().unwrap(),
            "c9",
        ],
    )
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        recorded_argv(env.dir.path()).is_none(),
        "runc ran despite the refusal"
    );
    assert!(out.stdout.is_empty(), "stdout is containerd's");
    assert_eq!(
        std::fs::read(b.join("config.json")).unwrap(),
        before,
        "config.json changed"
    );
    let line = std::fs::read_to_string(&log).unwrap();
    assert_eq!(line.lines().count(), 1);
    let v: Value = serde_json::from_str(line.trim()).unwrap();
    assert_eq!(v["level"], "error");
    let msg = v["msg"].as_str().unwrap();
    assert!(msg.starts_with("labgpu: ") && msg.contains(expect), "{msg}");
    assert!(!msg.contains('\n'), "one sentence: {msg}");
    assert_eq!(stderr(&out).trim(), msg);
}

#[test]
fn refusals_fail_closed_with_one_sentence() {
    let env = setup("");
    assert_refused(&env, json!({}), "has no labgpu.user label or annotation");
    assert_refused(
        &env,
        json!({"labgpu.user": "mallory"}),
        "owner \"mallory\" is not a user in",
    );
    std::fs::write(&env.policy, "version = 1\n[users.alice]\ngpuz = [0]\n").unwrap();
    assert_refused(
        &env,
        json!({"labgpu.user": "alice"}),
        "policy.toml line 3 column 1: unknown field `gpuz`",
    );
    std::fs::remove_file(&env.policy).unwrap();
    assert_refused(
        &env,
        json!({"labgpu.user": "alice"}),
        "cannot read policy file",
    );
}

#[test]
fn refusal_for_missing_gpu_mount_source_and_runc() {
    let env = setup("[users.dave]\ngpus = [7]\n[users.erin]\nmounts = [{ source = \"/nonexistent/erin\", destination = \"/w\" }]\n");
    assert_refused(
        &env,
        json!({"labgpu.user": "dave"}),
        "GPU 7 is not present on this host",
    );
    assert_refused(
        &env,
        json!({"labgpu.user": "erin"}),
        "mount source /nonexistent/erin",
    );
    let text = std::fs::read_to_string(&env.policy).unwrap();
    std::fs::write(
        &env.policy,
        text.replace(
            env.dir.path().join("fake-runc").to_str().unwrap(),
            "/nonexistent/runc",
        ),
    )
    .unwrap();
    assert_refused(
        &env,
        json!({"labgpu.user": "alice"}),
        "runc /nonexistent/runc",
    );
}

#[test]
fn malformed_config_json_is_refused() {
    let env = setup("");
    let b = bundle(&env, json!({}));
    std::fs::write(b.join("config.json"), "{not json").unwrap();
    let out = labgpu(
        &env.policy,
        &["create", "--bundle", b.to_str().unwrap(), "c1"],
    )
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("config.json is not valid JSON"),
        "{}",
        stderr(&out)
    );
    assert!(recorded_argv(env.dir.path()).is_none());
}

fn runc_state(env: &Env, id: &str, labels: &[&str]) -> std::path::PathBuf {
    let root = env.dir.path().join("runc-root");
    std::fs::create_dir_all(root.join(id)).unwrap();
    std::fs::write(
        root.join(id).join("state.json"),
        json!({"id": id, "config": {"labels": labels}}).to_string(),
    )
    .unwrap();
    root
}

#[test]
fn exec_process_is_sanitized_and_argv_kept() {
    let env = setup("");
    let text = std::fs::read_to_string(&env.policy).unwrap();
    std::fs::write(
        &env.policy,
        text.replace("gpus = [0, 1]", "gpus = [0, 1]\nrun_as = \"owner\""),
    )
    .unwrap();
    let root = runc_state(&env, "c1", &["io.labgpu.owner=alice", "bundle=/b"]);
    let process = env.dir.path().join("runc-process123");
    let all = json!(["CAP_CHOWN", "CAP_SYS_ADMIN", "CAP_NET_ADMIN"]);
    std::fs::write(
        &process,
        json!({"user": {"uid": 0, "gid": 0, "additionalGids": [0]}, "args": ["id"],
        "env": ["NVIDIA_VISIBLE_DEVICES=all"], "cwd": "/", "apparmorProfile": "unconfined",
        "capabilities": {"bounding": all, "effective": all, "permitted": all}})
        .to_string(),
    )
    .unwrap();
    let args = [
        "--root",
        root.to_str().unwrap(),
        "exec",
        "--process",
        process.to_str().unwrap(),
        "--detach",
        "--pid-file",
        "/tmp/e.pid",
        "c1",
    ];
    let out = labgpu(&env.policy, &args).output().unwrap();
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    assert_eq!(recorded_argv(env.dir.path()).unwrap(), args);
    let p: Value = serde_json::from_slice(&std::fs::read(&process).unwrap()).unwrap();
    for set in ["bounding", "effective", "permitted"] {
        assert_eq!(p["capabilities"][set], json!(["CAP_CHOWN"]), "{set}");
    }
    assert_eq!(p["user"], json!({"uid": 1001, "gid": 1001}));
    assert_eq!(p["noNewPrivileges"], true);
    assert_eq!(p["env"], json!(["NVIDIA_VISIBLE_DEVICES=void"]));
    assert!(p.get("apparmorProfile").is_none());
}

#[test]
fn exec_refusals() {
    let env = setup("");
    let root = runc_state(&env, "c1", &["io.labgpu.owner=zed"]);
    let r = root.to_str().unwrap();
    for (args, expect) in [
        (
            vec!["--root", r, "exec", "--cap", "CAP_SYS_ADMIN", "c1", "sh"],
            "exec flag --cap",
        ),
        (
            vec!["--root", r, "exec", "--apparmor=unconfined", "c1", "sh"],
            "exec flag --apparmor",
        ),
        (
            vec!["--root", r, "exec", "c1", "sh"],
            "created for \"zed\", who is no longer in",
        ),
        (
            vec!["--root", r, "exec", "missing", "sh"],
            "cannot read runc state",
        ),
    ] {
        let out = labgpu(&env.policy, &args).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(stderr(&out).contains(expect), "{args:?}: {}", stderr(&out));
        assert!(
            recorded_argv(env.dir.path()).is_none(),
            "{args:?} reached runc"
        );
    }
}

#[test]
fn update_refuses_device_changes_and_replays_stdin() {
    let env = setup("");
    let run = |input: &str| {
        let mut child = labgpu(&env.policy, &["update", "--resources", "-", "c1"])
            .env("FAKE_STDIN", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    };
    let ok = r#"{"memory":{"limit":67108864}}"#;
    let out = run(ok);
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    assert_eq!(
        std::fs::read_to_string(env.dir.path().join("runc-out/stdin")).unwrap(),
        ok
    );
    std::fs::remove_file(env.dir.path().join("runc-out/argv")).unwrap();
    let out = run(r#"{"devices":[{"allow":true,"type":"c","major":195,"access":"rwm"}]}"#);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("updating device rules"),
        "{}",
        stderr(&out)
    );
    assert!(recorded_argv(env.dir.path()).is_none());
}

/// `docker update` cannot raise one of carol's containers above her ceiling: what reaches
/// runc is cut; runc's own limit flags are refused.
#[test]
fn update_is_cut_to_the_owners_ceiling() {
    let env = setup("memory = \"64m\"\npids = 50");
    let root = env.dir.path().join("state");
    std::fs::create_dir_all(root.join("c2")).unwrap();
    std::fs::write(
        root.join("c2/state.json"),
        r#"{"id":"c2","config":{"labels":["io.labgpu.owner=carol"]}}"#,
    )
    .unwrap();
    let root_arg = format!("--root={}", root.display());
    let mut child = labgpu(&env.policy, &[&root_arg, "update", "--resources=-", "c2"])
        .env("FAKE_STDIN", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(br#"{"memory":{"limit":1073741824,"swap":2147483648},"pids":{"limit":0}}"#)
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    let sent: Value =
        serde_json::from_slice(&std::fs::read(env.dir.path().join("runc-out/stdin")).unwrap())
            .unwrap();
    assert_eq!(
        sent,
        json!({"memory": {"limit": 67108864, "swap": 2147483648_i64}, "pids": {"limit": 0}})
    );
    std::fs::remove_file(env.dir.path().join("runc-out/argv")).unwrap();
    let out = labgpu(&env.policy, &[&root_arg, "update", "--memory", "1g", "c2"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("update flag --memory is not allowed for carol's containers"),
        "{}",
        stderr(&out)
    );
    assert!(recorded_argv(env.dir.path()).is_none());
}

#[test]
fn version_answers_like_runc() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        "version = 1\n[runtime]\nrunc = \"/usr/sbin/runc\"\n",
    )
    .unwrap();
    let out = labgpu(&policy, &["--version"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("runc version "), "{text}");
    assert!(lines.last().unwrap().starts_with("labgpu: "), "{text}");
    assert_eq!(
        text.matches("version").count(),
        1,
        "docker parses the line with 'version': {text}"
    );
}
