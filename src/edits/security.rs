//! Privileged mode, host namespaces and unconfined profiles: refused unless the policy allows.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use serde_json::Value;

use super::{EditError, Report};
use crate::decide::Decision;
use crate::spec::{str_field, wildcard_num};

/// Namespaces a Docker container always has unless a `--x host` flag removed them.
/// Docker on cgroup v1 has no cgroup namespace and, without userns-remap, no user namespace.
const REQUIRED_NAMESPACES: [(&str, &str); 4] = [
    ("pid", "pid"),
    ("ipc", "ipc"),
    ("uts", "uts"),
    ("mount", "mnt"),
];

/// An allow rule granting read or write on every device is what `--privileged` (or
/// `--device-cgroup-rule 'a *:* rwm'`) looks like to the runtime.
pub fn check_privileged(spec: &Value, d: &Decision) -> Result<(), EditError> {
    if d.allow_privileged {
        return Ok(());
    }
    let rules = spec
        .pointer("/linux/resources/devices")
        .and_then(Value::as_array);
    let grants_all = rules.into_iter().flatten().any(|r| {
        r.get("allow").and_then(Value::as_bool) == Some(true)
            && grants_rw(r)
            && (matches!(str_field(r, "type"), None | Some("a"))
                || wildcard_num(r.get("major")).is_none())
    });
    if grants_all {
        return Err(EditError::Privileged {
            section: d.section(),
        });
    }
    Ok(())
}

/// Whether a device cgroup rule's access grants read or write (absent access means "rwm").
pub fn grants_rw(rule: &Value) -> bool {
    str_field(rule, "access").is_none_or(|a| a.contains('r') || a.contains('w'))
}

pub fn apply(spec: &mut Value, d: &Decision, _report: &mut Report) -> Result<(), EditError> {
    check_namespaces(spec, d, Path::new("/proc/self/ns"))?;
    if !d.process.allow_unconfined {
        check_confined(spec, d)?;
    }
    Ok(())
}

fn check_namespaces(spec: &Value, d: &Decision, own_ns: &Path) -> Result<(), EditError> {
    let namespaces: Vec<&Value> = spec
        .pointer("/linux/namespaces")
        .and_then(Value::as_array)
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    let entry = |t: &str| namespaces.iter().find(|n| str_field(n, "type") == Some(t));
    // A namespace joined by path is the host's if it is the one labgpu itself runs in.
    let is_host = |t: &str, proc_name: &str| match entry(t) {
        None => true,
        Some(n) => {
            str_field(n, "path").is_some_and(|p| same_file(Path::new(p), &own_ns.join(proc_name)))
        }
    };
    if !d.allow_host_namespaces {
        for (t, proc_name) in REQUIRED_NAMESPACES {
            if is_host(t, proc_name) {
                return Err(EditError::HostNamespace {
                    ns: t.to_string(),
                    section: d.section(),
                });
            }
        }
    }
    if !d.allow_host_network && is_host("network", "net") {
        return Err(EditError::HostNetwork {
            section: d.section(),
        });
    }
    // `--pid/--ipc/--network container:X`: X's namespaces, and through /proc/1/root its
    // files, become reachable, so X must belong to the same owner.
    if let Some(root) = &d.runc_root {
        for n in &namespaces {
            let (Some(t), Some(path)) = (str_field(n, "type"), str_field(n, "path")) else {
                continue;
            };
            let Some(proc_name) = proc_ns_name(t) else {
                continue;
            };
            // Every container in it, not the first found: X may itself have joined Y.
            for (id, owner) in namespace_holders(root, proc_name, Path::new(path)) {
                if owner != d.owner {
                    return Err(EditError::ForeignNamespace {
                        ns: t.to_string(),
                        container: id,
                        owner: owner.unwrap_or_else(|| "no owner".into()),
                    });
                }
            }
        }
    }
    Ok(())
}

/// The /proc/<pid>/ns entry name of an OCI namespace type.
fn proc_ns_name(t: &str) -> Option<&'static str> {
    Some(match t {
        "pid" => "pid",
        "ipc" => "ipc",
        "uts" => "uts",
        "mount" => "mnt",
        "network" => "net",
        "user" => "user",
        "cgroup" => "cgroup",
        _ => return None,
    })
}

/// The runc containers (id, stamped owner) whose init process lives in the namespace at
/// `path`. Docker's own network sandboxes belong to no container until one joins.
fn namespace_holders(root: &Path, proc_name: &str, path: &Path) -> Vec<(String, Option<String>)> {
    let mut holders = Vec::new();
    let (Ok(target), Ok(entries)) = (std::fs::metadata(path), std::fs::read_dir(root)) else {
        return holders;
    };
    for entry in entries.flatten() {
        let Ok(bytes) = std::fs::read(entry.path().join("state.json")) else {
            continue;
        };
        let Ok(state) = serde_json::from_slice::<Value>(&bytes) else {
            continue;
        };
        let Some(pid) = state["init_process_pid"].as_i64() else {
            continue;
        };
        let Ok(ns) = std::fs::metadata(format!("/proc/{pid}/ns/{proc_name}")) else {
            continue;
        };
        if ns.dev() == target.dev() && ns.ino() == target.ino() {
            let owner = crate::edits::stamp::owner_in_state(&state);
            holders.push((entry.file_name().to_string_lossy().into_owned(), owner));
        }
    }
    holders
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

fn check_confined(spec: &Value, d: &Decision) -> Result<(), EditError> {
    let unconfined = |what: &str| EditError::Unconfined {
        what: what.to_string(),
        section: d.section(),
    };
    match spec.pointer("/linux/seccomp") {
        None | Some(Value::Null) => return Err(unconfined("running without a seccomp profile")),
        Some(s) => {
            // An allow-by-default profile is unconfined with extra steps.
            if matches!(
                str_field(s, "defaultAction"),
                Some("SCMP_ACT_ALLOW" | "SCMP_ACT_LOG")
            ) {
                return Err(unconfined("a seccomp profile that allows by default"));
            }
        }
    }
    if spec
        .pointer("/process/apparmorProfile")
        .and_then(Value::as_str)
        == Some("unconfined")
    {
        return Err(unconfined("apparmor=unconfined"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edits::testing::decision;
    use serde_json::json;

    fn confined() -> Value {
        json!({"process": {}, "linux": {
            "namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}],
            "seccomp": {"defaultAction": "SCMP_ACT_ERRNO", "syscalls": []},
            "maskedPaths": ["/proc/kcore"], "readonlyPaths": ["/proc/sys"]}})
    }

    #[test]
    fn a_docker_default_spec_passes() {
        let d = decision();
        apply(&mut confined(), &d, &mut Report::default()).unwrap();
        check_privileged(&confined(), &d).unwrap();
    }

    #[test]
    fn host_namespaces_are_refused_by_name() {
        let d = decision();
        for ns in ["pid", "ipc", "uts", "mount"] {
            let mut s = confined();
            s["linux"]["namespaces"]
                .as_array_mut()
                .unwrap()
                .retain(|n| n["type"] != ns);
            let err = apply(&mut s, &d, &mut Report::default()).unwrap_err();
            assert!(
                err.to_string().contains(&format!("host {ns} namespace")),
                "{err}"
            );
        }
        let mut s = confined();
        s["linux"]["namespaces"]
            .as_array_mut()
            .unwrap()
            .retain(|n| n["type"] != "network");
        assert!(matches!(
            apply(&mut s, &d, &mut Report::default()),
            Err(EditError::HostNetwork { .. })
        ));
        let mut allowed = decision();
        allowed.allow_host_network = true;
        apply(&mut s, &allowed, &mut Report::default()).unwrap();
    }

    #[test]
    fn joining_labgpus_own_namespace_by_path_is_host() {
        let d = decision();
        let mut s = confined();
        s["linux"]["namespaces"][0] = json!({"type": "pid", "path": "/proc/self/ns/pid"});
        assert!(apply(&mut s, &d, &mut Report::default()).is_err());
    }

    #[test]
    fn unconfined_profiles_are_refused() {
        let d = decision();
        type Mutation = fn(&mut Value);
        let cases: [(&str, Mutation); 3] = [
            ("seccomp", |s| {
                s["linux"].as_object_mut().unwrap().remove("seccomp");
            }),
            ("allows by default", |s| {
                s["linux"]["seccomp"]["defaultAction"] = json!("SCMP_ACT_ALLOW")
            }),
            ("apparmor", |s| {
                s["process"]["apparmorProfile"] = json!("unconfined")
            }),
        ];
        for (word, mutate) in cases {
            let mut s = confined();
            mutate(&mut s);
            let err = apply(&mut s, &d, &mut Report::default()).unwrap_err();
            assert!(err.to_string().contains(word), "{word}: {err}");
        }
    }

    #[test]
    fn allow_all_device_rules_are_privileged() {
        let d = decision();
        for rule in [
            json!({"allow": true, "access": "rwm"}),
            json!({"allow": true, "type": "c", "access": "rw"}),
            json!({"allow": true, "type": "a", "major": -1, "minor": -1}),
        ] {
            let s = json!({"linux": {"resources": {"devices": [rule]}}});
            assert!(matches!(
                check_privileged(&s, &d),
                Err(EditError::Privileged { .. })
            ));
        }
        let mknod_only = json!({"linux": {"resources": {"devices": [{"allow": true, "type": "c", "access": "m"}]}}});
        check_privileged(&mknod_only, &d).unwrap();
    }
}
