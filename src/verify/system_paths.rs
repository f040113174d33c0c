//! /proc and /sys as `edits::system_paths` leaves them: /proc/sys and its siblings read-only,
//! the masked paths masked. Read from the container's own mount table; a path the host's
//! kernel does not have is not expected to be masked.

use super::container::{Ctx, Subject};
use super::{finding, Finding, Kind};
use crate::decide::Decision;
use crate::edits::system_paths::READONLY;

/// Masked paths whose absence matters most, checked when the host has them.
const MASKED: [&str; 4] = [
    "/proc/kcore",
    "/proc/keys",
    "/proc/timer_list",
    "/proc/sched_debug",
];

pub fn check(ctx: &Ctx, s: &Subject, d: &Decision) -> Vec<Finding> {
    if d.process.allow_unconfined {
        return Vec::new();
    }
    let mount_at = |p: &str| {
        s.mounts
            .iter()
            .rev()
            .find(|m| m.mount_point.as_os_str() == p)
    };
    let host_has = |p: &str| ctx.proc_root.join(p.trim_start_matches("/proc/")).exists();
    let mut findings = Vec::new();
    for p in READONLY {
        if !host_has(p) {
            continue;
        }
        let read_only = mount_at(p).is_some_and(|m| m.mount_options.contains_key("ro"));
        if !read_only {
            findings.push(finding(
                Kind::SystemPaths,
                format!("{p} is writable (Docker makes it read-only; allow_unconfined is off)"),
            ));
        }
    }
    for p in MASKED {
        if host_has(p) && mount_at(p).is_none() {
            findings.push(finding(
                Kind::SystemPaths,
                format!("{p} is not masked (allow_unconfined is off)"),
            ));
        }
    }
    findings
}
