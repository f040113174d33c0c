//! The runtime-spec seccomp object: reading it from a spec, writing it as dockerd does, and
//! the hash the policy lists profiles by.

use oci_spec::runtime::{
    LinuxSeccomp, LinuxSeccompArg, LinuxSeccompArgBuilder, LinuxSeccompOperator,
};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::SeccompError;

const SECCOMP_KEYS: &[&str] = &[
    "defaultAction",
    "defaultErrnoRet",
    "architectures",
    "flags",
    "listenerPath",
    "listenerMetadata",
    "syscalls",
];
const SYSCALL_KEYS: &[&str] = &["names", "action", "errnoRet", "args"];
const ARG_KEYS: &[&str] = &["index", "value", "valueTwo", "op"];

/// A spec's `linux.seccomp`, typed. A key the runtime-spec does not define is refused, not
/// dropped: runc might learn it one day, and labgpu would have judged the profile without it.
pub fn from_value(v: &Value) -> Result<LinuxSeccomp, SeccompError> {
    only_keys(v, SECCOMP_KEYS, "linux.seccomp")?;
    for (i, rule) in array(v, "syscalls").iter().enumerate() {
        only_keys(rule, SYSCALL_KEYS, &format!("syscalls[{i}]"))?;
        for (j, arg) in array(rule, "args").iter().enumerate() {
            only_keys(arg, ARG_KEYS, &format!("syscalls[{i}].args[{j}]"))?;
        }
    }
    let p: LinuxSeccomp =
        serde_json::from_value(v.clone()).map_err(|e| SeccompError::Oci(e.to_string()))?;
    Ok(normalize(p))
}

/// The object as Go's encoder writes it (dockerd's config.json): empty lists and strings,
/// and a zero valueTwo, left out; keys in the runtime-spec's order.
pub fn to_value(p: &LinuxSeccomp) -> Value {
    serde_json::to_value(normalize(p.clone())).expect("a seccomp object serialises")
}

/// Maps each empty-but-present field to absent, as Go's `omitempty` does on the way out,
/// so that two objects runc reads alike compare equal.
pub fn normalize(mut p: LinuxSeccomp) -> LinuxSeccomp {
    fn non_empty<T>(v: Option<Vec<T>>) -> Option<Vec<T>> {
        v.filter(|v| !v.is_empty())
    }
    p.set_architectures(non_empty(p.architectures().clone()));
    p.set_flags(non_empty(p.flags().clone()));
    p.set_listener_path(
        p.listener_path()
            .clone()
            .filter(|l| !l.as_os_str().is_empty()),
    );
    p.set_listener_metadata(p.listener_metadata().clone().filter(|m| !m.is_empty()));
    let syscalls = p.syscalls().clone().map(|rules| {
        rules
            .into_iter()
            .map(|mut r| {
                let args = r.args().clone().map(|args| {
                    args.into_iter()
                        .map(|a| make_arg(a.index(), a.op(), a.value(), a.value_two()))
                        .collect()
                });
                r.set_args(non_empty(args));
                r
            })
            .collect()
    });
    p.set_syscalls(non_empty(syscalls));
    p
}

/// One argument condition (oci-spec's has no setters). A zero valueTwo is left out, as Go
/// leaves it out.
pub(crate) fn make_arg(
    index: usize,
    op: LinuxSeccompOperator,
    value: u64,
    value_two: Option<u64>,
) -> LinuxSeccompArg {
    let b = LinuxSeccompArgBuilder::default()
        .index(index)
        .op(op)
        .value(value);
    let b = match value_two.filter(|&v| v != 0) {
        Some(v) => b.value_two(v),
        None => b,
    };
    b.build()
        .expect("every field of an argument condition is set")
}

/// sha256 (lowercase hex) of the object as written: keys sorted, no whitespace. The admin
/// gets it from `labgpu seccomp hash`; the runtime computes it over dockerd's config.json.
pub fn profile_sha256(v: &Value) -> String {
    let mut canonical = String::new();
    write_canonical(v, &mut canonical);
    Sha256::digest(canonical.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn write_canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                write_canonical(&map[k], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

fn only_keys(v: &Value, allowed: &[&str], what: &str) -> Result<(), SeccompError> {
    let Some(map) = v.as_object() else {
        return Err(SeccompError::Oci(format!("{what} is not an object")));
    };
    match map.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(SeccompError::Oci(format!("{what} has unknown key {k:?}"))),
        None => Ok(()),
    }
}

fn array<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    v.get(key)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sha_is_stable_under_key_order_and_whitespace() {
        let a: Value = serde_json::from_str(
            r#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[{"names":["read"],"action":"SCMP_ACT_ALLOW"}]}"#,
        )
        .unwrap();
        let b: Value = serde_json::from_str(
            r#"{ "syscalls": [ { "action": "SCMP_ACT_ALLOW", "names": [ "read" ] } ],
                 "defaultAction": "SCMP_ACT_ERRNO" }"#,
        )
        .unwrap();
        assert_eq!(profile_sha256(&a), profile_sha256(&b));
        assert_eq!(profile_sha256(&a).len(), 64);
        // Order inside lists is meaning (rule order, name order): it changes the hash.
        let c = json!({"defaultAction": "SCMP_ACT_ERRNO",
                       "syscalls": [{"names": ["read", "write"], "action": "SCMP_ACT_ALLOW"}]});
        let d = json!({"defaultAction": "SCMP_ACT_ERRNO",
                       "syscalls": [{"names": ["write", "read"], "action": "SCMP_ACT_ALLOW"}]});
        assert_ne!(profile_sha256(&c), profile_sha256(&d));
    }

    #[test]
    fn sha_of_a_known_object() {
        // Pinned so that a change to the canonical form (which would orphan every hash
        // admins have listed) cannot go unnoticed: sha256 of
        // {"defaultAction":"SCMP_ACT_ERRNO"}.
        assert_eq!(
            profile_sha256(&json!({"defaultAction": "SCMP_ACT_ERRNO"})),
            "4b9a142931f026292d45914eab52edec8271378769fd2e886eab9d476457b755"
        );
    }

    #[test]
    fn unknown_keys_are_refused_at_every_level() {
        for (v, what) in [
            (
                json!({"defaultAction": "SCMP_ACT_ERRNO", "comment": "x"}),
                "linux.seccomp has unknown key \"comment\"",
            ),
            (
                json!({"defaultAction": "SCMP_ACT_ERRNO",
                       "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW", "includes": {}}]}),
                "syscalls[0] has unknown key \"includes\"",
            ),
            (
                json!({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"],
                       "action": "SCMP_ACT_ALLOW", "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_EQ", "x": 1}]}]}),
                "syscalls[0].args[0] has unknown key \"x\"",
            ),
            (
                json!({"defaultAction": "SCMP_ACT_BOGUS"}),
                "unknown variant",
            ),
        ] {
            let e = from_value(&v).unwrap_err().to_string();
            assert!(e.contains(what), "{e}");
        }
    }

    #[test]
    fn written_like_go_with_omitempty() {
        let v = json!({"defaultAction": "SCMP_ACT_ERRNO", "architectures": [], "flags": [],
                       "listenerPath": "", "syscalls": [{"names": ["personality"],
                       "action": "SCMP_ACT_ALLOW", "errnoRet": 0,
                       "args": [{"index": 0, "value": 8, "valueTwo": 0, "op": "SCMP_CMP_EQ"}]}]});
        let p = from_value(&v).unwrap();
        assert_eq!(
            to_value(&p),
            json!({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["personality"],
                   "action": "SCMP_ACT_ALLOW", "errnoRet": 0,
                   "args": [{"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}]}]})
        );
        let written = to_value(&p);
        let keys: Vec<&String> = written["syscalls"][0].as_object().unwrap().keys().collect();
        assert_eq!(keys, ["names", "action", "errnoRet", "args"]);
    }
}
