//! `userns = "owner"`: the container gets a user namespace of its own with the owner's
//! mappings (or joins the one of the owner's container whose namespaces it shares), its
//! rootfs path becomes the neutral directory `userns::rootfs` mounts it on, GPU nodes are
//! bind-mounted (runc cannot mknod in a user namespace), and the settings a user namespace
//! cannot take are adjusted or refused. The mounts themselves are made at the runtime edge.

use oci_spec::runtime::{
    LinuxNamespace, LinuxNamespaceBuilder, LinuxNamespaceType, Mount, MountBuilder,
};
use serde_json::{json, Value};

use super::{EditError, Report};
use crate::decide::Decision;
use crate::spec::{array_mut, object_mut, str_field};
use crate::userns::joins::Join;
use crate::userns::mapping::CONTAINER_IDS;
use crate::userns::Plan;

/// Docker sets it to "0 2147483647"; inside a user namespace both ends must be mapped gids.
const PING_GROUP_RANGE: &str = "net.ipv4.ping_group_range";

pub fn apply(spec: &mut Value, d: &Decision, report: &mut Report) -> Result<(), EditError> {
    let Some(plan) = &d.userns else {
        return Ok(());
    };
    let section = d.section();
    refuse_existing_userns(spec, &section)?;
    let user_ns = user_namespace(spec, plan, &section)?;
    let joined_host_net = !network_has_own_userns(spec, plan);
    let namespaces =
        array_mut(object_mut(spec, "linux"), "namespaces").ok_or(malformed("linux.namespaces"))?;
    namespaces.push(to_value(&user_ns));
    let linux = object_mut(spec, "linux");
    linux["uidMappings"] = json!(plan.map.uid.iter().map(to_value).collect::<Vec<_>>());
    linux["gidMappings"] = json!(plan.map.gid.iter().map(to_value).collect::<Vec<_>>());
    object_mut(spec, "root")["path"] = json!(plan.rootfs);
    bind_gpu_nodes(spec, d, report)?;
    if joined_host_net {
        replace_sysfs(spec, report)?;
    }
    clamp_ping_group_range(spec, report);
    report.added(format!(
        "user namespace (root is uid {}, gid {})",
        plan.owner_uid, plan.owner_gid
    ));
    Ok(())
}

fn malformed(field: &'static str) -> EditError {
    EditError::Malformed {
        field,
        reason: "not an array".into(),
    }
}

fn to_value<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).expect("oci-spec types serialize")
}

/// A user namespace or mappings Docker put there itself: its `userns-remap` is on, which
/// would map every container the same way and breaks the owner's mounts.
fn refuse_existing_userns(spec: &Value, section: &str) -> Result<(), EditError> {
    let linux = spec.get("linux");
    let has_ns = linux
        .and_then(|l| l.get("namespaces"))
        .and_then(Value::as_array)
        .is_some_and(|ns| ns.iter().any(|n| str_field(n, "type") == Some("user")));
    let has_map = ["uidMappings", "gidMappings"].iter().any(|k| {
        linux
            .and_then(|l| l.get(*k))
            .and_then(Value::as_array)
            .is_some_and(|a| !a.is_empty())
    });
    if has_ns || has_map {
        return Err(EditError::UsernsRemap {
            section: section.to_string(),
        });
    }
    Ok(())
}

/// The spec's namespace of type `t`: `None` when absent (the host's), else its path
/// (`Some(None)`: a new one).
fn ns_entry<'a>(spec: &'a Value, t: &str) -> Option<Option<&'a str>> {
    spec.pointer("/linux/namespaces")
        .and_then(Value::as_array)?
        .iter()
        .find(|n| str_field(n, "type") == Some(t))
        .map(|n| str_field(n, "path").filter(|p| !p.is_empty()))
}

fn join_for<'a>(plan: &'a Plan, path: &str) -> Option<&'a Join> {
    plan.joins.iter().find(|j| j.path == path)
}

/// A new user namespace, or the one of the owner's container whose namespaces this one
/// joins (a namespace owned by another user namespace cannot be used from a new one).
fn user_namespace(spec: &Value, plan: &Plan, section: &str) -> Result<LinuxNamespace, EditError> {
    let mut joined: Option<&Join> = None;
    for t in ["pid", "ipc", "network", "uts", "mount", "cgroup"] {
        let join = match ns_entry(spec, t) {
            Some(None) => continue,
            None if matches!(t, "pid" | "ipc") => {
                return Err(EditError::UsernsHostNamespace {
                    ns: t.to_string(),
                    section: section.to_string(),
                })
            }
            None => continue,
            Some(Some(path)) => join_for(plan, path),
        };
        let Some(j) = join.filter(|j| j.user_ns.is_some()) else {
            if t == "network" {
                continue; // a sysfs bind stands in; see replace_sysfs
            }
            let path = ns_entry(spec, t).flatten().unwrap_or_default();
            return Err(refuse_join(
                t,
                path,
                "it belongs to a container without a user namespace (restart it)",
                section,
            ));
        };
        if j.map.as_ref() != Some(&plan.map) {
            return Err(refuse_join(t, &j.path, "it belongs to a container whose user namespace maps ids differently (it was created under another policy: restart it)", section));
        }
        if let Some(first) = joined.filter(|f| f.user_ns != j.user_ns) {
            return Err(refuse_join(
                t,
                &j.path,
                &format!("it is in another user namespace than {}", first.path),
                section,
            ));
        }
        joined = Some(j);
    }
    let mut b = LinuxNamespaceBuilder::default().typ(LinuxNamespaceType::User);
    if let Some(p) = joined.and_then(|j| j.user_ns.clone()) {
        b = b.path(p);
    }
    Ok(b.build()
        .expect("a namespace type is all a namespace needs"))
}

fn refuse_join(ns: &str, path: &str, reason: &str, section: &str) -> EditError {
    EditError::UsernsJoin {
        ns: ns.to_string(),
        path: path.to_string(),
        reason: reason.to_string(),
        section: section.to_string(),
    }
}

/// Whether the network namespace will be one the container's user namespace owns (a new
/// one, or one of a container in the same user namespace).
fn network_has_own_userns(spec: &Value, plan: &Plan) -> bool {
    match ns_entry(spec, "network") {
        Some(None) => true,
        None => false,
        Some(Some(path)) => join_for(plan, path).is_some_and(|j| j.user_ns.is_some()),
    }
}

/// sysfs can only be mounted by the user namespace owning the network namespace: in the
/// host's (or a container's without a user namespace), the host's /sys is bound read-only.
fn replace_sysfs(spec: &mut Value, report: &mut Report) -> Result<(), EditError> {
    let mounts = array_mut(spec, "mounts").ok_or(malformed("mounts"))?;
    let bind: Mount = MountBuilder::default()
        .destination("/sys")
        .typ("bind")
        .source("/sys")
        .options(
            ["rbind", "rro", "nosuid", "nodev", "noexec"]
                .map(String::from)
                .to_vec(),
        )
        .build()
        .expect("a complete mount");
    for m in mounts.iter_mut() {
        if str_field(m, "type") == Some("sysfs") && str_field(m, "destination") == Some("/sys") {
            *m = to_value(&bind);
            report.removed("sysfs mount (the joined network namespace has no user namespace)");
        }
    }
    Ok(())
}

/// The owned GPU nodes as bind mounts of their host nodes: runc cannot mknod inside a user
/// namespace, and would bind each device from the host path equal to its container path.
/// The device cgroup rules `devices::apply` wrote stay: a node is bound, not granted.
fn bind_gpu_nodes(spec: &mut Value, d: &Decision, report: &mut Report) -> Result<(), EditError> {
    let ours: Vec<&str> = d.nodes.iter().map(|n| n.container_path.as_str()).collect();
    let devices =
        array_mut(object_mut(spec, "linux"), "devices").ok_or(malformed("linux.devices"))?;
    devices.retain(|dev| !str_field(dev, "path").is_some_and(|p| ours.contains(&p)));
    let mounts = array_mut(spec, "mounts").ok_or(malformed("mounts"))?;
    mounts.retain(|m| !str_field(m, "destination").is_some_and(|p| ours.contains(&p)));
    for n in &d.nodes {
        let m: Mount = MountBuilder::default()
            .destination(n.container_path.as_str())
            .typ("bind")
            .source(n.host_path.clone())
            .options(["bind", "nosuid", "noexec"].map(String::from).to_vec())
            .build()
            .expect("a complete mount");
        mounts.push(to_value(&m));
    }
    if !d.nodes.is_empty() {
        report.added(format!("{} GPU nodes as bind mounts", d.nodes.len()));
    }
    Ok(())
}

/// Cuts `net.ipv4.ping_group_range` to the container's gids 0-65535.
fn clamp_ping_group_range(spec: &mut Value, report: &mut Report) {
    let Some(v) = spec
        .pointer_mut("/linux/sysctl")
        .and_then(|s| s.get_mut(PING_GROUP_RANGE))
    else {
        return;
    };
    let Some((lo, hi)) = v.as_str().and_then(|s| {
        let mut f = s.split_whitespace().map(str::parse::<u64>);
        Some((f.next()?.ok()?, f.next()?.ok()?))
    }) else {
        return;
    };
    let max = u64::from(CONTAINER_IDS - 1);
    if hi > max || lo > max {
        *v = json!(format!("{} {}", lo.min(max), hi.min(max)));
        report.removed(format!("{PING_GROUP_RANGE} gids above {max}"));
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::edits::testing::decision;
    use crate::userns::{mapping as map, IdMap};

    fn plan() -> Plan {
        Plan {
            owner_uid: 1001,
            owner_gid: 1001,
            map: IdMap {
                uid: map::uid_map(1001, 100000),
                gid: map::gid_map(1001, 100000, &[27]),
            },
            extra_gids: vec![27],
            rootfs: PathBuf::from("/run/labgpu/rootfs"),
            joins: Vec::new(),
        }
    }

    fn spec() -> Value {
        json!({"root": {"path": "/var/lib/docker/overlay2/c1/merged"},
            "mounts": [{"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "ro"]}],
            "linux": {
                "namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}],
                "devices": [{"path": "/dev/nvidia0", "type": "c", "major": 195, "minor": 0},
                            {"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229}],
                "sysctl": {"net.ipv4.ping_group_range": "0 2147483647"},
                "x-kept": 1}})
    }

    fn with_plan(p: Plan) -> Decision {
        let mut d = decision();
        d.userns = Some(p);
        d
    }

    #[test]
    fn a_new_user_namespace_with_the_owner_mapping() {
        let mut s = spec();
        apply(&mut s, &with_plan(plan()), &mut Report::default()).unwrap();
        let l = &s["linux"];
        assert_eq!(l["namespaces"][5], json!({"type": "user"}));
        assert_eq!(
            l["uidMappings"],
            json!([{"hostID": 1001, "containerID": 0, "size": 1},
                   {"hostID": 100000, "containerID": 1, "size": 65535}])
        );
        assert_eq!(
            l["gidMappings"][3],
            json!({"hostID": 27, "containerID": 27, "size": 1})
        );
        assert_eq!(s["root"]["path"], "/run/labgpu/rootfs");
        assert_eq!(l["sysctl"]["net.ipv4.ping_group_range"], "0 65535");
        assert_eq!(l["x-kept"], 1);
        // GPU nodes: bound from the host, not made; other devices left to runc.
        assert_eq!(
            l["devices"],
            json!([{"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229}])
        );
        let binds: Vec<&Value> = s["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| {
                m["destination"]
                    .as_str()
                    .unwrap()
                    .starts_with("/dev/nvidia")
            })
            .collect();
        assert_eq!(binds.len(), 3);
        assert_eq!(
            *binds[0],
            json!({"destination": "/dev/nvidia0", "type": "bind", "source": "/fake/nvidia0",
                   "options": ["bind", "nosuid", "noexec"]})
        );
        // The sysfs of its own network namespace stays.
        assert_eq!(s["mounts"][0]["type"], "sysfs");
    }

    #[test]
    fn off_changes_nothing() {
        let mut s = spec();
        apply(&mut s, &decision(), &mut Report::default()).unwrap();
        assert_eq!(s, spec());
    }

    #[test]
    fn dockers_userns_remap_is_refused() {
        let mut s = spec();
        s["linux"]["uidMappings"] = json!([{"hostID": 231072, "containerID": 0, "size": 65536}]);
        let err = apply(&mut s, &with_plan(plan()), &mut Report::default()).unwrap_err();
        assert!(err.to_string().contains("userns-remap"), "{err}");
    }

    #[test]
    fn joining_an_owner_container_joins_its_user_namespace() {
        let mut p = plan();
        p.joins = vec![Join {
            ns_type: "network".into(),
            path: "/proc/42/ns/net".into(),
            user_ns: Some(PathBuf::from("/proc/42/ns/user")),
            map: Some(p.map.clone()),
        }];
        let mut s = spec();
        s["linux"]["namespaces"][1] = json!({"type": "network", "path": "/proc/42/ns/net"});
        apply(&mut s, &with_plan(p.clone()), &mut Report::default()).unwrap();
        assert_eq!(
            s["linux"]["namespaces"][5],
            json!({"type": "user", "path": "/proc/42/ns/user"})
        );
        assert_eq!(s["mounts"][0]["type"], "sysfs");
        // Another mapping (an older policy) cannot be joined.
        p.joins[0].map = Some(IdMap {
            uid: map::uid_map(1001, 300000),
            gid: p.map.gid.clone(),
        });
        let mut s2 = spec();
        s2["linux"]["namespaces"][1] = json!({"type": "network", "path": "/proc/42/ns/net"});
        let err = apply(&mut s2, &with_plan(p), &mut Report::default()).unwrap_err();
        assert!(err.to_string().contains("maps ids differently"), "{err}");
    }

    #[test]
    fn a_container_without_user_namespace_shares_its_network_not_its_ipc() {
        let mut p = plan();
        p.joins = vec![
            Join {
                ns_type: "network".into(),
                path: "/proc/7/ns/net".into(),
                user_ns: None,
                map: None,
            },
            Join {
                ns_type: "ipc".into(),
                path: "/proc/7/ns/ipc".into(),
                user_ns: None,
                map: None,
            },
        ];
        let mut s = spec();
        s["linux"]["namespaces"][1] = json!({"type": "network", "path": "/proc/7/ns/net"});
        apply(&mut s, &with_plan(p.clone()), &mut Report::default()).unwrap();
        assert_eq!(s["linux"]["namespaces"][5], json!({"type": "user"}));
        assert_eq!(
            s["mounts"][0],
            json!({"destination": "/sys", "type": "bind", "source": "/sys",
                   "options": ["rbind", "rro", "nosuid", "nodev", "noexec"]})
        );
        let mut s = spec();
        s["linux"]["namespaces"][2] = json!({"type": "ipc", "path": "/proc/7/ns/ipc"});
        let err = apply(&mut s, &with_plan(p), &mut Report::default()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "joining the ipc namespace /proc/7/ns/ipc is not possible with userns = \"owner\" ([defaults] or [users.alice]): it belongs to a container without a user namespace (restart it)"
        );
    }

    #[test]
    fn the_hosts_pid_namespace_is_refused() {
        let mut s = spec();
        s["linux"]["namespaces"].as_array_mut().unwrap().remove(0);
        let err = apply(&mut s, &with_plan(plan()), &mut Report::default()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the host's pid namespace cannot be used with userns = \"owner\" ([defaults] or [users.alice]): it belongs to no user namespace of the owner's (allow_host_namespaces)"
        );
    }
}
