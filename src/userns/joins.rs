//! The namespaces a spec joins (`--network/--ipc/--pid container:X`), and whether X has a
//! user namespace: a namespace owned by X's user namespace can only be used from inside it,
//! and one owned by the host's cannot be given a sysfs or mqueue of the new container's.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::mapping;
use super::IdMap;
use crate::spec::str_field;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Join {
    /// OCI namespace type ("network", "ipc", "pid", ...).
    pub ns_type: String,
    pub path: String,
    /// The holder's user namespace (`/proc/<pid>/ns/user`), when it has one of its own.
    pub user_ns: Option<PathBuf>,
    /// The holder's uid_map and gid_map, when it has a user namespace.
    pub map: Option<IdMap>,
}

/// Every namespace the spec joins by path, with its holder's user namespace, read from
/// `proc` (the holder is the process the path names, `/proc/<pid>/ns/<type>`).
pub fn resolve(spec: &Value, proc: &Path) -> Vec<Join> {
    let Some(namespaces) = spec.pointer("/linux/namespaces").and_then(Value::as_array) else {
        return Vec::new();
    };
    namespaces
        .iter()
        .filter_map(|n| {
            let (t, path) = (str_field(n, "type")?, str_field(n, "path")?);
            if t == "user" || path.is_empty() {
                return None;
            }
            let holder = holder_dir(path, proc);
            let own_user = std::fs::read_link(proc.join("self/ns/user")).ok();
            let user_ns = holder
                .as_ref()
                .filter(|h| std::fs::read_link(h.join("ns/user")).ok() != own_user)
                .map(|h| h.join("ns/user"));
            let map = user_ns.as_ref().and_then(|_| {
                let h = holder.as_ref()?;
                let read = |f: &str| std::fs::read_to_string(h.join(f)).ok();
                Some(IdMap {
                    uid: mapping::parse_proc(&read("uid_map")?)?,
                    gid: mapping::parse_proc(&read("gid_map")?)?,
                })
            });
            Some(Join {
                ns_type: t.to_string(),
                path: path.to_string(),
                user_ns,
                map,
            })
        })
        .collect()
}

/// `/proc/<pid>` for a namespace path of the form Docker writes, `/proc/<pid>/ns/<name>`.
fn holder_dir(path: &str, proc: &Path) -> Option<PathBuf> {
    let rest = path.strip_prefix("/proc/")?;
    let (pid, tail) = rest.split_once('/')?;
    if !pid.bytes().all(|b| b.is_ascii_digit()) || !tail.starts_with("ns/") {
        return None;
    }
    Some(proc.join(pid))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn holders_with_and_without_a_user_namespace() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        for (pid, user) in [("self", "user:[1]"), ("10", "user:[2]"), ("20", "user:[1]")] {
            std::fs::create_dir_all(p.join(pid).join("ns")).unwrap();
            std::os::unix::fs::symlink(user, p.join(pid).join("ns/user")).unwrap();
        }
        std::fs::write(p.join("10/uid_map"), "0 1001 1\n1 100000 65535\n").unwrap();
        std::fs::write(p.join("10/gid_map"), "0 1001 1\n1 100000 65535\n").unwrap();
        let spec = json!({"linux": {"namespaces": [
            {"type": "network", "path": "/proc/10/ns/net"},
            {"type": "ipc", "path": "/proc/20/ns/ipc"},
            {"type": "pid"}, {"type": "uts", "path": ""}]}});
        let joins = resolve(&spec, p);
        assert_eq!(joins.len(), 2);
        assert_eq!(joins[0].user_ns, Some(p.join("10/ns/user")));
        assert_eq!(
            joins[0].map.as_ref().unwrap().uid,
            mapping::uid_map(1001, 100000)
        );
        assert_eq!(joins[1].ns_type, "ipc");
        assert_eq!(joins[1].user_ns, None);
        assert_eq!(joins[1].map, None);
    }
}
