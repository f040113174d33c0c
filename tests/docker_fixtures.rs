//! The edits applied to config.json files exactly as Docker 20.10 wrote them
//! (tests/fixtures/docker20, captured by integration/capture-fixtures.sh), plus the shapes
//! newer Docker adds (CDI device injection, createRuntime hooks), built from them.

use std::collections::BTreeSet;
use std::path::Path;

use labgpu::decide::{decide, process_rules, Decision};
use labgpu::edits::{self, EditError, Report};
use labgpu::gpu::{DevNode, Gpu, Numbering, Snapshot};
use labgpu::policy::Policy;
use serde_json::{json, Value};

const DOCKER_ROOT: &str = "/tmp/labgpu-cap.iVUI/docker";

/// Four GPUs (195:0..3), nvidiactl and the uvm pair, as a devfs scan would report them.
fn inventory() -> Snapshot {
    let dev = Path::new("/dev");
    Snapshot {
        source: "test",
        gpus: (0..4)
            .map(|n| Gpu::new(n, DevNode::new(&format!("nvidia{n}"), dev, 195, n.into())))
            .collect(),
        control: vec![
            DevNode::new("nvidiactl", dev, 195, 255),
            DevNode::new("nvidia-uvm", dev, 511, 0),
            DevNode::new("nvidia-uvm-tools", dev, 511, 1),
        ],
        majors: BTreeSet::from([195, 511]),
        numbering: Numbering::Minor,
    }
}

fn policy() -> Policy {
    let text = format!(
        "version = 1\n[runtime]\ndocker_root = \"{DOCKER_ROOT}\"\n\
         [users.alice]\nuid = 1001\ngid = 1001\ngpus = [0, 1]\nrun_as = \"owner\"\n\
         [users.bob]\ngpus = [2]\n[users.carol]\n"
    );
    Policy::parse(Path::new("/etc/labgpu/policy.toml"), text.as_bytes()).unwrap()
}

fn fixture(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/docker20")
        .join(name);
    serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap()
}

/// The container id Docker used, from its /etc/hostname bind.
fn container_id(spec: &Value) -> String {
    let m = spec["mounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["destination"] == "/etc/hostname")
        .unwrap();
    Path::new(m["source"].as_str().unwrap())
        .parent()
        .unwrap()
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_string()
}

/// The decision for `spec`, with every local volume it binds a plain directory of Docker's
/// (the runtime reads that from the mount table; these fixtures have none).
fn decision_for(spec: &Value, owner: &str) -> Decision {
    let mut d = decide(
        &policy(),
        Some(owner),
        &inventory(),
        DOCKER_ROOT.into(),
        &container_id(spec),
    )
    .unwrap();
    for m in spec["mounts"].as_array().into_iter().flatten() {
        let source = Path::new(m["source"].as_str().unwrap_or_default());
        if let Some((name, _)) = labgpu::volumes::volume_of(source, Path::new(DOCKER_ROOT)) {
            d.volume_backings.insert(name, Vec::new());
        }
    }
    d
}

fn edit(name: &str, owner: &str) -> Result<(Value, Report), EditError> {
    let mut spec = fixture(name);
    let d = decision_for(&spec, owner);
    let mut report = Report::default();
    edits::apply_all(&mut spec, &d, &mut report)?;
    Ok((spec, report))
}

fn device_paths(spec: &Value) -> Vec<String> {
    spec["linux"]["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["path"].as_str().unwrap().to_string())
        .collect()
}

/// (major, minor) pairs the device cgroup grants read or write on, minor None = any.
fn rw_grants(spec: &Value) -> Vec<(Option<i64>, Option<i64>)> {
    spec["linux"]["resources"]["devices"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| {
            r["allow"] == true && r["access"].as_str().unwrap_or("rwm").contains(['r', 'w'])
        })
        .map(|r| {
            (
                r["major"].as_i64().filter(|n| *n >= 0),
                r["minor"].as_i64().filter(|n| *n >= 0),
            )
        })
        .collect()
}

const ALLOWED_CAPS: [&str; 11] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

#[test]
fn plain_run_as_alice() {
    let original = fixture("plain.json");
    let (spec, report) = edit("plain.json", "alice").unwrap();
    assert_eq!(
        device_paths(&spec),
        [
            "/dev/nvidia0",
            "/dev/nvidia1",
            "/dev/nvidiactl",
            "/dev/nvidia-uvm",
            "/dev/nvidia-uvm-tools"
        ]
    );
    let grants = rw_grants(&spec);
    for gpu in [
        (Some(195), Some(0)),
        (Some(195), Some(1)),
        (Some(195), Some(255)),
        (Some(511), Some(0)),
    ] {
        assert!(grants.contains(&gpu), "{gpu:?} missing from {grants:?}");
    }
    assert!(!grants
        .iter()
        .any(|g| *g == (Some(195), Some(2)) || g.1.is_none() && g.0 == Some(195)));
    for set in ["bounding", "effective", "permitted"] {
        assert_eq!(
            spec["process"]["capabilities"][set],
            json!(ALLOWED_CAPS),
            "{set}"
        );
    }
    assert_eq!(spec["process"]["noNewPrivileges"], true);
    assert_eq!(spec["process"]["user"], json!({"uid": 1001, "gid": 1001}));
    assert!(spec["process"]["env"]
        .as_array()
        .unwrap()
        .contains(&json!("NVIDIA_VISIBLE_DEVICES=void")));
    assert_eq!(spec["annotations"]["io.labgpu.owner"], "alice");
    assert_eq!(spec["annotations"]["io.labgpu.gpus"], "0,1");
    assert_eq!(
        spec["annotations"]["io.labgpu.policy-sha256"]
            .as_str()
            .unwrap()
            .len(),
        64
    );
    // Everything labgpu does not own is as Docker wrote it.
    for key in ["ociVersion", "root", "hostname", "mounts"] {
        assert_eq!(spec[key], original[key], "{key}");
    }
    for key in ["seccomp", "readonlyPaths", "namespaces", "cgroupsPath"] {
        assert_eq!(spec["linux"][key], original["linux"][key], "linux.{key}");
    }
    // Docker 20.10's masked paths first and in order; later Dockers' additions after them.
    let masked = spec["linux"]["maskedPaths"].as_array().unwrap();
    let docker = original["linux"]["maskedPaths"].as_array().unwrap();
    assert_eq!(&masked[..docker.len()], &docker[..]);
    assert!(masked.contains(&json!("/sys/devices/virtual/powercap")));
    assert_eq!(
        spec["process"]["oomScoreAdj"],
        original["process"]["oomScoreAdj"]
    );
    assert!(
        report
            .removed
            .iter()
            .any(|r| r.contains("CAP_MKNOD") && r.contains("CAP_NET_RAW")),
        "{report:?}"
    );
}

#[test]
fn carol_without_gpus_gets_no_nvidia_node_at_all() {
    let (spec, _) = edit("plain.json", "carol").unwrap();
    assert!(device_paths(&spec).is_empty());
    assert!(!rw_grants(&spec)
        .iter()
        .any(|(major, _)| matches!(major, Some(195 | 511))));
    assert_eq!(
        spec["process"]["user"]["uid"], 0,
        "run_as defaults to the image user"
    );
}

#[test]
fn privileged_is_refused() {
    let err = edit("privileged.json", "alice").unwrap_err();
    assert!(matches!(err, EditError::Privileged { .. }), "{err}");
    assert!(err
        .to_string()
        .contains("allow_privileged in [defaults] or [users.alice]"));
}

#[test]
fn device_flag_for_someone_elses_gpu_is_removed() {
    let original = fixture("device.json");
    assert!(
        device_paths(&original).contains(&"/dev/nvidia2".to_string()),
        "fixture has --device nvidia2"
    );
    let (spec, report) = edit("device.json", "alice").unwrap();
    assert!(!device_paths(&spec).contains(&"/dev/nvidia2".to_string()));
    assert!(!rw_grants(&spec).contains(&(Some(195), Some(2))));
    assert!(report.removed.contains(&"device /dev/nvidia2".to_string()));
}

#[test]
fn wildcard_gpu_cgroup_rule_is_narrowed_to_mknod() {
    let (spec, _) = edit("cgroup-rule.json", "bob").unwrap();
    let rules = spec["linux"]["resources"]["devices"].as_array().unwrap();
    // Docker writes `c 195:* rwm` with minor -1.
    let wildcard: Vec<&Value> = rules
        .iter()
        .filter(|r| r["major"] == 195 && r["minor"] == -1)
        .collect();
    assert_eq!(wildcard.len(), 1);
    assert_eq!(wildcard[0]["access"], "m");
    assert_eq!(
        rw_grants(&spec)
            .iter()
            .filter(|g| g.0 == Some(195))
            .collect::<Vec<_>>(),
        [&(Some(195), Some(2)), &(Some(195), Some(255))]
    );
}

#[test]
fn gpus_flag_hook_and_env_are_neutralized() {
    let original = fixture("gpus-hook.json");
    assert_eq!(original["hooks"]["prestart"].as_array().unwrap().len(), 1);
    let (spec, _) = edit("gpus-hook.json", "bob").unwrap();
    assert_eq!(spec["hooks"]["prestart"], json!([]));
    let env = spec["process"]["env"].as_array().unwrap();
    assert_eq!(
        env.iter()
            .filter(|e| e.as_str().unwrap().starts_with("NVIDIA_VISIBLE_DEVICES="))
            .count(),
        1
    );
    assert!(env.contains(&json!("NVIDIA_VISIBLE_DEVICES=void")));
    let (spec, _) = edit("labels.json", "bob").unwrap();
    assert!(spec["process"]["env"]
        .as_array()
        .unwrap()
        .contains(&json!("NVIDIA_VISIBLE_DEVICES=void")));
    assert!(!spec["process"]["env"]
        .as_array()
        .unwrap()
        .contains(&json!("NVIDIA_VISIBLE_DEVICES=all")));
}

#[test]
fn cap_add_all_and_nnp_false_are_cut() {
    let original = fixture("caps-all.json");
    assert!(original["process"]["capabilities"]["bounding"]
        .as_array()
        .unwrap()
        .contains(&json!("CAP_SYS_ADMIN")));
    let (spec, _) = edit("caps-all.json", "bob").unwrap();
    for set in ["bounding", "effective", "permitted"] {
        let caps: BTreeSet<&str> = spec["process"]["capabilities"][set]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap())
            .collect();
        assert_eq!(caps, ALLOWED_CAPS.into_iter().collect(), "{set}");
    }
    assert_eq!(spec["process"]["noNewPrivileges"], true);
}

#[test]
fn host_binds_and_namespaces_are_refused() {
    let err = edit("binds.json", "alice").unwrap_err();
    assert!(matches!(err, EditError::BindNotAllowed { .. }), "{err}");
    assert!(err.to_string().contains("/tmp/labgpu-cap.iVUI/x"), "{err}");
    let err = edit("hostns.json", "alice").unwrap_err();
    assert!(matches!(err, EditError::HostNamespace { .. }), "{err}");
}

#[test]
fn docker_init_volumes_shared_network_and_user_pass() {
    for name in ["init.json", "volume.json", "netcontainer.json", "user.json"] {
        let (spec, _) = edit(name, "bob").unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(spec["annotations"]["io.labgpu.owner"], "bob", "{name}");
    }
    let (spec, _) = edit("user.json", "bob").unwrap();
    assert_eq!(
        spec["process"]["user"],
        json!({"uid": 1000, "gid": 1000, "additionalGids": [1000]})
    );
}

#[test]
fn exec_privileged_process_is_cut() {
    let mut process = fixture("exec-privileged.json");
    assert!(
        process["capabilities"]["bounding"]
            .as_array()
            .unwrap()
            .len()
            > 30
    );
    let p = policy();
    let rules = process_rules(&p, Some("alice"), p.user("alice")).unwrap();
    edits::process::sanitize(&mut process, &rules, &mut Report::default()).unwrap();
    for set in ["bounding", "effective", "permitted"] {
        let caps: BTreeSet<&str> = process["capabilities"][set]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap())
            .collect();
        assert_eq!(caps, ALLOWED_CAPS.into_iter().collect(), "{set}");
    }
    assert_eq!(process["user"], json!({"uid": 1001, "gid": 1001}));
    assert_eq!(process["noNewPrivileges"], true);
}

#[test]
fn label_is_read_from_a_real_config_v2_json() {
    let dir = tempfile::tempdir().unwrap();
    let v2 = fixture("config.v2.json");
    let id = v2["ID"].as_str().unwrap();
    let cdir = dir.path().join("containers").join(id);
    std::fs::create_dir_all(&cdir).unwrap();
    std::fs::write(cdir.join("config.v2.json"), v2.to_string()).unwrap();
    let owner = labgpu::owner::find_owner(&json!({}), id, "labgpu.user", dir.path()).unwrap();
    assert_eq!(owner.as_deref(), Some("alice"));
}

/// Docker 25+ resolves `--device nvidia.com/gpu=all` through CDI itself: device nodes, the
/// driver's library binds and nvidia-cdi-hook createContainer hooks land in the spec.
#[test]
fn docker_cdi_injection_is_neutralized_or_refused() {
    let mut spec = fixture("plain.json");
    spec["linux"]["devices"] = json!([]);
    let devices = spec["linux"]["devices"].as_array_mut().unwrap();
    for n in 0..4 {
        devices.push(json!({"path": format!("/dev/nvidia{n}"), "type": "c", "major": 195, "minor": n, "fileMode": 438}));
    }
    devices.push(json!({"path": "/dev/nvidiactl", "type": "c", "major": 195, "minor": 255}));
    spec["hooks"] = json!({
        "createRuntime": [{"path": "/usr/bin/dockerd", "args": ["libnetwork-setkey", "-exec-root=/var/run/docker", "abc", "def"]}],
        "createContainer": [{"path": "/usr/bin/nvidia-cdi-hook", "args": ["nvidia-cdi-hook", "update-ldcache"]}]
    });
    spec["annotations"] = json!({"cdi.k8s.io/nvidia": "nvidia.com/gpu=all"});
    let d = decision_for(&spec, "bob");
    let mut ok = spec.clone();
    edits::apply_all(&mut ok, &d, &mut Report::default()).unwrap();
    assert_eq!(
        device_paths(&ok),
        [
            "/dev/nvidia2",
            "/dev/nvidiactl",
            "/dev/nvidia-uvm",
            "/dev/nvidia-uvm-tools"
        ]
    );
    assert_eq!(ok["hooks"]["createContainer"], json!([]));
    assert_eq!(
        ok["hooks"]["createRuntime"], spec["hooks"]["createRuntime"],
        "Docker's own hook stays"
    );
    assert!(ok["annotations"].get("cdi.k8s.io/nvidia").is_none());
    // The driver libraries CDI binds from the host are host paths like any other.
    spec["mounts"].as_array_mut().unwrap().push(json!({"destination": "/usr/lib/x86_64-linux-gnu/libcuda.so.1",
        "type": "bind", "source": "/usr/lib/x86_64-linux-gnu/libcuda.so.550.54", "options": ["ro", "nosuid", "nodev", "rbind", "rprivate"]}));
    let err = edits::apply_all(&mut spec, &d, &mut Report::default()).unwrap_err();
    assert!(err.to_string().contains("libcuda.so.550.54"), "{err}");
}

/// A `RUN --mount=type=cache` step as dockerd 20.10's BuildKit wrote its spec (with labgpu as
/// the runc on dockerd's PATH, which Docker 26 does through DOCKER_BUILDKIT_RUNC_COMMAND):
/// containerd's default capabilities and seccomp profile, BuildKit's resolv.conf and hosts,
/// the cache mount as a bind of an overlay2 layer.
fn build_step_decision(build_step: bool) -> Decision {
    let mut d = labgpu::decide::decide_for_user(
        &policy(),
        None,
        None,
        &inventory(),
        DOCKER_ROOT.into(),
        "movtbtsw7pv0lctu2tzfwgg70",
    )
    .unwrap();
    d.build_step = build_step;
    d.process.no_new_privileges = true;
    d
}

#[test]
fn a_buildkit_run_step_is_confined_as_a_container() {
    let mut spec = fixture("buildkit-step.json");
    let mut report = Report::default();
    edits::apply_all(&mut spec, &build_step_decision(true), &mut report).unwrap();
    let caps: BTreeSet<&str> = spec["process"]["capabilities"]["bounding"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let defaults = process_rules(&policy(), None, None).unwrap().capabilities;
    assert_eq!(
        caps,
        defaults.iter().map(String::as_str).collect::<BTreeSet<_>>()
    );
    assert!(!caps.contains("CAP_NET_RAW") && !caps.contains("CAP_MKNOD"));
    assert_eq!(spec["process"]["noNewPrivileges"], true);
    let allowed: Vec<&str> = spec["linux"]["seccomp"]["syscalls"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["action"] == "SCMP_ACT_ALLOW" && r.get("args").is_none())
        .flat_map(|r| r["names"].as_array().unwrap())
        .filter_map(Value::as_str)
        .collect();
    assert!(allowed.contains(&"write") && !allowed.contains(&"mount"));
    assert!(spec["mounts"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["destination"] == "/c"));
    assert!(device_paths_or_empty(&spec)
        .iter()
        .all(|p| !p.contains("nvidia")));
}

#[test]
fn the_same_spec_outside_buildkits_executor_is_refused() {
    let mut spec = fixture("buildkit-step.json");
    let e = edits::apply_all(
        &mut spec,
        &build_step_decision(false),
        &mut Report::default(),
    )
    .unwrap_err();
    assert!(
        matches!(e, EditError::BindNotAllowed { .. }),
        "BuildKit's resolv.conf is no container's: {e}"
    );
}

fn device_paths_or_empty(spec: &Value) -> Vec<String> {
    spec["linux"]["devices"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|d| d["path"].as_str().map(str::to_string))
        .collect()
}
