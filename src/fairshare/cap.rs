//! A container's own limits against its owner's ceilings: kept when below, cut to the
//! ceiling when above or unlimited. Pure functions of an OCI `linux.resources` object, used
//! for the spec at create and for runc's `update --resources` input.
//!
//! Cutting rather than refusing: a ceiling bounds the sum of the user's containers anyway
//! (the parent cgroup), so a larger request could never be had; cut, the container starts
//! and shows the limit it really has. Under cgroup v1 a CPU quota above the parent's is
//! even an error of the kernel's, so it must be cut for runc to start the container at all.

use serde_json::{Map, Value};

use super::Ceilings;

/// The CFS period Docker and runc use when none is given (100 ms).
pub const DEFAULT_PERIOD: u64 = 100_000;

#[derive(Debug, thiserror::Error)]
pub enum CapError {
    #[error("linux.resources.{field} must be {expected}")]
    Malformed {
        field: String,
        expected: &'static str,
    },
    #[error("linux.resources.unified {key:?} is not allowed: it would bypass {ceiling}")]
    Unified { key: String, ceiling: String },
}

/// Create (`Fill`): a missing limit becomes the ceiling. Update (`Present`): only values in
/// the input are looked at, 0 meaning "unchanged" as runc reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Fill,
    Present,
}

/// Cuts `resources` (an OCI `LinuxResources` object) to `c`; returns one sentence per cut.
pub fn cap_resources(
    resources: &mut Value,
    c: &Ceilings,
    mode: Mode,
) -> Result<Vec<String>, CapError> {
    let mut cuts = Vec::new();
    if !c.needs_parent() {
        return Ok(cuts);
    }
    if resources.is_null() {
        *resources = Value::Object(Map::new());
    }
    let res = resources.as_object_mut().ok_or(CapError::Malformed {
        field: String::new(),
        expected: "an object",
    })?;
    check_unified(res, c)?;
    if let Some(m) = &c.memory {
        let ceiling = i64::try_from(m.value.0).unwrap_or(i64::MAX);
        let mem = section(res, "memory", mode)?;
        if let Some(mem) = mem {
            for field in ["limit", "reservation"] {
                let fill = mode == Mode::Fill && field == "limit";
                if let Some(cut) = cap_int(mem, field, ceiling, fill, mode, "memory")? {
                    cuts.push(format!(
                        "memory {field} {} cut to {} ({})",
                        show_bytes(cut),
                        m.value,
                        m.key
                    ));
                }
            }
        }
    }
    if let Some(p) = &c.pids {
        let ceiling = i64::try_from(p.value).unwrap_or(i64::MAX);
        if let Some(pids) = section(res, "pids", mode)? {
            if let Some(cut) = cap_int(pids, "limit", ceiling, mode == Mode::Fill, mode, "pids")? {
                cuts.push(format!(
                    "pids limit {} cut to {} ({})",
                    show_count(cut),
                    p.value,
                    p.key
                ));
            }
        }
    }
    if let Some(cpus) = &c.cpus {
        if let Some(cpu) = section(res, "cpu", mode)? {
            if let Some(was) = cap_cpu(cpu, cpus.value, mode)? {
                cuts.push(format!("cpus {was} cut to {} ({})", cpus.value, cpus.key));
            }
        }
    }
    Ok(cuts)
}

/// `resources.NAME`, created under `Fill`; `None` when absent under `Present`.
fn section<'a>(
    res: &'a mut Map<String, Value>,
    name: &str,
    mode: Mode,
) -> Result<Option<&'a mut Map<String, Value>>, CapError> {
    if mode == Mode::Present && res.get(name).is_none_or(Value::is_null) {
        return Ok(None);
    }
    let v = res.entry(name).or_insert_with(|| Value::Object(Map::new()));
    if v.is_null() {
        *v = Value::Object(Map::new());
    }
    v.as_object_mut().map(Some).ok_or(CapError::Malformed {
        field: name.to_string(),
        expected: "an object",
    })
}

fn int(obj: &Map<String, Value>, field: &str, parent: &str) -> Result<Option<i64>, CapError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_i64().map(Some).ok_or(CapError::Malformed {
            field: format!("{parent}.{field}"),
            expected: "an integer",
        }),
    }
}

/// Sets `obj.field` to `ceiling` when it is above it or unlimited (negative; under `Fill`
/// also 0 or missing); returns the value it had (-1 for unlimited or missing).
fn cap_int(
    obj: &mut Map<String, Value>,
    field: &str,
    ceiling: i64,
    fill: bool,
    mode: Mode,
    parent: &str,
) -> Result<Option<i64>, CapError> {
    let was = int(obj, field, parent)?;
    let cut = match was {
        Some(n) if n > ceiling => true,
        Some(n) if n < 0 => true,
        Some(0) | None => fill,
        Some(_) => false,
    };
    // Under update, 0 and absence leave the current (already capped) value alone.
    if !cut || (mode == Mode::Present && matches!(was, None | Some(0))) {
        return Ok(None);
    }
    obj.insert(field.to_string(), Value::from(ceiling));
    Ok(Some(was.filter(|n| *n > 0).unwrap_or(-1)))
}

/// The CPU quota against `cpus` for its period; returns what it was in CPUs ("unlimited"
/// for none).
fn cap_cpu(
    cpu: &mut Map<String, Value>,
    cpus: super::Cpus,
    mode: Mode,
) -> Result<Option<String>, CapError> {
    let quota = int(cpu, "quota", "cpu")?;
    let period = match cpu.get("period") {
        None | Some(Value::Null) => None,
        Some(v) => Some(v.as_u64().ok_or(CapError::Malformed {
            field: "cpu.period".into(),
            expected: "an unsigned integer",
        })?),
    };
    let unchanged = matches!(quota, None | Some(0));
    if mode == Mode::Present && unchanged {
        return Ok(None);
    }
    let p = period.filter(|p| *p > 0).unwrap_or(DEFAULT_PERIOD);
    let allowed = cpus.quota(p);
    let was = match quota {
        Some(q) if q > 0 && q <= allowed => return Ok(None),
        Some(q) if q > 0 => format!("{:.2}", q as f64 / p as f64),
        _ => "unlimited".to_string(),
    };
    cpu.insert("period".into(), Value::from(p));
    cpu.insert("quota".into(), Value::from(allowed));
    Ok(Some(was))
}

/// cgroup v2 files set by name would go around the capped fields.
fn check_unified(res: &Map<String, Value>, c: &Ceilings) -> Result<(), CapError> {
    let Some(unified) = res.get("unified").and_then(Value::as_object) else {
        return Ok(());
    };
    for key in unified.keys() {
        let ceiling = match key.split('.').next() {
            Some("memory") => c.memory.as_ref().map(|m| m.key.clone()),
            Some("cpu") => c.cpus.as_ref().map(|m| m.key.clone()),
            Some("pids") => c.pids.as_ref().map(|m| m.key.clone()),
            _ => None,
        };
        if let Some(ceiling) = ceiling {
            return Err(CapError::Unified {
                key: key.clone(),
                ceiling,
            });
        }
    }
    Ok(())
}

fn show_bytes(n: i64) -> String {
    if n < 0 {
        "unlimited".into()
    } else {
        super::ByteSize(n as u64).to_string()
    }
}

fn show_count(n: i64) -> String {
    if n < 0 {
        "unlimited".into()
    } else {
        n.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fairshare::{ByteSize, Ceiling, Cpus};
    use serde_json::json;

    fn ceilings() -> Ceilings {
        Ceilings {
            cpus: Some(Ceiling {
                value: Cpus::from_hundredths(200),
                key: "[users.alice] cpus".into(),
            }),
            memory: Some(Ceiling {
                value: ByteSize(1 << 30),
                key: "[defaults] memory".into(),
            }),
            pids: Some(Ceiling {
                value: 100,
                key: "[defaults] pids".into(),
            }),
            shm_size: None,
        }
    }

    #[test]
    fn create_fills_missing_limits_and_cuts_larger_ones() {
        let mut res = json!({"memory": {"limit": 4294967296_i64, "swap": 8589934592_i64},
                             "cpu": {"shares": 512, "quota": 400000, "period": 100000},
                             "devices": [{"allow": false, "access": "rwm"}]});
        let cuts = cap_resources(&mut res, &ceilings(), Mode::Fill).unwrap();
        assert_eq!(res["memory"]["limit"], 1 << 30);
        assert_eq!(res["memory"]["swap"], 8589934592_i64);
        assert_eq!(res["cpu"]["quota"], 200000);
        assert_eq!(res["cpu"]["shares"], 512);
        assert_eq!(res["pids"]["limit"], 100);
        assert_eq!(res["devices"][0]["access"], "rwm");
        assert_eq!(
            cuts,
            [
                "memory limit 4g cut to 1g ([defaults] memory)",
                "pids limit unlimited cut to 100 ([defaults] pids)",
                "cpus 4.00 cut to 2 ([users.alice] cpus)"
            ]
        );
        let mut none = Value::Null;
        cap_resources(&mut none, &ceilings(), Mode::Fill).unwrap();
        assert_eq!(none["cpu"], json!({"period": 100000, "quota": 200000}));
    }

    #[test]
    fn limits_below_the_ceiling_are_kept() {
        let mut res = json!({"memory": {"limit": 1048576}, "pids": {"limit": 10},
                             "cpu": {"quota": 50000, "period": 50000}});
        let before = res.clone();
        assert!(cap_resources(&mut res, &ceilings(), Mode::Fill)
            .unwrap()
            .is_empty());
        assert_eq!(res, before);
        // Another period: 2 CPUs of a 10 ms period is 20 ms.
        let mut res = json!({"cpu": {"quota": 30000, "period": 10000}});
        cap_resources(&mut res, &ceilings(), Mode::Fill).unwrap();
        assert_eq!(res["cpu"]["quota"], 20000);
    }

    #[test]
    fn update_cannot_raise_above_the_ceiling() {
        let mut res = json!({"memory": {"limit": -1, "swap": -1}, "cpu": {"quota": 0},
                             "pids": {"limit": 0}});
        let cuts = cap_resources(&mut res, &ceilings(), Mode::Present).unwrap();
        assert_eq!(res["memory"]["limit"], 1 << 30);
        // 0 is runc's "leave it": the current value is already capped.
        assert_eq!(res["cpu"]["quota"], 0);
        assert_eq!(res["pids"]["limit"], 0);
        assert_eq!(cuts.len(), 1);
        let mut res = json!({"cpu": {"quota": 900000, "period": 100000}, "pids": {"limit": 5000}});
        cap_resources(&mut res, &ceilings(), Mode::Present).unwrap();
        assert_eq!(res["cpu"]["quota"], 200000);
        assert_eq!(res["pids"]["limit"], 100);
        assert!(res.get("memory").is_none());
    }

    #[test]
    fn unified_files_and_bad_types_are_refused() {
        let mut res = json!({"unified": {"memory.max": "max"}});
        let e = cap_resources(&mut res, &ceilings(), Mode::Present).unwrap_err();
        assert!(e.to_string().contains("[defaults] memory"), "{e}");
        let mut res = json!({"unified": {"io.weight": "100"}});
        cap_resources(&mut res, &ceilings(), Mode::Present).unwrap();
        let mut res = json!({"memory": {"limit": "lots"}});
        assert!(cap_resources(&mut res, &ceilings(), Mode::Fill).is_err());
        // Without ceilings nothing is touched.
        let mut res = json!({"memory": {"limit": "lots"}});
        cap_resources(&mut res, &Ceilings::default(), Mode::Fill).unwrap();
    }
}
