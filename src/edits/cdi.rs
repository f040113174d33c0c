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

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use serde_json::json;

    use super::*;
    use crate::cdi::{Edits, Hook, Mount, HOOK_PATH_ENV};
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
}
