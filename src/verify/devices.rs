//! Devices as `edits::devices` leaves them: which GPUs the container can open (the owner's,
//! never another's; none at all if labgpu did not create it), and no other host device
//! beyond Docker's standard set and the policy's `devices`.
//!
//! What the kernel allows is read from the container's device cgroup. On cgroup v1 that is
//! `devices.list`, the kernel's own table. On cgroup v2 the rules are an eBPF program, which
//! cannot be read back as rules: labgpu takes the rules runc compiled into it (runc records
//! them in its state, root-only) and asks the kernel whether a device program is attached to
//! the container's cgroup at all (`BPF_PROG_QUERY`). None attached means every device opens;
//! otherwise the recorded rules are what runc allowed, an upper bound of what opens (another
//! program, systemd's, can only deny more). The nodes in the container's /dev are never
//! consulted: a node is reachable when the kernel lets it open, wherever it was made.

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

/// The container's device rules: the kernel's table on v1; on v2 runc's recorded rules, or
/// "everything" when no device program is attached to its cgroup.
fn cgroup_rules(ctx: &Ctx, s: &Subject) -> Result<Vec<DevRule>, String> {
    if let Some(cg) = s
        .state
        .pointer("/cgroup_paths/devices")
        .and_then(Value::as_str)
    {
        let list = Path::new(cg).join("devices.list");
        let text = std::fs::read_to_string(&list)
            .map_err(|e| format!("cannot read {}: {e}", list.display()))?;
        return Ok(parse_devices_list(&text));
    }
    let unified = s
        .state
        .pointer("/cgroup_paths/")
        .and_then(Value::as_str)
        .ok_or_else(|| "runc's state names no devices or unified cgroup".to_string())?;
    let programs = (ctx.device_programs)(Path::new(unified))?;
    if programs == 0 {
        return Ok(vec![DevRule {
            kind: 'a',
            major: None,
            minor: None,
            access: "rwm".into(),
        }]);
    }
    Ok(recorded_rules(&s.state))
}

/// The device rules runc compiled into the container's program (`config.cgroups.devices`
/// in its state: `type` a character code, -1 for any number), as allow rules applied in
/// order after runc's own deny-all: the allows that are not taken back by a later deny.
pub fn recorded_rules(state: &Value) -> Vec<DevRule> {
    let rules = state
        .pointer("/config/cgroups/devices")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut out: Vec<DevRule> = Vec::new();
    for r in rules {
        let kind = r
            .get("type")
            .and_then(Value::as_u64)
            .and_then(|t| char::from_u32(t as u32))
            .unwrap_or('a');
        let num = |k: &str| r.get(k).and_then(Value::as_i64).filter(|n| *n >= 0);
        let rule = DevRule {
            kind,
            major: num("major"),
            minor: num("minor"),
            access: r
                .get("permissions")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
        };
        if r.get("allow").and_then(Value::as_bool) == Some(true) {
            out.push(rule);
        } else if rule.kind == 'a' && rule.major.is_none() && rule.minor.is_none() {
            // A deny-all resets what came before.
            out.clear();
        }
    }
    out
}

/// How many device programs are attached to (or inherited by) a v2 cgroup, from the kernel.
pub fn attached_device_programs(cgroup: &Path) -> Result<u32, String> {
    use std::os::fd::AsRawFd;
    let dir = std::fs::File::open(cgroup)
        .map_err(|e| format!("cannot open cgroup {}: {e}", cgroup.display()))?;
    #[repr(C)]
    #[derive(Default)]
    struct Query {
        target_fd: u32,
        attach_type: u32,
        query_flags: u32,
        attach_flags: u32,
        prog_ids: u64,
        prog_cnt: u32,
        _pad: u32,
    }
    const BPF_PROG_QUERY: libc::c_long = 16;
    const BPF_CGROUP_DEVICE: u32 = 6;
    const BPF_F_QUERY_EFFECTIVE: u32 = 1;
    let mut q = Query {
        target_fd: dir.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        query_flags: BPF_F_QUERY_EFFECTIVE,
        ..Query::default()
    };
    // SAFETY: `q` is a valid, initialised bpf_attr query of the size passed.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_QUERY,
            &mut q as *mut Query,
            std::mem::size_of::<Query>(),
        )
    };
    if rc != 0 {
        return Err(format!(
            "cannot ask the kernel for the device programs of {}: {}",
            cgroup.display(),
            std::io::Error::last_os_error()
        ));
    }
    Ok(q.prog_cnt)
}

/// GPU minors the container can open.
pub fn reachable_gpus(ctx: &Ctx, s: &Subject) -> Result<Vec<u32>, String> {
    let rules = cgroup_rules(ctx, s)?;
    Ok(ctx
        .inventory
        .gpus()
        .iter()
        .filter(|g| {
            g.nodes
                .iter()
                .any(|n| cgroup_allows_rw(&rules, 'c', n.major, n.minor))
        })
        .map(|g| g.minor)
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
    let rules = cgroup_rules(ctx, s)?;
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
    fn runc_recorded_rules_after_its_deny_all() {
        let state = serde_json::json!({"config": {"cgroups": {"devices": [
            {"type": 97, "major": -1, "minor": -1, "permissions": "rwm", "allow": true},
            {"type": 97, "major": -1, "minor": -1, "permissions": "rwm", "allow": false},
            {"type": 99, "major": 1, "minor": 3, "permissions": "rwm", "allow": true},
            {"type": 99, "major": 195, "minor": -1, "permissions": "rwm", "allow": true},
            {"type": 98, "major": 7, "minor": 0, "permissions": "m", "allow": true}
        ]}}});
        let rules = recorded_rules(&state);
        assert_eq!(rules.len(), 3);
        assert!(cgroup_allows_rw(&rules, 'c', 195, 2));
        assert!(cgroup_allows_rw(&rules, 'c', 1, 3));
        assert!(!cgroup_allows_rw(&rules, 'b', 7, 0));
        assert!(!cgroup_allows_rw(&rules, 'c', 1, 1));
    }

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
