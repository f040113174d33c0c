//! What the fuzz targets share: the caller and the decision they run the rules with, and the
//! invariants a rewritten request or spec must keep whatever the input was. An invariant that
//! fails panics, which libFuzzer reports as a crash like any other.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use labgpu::decide::{Decision, Host, ProcessRules};
use labgpu::gpu::DevNode;
use labgpu::proxy::images::prefixes;
use labgpu::proxy::request::UserCtx;
use labgpu::volumes::Backing;
use serde_json::Value;

/// The owner label every target uses.
pub const OWNER_LABEL: &str = "labgpu.user";
/// The runtime the proxy forces.
pub const RUNTIME: &str = "labgpu";

/// alice, as the proxy's rules see her: homes and /srv/data bindable, /dev/fuse allowed, no
/// privileged mode, no host namespaces, not unconfined (the rules' unit tests use the same).
pub fn user_ctx() -> UserCtx {
    UserCtx {
        name: "alice".into(),
        owner_label: OWNER_LABEL.into(),
        runtime: RUNTIME.into(),
        allow_privileged: false,
        allow_host_namespaces: false,
        allow_host_network: false,
        allow_unconfined: false,
        bind_allow: vec![PathBuf::from("/home/alice"), PathBuf::from("/srv/data")],
        devices: vec![PathBuf::from("/dev/fuse")],
        gpu_dev_root: PathBuf::from("/tmp/fake/dev"),
        image_prefixes: prefixes("{user}/", "alice"),
        writable_volumes: vec!["scratch".into()],
        state_dir: PathBuf::from("/nonexistent/labgpu-fuzz-state"),
        ports: vec![labgpu::fairshare::PortRange {
            start: 20000,
            end: 20099,
        }],
        ceilings: ceilings(),
    }
}

/// alice's fair-share ceilings: 2 CPUs, 1g, 100 tasks, a 64m /dev/shm.
pub fn ceilings() -> labgpu::fairshare::Ceilings {
    use labgpu::fairshare::{ByteSize, Ceiling, Ceilings, Cpus};
    let key = |k: &str| format!("[users.alice] {k}");
    Ceilings {
        cpus: Some(Ceiling {
            value: Cpus::from_hundredths(200),
            key: key("cpus"),
        }),
        memory: Some(Ceiling {
            value: ByteSize(1 << 30),
            key: key("memory"),
        }),
        pids: Some(Ceiling {
            value: 100,
            key: key("pids"),
        }),
        shm_size: Some(Ceiling {
            value: ByteSize(64 << 20),
            key: key("shm_size"),
        }),
    }
}

fn node(name: &str, major: i64, minor: i64) -> DevNode {
    DevNode {
        container_path: format!("/dev/{name}"),
        host_path: PathBuf::from(format!("/fake/{name}")),
        major,
        minor,
    }
}

/// The capabilities alice keeps.
pub const CAPS: [&str; 4] = [
    "CAP_CHOWN",
    "CAP_KILL",
    "CAP_SETUID",
    "CAP_NET_BIND_SERVICE",
];

/// The GPU device numbers alice owns (GPU 0 and the control nodes).
pub const OWNED: [(i64, i64); 3] = [(195, 0), (195, 255), (511, 0)];
pub const NVIDIA_MAJORS: [i64; 2] = [195, 511];

/// alice's create: GPU 0 with nvidiactl and nvidia-uvm, four capabilities, no-new-privileges,
/// run as uid/gid 1001, x86_64 with a 6.1 kernel, and three inspected volumes. runc's state
/// root does not exist, so no other container's namespaces or files are found.
pub fn decision() -> Decision {
    let backing = |fs: &str, source: &str| Backing {
        mount_point: PathBuf::from("/var/lib/docker/volumes/nfs/_data"),
        fs_type: fs.into(),
        source: source.into(),
        root: PathBuf::from("/"),
        shared: false,
    };
    Decision {
        owner: Some("alice".into()),
        gpu_ids: vec![0],
        nodes: OWNED
            .iter()
            .zip(["nvidia0", "nvidiactl", "nvidia-uvm"])
            .map(|(&(major, minor), name)| node(name, major, minor))
            .collect(),
        grants: Vec::new(),
        pool_gpus: Vec::new(),
        nvidia_majors: BTreeSet::from(NVIDIA_MAJORS),
        extra_devices: Vec::new(),
        process: ProcessRules {
            capabilities: CAPS.map(String::from).into(),
            no_new_privileges: true,
            user: Some((1001, 1001)),
            allow_unconfined: false,
            userns: false,
            extra_gids: Vec::new(),
        },
        allow_privileged: false,
        allow_host_namespaces: false,
        allow_host_network: false,
        mounts: Vec::new(),
        bind_allow: vec![PathBuf::from("/home/alice"), PathBuf::from("/srv/data")],
        docker_root: PathBuf::from("/var/lib/docker"),
        volume_backings: BTreeMap::from([
            ("plain".to_string(), Vec::new()),
            ("scratch".to_string(), Vec::new()),
            ("nfs".to_string(), vec![backing("nfs4", "srv:/export")]),
        ]),
        mounted_volumes: BTreeSet::new(),
        cpu_count: 4,
        host: Host::default(),
        seccomp_profiles: Vec::new(),
        runc_root: Some(PathBuf::from("/nonexistent/labgpu-fuzz-runc")),
        cdi: None,
        ceilings: ceilings(),
        user_cgroups: "labgpu".into(),
        cgroup_driver: labgpu::fairshare::cgroup::Driver::Cgroupfs,
        userns: None,
        docker_cdi: Default::default(),
        container_id: "cid".into(),
        policy_sha256: "00".repeat(32),
        build_step: false,
    }
}

/// A key as Go's encoding/json (1.21+) matches it to a struct field, for the keys that can
/// match an ASCII field name: ASCII upper-cased, and the three non-ASCII letters whose case
/// orbit holds an ASCII letter (Kelvin sign, long s, dotless i). Written apart from the
/// proxy's own folding, so that the two are checked against each other.
pub fn go_fold(key: &str) -> String {
    key.chars()
        .map(|c| match c {
            '\u{212A}' => 'K',
            '\u{017F}' => 'S',
            '\u{0131}' => 'I',
            c => c.to_ascii_uppercase(),
        })
        .collect()
}

/// The value dockerd would bind to `field` in `obj`: the one key that folds to it. Panics if
/// two keys do (the proxy must have refused such a body), or if the one key is not spelled
/// `field` (the proxy canonicalizes every key it checks, so what it read is what Go reads).
pub fn go_field<'a>(obj: &'a serde_json::Map<String, Value>, field: &str) -> Option<&'a Value> {
    let want = go_fold(field);
    let keys: Vec<&String> = obj.keys().filter(|k| go_fold(k) == want).collect();
    assert!(
        keys.len() <= 1,
        "two keys bind to {field} after the rewrite: {keys:?}"
    );
    if let Some(k) = keys.first() {
        assert_eq!(
            k.as_str(),
            field,
            "{k:?} binds to {field} but was not renamed"
        );
    }
    keys.first().map(|k| &obj[k.as_str()])
}
