//! Annotations recording what labgpu decided; runc keeps them in its state, where `exec` and
//! `labgpu verify` read them back.

use serde_json::json;
use serde_json::Value;

use crate::decide::Decision;
use crate::spec::object_mut;

pub const OWNER: &str = "io.labgpu.owner";
pub const GPUS: &str = "io.labgpu.gpus";
pub const POLICY_SHA256: &str = "io.labgpu.policy-sha256";
/// The pool GPUs allocated at create, `pool:gpu,…` (absent when none).
pub const POOL_GPUS: &str = "io.labgpu.pool-gpus";

pub fn apply(spec: &mut Value, d: &Decision) {
    let ann = object_mut(spec, "annotations");
    let gpus: Vec<String> = d.gpu_ids.iter().map(u32::to_string).collect();
    ann[OWNER] = json!(d.owner.clone().unwrap_or_default());
    ann[GPUS] = json!(gpus.join(","));
    ann[POLICY_SHA256] = json!(d.policy_sha256);
    // Only labgpu says which pool GPUs a container holds: a user's own annotation goes.
    let ann = ann.as_object_mut().expect("object_mut makes an object");
    if d.pool_gpus.is_empty() {
        ann.shift_remove(POOL_GPUS);
    } else {
        ann.insert(POOL_GPUS.into(), json!(d.pool_gpus.join(",")));
    }
}

/// The owner stamped into a runc `state.json` (runc keeps annotations as `key=value` labels);
/// `None` when unstamped or stamped with no owner.
pub fn owner_in_state(state: &Value) -> Option<String> {
    let prefix = format!("{OWNER}=");
    state
        .pointer("/config/labels")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .find_map(|l| l.strip_prefix(&prefix))
        .filter(|o| !o.is_empty())
        .map(str::to_string)
}
