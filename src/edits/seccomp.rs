//! The container's seccomp profile, narrowed to the capabilities labgpu leaves it.
//!
//! dockerd resolved its default profile for the capabilities the user asked for (with
//! `--cap-add SYS_ADMIN`: mount, unshare, setns, bpf, unfiltered clone). That profile is
//! replaced by the same Docker's default for the capabilities the container keeps; any other
//! profile must allow nothing more than that, unless the policy lists it by sha256
//! (`crate::seccomp` holds the model and the rule). Runs before `process`, which cuts the
//! capabilities: the requested set is still in the spec here.

use serde_json::Value;

use super::{EditError, Report};
use crate::decide::Decision;
use crate::seccomp::{enforce, memo, Context, Outcome};

pub fn apply(spec: &mut Value, d: &Decision, report: &mut Report) -> Result<(), EditError> {
    if d.process.allow_unconfined {
        return Ok(());
    }
    // No profile at all is unconfined, refused by `security` before this runs.
    let Some(profile) = spec.pointer("/linux/seccomp").filter(|p| !p.is_null()) else {
        return Ok(());
    };
    let requested: Vec<String> = spec
        .pointer("/process/capabilities/bounding")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_string)
        .collect();
    let kept: Vec<String> = requested
        .iter()
        .filter(|c| d.process.capabilities.contains(*c))
        .cloned()
        .collect();
    let ctx = Context {
        requested_caps: &requested,
        kept_caps: &kept,
        arch: d.host.arch,
        kernel: d.host.kernel,
        allowed_sha256: &d.seccomp_profiles,
    };
    let key = memo::Key::new(profile, &ctx);
    let outcome = match key.as_ref().and_then(memo::get) {
        Some(remembered) => remembered,
        None => {
            let outcome = enforce(profile, &ctx).map_err(|cause| EditError::Seccomp {
                cause,
                section: d.section(),
            })?;
            if let Some(key) = &key {
                memo::put(key, &outcome);
            }
            outcome
        }
    };
    if let Outcome::ReplaceDefault {
        generation,
        profile,
    } = outcome
    {
        if requested.len() != kept.len() {
            report.removed(format!(
                "seccomp rules for dropped capabilities (Docker {generation:?} default)"
            ));
        }
        spec["linux"]["seccomp"] = profile;
    }
    Ok(())
}
