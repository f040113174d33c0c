//! Pool GPUs through the real binary: concurrent creates never share a GPU, a create killed
//! with SIGKILL (waiting for the lock, or after allocating) leaves nothing held, and a
//! container that asked for nothing gets no pool GPU. runc is a script that sleeps (the
//! allocation lives while the process that made it does) and records nothing.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::*;
use labgpu::pools::{State, Store};
use serde_json::{json, Value};

struct Env {
    dir: tempfile::TempDir,
    policy: PathBuf,
    store: Store,
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(self.store.dir());
    }
}

/// Users u0..u19, each may hold one GPU of pool "shared" (GPUs 0-3); alice may hold two.
fn setup(runc_sleep: u32) -> Env {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let dev = fake_gpus(dir.path());
    let runc = dir.path().join("sleepy-runc");
    std::fs::write(&runc, format!("#!/bin/sh\nexec sleep {runc_sleep}\n")).unwrap();
    std::fs::set_permissions(&runc, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut text = format!(
        "version = 1\n[runtime]\nrunc = \"{}\"\ndocker_root = \"{}\"\nlog = \"{}\"\n\
         [gpus]\ndev_root = \"{}\"\n[pools.shared]\ngpus = [0, 1, 2, 3]\n\
         [users.alice]\npools = {{ shared = 2 }}\n",
        runc.display(),
        dir.path().join("docker").display(),
        dir.path().join("labgpu.log").display(),
        dev.display()
    );
    for i in 0..20 {
        text.push_str(&format!("[users.u{i}]\npools = {{ shared = 1 }}\n"));
    }
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, text).unwrap();
    let store = Store::for_policy(&policy);
    let _ = std::fs::remove_dir_all(store.dir());
    Env { dir, policy, store }
}

/// Docker's record of container `id` (owner label, `--gpus count`) and its bundle.
fn container(env: &Env, id: &str, owner: &str, count: Option<i64>) -> PathBuf {
    let rec = env.dir.path().join("docker/containers").join(id);
    std::fs::create_dir_all(&rec).unwrap();
    let requests = match count {
        Some(n) => json!([{"Driver": "", "Count": n, "Capabilities": [["gpu"]]}]),
        None => Value::Null,
    };
    std::fs::write(
        rec.join("hostconfig.json"),
        json!({"DeviceRequests": requests}).to_string(),
    )
    .unwrap();
    std::fs::write(
        rec.join("config.v2.json"),
        json!({"Config": {"Labels": {"labgpu.user": owner}}}).to_string(),
    )
    .unwrap();
    let bundle = env.dir.path().join("bundles").join(id);
    std::fs::create_dir_all(&bundle).unwrap();
    let spec = json!({
        "ociVersion": "1.0.2",
        "process": {"user": {"uid": 0, "gid": 0}, "args": ["sh"], "env": [], "cwd": "/",
                    "capabilities": {"bounding": [], "effective": []}},
        "root": {"path": "rootfs"},
        "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
        "linux": {
            "namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}],
            "seccomp": {"defaultAction": "SCMP_ACT_ERRNO", "syscalls": []},
            "maskedPaths": ["/proc/kcore"], "readonlyPaths": ["/proc/sys"],
            "resources": {"devices": [{"allow": false, "access": "rwm"}]}
        }
    });
    std::fs::write(bundle.join("config.json"), spec.to_string()).unwrap();
    bundle
}

fn create(env: &Env, id: &str, bundle: &Path) -> Child {
    let root = env.dir.path().join("runc-root");
    labgpu(
        &env.policy,
        &[
            "--root",
            root.to_str().unwrap(),
            "create",
            "--bundle",
            bundle.to_str().unwrap(),
            id,
        ],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap()
}

/// The GPU minors config.json lets the container read and write.
fn granted(bundle: &Path) -> Vec<i64> {
    let spec: Value =
        serde_json::from_slice(&std::fs::read(bundle.join("config.json")).unwrap()).unwrap();
    spec["linux"]["resources"]["devices"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["allow"] == true && d["major"] == 195 && d["minor"].as_i64() < Some(255))
        .map(|d| d["minor"].as_i64().unwrap())
        .collect()
}

fn state(env: &Env) -> State {
    env.store.read().unwrap()
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < Duration::from_secs(20), "timed out: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn twenty_concurrent_creates_against_four_gpus_never_share_one() {
    let env = setup(8);
    let bundles: Vec<PathBuf> = (0..20)
        .map(|i| container(&env, &format!("c{i}"), &format!("u{i}"), Some(1)))
        .collect();
    let mut children: Vec<Child> = (0..20)
        .map(|i| create(&env, &format!("c{i}"), &bundles[i]))
        .collect();
    // The winners sleep in "runc"; everyone else has been refused by then.
    wait_until("16 refusals", || {
        let mut done = 0;
        for c in children.iter_mut() {
            if matches!(c.try_wait(), Ok(Some(_))) {
                done += 1;
            }
        }
        done == 16
    });
    let st = state(&env);
    let mut held: Vec<&str> = st.entries.iter().map(|e| e.gpu.as_str()).collect();
    held.sort();
    assert_eq!(held, ["0", "1", "2", "3"], "{st:?}");
    let mut minors = Vec::new();
    let mut refusals = 0;
    for (i, mut c) in children.into_iter().enumerate() {
        let running = c.try_wait().unwrap().is_none();
        if running {
            c.kill().unwrap();
            c.wait().unwrap();
            let g = granted(&bundles[i]);
            assert_eq!(g.len(), 1, "c{i}: {g:?}");
            let e = st.entries.iter().find(|e| e.container == format!("c{i}"));
            assert_eq!(e.map(|e| e.minor as i64), Some(g[0]), "c{i}");
            minors.extend(g);
        } else {
            let out = c.wait_with_output().unwrap();
            let err = stderr(&out);
            assert!(
                err.contains("pool \"shared\" has no free GPU: 4 of 4 busy ("),
                "c{i}: {err}"
            );
            assert!(
                granted(&bundles[i]).is_empty(),
                "refused c{i} was rewritten"
            );
            refusals += 1;
        }
    }
    minors.sort();
    assert_eq!((minors, refusals), (vec![0, 1, 2, 3], 16));
}

#[test]
fn a_create_killed_after_allocating_or_while_waiting_leaves_nothing_held() {
    let env = setup(60);
    // Killed while it waits for the lock: it never allocated.
    let b = container(&env, "waiting", "alice", Some(2));
    let lock = std::fs::File::open(env.store.dir().join("lock")).or_else(|_| {
        drop(env.store.lock().unwrap());
        std::fs::File::open(env.store.dir().join("lock"))
    });
    let lock = nix::fcntl::Flock::lock(lock.unwrap(), nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .unwrap();
    let mut c = create(&env, "waiting", &b);
    std::thread::sleep(Duration::from_millis(300));
    assert!(c.try_wait().unwrap().is_none(), "did not wait for the lock");
    c.kill().unwrap();
    c.wait().unwrap();
    drop(lock);
    assert!(state(&env).entries.is_empty());
    // Killed after allocating (it is "runc" by then): its GPUs are free for the next create.
    let mut c = create(&env, "killed", &container(&env, "killed", "alice", Some(2)));
    wait_until("the allocation", || state(&env).entries.len() == 2);
    c.kill().unwrap();
    c.wait().unwrap();
    let b = container(&env, "next", "alice", Some(2));
    let mut next = create(&env, "next", &b);
    wait_until("the next allocation", || {
        state(&env).entries.iter().all(|e| e.container == "next") && !state(&env).entries.is_empty()
    });
    assert_eq!(granted(&b).len(), 2);
    next.kill().unwrap();
    next.wait().unwrap();
}

#[test]
fn no_request_no_pool_gpu_and_the_per_user_maximum_holds() {
    let env = setup(0);
    let quiet = container(&env, "quiet", "alice", None);
    let out = create(&env, "quiet", &quiet).wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(granted(&quiet).is_empty());
    assert!(state(&env).entries.is_empty());
    let b = container(&env, "greedy", "alice", Some(3));
    let out = create(&env, "greedy", &b).wait_with_output().unwrap();
    let err = stderr(&out);
    assert!(
        err.contains("alice may hold at most 2 GPUs of pool \"shared\" ([users.alice] pools) and holds 0: 3 more were asked for"),
        "{err}"
    );
}
