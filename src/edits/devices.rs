//! `linux.devices` and the device cgroup: Docker's standard set, the owner's GPUs with the
//! control nodes, and the policy's extra devices; read/write on anything else is taken away.

use serde_json::{json, Value};

use super::security::grants_rw;
use super::{EditError, Report};
use crate::decide::{Decision, DevKey};
use crate::spec::{array_mut, object_mut, str_field, wildcard_num};

/// Docker's standard devices: null, zero, full, random, urandom, tty, console, ptmx, fuse.
const STANDARD: [(i64, i64); 9] = [
    (1, 3),
    (1, 5),
    (1, 7),
    (1, 8),
    (1, 9),
    (5, 0),
    (5, 1),
    (5, 2),
    (10, 229),
];

/// Unix98 pty slaves (/dev/pts/*), which Docker allows by major with any minor.
const PTS_MAJORS: std::ops::RangeInclusive<i64> = 136..=143;

pub fn apply(spec: &mut Value, d: &Decision, report: &mut Report) -> Result<(), EditError> {
    filter_device_list(spec, d, report)?;
    filter_cgroup_rules(spec, d, report)?;
    Ok(())
}

/// Whether the container may read/write `kind major:minor` (`minor` None = any minor).
pub fn may_access(d: &Decision, kind: char, major: i64, minor: Option<i64>) -> bool {
    let owned = |minor| d.nodes.iter().any(|n| n.major == major && n.minor == minor);
    if kind == 'c' && d.nvidia_majors.contains(&major) {
        return minor.is_some_and(owned);
    }
    match minor {
        None => kind == 'c' && PTS_MAJORS.contains(&major),
        Some(minor) => {
            (kind == 'c' && (STANDARD.contains(&(major, minor)) || PTS_MAJORS.contains(&major)))
                || d.extra_devices.contains(&DevKey { kind, major, minor })
                || (kind == 'c' && owned(minor))
        }
    }
}

fn filter_device_list(
    spec: &mut Value,
    d: &Decision,
    report: &mut Report,
) -> Result<(), EditError> {
    let devices = array_mut(object_mut(spec, "linux"), "devices").ok_or(EditError::Malformed {
        field: "linux.devices",
        reason: "not an array".into(),
    })?;
    let ours: Vec<&str> = d.nodes.iter().map(|n| n.container_path.as_str()).collect();
    devices.retain(|dev| {
        let path = str_field(dev, "path").unwrap_or("?");
        let major = dev.get("major").and_then(Value::as_i64);
        let minor = dev.get("minor").and_then(Value::as_i64);
        let keep = match (str_field(dev, "type"), major, minor) {
            // FIFOs have no major/minor and reach no hardware.
            (Some("p"), _, _) => true,
            (Some(t @ ("c" | "u" | "b")), Some(major), Some(minor)) => {
                let kind = if t == "b" { 'b' } else { 'c' };
                may_access(d, kind, major, Some(minor)) && !ours.contains(&path)
            }
            _ => false,
        };
        if !keep {
            report.removed(format!("device {path}"));
        }
        keep
    });
    for n in &d.nodes {
        devices.push(json!({
            "path": n.container_path,
            "type": "c",
            "major": n.major,
            "minor": n.minor,
            "fileMode": 0o666,
            "uid": 0,
            "gid": 0,
        }));
    }
    Ok(())
}

/// Narrows allow rules to what `may_access` permits (keeping their `m`), puts a deny-all
/// first so nothing is inherited from the parent cgroup, and appends the owned nodes.
fn filter_cgroup_rules(
    spec: &mut Value,
    d: &Decision,
    report: &mut Report,
) -> Result<(), EditError> {
    let resources = object_mut(object_mut(spec, "linux"), "resources");
    let rules = array_mut(resources, "devices").ok_or(EditError::Malformed {
        field: "linux.resources.devices",
        reason: "not an array".into(),
    })?;
    rules.retain_mut(|rule| {
        if rule.get("allow").and_then(Value::as_bool) != Some(true) || !grants_rw(rule) {
            return true;
        }
        let kind = match str_field(rule, "type") {
            Some("c" | "u") => 'c',
            Some("b") => 'b',
            // Allow-all rules got here only because allow_privileged is set.
            _ => return true,
        };
        let Some(major) = wildcard_num(rule.get("major")) else {
            return true;
        };
        let minor = wildcard_num(rule.get("minor"));
        if may_access(d, kind, major, minor) {
            return true;
        }
        let minor_text = minor.map_or("*".to_string(), |m| m.to_string());
        report.removed(format!("cgroup rw {kind} {major}:{minor_text}"));
        let access = str_field(rule, "access").unwrap_or("rwm");
        if access.contains('m') {
            rule["access"] = json!("m");
            true
        } else {
            false
        }
    });
    let denies_all_first = rules.first().is_some_and(|r| {
        r.get("allow").and_then(Value::as_bool) == Some(false)
            && matches!(str_field(r, "type"), None | Some("a"))
            && wildcard_num(r.get("major")).is_none()
            && wildcard_num(r.get("minor")).is_none()
            && str_field(r, "access")
                .is_none_or(|a| a.contains('r') && a.contains('w') && a.contains('m'))
    });
    if !denies_all_first {
        rules.insert(0, json!({"allow": false, "access": "rwm"}));
    }
    for n in &d.nodes {
        let rule = json!({"allow": true, "type": "c", "major": n.major, "minor": n.minor, "access": "rwm"});
        // A spec rewritten twice (a retried create) must not grow.
        if !rules.contains(&rule) {
            rules.push(rule);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edits::testing::decision;

    #[test]
    fn applying_twice_changes_nothing_more() {
        let d = decision();
        let mut spec = json!({"linux": {"devices": [dev("/dev/nvidia2", 195, 2)],
            "resources": {"devices": [{"allow": false, "access": "rwm"},
                rule(true, "c", json!(195), json!(null), "rwm")]}}});
        apply(&mut spec, &d, &mut Report::default()).unwrap();
        let once = spec.clone();
        apply(&mut spec, &d, &mut Report::default()).unwrap();
        assert_eq!(spec, once);
    }

    fn dev(path: &str, major: i64, minor: i64) -> Value {
        json!({"path": path, "type": "c", "major": major, "minor": minor, "fileMode": 438, "uid": 0, "gid": 0})
    }

    fn rule(allow: bool, kind: &str, major: Value, minor: Value, access: &str) -> Value {
        json!({"allow": allow, "type": kind, "major": major, "minor": minor, "access": access})
    }

    fn paths(spec: &Value) -> Vec<String> {
        spec["linux"]["devices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| {
                format!(
                    "{} {}:{}",
                    d["path"].as_str().unwrap(),
                    d["major"],
                    d["minor"]
                )
            })
            .collect()
    }

    #[test]
    fn only_owned_gpus_and_standard_devices_stay() {
        let mut spec = json!({"linux": {"devices": [
            dev("/dev/nvidia2", 195, 2), dev("/dev/nvidia0", 195, 2), dev("/dev/null", 1, 3),
            dev("/dev/sda", 8, 0), {"path": "/dev/sdb", "type": "b", "major": 8, "minor": 16},
            dev("/dev/nvidia-uvm-tools", 511, 1), dev("/dev/kmsg", 1, 11),
            {"path": "/dev/fifo", "type": "p"}, {"path": "/dev/weird", "type": "c"}
        ]}});
        let mut report = Report::default();
        apply(&mut spec, &decision(), &mut report).unwrap();
        assert_eq!(
            paths(&spec),
            [
                "/dev/null 1:3",
                "/dev/fifo null:null",
                "/dev/nvidia0 195:0",
                "/dev/nvidiactl 195:255",
                "/dev/nvidia-uvm 511:0"
            ]
        );
        assert!(report.removed.contains(&"device /dev/nvidia2".to_string()));
        assert!(report.removed.contains(&"device /dev/kmsg".to_string()));
    }

    #[test]
    fn gpu_rules_are_narrowed_and_owned_rules_appended() {
        let mut spec = json!({"linux": {"resources": {"devices": [
            rule(false, "a", Value::Null, Value::Null, "rwm"),
            rule(true, "c", Value::Null, Value::Null, "m"),
            rule(true, "c", json!(1), json!(3), "rwm"),
            rule(true, "c", json!(136), Value::Null, "rwm"),
            rule(true, "c", json!(195), Value::Null, "rwm"),
            rule(true, "c", json!(195), json!(2), "rw"),
            rule(true, "c", json!(195), json!(0), "rw"),
            rule(true, "c", json!(511), json!(-1), "rwm"),
            rule(true, "b", json!(8), json!(0), "rwm"),
            rule(false, "c", json!(195), json!(3), "rwm"),
        ]}}});
        apply(&mut spec, &decision(), &mut Report::default()).unwrap();
        let got: Vec<String> = spec["linux"]["resources"]["devices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                format!(
                    "{} {} {}:{} {}",
                    r["allow"],
                    r["type"].as_str().unwrap_or("-"),
                    r["major"],
                    r["minor"],
                    r["access"].as_str().unwrap()
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                "false a null:null rwm",
                "true c null:null m",
                "true c 1:3 rwm",
                "true c 136:null rwm",
                "true c 195:null m",
                "true c 195:0 rw",
                "true c 511:-1 m",
                "true b 8:0 m",
                "false c 195:3 rwm",
                "true c 195:0 rwm",
                "true c 195:255 rwm",
                "true c 511:0 rwm",
            ]
        );
    }

    #[test]
    fn deny_all_is_put_first_when_missing() {
        let mut spec = json!({"linux": {"resources": {"devices": [rule(true, "c", json!(1), json!(3), "rwm")]}}});
        let mut d = decision();
        d.nodes.clear();
        apply(&mut spec, &d, &mut Report::default()).unwrap();
        let rules = spec["linux"]["resources"]["devices"].as_array().unwrap();
        assert_eq!(rules[0], json!({"allow": false, "access": "rwm"}));
        assert_eq!(rules.len(), 2);
        assert_eq!(spec["linux"]["devices"], json!([]));
    }

    #[test]
    fn policy_devices_are_kept_and_malformed_lists_refused() {
        let mut d = decision();
        d.extra_devices.push(DevKey {
            kind: 'c',
            major: 10,
            minor: 200,
        });
        let mut spec = json!({"linux": {"devices": [dev("/dev/net/tun", 10, 200)],
            "resources": {"devices": [rule(true, "c", json!(10), json!(200), "rwm")]}}});
        apply(&mut spec, &d, &mut Report::default()).unwrap();
        assert_eq!(spec["linux"]["devices"][0]["path"], "/dev/net/tun");
        assert_eq!(spec["linux"]["resources"]["devices"][1]["access"], "rwm");
        let mut bad = json!({"linux": {"devices": {"path": "/dev/x"}}});
        assert!(matches!(
            apply(&mut bad, &d, &mut Report::default()),
            Err(EditError::Malformed { .. })
        ));
    }
}
