//! NVIDIA's side doors into a spec: toolkit hooks that would inject devices on their own, and
//! CDI annotations a CDI-aware runc wrapper would expand.

use serde_json::{json, Value};

use super::Report;
use crate::cdi::HOOK_PATH_ENV;
use crate::spec::str_field;

/// Hooks that add GPUs or driver files behind the policy's back (matched by basename).
const NVIDIA_HOOKS: [&str; 4] = [
    "nvidia-container-runtime-hook",
    "nvidia-container-toolkit",
    "nvidia-cdi-hook",
    "nvidia-ctk",
];

/// Hook stages runc runs inside the container's namespaces, from its init process.
const IN_CONTAINER_STAGES: [&str; 2] = ["createContainer", "startContainer"];

pub fn apply(spec: &mut Value, report: &mut Report) {
    if let Some(hooks) = spec.get_mut("hooks").and_then(Value::as_object_mut) {
        for (stage, list) in hooks.iter_mut() {
            let Some(list) = list.as_array_mut() else {
                continue;
            };
            list.retain(|h| {
                let path = str_field(h, "path").unwrap_or_default();
                let base = path.rsplit('/').next().unwrap_or_default();
                let drop = NVIDIA_HOOKS.contains(&base);
                if drop {
                    report.removed(format!("{stage} hook {path}"));
                }
                !drop
            });
            // runc runs these from the container's init, after the image's environment is
            // in place: a hook without its own `env` would inherit LD_PRELOAD and the like
            // from the image while running the host's binary as root (CVE-2025-23266).
            if IN_CONTAINER_STAGES.contains(&stage.as_str()) {
                for h in list.iter_mut().filter_map(Value::as_object_mut) {
                    let has_env = h
                        .get("env")
                        .and_then(Value::as_array)
                        .is_some_and(|e| !e.is_empty());
                    if !has_env {
                        h.insert("env".into(), json!([HOOK_PATH_ENV]));
                    }
                }
            }
        }
    }
    if let Some(ann) = spec.get_mut("annotations").and_then(Value::as_object_mut) {
        let cdi: Vec<String> = ann
            .keys()
            .filter(|k| k.starts_with("cdi.k8s.io/"))
            .cloned()
            .collect();
        for k in cdi {
            ann.shift_remove(&k);
            report.removed(format!("annotation {k}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nvidia_hooks_and_cdi_annotations_go_others_stay() {
        let mut spec = json!({
            "hooks": {
                "prestart": [{"path": "/usr/bin/nvidia-container-runtime-hook", "args": ["x", "prestart"]},
                             {"path": "/proc/1/exe", "args": ["libnetwork-setkey"]}],
                "createContainer": [{"path": "/usr/bin/nvidia-cdi-hook", "args": ["create-symlinks"]}],
                "poststop": [{"path": "/opt/nvidia-container-toolkit"}]
            },
            "annotations": {"cdi.k8s.io/gpu": "nvidia.com/gpu=all", "org.opencontainers.image.x": "y"}
        });
        let mut report = Report::default();
        apply(&mut spec, &mut report);
        assert_eq!(
            spec["hooks"]["prestart"],
            json!([{"path": "/proc/1/exe", "args": ["libnetwork-setkey"]}])
        );
        assert_eq!(spec["hooks"]["createContainer"], json!([]));
        assert_eq!(spec["hooks"]["poststop"], json!([]));
        assert_eq!(
            spec["annotations"],
            json!({"org.opencontainers.image.x": "y"})
        );
        assert_eq!(report.removed.len(), 4);
    }

    #[test]
    fn in_container_hooks_get_an_explicit_env() {
        let mut spec = json!({"hooks": {
            "createContainer": [{"path": "/usr/bin/vendor-hook"},
                                {"path": "/usr/bin/other", "env": ["A=1"]}],
            "startContainer": [{"path": "/usr/bin/vendor-hook", "env": []}],
            "prestart": [{"path": "/proc/1/exe", "args": ["libnetwork-setkey"]}]
        }});
        apply(&mut spec, &mut Report::default());
        assert_eq!(
            spec["hooks"]["createContainer"][0]["env"],
            json!([HOOK_PATH_ENV])
        );
        assert_eq!(spec["hooks"]["createContainer"][1]["env"], json!(["A=1"]));
        assert_eq!(
            spec["hooks"]["startContainer"][0]["env"],
            json!([HOOK_PATH_ENV])
        );
        // Docker's own prestart hook runs in runc's environment and is left as it is.
        assert_eq!(spec["hooks"]["prestart"][0].get("env"), None);
    }
}
