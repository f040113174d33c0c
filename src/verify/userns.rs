//! The user namespace as `edits::userns` sets it up: a container of a `userns = "owner"` user
//! runs with exactly the owner's mappings in `/proc/<init>/uid_map` and `gid_map`. One
//! without a user namespace is a bypass (`--runtime runc`) or from before the policy said so;
//! one with other mappings was made under another policy or by someone else.

use super::container::{Ctx, Subject};
use super::{finding, Finding, Kind};
use crate::decide::Decision;
use crate::policy::Userns;
use crate::userns::mapping::{self, IdMap};

pub fn check(ctx: &Ctx, s: &Subject, d: &Decision) -> Vec<Finding> {
    let wanted = match (&d.userns, &d.owner) {
        (Some(plan), _) => Some(&plan.map),
        // No owner to map to: the policy's default still asks for a user namespace.
        (None, None) if ctx.policy.defaults.userns == Userns::Owner => None,
        _ => return Vec::new(),
    };
    let read = |f: &str| {
        std::fs::read_to_string(s.proc_dir.join(f))
            .ok()
            .and_then(|t| mapping::parse_proc(&t))
    };
    let (Some(uid), Some(gid)) = (read("uid_map"), read("gid_map")) else {
        return vec![finding(
            Kind::Unreadable,
            format!("cannot read /proc/{}/uid_map or gid_map", s.pid),
        )];
    };
    let who = match &d.owner {
        Some(o) => format!("[users.{o}]"),
        None => "[defaults]".to_string(),
    };
    if mapping::is_identity(&uid) {
        return vec![finding(
            Kind::Userns,
            format!("runs without a user namespace although {who} userns = \"owner\": its root is the host's root"),
        )];
    }
    let Some(expected) = wanted else {
        return Vec::new();
    };
    let actual = IdMap { uid, gid };
    let mut findings = Vec::new();
    for (name, got, want) in [
        ("uid_map", &actual.uid, &expected.uid),
        ("gid_map", &actual.gid, &expected.gid),
    ] {
        if got != want {
            findings.push(finding(
                Kind::Userns,
                format!(
                    "its {name} is {} instead of {} ({who} userns = \"owner\")",
                    one_line(got),
                    one_line(want)
                ),
            ));
        }
    }
    findings
}

fn one_line(map: &[oci_spec::runtime::LinuxIdMapping]) -> String {
    mapping::proc_text(map).trim_end().replace('\n', ", ")
}
