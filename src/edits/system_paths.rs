//! What of /proc and /sys a container sees: Docker's masked and read-only paths, and read-only
//! sysfs and cgroup mounts.
//!
//! The API takes `HostConfig.MaskedPaths`/`ReadonlyPaths`, and a non-empty list *replaces*
//! Docker's defaults: `/proc/sys` then becomes writable (host root through
//! `kernel.core_pattern`). `--security-opt writable-cgroups=true` (Docker 28+) drops `ro` from
//! the cgroup mount (on cgroup v1, a `release_agent` runs on the host as root). So whatever
//! the spec says, the defaults of every Docker version labgpu knows are put back.

use serde_json::{json, Value};

use super::{EditError, Report};
use crate::decide::Decision;
use crate::spec::{array_mut, object_mut, str_field};

/// The union of Docker 20.10's to 28's `MaskedPaths` (26 added powercap, 28 interrupts and
/// each CPU's thermal_throttle, which `Decision::cpu_count` expands).
pub const MASKED: [&str; 12] = [
    "/proc/asound",
    "/proc/acpi",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Docker's `ReadonlyPaths` (the same from 20.10 to 28).
pub const READONLY: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Every path of `MASKED` plus `/sys/devices/system/cpu/cpuN/thermal_throttle` for each
/// possible CPU (runc skips paths that do not exist).
pub fn masked_paths(cpu_count: u32) -> Vec<String> {
    let mut paths: Vec<String> = MASKED.iter().map(|p| p.to_string()).collect();
    paths
        .extend((0..cpu_count).map(|n| format!("/sys/devices/system/cpu/cpu{n}/thermal_throttle")));
    paths
}

pub fn apply(spec: &mut Value, d: &Decision, report: &mut Report) -> Result<(), EditError> {
    if d.process.allow_unconfined {
        return Ok(());
    }
    let linux = object_mut(spec, "linux");
    let masked = masked_paths(d.cpu_count);
    complete(
        linux,
        "maskedPaths",
        masked.iter().map(String::as_str),
        d,
        report,
    )?;
    complete(linux, "readonlyPaths", READONLY.iter().copied(), d, report)?;
    read_only_kernel_mounts(spec, report)
}

/// Adds the defaults missing from `linux.<field>`. An empty list is how
/// `systempaths=unconfined` arrives: refused as such, so the user learns which key allows it.
fn complete<'a>(
    linux: &mut Value,
    field: &'static str,
    defaults: impl Iterator<Item = &'a str>,
    d: &Decision,
    report: &mut Report,
) -> Result<(), EditError> {
    let list = array_mut(linux, field).ok_or(EditError::Malformed {
        field: if field == "maskedPaths" {
            "linux.maskedPaths"
        } else {
            "linux.readonlyPaths"
        },
        reason: "not an array".into(),
    })?;
    if list.is_empty() {
        return Err(EditError::Unconfined {
            what: format!("an empty linux.{field} (systempaths=unconfined)"),
            section: d.section(),
        });
    }
    for path in defaults {
        if !list.iter().any(|p| p.as_str() == Some(path)) {
            list.push(json!(path));
            report.added(format!("{field} {path}"));
        }
    }
    Ok(())
}

/// sysfs and the cgroup filesystem are mounted read-only, as Docker does for every
/// unprivileged container.
fn read_only_kernel_mounts(spec: &mut Value, report: &mut Report) -> Result<(), EditError> {
    let mounts = array_mut(spec, "mounts").ok_or(EditError::Malformed {
        field: "mounts",
        reason: "not an array".into(),
    })?;
    for m in mounts.iter_mut() {
        let kernel_fs = matches!(str_field(m, "type"), Some("sysfs" | "cgroup" | "cgroup2"))
            || matches!(str_field(m, "destination"), Some("/sys" | "/sys/fs/cgroup"));
        if !kernel_fs || !m.is_object() {
            continue;
        }
        let dest = str_field(m, "destination").unwrap_or("?").to_string();
        let options = array_mut(m, "options").ok_or(EditError::Malformed {
            field: "mounts.options",
            reason: "not an array".into(),
        })?;
        let before = options.len();
        options.retain(|o| o.as_str() != Some("rw"));
        if !options.iter().any(|o| o.as_str() == Some("ro")) {
            options.push(json!("ro"));
            report.added(format!("ro on {dest}"));
        } else if options.len() != before {
            report.removed(format!("rw on {dest}"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edits::testing::decision;

    fn docker_spec() -> Value {
        json!({"linux": {"maskedPaths": ["/proc/kcore"], "readonlyPaths": ["/proc/sys"]},
        "mounts": [
            {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "relatime", "rw"]},
            {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid"]}
        ]})
    }

    #[test]
    fn defaults_are_completed_and_kernel_mounts_made_read_only() {
        let mut spec = docker_spec();
        let mut d = decision();
        d.cpu_count = 2;
        let mut report = Report::default();
        apply(&mut spec, &d, &mut report).unwrap();
        let masked: Vec<&str> = spec["linux"]["maskedPaths"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_str().unwrap())
            .collect();
        assert_eq!(masked.len(), MASKED.len() + 2);
        assert!(masked.contains(&"/sys/devices/virtual/powercap"));
        assert!(masked.contains(&"/sys/devices/system/cpu/cpu1/thermal_throttle"));
        assert_eq!(
            spec["linux"]["readonlyPaths"].as_array().unwrap().len(),
            READONLY.len()
        );
        assert_eq!(
            spec["mounts"][1]["options"],
            json!(["nosuid", "noexec", "nodev", "relatime", "ro"])
        );
        assert_eq!(spec["mounts"][2]["options"], json!(["nosuid"]));
        let once = spec.clone();
        apply(&mut spec, &d, &mut Report::default()).unwrap();
        assert_eq!(spec, once);
    }

    #[test]
    fn empty_lists_are_refused_and_allow_unconfined_keeps_the_spec() {
        let d = decision();
        for field in ["maskedPaths", "readonlyPaths"] {
            let mut spec = docker_spec();
            spec["linux"][field] = json!([]);
            let err = apply(&mut spec, &d, &mut Report::default()).unwrap_err();
            assert!(err.to_string().contains("allow_unconfined"), "{err}");
        }
        let mut d = decision();
        d.process.allow_unconfined = true;
        let mut spec = docker_spec();
        spec["linux"]["maskedPaths"] = json!([]);
        apply(&mut spec, &d, &mut Report::default()).unwrap();
        assert_eq!(spec["linux"]["maskedPaths"], json!([]));
    }
}
