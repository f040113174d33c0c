//! What a container asked for: `--gpus` (dockerd writes it to `HostConfig.DeviceRequests` in
//! `<docker-root>/containers/<id>/hostconfig.json`) or the `labgpu.gpus` / `labgpu.pool`
//! labels (in `config.v2.json`, for a Docker without NVIDIA's hook, where `--gpus` fails).
//! Both files are root's, but every value in them is the user's choice: a request, which the
//! policy bounds, never a grant.

use std::io::Read;
use std::path::Path;

use serde_json::Value;

use crate::paths::open_beneath;

pub const LABEL_GPUS: &str = "labgpu.gpus";
pub const LABEL_POOL: &str = "labgpu.pool";

/// How many GPUs a container asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Count {
    N(u32),
    All,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Request {
    pub count: Option<Count>,
    /// `--gpus device=…`: GPUs by name (index, UUID, MIG slice).
    pub devices: Vec<String>,
    /// The `labgpu.pool` label: draw from this pool only.
    pub pool: Option<String>,
    /// Where the request came from, for refusals (`--gpus`, label labgpu.gpus).
    pub source: &'static str,
}

impl Request {
    pub fn is_empty(&self) -> bool {
        self.count.is_none() && self.devices.is_empty()
    }
}

/// The request of Docker container `id` under `docker_root`: `--gpus` when given, else the
/// labels. Not a Docker container (no record): no request. A record that cannot be read is
/// an error: the create is refused rather than run without what it asked for.
pub fn read(docker_root: &Path, id: &str) -> Result<Request, String> {
    let dir = Path::new("containers").join(id);
    let host = read_json(docker_root, &dir.join("hostconfig.json"))?;
    let config = read_json(docker_root, &dir.join("config.v2.json"))?;
    let labels = config
        .as_ref()
        .and_then(|c| c.pointer("/Config/Labels"))
        .cloned()
        .unwrap_or(Value::Null);
    let label = |k: &str| labels.get(k).and_then(Value::as_str).map(str::trim);
    let requests = host.as_ref().and_then(|h| h.get("DeviceRequests"));
    let mut req = from_device_requests(requests.unwrap_or(&Value::Null))?;
    if req.is_empty() {
        if let Some(v) = label(LABEL_GPUS).filter(|v| !v.is_empty()) {
            req = from_label(v)?;
        }
    }
    req.pool = label(LABEL_POOL)
        .filter(|p| !p.is_empty())
        .map(str::to_string);
    Ok(req)
}

fn read_json(root: &Path, rel: &Path) -> Result<Option<Value>, String> {
    let mut file = match open_beneath(root, rel) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {e}", root.join(rel).display())),
    };
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read {}: {e}", root.join(rel).display()))?;
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| format!("cannot parse {}: {e}", root.join(rel).display()))
}

/// `HostConfig.DeviceRequests`: the GPU requests among them (driver "nvidia" or a "gpu"
/// capability), added up.
fn from_device_requests(v: &Value) -> Result<Request, String> {
    let mut req = Request {
        source: "--gpus",
        ..Request::default()
    };
    for r in v.as_array().into_iter().flatten() {
        let gpu_cap = r
            .get("Capabilities")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_array)
            .any(|set| set.iter().any(|c| c.as_str() == Some("gpu")));
        let nvidia = r.get("Driver").and_then(Value::as_str) == Some("nvidia");
        if !gpu_cap && !nvidia {
            continue;
        }
        let ids: Vec<String> = r
            .get("DeviceIDs")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect();
        req.devices.extend(ids);
        let count = r.get("Count").and_then(Value::as_i64).unwrap_or(0);
        req.count = match (req.count, count) {
            (c, 0) => c,
            (_, n) if n < 0 => Some(Count::All),
            (Some(Count::All), _) => Some(Count::All),
            (Some(Count::N(a)), n) => Some(Count::N(a.saturating_add(clamp(n)))),
            (None, n) => Some(Count::N(clamp(n))),
        };
    }
    if req.count.is_some() && !req.devices.is_empty() {
        return Err(
            "--gpus asks for a number of GPUs and for named ones at once; ask for one or the other"
                .into(),
        );
    }
    Ok(req)
}

fn clamp(n: i64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// The `labgpu.gpus` label: a number, `all`, or `device=ID[,ID…]`.
fn from_label(v: &str) -> Result<Request, String> {
    let mut req = Request {
        source: "label labgpu.gpus",
        ..Request::default()
    };
    if v == "all" {
        req.count = Some(Count::All);
    } else if let Some(ids) = v.strip_prefix("device=") {
        req.devices = ids.split(',').map(|s| s.trim().to_string()).collect();
    } else {
        let n = v.parse::<u32>().map_err(|_| {
            format!("label {LABEL_GPUS}={v:?} must be a number of GPUs, \"all\" or \"device=ID,…\"")
        })?;
        req.count = Some(Count::N(n));
    }
    Ok(req)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn record(root: &Path, id: &str, requests: Value, labels: Value) {
        let dir = root.join("containers").join(id);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("hostconfig.json"),
            json!({"DeviceRequests": requests}).to_string(),
        )
        .unwrap();
        std::fs::write(
            dir.join("config.v2.json"),
            json!({"Config": {"Labels": labels}}).to_string(),
        )
        .unwrap();
    }

    fn gpu(count: i64, ids: Value) -> Value {
        json!({"Driver": "", "Count": count, "DeviceIDs": ids,
               "Capabilities": [["gpu"]], "Options": {}})
    }

    #[test]
    fn gpus_flags_as_dockerd_records_them() {
        let d = tempfile::tempdir().unwrap();
        let r = |req: Value, labels: Value| {
            record(d.path(), "c1", req, labels);
            read(d.path(), "c1")
        };
        assert_eq!(
            r(json!([gpu(2, Value::Null)]), json!({})).unwrap().count,
            Some(Count::N(2))
        );
        assert_eq!(
            r(json!([gpu(-1, Value::Null)]), json!({})).unwrap().count,
            Some(Count::All)
        );
        let req = r(json!([gpu(0, json!(["1", "GPU-ab"]))]), json!({})).unwrap();
        assert_eq!(
            (req.count, req.devices),
            (None, vec!["1".into(), "GPU-ab".into()])
        );
        // Another driver's request is not for GPUs.
        let other = json!([{"Driver": "fpga", "Count": 1, "Capabilities": [["fpga"]]}]);
        assert!(r(other, json!({})).unwrap().is_empty());
        assert!(r(Value::Null, json!({})).unwrap().is_empty());
        assert!(r(json!([gpu(2, json!(["1"]))]), json!({})).is_err());
    }

    #[test]
    fn labels_ask_when_gpus_does_not() {
        let d = tempfile::tempdir().unwrap();
        let r = |req: Value, labels: Value| {
            record(d.path(), "c1", req, labels);
            read(d.path(), "c1")
        };
        let req = r(
            Value::Null,
            json!({"labgpu.gpus": "2", "labgpu.pool": "big"}),
        )
        .unwrap();
        assert_eq!(req.count, Some(Count::N(2)));
        assert_eq!(req.pool.as_deref(), Some("big"));
        assert_eq!(req.source, "label labgpu.gpus");
        let req = r(Value::Null, json!({"labgpu.gpus": "device=2,3"})).unwrap();
        assert_eq!(req.devices, ["2", "3"]);
        let req = r(json!([gpu(1, Value::Null)]), json!({"labgpu.gpus": "3"})).unwrap();
        assert_eq!(req.count, Some(Count::N(1)), "--gpus wins");
        let err = r(Value::Null, json!({"labgpu.gpus": "lots"})).unwrap_err();
        assert!(err.contains("label labgpu.gpus=\"lots\""), "{err}");
    }

    #[test]
    fn no_docker_record_is_no_request() {
        let d = tempfile::tempdir().unwrap();
        assert!(read(d.path(), "c1").unwrap().is_empty());
    }
}
