//! The driver's files for the owner's GPUs, from NVIDIA's CDI spec (see `crate::cdi`).
//!
//! Runs after `nvidia::apply`, which drops every `nvidia-cdi-hook`/`nvidia-ctk` hook the
//! incoming spec carried: the only such hooks left are the ones added here, from the
//! root-owned spec, with an explicit environment.

use serde_json::{json, Map, Value};

use super::{EditError, Report};
use crate::decide::Decision;
use crate::spec::{array_mut, object_mut};

pub fn apply(spec: &mut Value, d: &Decision, report: &mut Report) -> Result<(), EditError> {
    let Some(edits) = &d.cdi else {
        return Ok(());
    };
    let malformed = |field| EditError::Malformed {
        field,
        reason: "not an array".into(),
    };
    let mounts = array_mut(spec, "mounts").ok_or_else(|| malformed("mounts"))?;
    // A user's `-v /usr/lib/…/libcuda.so.1:/usr/lib/…/libcuda.so.1` would pass as a CDI mount
    // (verify too) while writable: the driver's files are mounted only as the spec says.
    mounts.retain(|m| {
        let dest = m
            .get("destination")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let shadowed = edits.mounts.iter().any(|c| c.container_path == dest);
        if shadowed {
            report.removed(format!("mount at {dest} (a driver file from the CDI spec)"));
        }
        !shadowed
    });
    for m in &edits.mounts {
        let mut options = m.options.clone();
        if !options.iter().any(|o| o == "bind" || o == "rbind") {
            options.push("bind".into());
        }
        // Host driver files shared by every user: never writable, never a way to devices or
        // setuid binaries, whatever the spec says.
        for forced in ["ro", "nosuid", "nodev"] {
            if !options.iter().any(|o| o == forced) {
                options.push(forced.into());
            }
        }
        options.retain(|o| o != "rw" && o != "suid" && o != "dev");
        mounts.push(json!({
            "destination": m.container_path,
            "type": "bind",
            "source": m.host_path,
            "options": options,
        }));
    }
    if let Some(process) = spec.get_mut("process").filter(|p| p.is_object()) {
        let env = array_mut(process, "env").ok_or_else(|| malformed("process.env"))?;
        for e in &edits.env {
            let key = e.split('=').next().unwrap_or_default();
            env.retain(|v| v.as_str().and_then(|s| s.split('=').next()) != Some(key));
            env.push(json!(e));
        }
    }
    let hooks = object_mut(spec, "hooks");
    for h in &edits.hooks {
        let mut hook = Map::new();
        hook.insert("path".into(), json!(h.path));
        if !h.args.is_empty() {
            hook.insert("args".into(), json!(h.args));
        }
        hook.insert("env".into(), json!(h.env));
        if let Some(t) = h.timeout {
            hook.insert("timeout".into(), json!(t));
        }
        array_mut(hooks, &h.hook_name)
            .ok_or_else(|| malformed("hooks"))?
            .push(Value::Object(hook));
    }
    report.added(format!(
        "{} driver mounts and {} hooks from {}",
        edits.mounts.len(),
        edits.hooks.len(),
        edits.source.display()
    ));
    Ok(())
}

/// Takes out what dockerd applied from CDI specs (`d.docker_cdi`) before the mount rules
/// see it: a CDI-named GPU (`--device nvidia.com/gpu=2`) is treated like `--device
/// /dev/nvidia2`. Its device node and cgroup rule are the devices edit's (another user's
/// GPU goes, the owner's stays); its mounts, env and hooks go here, whoever's GPU it names,
/// and `apply` then adds the owner's own driver edits from labgpu's `cdi_spec`, exactly as
/// for a container started without `--device`.
pub fn strip_docker_applied(
    spec: &mut Value,
    d: &Decision,
    report: &mut Report,
) -> Result<(), EditError> {
    let applied = &d.docker_cdi;
    if applied.is_empty() {
        return Ok(());
    }
    let malformed = |field| EditError::Malformed {
        field,
        reason: "not an array".into(),
    };
    let mut removed = Vec::new();
    if let Some(mounts) = spec.get_mut("mounts") {
        let mounts = mounts.as_array_mut().ok_or_else(|| malformed("mounts"))?;
        mounts.retain(|m| {
            let source = m.get("source").and_then(Value::as_str).unwrap_or_default();
            let dest = m
                .get("destination")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let from_cdi = applied
                .mounts
                .iter()
                .any(|(h, c)| c == dest && h.as_os_str() == source);
            if from_cdi {
                removed.push(format!("mount {source} at {dest}"));
            }
            !from_cdi
        });
    }
    if let Some(env) = spec.get_mut("process").and_then(|p| p.get_mut("env")) {
        let env = env.as_array_mut().ok_or_else(|| malformed("process.env"))?;
        env.retain(|e| {
            let from_cdi = e
                .as_str()
                .is_some_and(|e| applied.env.iter().any(|a| a == e));
            if from_cdi {
                removed.push(format!("env {}", e.as_str().unwrap_or_default()));
            }
            !from_cdi
        });
    }
    if let Some(hooks) = spec.get_mut("hooks").and_then(Value::as_object_mut) {
        for (stage, list) in hooks.iter_mut() {
            let Some(list) = list.as_array_mut() else {
                continue;
            };
            list.retain(|h| {
                let path = h.get("path").and_then(Value::as_str).unwrap_or_default();
                let from_cdi = applied.hooks.iter().any(|p| p.as_os_str() == path);
                if from_cdi {
                    removed.push(format!("{stage} hook {path}"));
                }
                !from_cdi
            });
        }
    }
    if !removed.is_empty() {
        report.removed(format!(
            "CDI edits dockerd applied ({}); the owner's own come from [gpus] cdi_spec",
            removed.join(", ")
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use serde_json::json;

    use super::*;
    use crate::cdi::{DockerApplied, Edits, Hook, Mount, HOOK_PATH_ENV};
    use crate::edits::{apply_all, testing};

    #[test]
    fn driver_files_and_hooks_are_added_after_the_spec_s_own_hooks_go() {
        let mut d = testing::decision();
        d.process.allow_unconfined = true;
        d.cdi = Some(Edits {
            source: PathBuf::from("/etc/cdi/nvidia.yaml"),
            env: vec!["NVIDIA_VISIBLE_DEVICES=void".into(), "CUDA_X=1".into()],
            mounts: vec![Mount {
                host_path: "/usr/lib/libcuda.so.1".into(),
                container_path: "/usr/lib/libcuda.so.1".into(),
                options: vec!["rw".into(), "nosuid".into()],
            }],
            hooks: vec![Hook {
                hook_name: "createContainer".into(),
                path: "/usr/bin/nvidia-cdi-hook".into(),
                args: vec!["nvidia-cdi-hook".into(), "update-ldcache".into()],
                env: vec![HOOK_PATH_ENV.into()],
                timeout: None,
            }],
        });
        let mut spec = json!({
            "process": {"env": ["CUDA_X=0", "NVIDIA_VISIBLE_DEVICES=all", "LD_PRELOAD=/x.so"],
                        "capabilities": {}},
            "mounts": [{"destination": "/usr/lib/libcuda.so.1", "type": "bind",
                        "source": "/usr/lib/libcuda.so.1", "options": ["rbind", "rw"]}],
            "hooks": {"createContainer": [{"path": "/usr/bin/nvidia-cdi-hook",
                                           "args": ["nvidia-cdi-hook", "x"],
                                           "env": ["LD_PRELOAD=/proc/self/cwd/evil.so"]}]},
            "linux": {"namespaces": [{"type": "pid"}, {"type": "mount"}, {"type": "ipc"},
                                     {"type": "uts"}, {"type": "network"}]}
        });
        let mut report = Report::default();
        apply_all(&mut spec, &d, &mut report).unwrap();
        assert_eq!(
            spec["hooks"]["createContainer"],
            json!([{"path": "/usr/bin/nvidia-cdi-hook",
                    "args": ["nvidia-cdi-hook", "update-ldcache"],
                    "env": [HOOK_PATH_ENV]}])
        );
        assert_eq!(
            spec["mounts"],
            json!([{"destination": "/usr/lib/libcuda.so.1", "type": "bind",
                    "source": "/usr/lib/libcuda.so.1",
                    "options": ["nosuid", "bind", "ro", "nodev"]}])
        );
        let env: Vec<&str> = spec["process"]["env"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert!(env.contains(&"CUDA_X=1"), "{env:?}");
        assert!(!env.contains(&"CUDA_X=0"), "{env:?}");
        assert!(env.contains(&"NVIDIA_VISIBLE_DEVICES=void"), "{env:?}");
        assert!(!env.contains(&"NVIDIA_VISIBLE_DEVICES=all"), "{env:?}");
        assert_eq!(report.added.len(), 1);
    }

    /// What dockerd 26 (features.cdi) leaves in a spec for `--device nvidia.com/gpu=N`:
    /// the node with a device cgroup rule, plus the device's mounts, env and hooks.
    fn dockerd_cdi_spec(minor: i64, mount: Option<(&str, &str)>) -> Value {
        let mut spec = json!({
            "process": {"env": ["PATH=/bin", "CDI_GPU=1"], "capabilities": {}},
            "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
            "hooks": {"createContainer": [{"path": "/usr/bin/nvidia-cdi-hook",
                                            "args": ["nvidia-cdi-hook", "create-symlinks"]},
                                           {"path": "/usr/local/bin/vendor-hook"}]},
            "linux": {
                "devices": [{"path": format!("/dev/nvidia{minor}"), "type": "c",
                             "major": 195, "minor": minor, "fileMode": 0o666}],
                "resources": {"devices": [
                    {"allow": false, "access": "rwm"},
                    {"allow": true, "type": "c", "major": 195, "minor": minor, "access": "rwm"}]},
                "namespaces": [{"type": "pid"}, {"type": "mount"}, {"type": "ipc"},
                               {"type": "uts"}, {"type": "network"}]
            }
        });
        if let Some((host, container)) = mount {
            spec["mounts"].as_array_mut().unwrap().push(json!({
                "destination": container, "type": "bind", "source": host,
                "options": ["ro", "nosuid", "nodev", "rbind", "rprivate"]}));
        }
        spec
    }

    /// alice owns GPU 0; the CDI specs in Docker's dirs name GPUs 0 and 2, GPU 2 with a mount.
    fn cdi_decision() -> Decision {
        let mut d = testing::decision();
        d.process.allow_unconfined = true;
        d.docker_cdi = DockerApplied {
            mounts: vec![(
                PathBuf::from("/usr/share/lgt/gpu2"),
                "/usr/share/cdi/gpu2".into(),
            )],
            env: vec!["CDI_GPU=1".into()],
            hooks: vec![PathBuf::from("/usr/local/bin/vendor-hook")],
        };
        d
    }

    fn gpu_access(spec: &Value, minor: i64) -> (bool, bool) {
        let node = spec["linux"]["devices"]
            .as_array()
            .unwrap()
            .iter()
            .any(|dev| dev["major"] == 195 && dev["minor"] == minor);
        let rule = spec["linux"]["resources"]["devices"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| {
                r["allow"] == true
                    && r["major"] == 195
                    && r["minor"] == minor
                    && r["access"].as_str().unwrap_or_default().contains('r')
            });
        (node, rule)
    }

    #[test]
    fn another_users_cdi_gpu_with_only_a_node_is_dropped() {
        let d = cdi_decision();
        let mut spec = dockerd_cdi_spec(2, None);
        let mut report = Report::default();
        apply_all(&mut spec, &d, &mut report).unwrap();
        assert_eq!(gpu_access(&spec, 2), (false, false), "{spec:#}");
        assert_eq!(gpu_access(&spec, 0), (true, true), "{spec:#}");
        let env = &spec["process"]["env"];
        assert!(
            !env.as_array().unwrap().contains(&json!("CDI_GPU=1")),
            "{env}"
        );
        assert_eq!(
            spec["hooks"]["createContainer"],
            json!([]),
            "the CDI hooks dockerd added are gone"
        );
    }

    #[test]
    fn another_users_cdi_gpu_with_a_mount_runs_without_it() {
        let d = cdi_decision();
        let mut spec = dockerd_cdi_spec(2, Some(("/usr/share/lgt/gpu2", "/usr/share/cdi/gpu2")));
        let mut report = Report::default();
        apply_all(&mut spec, &d, &mut report).unwrap();
        assert_eq!(gpu_access(&spec, 2), (false, false), "{spec:#}");
        let dests: Vec<&str> = spec["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|m| m["destination"].as_str())
            .collect();
        assert_eq!(dests, ["/proc"]);
        assert!(
            report
                .removed
                .iter()
                .any(|r| r.contains("mount /usr/share/lgt/gpu2 at /usr/share/cdi/gpu2")),
            "{:?}",
            report.removed
        );
    }

    #[test]
    fn the_owners_cdi_gpu_gets_labgpus_own_edits() {
        let mut d = cdi_decision();
        d.docker_cdi.mounts.push((
            PathBuf::from("/usr/share/lgt/gpu0"),
            "/usr/share/cdi/gpu0".into(),
        ));
        d.cdi = Some(Edits {
            source: PathBuf::from("/etc/cdi/nvidia.yaml"),
            mounts: vec![Mount {
                host_path: "/usr/share/lgt/gpu0".into(),
                container_path: "/usr/share/cdi/gpu0".into(),
                options: vec!["rbind".into()],
            }],
            ..Edits::default()
        });
        let mut spec = dockerd_cdi_spec(0, Some(("/usr/share/lgt/gpu0", "/usr/share/cdi/gpu0")));
        let mut report = Report::default();
        apply_all(&mut spec, &d, &mut report).unwrap();
        assert_eq!(gpu_access(&spec, 0), (true, true), "{spec:#}");
        let gpu0: Vec<&Value> = spec["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["destination"] == "/usr/share/cdi/gpu0")
            .collect();
        assert_eq!(gpu0.len(), 1, "{spec:#}");
        assert_eq!(
            gpu0[0]["options"],
            json!(["rbind", "ro", "nosuid", "nodev"])
        );
    }

    #[test]
    fn without_docker_cdi_the_same_mount_is_still_refused() {
        let mut d = cdi_decision();
        d.docker_cdi = DockerApplied::default();
        let mut spec = dockerd_cdi_spec(2, Some(("/usr/share/lgt/gpu2", "/usr/share/cdi/gpu2")));
        let err = apply_all(&mut spec, &d, &mut Report::default()).unwrap_err();
        assert!(err.to_string().contains("/usr/share/cdi/gpu2"), "{err}");
    }
}
