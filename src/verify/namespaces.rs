//! The host's namespaces, as `edits::security` refuses them: a container sharing the
//! host's pid, ipc, uts or mount namespace (or its network, unless allowed) is a finding.

use super::container::{Ctx, Subject};
use super::{finding, Finding, Kind};
use crate::decide::Decision;

/// (OCI name, /proc/<pid>/ns entry) of the namespaces a container must have of its own.
const OWN: [(&str, &str); 4] = [
    ("pid", "pid"),
    ("ipc", "ipc"),
    ("uts", "uts"),
    ("mount", "mnt"),
];

pub fn check(ctx: &Ctx, s: &Subject, d: &Decision) -> Vec<Finding> {
    let host = |ns: &str| {
        let theirs = std::fs::read_link(s.proc_dir.join("ns").join(ns)).ok();
        let ours = std::fs::read_link(ctx.proc_root.join("self/ns").join(ns)).ok();
        theirs.is_some() && theirs == ours
    };
    let mut findings = Vec::new();
    if !d.allow_host_namespaces {
        for (name, entry) in OWN {
            if host(entry) {
                findings.push(finding(
                    Kind::Namespace,
                    format!("shares the host's {name} namespace (allow_host_namespaces is off)"),
                ));
            }
        }
    }
    if !d.allow_host_network && host("net") {
        findings.push(finding(
            Kind::Namespace,
            "shares the host's network namespace (allow_host_network is off)".into(),
        ));
    }
    findings
}
