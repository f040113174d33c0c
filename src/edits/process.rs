//! The container's init process and every `exec` process: capabilities cut to the allowlist,
//! no-new-privileges, the owner's uid/gid, and no NVIDIA runtime env.

use std::collections::BTreeSet;

use serde_json::{json, Value};

use super::{EditError, Report};
use crate::decide::ProcessRules;

const CAP_SETS: [&str; 5] = [
    "bounding",
    "effective",
    "inheritable",
    "permitted",
    "ambient",
];

/// Image ENV can carry NVIDIA_VISIBLE_DEVICES=all; "void" makes any NVIDIA hook that still
/// runs inject nothing.
pub const NVIDIA_VISIBLE_DEVICES: &str = "NVIDIA_VISIBLE_DEVICES=void";

pub fn sanitize(
    process: &mut Value,
    rules: &ProcessRules,
    report: &mut Report,
) -> Result<(), EditError> {
    let Some(p) = process.as_object_mut() else {
        return Err(EditError::Malformed {
            field: "process",
            reason: "not an object".into(),
        });
    };
    let mut dropped = BTreeSet::new();
    if let Some(caps) = p.get_mut("capabilities").and_then(Value::as_object_mut) {
        for set in CAP_SETS {
            let Some(list) = caps.get_mut(set) else {
                continue;
            };
            let kept: Vec<Value> = match list.as_array() {
                Some(a) => a
                    .iter()
                    .filter(|c| {
                        let keep = c.as_str().is_some_and(|c| rules.capabilities.contains(c));
                        if !keep {
                            dropped.insert(c.as_str().unwrap_or("?").to_string());
                        }
                        keep
                    })
                    .cloned()
                    .collect(),
                None => Vec::new(),
            };
            *list = Value::Array(kept);
        }
    }
    if !dropped.is_empty() {
        report.removed(format!(
            "capabilities {}",
            dropped.into_iter().collect::<Vec<_>>().join(",")
        ));
    }
    if rules.no_new_privileges {
        p.insert("noNewPrivileges".into(), Value::Bool(true));
    }
    if let Some((uid, gid)) = rules.user {
        let user = p.entry("user").or_insert_with(|| json!({}));
        if !user.is_object() {
            *user = json!({});
        }
        let user = user.as_object_mut().expect("just made an object");
        user.insert("uid".into(), json!(uid));
        user.insert("gid".into(), json!(gid));
        // `--group-add 0` would otherwise hand the owner root's group (in the owner's user
        // namespace every gid is the owner's own).
        if !rules.userns && user.remove("additionalGids").is_some() {
            report.removed("additionalGids");
        }
    }
    if !rules.extra_gids.is_empty() {
        add_gids(p, &rules.extra_gids)?;
    }
    // For exec this falls back to the container's profile; create refuses it earlier.
    if !rules.allow_unconfined
        && p.get("apparmorProfile").and_then(Value::as_str) == Some("unconfined")
    {
        p.remove("apparmorProfile");
        report.removed("apparmor unconfined");
    }
    let env = p.entry("env").or_insert_with(|| json!([]));
    if !env.is_array() {
        return Err(EditError::Malformed {
            field: "process.env",
            reason: "not an array".into(),
        });
    }
    let env = env.as_array_mut().expect("checked");
    env.retain(|e| {
        !e.as_str()
            .is_some_and(|e| e.starts_with("NVIDIA_VISIBLE_DEVICES="))
    });
    env.push(json!(NVIDIA_VISIBLE_DEVICES));
    Ok(())
}

/// Appends `gids` to `user.additionalGids` (each once).
fn add_gids(p: &mut serde_json::Map<String, Value>, gids: &[u32]) -> Result<(), EditError> {
    let user = p.entry("user").or_insert_with(|| json!({}));
    let Some(user) = user.as_object_mut() else {
        return Err(EditError::Malformed {
            field: "process.user",
            reason: "not an object".into(),
        });
    };
    let list = user.entry("additionalGids").or_insert_with(|| json!([]));
    if list.is_null() {
        *list = json!([]);
    }
    let Some(list) = list.as_array_mut() else {
        return Err(EditError::Malformed {
            field: "process.user.additionalGids",
            reason: "not an array".into(),
        });
    };
    for g in gids {
        if !list.iter().any(|v| v.as_u64() == Some(u64::from(*g))) {
            list.push(json!(g));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edits::testing::decision;

    fn all_caps() -> Value {
        json!([
            "CAP_CHOWN",
            "CAP_SYS_ADMIN",
            "CAP_KILL",
            "CAP_BOGUS_FUTURE",
            7
        ])
    }

    #[test]
    fn every_set_is_cut_and_nnp_forced() {
        let mut p = json!({"user": {"uid": 0, "gid": 0, "additionalGids": [0, 10]}, "args": ["sh"],
            "env": ["PATH=/bin", "NVIDIA_VISIBLE_DEVICES=all"], "noNewPrivileges": false,
            "capabilities": {"bounding": all_caps(), "effective": all_caps(), "inheritable": all_caps(),
                             "permitted": all_caps(), "ambient": all_caps()},
            "apparmorProfile": "unconfined", "x-unknown": {"kept": true}});
        let mut rules = decision().process;
        rules.user = Some((1001, 1002));
        let mut report = Report::default();
        sanitize(&mut p, &rules, &mut report).unwrap();
        for set in CAP_SETS {
            assert_eq!(
                p["capabilities"][set],
                json!(["CAP_CHOWN", "CAP_KILL"]),
                "{set}"
            );
        }
        assert_eq!(p["noNewPrivileges"], true);
        assert_eq!(p["user"], json!({"uid": 1001, "gid": 1002}));
        assert_eq!(
            p["env"],
            json!(["PATH=/bin", "NVIDIA_VISIBLE_DEVICES=void"])
        );
        assert!(p.get("apparmorProfile").is_none());
        assert_eq!(p["x-unknown"], json!({"kept": true}));
        assert!(report.removed.iter().any(|r| r.contains("CAP_SYS_ADMIN")));
    }

    #[test]
    fn image_user_and_nnp_opt_out_are_respected() {
        let mut p = json!({"user": {"uid": 33, "gid": 33}, "noNewPrivileges": false});
        let mut rules = decision().process;
        rules.no_new_privileges = false;
        sanitize(&mut p, &rules, &mut Report::default()).unwrap();
        assert_eq!(p["user"], json!({"uid": 33, "gid": 33}));
        assert_eq!(p["noNewPrivileges"], false);
        assert_eq!(p["env"], json!(["NVIDIA_VISIBLE_DEVICES=void"]));
    }

    #[test]
    fn in_the_owners_user_namespace_root_is_the_owner_and_groups_come_along() {
        let mut p = json!({"user": {"uid": 33, "gid": 33, "additionalGids": [0, 10]}});
        let mut rules = decision().process;
        rules.user = Some((1001, 1001));
        let rules = rules.in_userns(&[27, 10]);
        sanitize(&mut p, &rules, &mut Report::default()).unwrap();
        assert_eq!(
            p["user"],
            json!({"uid": 0, "gid": 0, "additionalGids": [0, 10, 27]})
        );
        let mut p = json!({"args": ["sh"]});
        sanitize(&mut p, &rules, &mut Report::default()).unwrap();
        assert_eq!(
            p["user"],
            json!({"uid": 0, "gid": 0, "additionalGids": [27, 10]})
        );
    }

    #[test]
    fn malformed_process_is_refused() {
        let rules = decision().process;
        assert!(sanitize(&mut json!([]), &rules, &mut Report::default()).is_err());
        assert!(sanitize(&mut json!({"env": "X=1"}), &rules, &mut Report::default()).is_err());
    }
}
