//! Devices as `edits::devices` leaves them: which GPUs the container can open (the owner's,
//! never another's; none at all if labgpu did not create it), and no other host device
//! beyond Docker's standard set and the policy's `devices`.
//!
//! What the kernel allows is read from the container's device cgroup: `devices.list` on
//! cgroup v1. (On cgroup v2 the rules are an eBPF program; see `reachable_gpus`.)

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use serde_json::Value;

use super::container::{Ctx, Subject};
use super::{finding, ContainerAudit, Finding, Kind};
use crate::decide::Decision;
use crate::edits::devices::may_access;
use crate::gpu::Inventory;

/// Rules runc adds to every container on its own (runc up to 1.1 allows /dev/net/tun, which
/// needs CAP_NET_ADMIN to use): not the spec's doing, not a finding.
const RUNC_DEFAULTS: [(char, i64, i64); 1] = [('c', 10, 200)];

/// One line of a v1 `devices.list`: `c 195:0 rwm`, `a *:* rwm`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevRule {
    pub kind: char,
    pub major: Option<i64>,
    pub minor: Option<i64>,
    pub access: String,
}

impl DevRule {
    fn grants_rw(&self) -> bool {
        self.access.contains('r') || self.access.contains('w')
    }

    fn covers(&self, kind: char, major: i64, minor: i64) -> bool {
        (self.kind == 'a' || self.kind == kind)
            && self.major.is_none_or(|m| m == major)
            && self.minor.is_none_or(|m| m == minor)
    }
}

pub fn parse_devices_list(text: &str) -> Vec<DevRule> {
    text.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let kind = it.next()?.chars().next()?;
            let (major, minor) = it.next()?.split_once(':')?;
            let num = |s: &str| if s == "*" { None } else { s.parse().ok() };
            Some(DevRule {
                kind,
                major: num(major),
                minor: num(minor),
                access: it.next().unwrap_or("").to_string(),
            })
        })
        .collect()
}

pub fn cgroup_allows_rw(rules: &[DevRule], kind: char, major: i64, minor: i64) -> bool {
    rules
        .iter()
        .any(|r| r.grants_rw() && r.covers(kind, major, minor))
}

/// The container's device rules as the kernel holds them; `None` on cgroup v2.
fn cgroup_rules(s: &Subject) -> Result<Option<Vec<DevRule>>, String> {
    let Some(cg) = s
        .state
        .pointer("/cgroup_paths/devices")
        .and_then(Value::as_str)
    else {
        return Ok(None);
    };
    let list = Path::new(cg).join("devices.list");
    let text = std::fs::read_to_string(&list)
        .map_err(|e| format!("cannot read {}: {e}", list.display()))?;
    Ok(Some(parse_devices_list(&text)))
}

/// GPU minors the container can open.
pub fn reachable_gpus(ctx: &Ctx, s: &Subject) -> Result<Vec<u32>, String> {
    let gpus = ctx.inventory.gpus();
    let reachable: Box<dyn Fn(i64, i64) -> bool> = match cgroup_rules(s)? {
        Some(rules) => Box::new(move |major, minor| cgroup_allows_rw(&rules, 'c', major, minor)),
        // cgroup v2 has no readable device list: fall back to the nodes in its /dev.
        None => {
            let present = dev_nodes(&s.proc_dir.join("root/dev"))?;
            Box::new(move |major, minor| present.contains(&(major, minor)))
        }
    };
    Ok(gpus
        .iter()
        .filter(|g| g.nodes.iter().any(|n| reachable(n.major, n.minor)))
        .map(|g| g.minor)
        .collect())
}

fn dev_nodes(dev: &Path) -> Result<Vec<(i64, i64)>, String> {
    Ok(std::fs::read_dir(dev)
        .map_err(|e| format!("cannot list {}: {e}", dev.display()))?
        .flatten()
        .filter_map(|e| {
            let m = std::fs::metadata(e.path()).ok()?;
            Some((
                i64::from(libc::major(m.rdev())),
                i64::from(libc::minor(m.rdev())),
            ))
        })
        .collect())
}

/// A reachable GPU that is not the owner's: a bypass, another user's, or drift.
pub fn gpu_findings(s: &Subject, a: &ContainerAudit) -> Vec<Finding> {
    let stamped: Vec<u32> = s
        .labels
        .get(crate::edits::stamp::GPUS)
        .map(|g| g.split(',').filter_map(|n| n.parse().ok()).collect())
        .unwrap_or_default();
    a.reachable_gpus
        .iter()
        .filter_map(|gpu| {
            if !a.labgpu {
                Some(finding(
                    Kind::Bypass,
                    format!("not created through labgpu and can reach GPU {gpu}"),
                ))
            } else if a.granted_gpus.contains(gpu) {
                None
            } else if stamped.contains(gpu) {
                Some(finding(
                    Kind::Drift,
                    format!("holds GPU {gpu}, which the policy no longer grants its owner"),
                ))
            } else {
                Some(finding(
                    Kind::ForeignGpu,
                    format!("can reach GPU {gpu}, which its owner was never granted"),
                ))
            }
        })
        .collect()
}

/// Read/write on a host device the policy does not give the container: a block device
/// (`--device /dev/loop0`), a wildcard (`--device-cgroup-rule 'b *:* rwm'`), a char device
/// such as /dev/mem. GPUs are `gpu_findings`' business.
pub fn other_devices(ctx: &Ctx, s: &Subject, d: &Decision) -> Result<Vec<Finding>, String> {
    let Some(rules) = cgroup_rules(s)? else {
        return Ok(Vec::new());
    };
    let nvidia = ctx.inventory.nvidia_majors();
    let mut findings = Vec::new();
    for r in rules.iter().filter(|r| r.grants_rw()) {
        let kinds: &[char] = match r.kind {
            'a' => &['c', 'b'],
            'b' => &['b'],
            _ => &['c'],
        };
        for &kind in kinds {
            if kind == 'c' && r.major.is_some_and(|m| nvidia.contains(&m)) {
                continue;
            }
            let allowed = match (r.major, r.minor) {
                (Some(major), Some(minor)) if RUNC_DEFAULTS.contains(&(kind, major, minor)) => true,
                (Some(major), minor) => may_access(d, kind, major, minor),
                (None, _) => false,
            };
            if !allowed {
                findings.push(finding(
                    Kind::Device,
                    format!(
                        "can open {} {} (device cgroup rule \"{} {}:{} {}\"), which the policy does not allow",
                        if kind == 'b' { "block device" } else { "device" },
                        device_name(kind, r.major, r.minor),
                        r.kind,
                        r.major.map_or("*".into(), |m| m.to_string()),
                        r.minor.map_or("*".into(), |m| m.to_string()),
                        r.access
                    ),
                ));
            }
        }
    }
    Ok(findings)
}

/// `loop0 (7:0)` from /sys/dev, or just the numbers.
fn device_name(kind: char, major: Option<i64>, minor: Option<i64>) -> String {
    let (Some(major), Some(minor)) = (major, minor) else {
        return format!(
            "{}:{}",
            major.map_or("*".into(), |m| m.to_string()),
            minor.map_or("*".into(), |m| m.to_string())
        );
    };
    let class = if kind == 'b' { "block" } else { "char" };
    std::fs::read_link(format!("/sys/dev/{class}/{major}:{minor}"))
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .map_or(format!("{major}:{minor}"), |n| {
            format!("{n} ({major}:{minor})")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_list_grants() {
        let rules = parse_devices_list("c 1:3 rwm\nc 195:0 rwm\nc 195:* m\nc 136:* rwm\n");
        assert!(cgroup_allows_rw(&rules, 'c', 195, 0));
        assert!(!cgroup_allows_rw(&rules, 'c', 195, 2));
        assert!(!cgroup_allows_rw(&rules, 'b', 195, 0));
        assert!(cgroup_allows_rw(
            &parse_devices_list("a *:* rwm\n"),
            'c',
            195,
            2
        ));
        assert!(cgroup_allows_rw(
            &parse_devices_list("c 195:* rw\n"),
            'c',
            195,
            3
        ));
        assert!(cgroup_allows_rw(
            &parse_devices_list("b 7:0 rw\n"),
            'b',
            7,
            0
        ));
    }
}
