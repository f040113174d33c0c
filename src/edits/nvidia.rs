//! NVIDIA's side doors into a spec: toolkit hooks that would inject devices on their own, and
//! CDI annotations a CDI-aware runc wrapper would expand.

use serde_json::Value;

use super::Report;
use crate::spec::str_field;

/// Hooks that add GPUs or driver files behind the policy's back (matched by basename).
const NVIDIA_HOOKS: [&str; 4] = [
    "nvidia-container-runtime-hook",
    "nvidia-container-toolkit",
    "nvidia-cdi-hook",
    "nvidia-ctk",
];

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
}
