//! The runtime's policy cache (src/policy_cache.rs) as an admin and an attacker meet it: a
//! changed policy is obeyed on the very next create, a broken one still fails closed while
//! passthroughs keep working, and only an entry root alone could have written is believed.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use common::*;
use labgpu::policy_cache::{entry_path, SETTLE};
use serde_json::{json, Value};

struct Env {
    dir: tempfile::TempDir,
    policy: PathBuf,
    runc_a: PathBuf,
    runc_b: PathBuf,
    bundle: PathBuf,
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(entry_path(&self.policy));
    }
}

fn setup() -> Env {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let dev = fake_gpus(dir.path());
    let runc_a = fake_runc(&dir.path().join("a"));
    let runc_b = fake_runc(&dir.path().join("b"));
    let policy = policy(dir.path(), &dev, &runc_a, "");
    let bundle = dir.path().join("bundle");
    std::fs::create_dir_all(&bundle).unwrap();
    // Only a policy whose ctime has settled is cached.
    std::thread::sleep(SETTLE + std::time::Duration::from_millis(100));
    Env {
        dir,
        policy,
        runc_a,
        runc_b,
        bundle,
    }
}

impl Env {
    fn create(&self, id: &str) -> std::process::Output {
        let spec = json!({
            "ociVersion": "1.0.2-dev",
            "process": {"user": {"uid": 0, "gid": 0}, "args": ["sh"], "env": ["PATH=/bin"], "cwd": "/",
                "capabilities": {"bounding": ["CAP_CHOWN"], "effective": ["CAP_CHOWN"]}},
            "root": {"path": "rootfs"},
            "annotations": {"labgpu.user": "alice"},
            "linux": {"namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}],
                "seccomp": {"defaultAction": "SCMP_ACT_ERRNO", "syscalls": []},
                "maskedPaths": ["/proc/kcore"], "readonlyPaths": ["/proc/sys"]}
        });
        std::fs::write(self.bundle.join("config.json"), spec.to_string()).unwrap();
        let b = self.bundle.to_str().unwrap();
        labgpu(&self.policy, &["create", "--bundle", b, id])
            .output()
            .unwrap()
    }

    fn config(&self) -> Value {
        serde_json::from_slice(&std::fs::read(self.bundle.join("config.json")).unwrap()).unwrap()
    }

    /// Which fake runc a passthrough `state` reached: "a", "b" or neither.
    fn state_reaches(&self) -> &'static str {
        for d in ["a", "b"] {
            let _ = std::fs::remove_file(self.dir.path().join(d).join("runc-out/argv"));
        }
        labgpu(&self.policy, &["state", "id1"]).output().unwrap();
        if recorded_argv(&self.dir.path().join("a")).is_some() {
            "a"
        } else if recorded_argv(&self.dir.path().join("b")).is_some() {
            "b"
        } else {
            "neither"
        }
    }
}

fn gpu_paths(config: &Value) -> Vec<String> {
    config["linux"]["devices"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|d| d["path"].as_str())
        .filter(|p| p.starts_with("/dev/nvidia") && p[11..].parse::<u32>().is_ok())
        .map(String::from)
        .collect()
}

fn write_policy_text(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

#[test]
fn a_cached_create_writes_the_same_spec_and_a_change_is_obeyed_at_once() {
    let env = setup();
    let first = env.create("c1");
    assert_eq!(first.status.code(), Some(7), "{}", stderr(&first));
    let entry = entry_path(&env.policy);
    assert!(entry.is_file(), "no cache entry at {}", entry.display());
    let uncached = env.config();
    let second = env.create("c2");
    assert_eq!(second.status.code(), Some(7), "{}", stderr(&second));
    assert_eq!(
        env.config(),
        uncached,
        "the cached policy gave another spec"
    );
    assert_eq!(gpu_paths(&uncached), ["/dev/nvidia0", "/dev/nvidia1"]);

    // The admin takes GPU 1 from alice and points runc elsewhere: the very next create,
    // with no pause, obeys.
    let text = std::fs::read_to_string(&env.policy).unwrap();
    let changed = text
        .replace("gpus = [0, 1]", "gpus = [0]")
        .replace(env.runc_a.to_str().unwrap(), env.runc_b.to_str().unwrap());
    write_policy_text(&env.policy, &changed);
    let out = env.create("c3");
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    assert_eq!(gpu_paths(&env.config()), ["/dev/nvidia0"]);
    assert_eq!(env.state_reaches(), "b");

    // A broken policy: create is refused, a passthrough still reaches runc.
    write_policy_text(
        &env.policy,
        &format!("{changed}\n[users.mallory]\nbogus = 1\n"),
    );
    let out = env.create("c4");
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("bogus"), "{}", stderr(&out));
    assert_eq!(env.state_reaches(), "b");
}

#[test]
fn only_an_entry_root_alone_can_write_is_believed() {
    let env = setup();
    let out = env.create("c1");
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    let entry = entry_path(&env.policy);
    assert_eq!(env.state_reaches(), "a");

    // An entry naming another runc is obeyed while root owns it alone, which shows that the
    // passthrough read it rather than the policy...
    let text = std::fs::read_to_string(&entry).unwrap();
    let forged = text.replacen(
        env.runc_a.to_str().unwrap(),
        env.runc_b.to_str().unwrap(),
        1,
    );
    std::fs::write(&entry, &forged).unwrap();
    assert_eq!(env.state_reaches(), "b");
    // ...and ignored once others could have written it, or it is a symlink.
    std::fs::set_permissions(&entry, std::fs::Permissions::from_mode(0o666)).unwrap();
    assert_eq!(env.state_reaches(), "a");
    let elsewhere = env.dir.path().join("elsewhere");
    std::fs::write(&elsewhere, &forged).unwrap();
    std::fs::set_permissions(&elsewhere, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::remove_file(&entry).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &entry).unwrap();
    assert_eq!(env.state_reaches(), "a");
    std::fs::remove_file(&entry).unwrap();
    // An entry for another version of the file is not used either.
    std::fs::write(&entry, &forged).unwrap();
    std::fs::set_permissions(&entry, std::fs::Permissions::from_mode(0o600)).unwrap();
    let policy_text = std::fs::read_to_string(&env.policy).unwrap();
    write_policy_text(&env.policy, &format!("{policy_text}\n# touched\n"));
    assert_eq!(env.state_reaches(), "a");
}
