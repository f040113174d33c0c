//! Fair share in the spec: the container under its owner's parent cgroup
//! (`linux.cgroupsPath`), its own limits cut to the owner's ceilings
//! (`linux.resources`), and its /dev/shm to `shm_size`.

use serde_json::Value;

use super::{EditError, Report};
use crate::decide::Decision;
use crate::fairshare::cap::{cap_resources, Mode};

pub fn apply(spec: &mut Value, d: &Decision, report: &mut Report) -> Result<(), EditError> {
    if let Some(placement) = d.placement() {
        let linux = spec
            .as_object_mut()
            .ok_or_else(|| malformed("spec", "not an object"))?
            .entry("linux")
            .or_insert_with(|| Value::Object(Default::default()));
        let linux = linux
            .as_object_mut()
            .ok_or_else(|| malformed("linux", "not an object"))?;
        let current = linux.get("cgroupsPath").and_then(Value::as_str);
        let path = placement
            .cgroups_path(current, &d.container_id)
            .map_err(|e| malformed("linux.cgroupsPath", &e.to_string()))?;
        linux.insert("cgroupsPath".into(), Value::String(path));
        let resources = linux.entry("resources").or_insert(Value::Null);
        for cut in cap_resources(resources, &d.ceilings, Mode::Fill)? {
            report.removed(cut);
        }
    }
    if let Some(shm) = &d.ceilings.shm_size {
        cap_shm(spec, shm.value.0, &shm.key, report)?;
    }
    Ok(())
}

fn malformed(field: &'static str, reason: &str) -> EditError {
    EditError::Malformed {
        field,
        reason: reason.to_string(),
    }
}

/// The /dev/shm tmpfs Docker makes for a private IPC namespace gets `size=` at most
/// `max`. A /dev/shm bound from the host (`--ipc shareable`, `container:X`) was sized by
/// dockerd before the runtime runs: the proxy cuts `ShmSize` for that case.
fn cap_shm(spec: &mut Value, max: u64, key: &str, report: &mut Report) -> Result<(), EditError> {
    let Some(mounts) = spec.get_mut("mounts").and_then(Value::as_array_mut) else {
        return Ok(());
    };
    for m in mounts {
        let is_shm = m.get("destination").and_then(Value::as_str) == Some("/dev/shm")
            && m.get("type").and_then(Value::as_str) == Some("tmpfs");
        if !is_shm {
            continue;
        }
        let opts = m
            .as_object_mut()
            .expect("has fields")
            .entry("options")
            .or_insert_with(|| Value::Array(Vec::new()));
        let opts = opts
            .as_array_mut()
            .ok_or_else(|| malformed("mounts.options", "not a list"))?;
        let size = opts
            .iter()
            .filter_map(Value::as_str)
            .find_map(|o| o.strip_prefix("size="))
            .map(|s| crate::fairshare::ByteSize::parse(s).map(|b| b.0));
        let keep = matches!(size, Some(Ok(n)) if n <= max);
        if keep {
            continue;
        }
        opts.retain(|o| !o.as_str().is_some_and(|s| s.starts_with("size=")));
        opts.push(Value::String(format!("size={max}")));
        let was = match size {
            Some(Ok(n)) => crate::fairshare::ByteSize(n).to_string(),
            _ => "half the host's memory".into(),
        };
        report.removed(format!(
            "/dev/shm size {was} cut to {} ({key})",
            crate::fairshare::ByteSize(max)
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edits::testing::decision;
    use crate::fairshare::cgroup::Driver;
    use crate::fairshare::{ByteSize, Ceiling, Ceilings};
    use serde_json::json;

    fn with_ceilings(driver: Driver) -> Decision {
        let mut d = decision();
        d.cgroup_driver = driver;
        d.ceilings = Ceilings {
            memory: Some(Ceiling {
                value: ByteSize(1 << 30),
                key: "[users.alice] memory".into(),
            }),
            shm_size: Some(Ceiling {
                value: ByteSize(64 << 20),
                key: "[defaults] shm_size".into(),
            }),
            ..Ceilings::default()
        };
        d
    }

    fn spec() -> Value {
        json!({"linux": {"cgroupsPath": "/docker/cid", "resources": {"memory": {"limit": 4294967296_i64}}},
               "mounts": [{"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
                           "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=1073741824"]}]})
    }

    #[test]
    fn container_goes_under_the_owner_with_limits_cut() {
        let mut s = spec();
        let mut r = Report::default();
        apply(&mut s, &with_ceilings(Driver::Cgroupfs), &mut r).unwrap();
        assert_eq!(s["linux"]["cgroupsPath"], "/labgpu/alice/cid");
        assert_eq!(s["linux"]["resources"]["memory"]["limit"], 1 << 30);
        assert_eq!(
            s["mounts"][0]["options"],
            json!(["nosuid", "noexec", "nodev", "mode=1777", "size=67108864"])
        );
        assert_eq!(
            r.removed,
            [
                "memory limit 4g cut to 1g ([users.alice] memory)",
                "/dev/shm size 1g cut to 64m ([defaults] shm_size)"
            ]
        );
        let mut s = json!({"linux": {"cgroupsPath": "system.slice:docker:cid"}});
        apply(
            &mut s,
            &with_ceilings(Driver::Systemd),
            &mut Report::default(),
        )
        .unwrap();
        assert_eq!(s["linux"]["cgroupsPath"], "labgpu-alice.slice:docker:cid");
    }

    #[test]
    fn without_ceilings_or_owner_nothing_moves() {
        let mut s = spec();
        apply(&mut s, &decision(), &mut Report::default()).unwrap();
        assert_eq!(s, spec());
        let mut d = with_ceilings(Driver::Cgroupfs);
        d.owner = None;
        d.ceilings.shm_size = None;
        let mut s = spec();
        apply(&mut s, &d, &mut Report::default()).unwrap();
        assert_eq!(s, spec());
    }
}
