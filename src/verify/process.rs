//! The init process as `edits::process` and `edits::seccomp` cut it: capabilities within the
//! allowlist, no-new-privileges, the owner's uid, and a seccomp filter.

use std::str::FromStr;

use super::container::Subject;
use super::{finding, Finding, Kind};
use crate::decide::Decision;

/// `Seccomp:` in /proc/<pid>/status: 0 none, 1 strict, 2 filter.
const SECCOMP_FILTER: u32 = 2;

pub fn check(s: &Subject, d: &Decision) -> Vec<Finding> {
    let rules = &d.process;
    let status = &s.status;
    let mut findings = Vec::new();
    let allowed_mask = rules
        .capabilities
        .iter()
        .filter_map(|c| caps::Capability::from_str(c).ok())
        .fold(0u64, |m, c| m | c.bitmask());
    let mut extra: Vec<String> = caps::all()
        .into_iter()
        .filter(|c| status.capeff & c.bitmask() != 0 && allowed_mask & c.bitmask() == 0)
        .map(|c| c.to_string())
        .collect();
    extra.sort();
    if !extra.is_empty() {
        findings.push(finding(
            Kind::Capabilities,
            format!("pid 1 has {} beyond the allowlist", extra.join(",")),
        ));
    }
    if rules.no_new_privileges && status.nonewprivs != Some(1) {
        findings.push(finding(
            Kind::NoNewPrivileges,
            "pid 1 runs without no-new-privileges".into(),
        ));
    }
    if let Some((uid, _)) = rules.user {
        // /proc shows host ids: in the owner's user namespace, container root is the owner.
        let uid = d
            .userns
            .as_ref()
            .and_then(|p| crate::userns::mapping::to_host(&p.map.uid, uid))
            .unwrap_or(uid);
        if status.euid != uid {
            findings.push(finding(
                Kind::User,
                format!("pid 1 runs as uid {}, not the owner's {uid}", status.euid),
            ));
        }
    }
    if !rules.allow_unconfined && status.seccomp.is_some_and(|m| m != SECCOMP_FILTER) {
        findings.push(finding(
            Kind::Seccomp,
            "pid 1 runs without a seccomp filter (allow_unconfined is off)".into(),
        ));
    }
    findings
}
