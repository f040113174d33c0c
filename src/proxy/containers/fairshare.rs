//! Fair share at the proxy: host ports only from the caller's `ports`, no random host
//! ports (`-P`, `-p 80`), `ShmSize` cut to `shm_size`, and `docker update` refused above the
//! caller's ceilings (the runtime cuts what reaches runc anyway; refused here, Docker's
//! record of the container's limits stays true).

use serde_json::{Map, Value};

use crate::fairshare::{Ceilings, PortRange};
use crate::proxy::error::RuleError;
use crate::proxy::request::{as_object_mut, canonicalize, check_fields, str_of, Field, UserCtx};

/// A `nat.PortBinding`.
const BINDING: &[(&str, Field)] = &[("HostIp", Field::Free), ("HostPort", Field::Checked)];

/// The size of /dev/shm Docker gives when `ShmSize` is 0.
const DOCKER_SHM_DEFAULT: u64 = 64 << 20;

fn ports_text(ctx: &UserCtx) -> String {
    if ctx.ports.is_empty() {
        "none".into()
    } else {
        ctx.ports
            .iter()
            .map(|r| r.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn port_refused(ctx: &UserCtx, value: &str, what: &str) -> RuleError {
    RuleError::ValueRefused {
        field: "HostConfig.PortBindings".into(),
        value: value.to_string(),
        reason: format!(
            "{what}; {} may publish host ports {} (ports in {})",
            ctx.name,
            ports_text(ctx),
            ctx.section()
        ),
    }
}

/// `-p`/`-P`: every published host port must be in one of the caller's ranges.
pub fn check_ports(hc: &mut Map<String, Value>, ctx: &UserCtx) -> Result<(), RuleError> {
    if hc.get("PublishAllPorts").and_then(Value::as_bool) == Some(true) {
        return Err(RuleError::ValueRefused {
            field: "HostConfig.PublishAllPorts".into(),
            value: "true".into(),
            reason: format!(
                "-P picks random host ports; publish ports from {}'s ranges with -p HOST:CONTAINER ({}; ports in {})",
                ctx.name,
                ports_text(ctx),
                ctx.section()
            ),
        });
    }
    let Some(bindings) = hc.get_mut("PortBindings") else {
        return Ok(());
    };
    let Some(bindings) = as_object_mut(bindings, "HostConfig.PortBindings")? else {
        return Ok(());
    };
    for (port, list) in bindings.iter_mut() {
        let list = match list {
            Value::Null => continue,
            Value::Array(a) => a,
            _ => {
                return Err(RuleError::BadField {
                    field: format!("HostConfig.PortBindings.{port}"),
                    expected: "a list of bindings",
                })
            }
        };
        for b in list.iter_mut() {
            let path = format!("HostConfig.PortBindings.{port}");
            let Some(b) = as_object_mut(b, &path)? else {
                continue;
            };
            check_fields(b, BINDING, &path)?;
            let host = str_of(b, "HostPort", "HostPort")?.trim();
            if host.is_empty() {
                return Err(port_refused(
                    ctx,
                    port,
                    &format!("container port {port} without a host port would get a random one"),
                ));
            }
            let range = PortRange::parse(host).map_err(|_| RuleError::BadField {
                field: format!("{path}.HostPort"),
                expected: "a port or a range of ports",
            })?;
            if !ctx.ports.iter().any(|r| r.contains(&range)) {
                return Err(port_refused(
                    ctx,
                    host,
                    &format!("host port {range} is not in {}'s ranges", ctx.name),
                ));
            }
        }
    }
    Ok(())
}

/// `--shm-size`: at most `shm_size` (Docker's default of 64m counts as asked for).
pub fn cap_shm(hc: &mut Map<String, Value>, ctx: &UserCtx) -> Result<Option<String>, RuleError> {
    let Some(max) = &ctx.ceilings.shm_size else {
        return Ok(None);
    };
    let asked = match hc.get("ShmSize") {
        None | Some(Value::Null) => 0,
        Some(v) => v.as_i64().ok_or(RuleError::BadField {
            field: "HostConfig.ShmSize".into(),
            expected: "an integer",
        })?,
    };
    let effective = if asked <= 0 {
        DOCKER_SHM_DEFAULT
    } else {
        asked as u64
    };
    if effective <= max.value.0 {
        return Ok(None);
    }
    hc.insert("ShmSize".into(), Value::from(max.value.0));
    Ok(Some(format!(
        "/dev/shm size {} cut to {} ({})",
        crate::fairshare::ByteSize(effective),
        max.value,
        max.key
    )))
}

/// The fields of an update body that set limits the ceilings bound.
const LIMITS: [&str; 6] = [
    "Memory",
    "MemorySwap",
    "NanoCpus",
    "CpuQuota",
    "CpuPeriod",
    "PidsLimit",
];

/// `docker update` above a ceiling is refused, naming it.
pub fn check_update_limits(obj: &mut Map<String, Value>, c: &Ceilings) -> Result<(), RuleError> {
    canonicalize(obj, &LIMITS)?;
    let int = |k: &str| obj.get(k).and_then(Value::as_i64).unwrap_or(0);
    let above = |field: &str, value: String, ceiling: String, key: &str| RuleError::ValueRefused {
        field: field.to_string(),
        value,
        reason: format!("it is above the ceiling of {ceiling} ({key})"),
    };
    if let Some(m) = &c.memory {
        let mem = int("Memory");
        if mem > 0 && mem as u64 > m.value.0 {
            return Err(above(
                "Memory",
                mem.to_string(),
                m.value.to_string(),
                &m.key,
            ));
        }
    }
    if let Some(p) = &c.pids {
        let pids = int("PidsLimit");
        if pids < 0 || (pids > 0 && pids as u64 > p.value) {
            return Err(above(
                "PidsLimit",
                pids.to_string(),
                p.value.to_string(),
                &p.key,
            ));
        }
    }
    if let Some(cpus) = &c.cpus {
        let nano = int("NanoCpus");
        let allowed_nano = i128::from(cpus.value.hundredths()) * 10_000_000;
        if nano > 0 && i128::from(nano) > allowed_nano {
            return Err(above(
                "NanoCpus",
                nano.to_string(),
                format!("{} CPUs", cpus.value),
                &cpus.key,
            ));
        }
        let (quota, period) = (int("CpuQuota"), int("CpuPeriod"));
        let period = if period > 0 {
            period
        } else {
            crate::fairshare::cap::DEFAULT_PERIOD as i64
        };
        if quota > 0 && quota > cpus.value.quota(period as u64) {
            return Err(above(
                "CpuQuota",
                quota.to_string(),
                format!("{} CPUs", cpus.value),
                &cpus.key,
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fairshare::{ByteSize, Ceiling, Cpus};
    use crate::proxy::request::test_ctx;
    use serde_json::json;

    fn ctx() -> UserCtx {
        let mut c = test_ctx();
        c.ports = vec![PortRange::parse("20000-20099").unwrap()];
        c.ceilings = Ceilings {
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
            shm_size: Some(Ceiling {
                value: ByteSize(32 << 20),
                key: "[defaults] shm_size".into(),
            }),
        };
        c
    }

    fn hc(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn host_ports_must_be_the_callers() {
        let ok = json!({"PortBindings": {"22/tcp": [{"HostIp": "", "HostPort": "20022"}],
                        "8888/tcp": [{"hostport": "20000-20010"}], "9/udp": null}});
        check_ports(&mut hc(ok), &ctx()).unwrap();
        for (bad, want) in [
            (json!({"PortBindings": {"22/tcp": [{"HostPort": "6012"}]}}),
             "host port 6012 is not in alice's ranges; alice may publish host ports 20000-20099 (ports in [defaults] or [users.alice])"),
            (json!({"PortBindings": {"22/tcp": [{"HostPort": "20090-20100"}]}}), "20090-20100"),
            (json!({"PortBindings": {"22/tcp": [{"HostPort": ""}]}}), "random"),
            (json!({"PortBindings": {"22/tcp": [{}]}}), "random"),
            (json!({"PublishAllPorts": true}), "-P picks random host ports"),
            (json!({"PortBindings": {"22/tcp": [{"HostPort": "20022", "Bogus": 1}]}}), "Bogus"),
        ] {
            let e = check_ports(&mut hc(bad.clone()), &ctx()).unwrap_err().to_string();
            assert!(e.contains(want), "{bad}: {e}");
        }
        let mut none = test_ctx();
        none.ports.clear();
        let e = check_ports(
            &mut hc(json!({"PortBindings": {"80/tcp": [{"HostPort": "8080"}]}})),
            &none,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("may publish host ports none"), "{e}");
    }

    #[test]
    fn shm_is_cut_to_the_ceiling() {
        let mut h = hc(json!({"ShmSize": 1073741824}));
        let cut = cap_shm(&mut h, &ctx()).unwrap().unwrap();
        assert_eq!(h["ShmSize"], 32 << 20);
        assert_eq!(cut, "/dev/shm size 1g cut to 32m ([defaults] shm_size)");
        // Docker's default (64m) is above this ceiling too.
        let mut h = hc(json!({}));
        assert!(cap_shm(&mut h, &ctx()).unwrap().is_some());
        assert_eq!(h["ShmSize"], 32 << 20);
        let mut h = hc(json!({"ShmSize": 1048576}));
        assert!(cap_shm(&mut h, &ctx()).unwrap().is_none());
    }

    #[test]
    fn update_above_a_ceiling_is_refused() {
        let c = ctx().ceilings;
        check_update_limits(
            &mut hc(json!({"Memory": 1048576, "NanoCpus": 2000000000, "PidsLimit": 50})),
            &c,
        )
        .unwrap();
        check_update_limits(&mut hc(json!({"RestartPolicy": {"Name": "always"}})), &c).unwrap();
        for (bad, want) in [
            (json!({"memory": 4294967296_i64}), "Memory = \"4294967296\" is not allowed through the labgpu proxy: it is above the ceiling of 1g ([defaults] memory)"),
            (json!({"NanoCpus": 3000000000_i64}), "above the ceiling of 2 CPUs ([users.alice] cpus)"),
            (json!({"CpuQuota": 300000, "CpuPeriod": 100000}), "CpuQuota"),
            (json!({"PidsLimit": -1}), "[defaults] pids"),
        ] {
            let e = check_update_limits(&mut hc(bad.clone()), &c).unwrap_err().to_string();
            assert!(e.contains(want), "{bad}: {e}");
        }
    }
}
