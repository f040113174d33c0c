//! A `RUN` step of dockerd's BuildKit (Docker 26+, `DOCKER_BUILDKIT_RUNC_COMMAND` = labgpu):
//! BuildKit writes the spec itself, with containerd's seccomp profile rather than Docker's.
//! The step gets the profile a labgpu container with the same capabilities gets, so that
//! what a build step may call is what `docker run` of the same image may call.

use serde_json::Value;

use super::{EditError, Report};
use crate::decide::Decision;
use crate::seccomp::{strictest_default, to_value};

pub fn apply(spec: &mut Value, d: &Decision, report: &mut Report) -> Result<(), EditError> {
    if !d.build_step {
        return Ok(());
    }
    let Some(arch) = d.host.arch else {
        // No Docker profile model for this machine: the seccomp edit judges BuildKit's.
        return Ok(());
    };
    let kept: Vec<String> = spec
        .pointer("/process/capabilities/bounding")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .filter(|c| d.process.capabilities.contains(*c))
        .map(str::to_string)
        .collect();
    let linux =
        spec.get_mut("linux")
            .and_then(Value::as_object_mut)
            .ok_or(EditError::Malformed {
                field: "linux",
                reason: "missing or not an object".into(),
            })?;
    linux.insert(
        "seccomp".into(),
        to_value(&strictest_default(&kept, arch, d.host.kernel)),
    );
    report.added("Docker's default seccomp profile for the build step's capabilities");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edits::testing::decision;
    use serde_json::json;

    fn buildkit_spec() -> Value {
        json!({
            "process": {"capabilities": {"bounding": ["CAP_CHOWN", "CAP_NET_RAW", "CAP_SYS_ADMIN"]}},
            "linux": {"seccomp": {"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
                {"names": ["mount", "unshare"], "action": "SCMP_ACT_ALLOW"}]}}
        })
    }

    #[test]
    fn a_build_step_gets_dockers_profile_for_its_kept_capabilities() {
        let mut d = decision();
        d.build_step = true;
        d.process.capabilities = ["CAP_CHOWN".to_string()].into_iter().collect();
        let mut spec = buildkit_spec();
        apply(&mut spec, &d, &mut Report::default()).unwrap();
        let names: Vec<&str> = spec["linux"]["seccomp"]["syscalls"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["action"] == "SCMP_ACT_ALLOW")
            .flat_map(|r| r["names"].as_array().unwrap())
            .filter_map(Value::as_str)
            .collect();
        assert!(names.contains(&"read"), "Docker's profile allows read");
        assert!(
            !names.contains(&"mount"),
            "mount needs CAP_SYS_ADMIN, which was cut"
        );
        assert_eq!(spec["linux"]["seccomp"]["defaultAction"], "SCMP_ACT_ERRNO");
    }

    #[test]
    fn other_containers_keep_their_profile() {
        let mut spec = buildkit_spec();
        apply(&mut spec, &decision(), &mut Report::default()).unwrap();
        assert_eq!(spec, buildkit_spec());
    }
}
