//! Annotations the low-level runtime acts on. runc turns `org.systemd.property.<Name>` into
//! properties of the container's systemd unit (`DeviceAllow`, `MemoryMax`, …) and reads a
//! CRIU configuration file named by `org.criu.config` (runc `features` lists both as
//! potentially unsafe); crun acts on `run.oci.*` (hook output files, groups, seccomp). Docker
//! 24+ copies `docker run --annotation` into the spec, so a user could set any of them.

use serde_json::Value;

use super::{EditError, Report};
use crate::decide::Decision;

/// Annotation keys (a trailing `.` marks a prefix) a runtime interprets.
const RUNTIME_CONTROLLED: [&str; 3] = ["org.systemd.property.", "org.criu.config", "run.oci."];

pub fn controlled(key: &str) -> bool {
    RUNTIME_CONTROLLED.iter().any(|c| {
        if c.ends_with('.') {
            key.starts_with(c)
        } else {
            key == *c
        }
    })
}

pub fn apply(spec: &Value, d: &Decision, _report: &mut Report) -> Result<(), EditError> {
    if d.process.allow_unconfined {
        return Ok(());
    }
    let Some(annotations) = spec.get("annotations").and_then(Value::as_object) else {
        return Ok(());
    };
    match annotations.keys().find(|k| controlled(k)) {
        Some(key) => Err(EditError::Unconfined {
            what: format!("the annotation {key:?}, which the runtime acts on"),
            section: d.section(),
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edits::testing::decision;
    use serde_json::json;

    #[test]
    fn runtime_controlled_annotations_are_refused() {
        let d = decision();
        for key in [
            "org.systemd.property.DeviceAllow",
            "org.systemd.property.MemoryMax",
            "org.criu.config",
            "run.oci.hooks.stdout",
        ] {
            let spec = json!({"annotations": {key: "x"}});
            let err = apply(&spec, &d, &mut Report::default()).unwrap_err();
            assert!(err.to_string().contains(key), "{err}");
        }
        let spec = json!({"annotations": {"org.opencontainers.image.title": "x", "org.criu.configx": "y"}});
        apply(&spec, &d, &mut Report::default()).unwrap();
    }
}
