//! Containers: `POST /containers/create` is checked against the caller's policy and rewritten
//! (owner label, runtime, pinned references); `/containers/{id}/…` needs the caller to own
//! `id`, and `update` may not touch devices.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use hyper::{Method, Request, Response};
use serde_json::{Map, Value};
use tracing::info;

use super::body::{read_json, with_json, with_uri, Body, MAX_JSON_BODY};
use super::error::{ProxyError, RuleError};
use super::request::{array_of, as_object_mut, canonicalize, str_of, valid_container_ref, UserCtx};
use super::server::Call;
use super::upstream::{forward, owned_container};
use crate::decide::resolve_host;
use crate::paths::is_under;

/// `POST /containers/create`.
pub async fn create(call: &Call<'_>, req: Request<Body>) -> Result<Response<Body>, ProxyError> {
    let (parts, body) = req.into_parts();
    let mut v = read_json(body, MAX_JSON_BODY).await?;
    let mut owned = BTreeMap::new();
    for r in create_container_refs(&mut v)? {
        let full_id = owned_container(call.state, call.ctx, &r.name).await?;
        owned.insert(r.name, full_id);
    }
    rewrite_create(&mut v, call.ctx, &owned, &resolve_host)?;
    let image = v.get("Image").and_then(|i| i.as_str()).unwrap_or("?");
    info!(user = %call.ctx.name, %image, "create");
    forward(call.state, with_json(parts, &v)).await
}

/// `/containers/{id}/{rest}`: any method, on the caller's own container only, sent on by
/// full id.
pub async fn by_id(
    call: &Call<'_>,
    id: &str,
    rest: &str,
    req: Request<Body>,
) -> Result<Response<Body>, ProxyError> {
    let full_id = owned_container(call.state, call.ctx, id).await?;
    let path = if rest.is_empty() {
        format!("{}/containers/{full_id}", call.prefix)
    } else {
        format!("{}/containers/{full_id}/{rest}", call.prefix)
    };
    let req = with_uri(req, &path, call.query.as_deref())?;
    if rest == "update" && req.method() == Method::POST {
        let (parts, body) = req.into_parts();
        let mut v = read_json(body, MAX_JSON_BODY).await?;
        check_update(&mut v)?;
        return forward(call.state, with_json(parts, &v)).await;
    }
    forward(call.state, req).await
}

const CONFIG_FIELDS: [&str; 2] = ["Labels", "HostConfig"];
const HOST_CONFIG_FIELDS: [&str; 18] = [
    "Links",
    "CgroupnsMode",
    "Privileged",
    "PidMode",
    "IpcMode",
    "UTSMode",
    "UsernsMode",
    "NetworkMode",
    "VolumesFrom",
    "CgroupParent",
    "Cgroup",
    "Runtime",
    "Binds",
    "Mounts",
    "Devices",
    "SecurityOpt",
    "Annotations",
    "DeviceCgroupRules",
];

/// Another container a create body refers to; each must be the caller's, and is replaced by
/// its full id (`rewrite_create`'s `owned`), so a rename in between cannot swap it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ContainerRef {
    pub field: &'static str,
    pub name: String,
}

/// The containers a create body joins or copies from (`--pid/--ipc/--network container:X`,
/// `--volumes-from X`, `--link X` (which copies X's environment), a cgroup shared with X).
/// Run before `rewrite_create`.
pub fn create_container_refs(body: &mut Value) -> Result<Vec<ContainerRef>, RuleError> {
    let mut refs = Vec::new();
    let top = as_object_mut(body, "body")?.ok_or(RuleError::BadField {
        field: "body".into(),
        expected: "an object",
    })?;
    canonicalize(top, &CONFIG_FIELDS)?;
    let Some(hc) = top.get_mut("HostConfig") else {
        return Ok(refs);
    };
    let Some(hc) = as_object_mut(hc, "HostConfig")? else {
        return Ok(refs);
    };
    canonicalize(hc, &HOST_CONFIG_FIELDS)?;
    for field in ["PidMode", "IpcMode", "NetworkMode", "Cgroup"] {
        let v = str_of(hc, field, field)?;
        if let Some(name) = v.strip_prefix("container:") {
            refs.push(ContainerRef {
                field,
                name: name.to_string(),
            });
        }
    }
    // `--volumes-from X[:ro]` and `--link X[:alias]`.
    for field in ["VolumesFrom", "Links"] {
        for v in array_of(hc, field, field)? {
            let s = v.as_str().ok_or(RuleError::BadField {
                field: field.into(),
                expected: "a list of strings",
            })?;
            let name = s.split_once(':').map_or(s, |(n, _)| n);
            refs.push(ContainerRef {
                field,
                name: name.to_string(),
            });
        }
    }
    for r in &refs {
        if !valid_container_ref(&r.name) {
            return Err(RuleError::BadContainerRef(r.name.clone()));
        }
    }
    Ok(refs)
}

/// Checks a `POST /containers/create` body against the caller's policy and rewrites it:
/// owner label stamped, runtime forced, references to other containers pinned to the ids
/// in `owned` (every name from `create_container_refs`, already checked to be the caller's).
/// `resolve` turns a host path into what the kernel would open (symlinks followed).
pub fn rewrite_create(
    body: &mut Value,
    ctx: &UserCtx,
    owned: &BTreeMap<String, String>,
    resolve: &dyn Fn(&Path) -> PathBuf,
) -> Result<(), RuleError> {
    // Also canonicalizes the keys the checks below read.
    let refs = create_container_refs(body)?;
    let top = body.as_object_mut().ok_or(RuleError::BadField {
        field: "body".into(),
        expected: "an object",
    })?;

    let mut labels = match top.remove("Labels") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m,
        Some(_) => {
            return Err(RuleError::BadField {
                field: "Labels".into(),
                expected: "an object",
            })
        }
    };
    labels.insert(ctx.owner_label.clone(), Value::String(ctx.name.clone()));
    top.insert("Labels".into(), Value::Object(labels));

    let hc = top
        .entry("HostConfig")
        .or_insert_with(|| Value::Object(Map::new()));
    if hc.is_null() {
        *hc = Value::Object(Map::new());
    }
    let hc = as_object_mut(hc, "HostConfig")?.expect("not null");
    // With a "HostConfig" present, dockerd ignores the deprecated host config fields at the
    // top level (all but a few resource limits), so only this object needs checking.

    if hc.get("Privileged").and_then(Value::as_bool) == Some(true) && !ctx.allow_privileged {
        return Err(RuleError::Privileged {
            user: ctx.name.clone(),
            section: ctx.section(),
        });
    }
    let host_ns = |field: &'static str, key: &'static str| RuleError::HostNamespace {
        field,
        value: "host".into(),
        user: ctx.name.clone(),
        key,
        section: ctx.section(),
    };
    for field in [
        "PidMode",
        "IpcMode",
        "UTSMode",
        "UsernsMode",
        "CgroupnsMode",
    ] {
        if str_of(hc, field, field)? == "host" && !ctx.allow_host_namespaces {
            return Err(host_ns(field, "allow_host_namespaces"));
        }
    }
    if str_of(hc, "NetworkMode", "NetworkMode")? == "host" && !ctx.allow_host_network {
        return Err(host_ns("NetworkMode", "allow_host_network"));
    }
    let parent = str_of(hc, "CgroupParent", "CgroupParent")?;
    if !parent.is_empty() {
        return Err(RuleError::CgroupParent {
            field: "CgroupParent",
            value: parent.to_string(),
        });
    }
    for opt in array_of(hc, "SecurityOpt", "SecurityOpt")? {
        let s = opt.as_str().unwrap_or_default();
        let (k, v) = s.split_once(['=', ':']).unwrap_or((s, ""));
        let unconfined = matches!(k, "seccomp" | "apparmor" | "systempaths") && v == "unconfined";
        if unconfined && !ctx.allow_unconfined {
            return Err(RuleError::Unconfined {
                opt: s.to_string(),
                user: ctx.name.clone(),
                section: ctx.section(),
            });
        }
    }
    check_binds(hc, ctx, resolve)?;
    check_devices(hc, ctx, resolve)?;

    for r in &refs {
        let Some(id) = owned.get(&r.name) else {
            return Err(RuleError::BadContainerRef(r.name.clone()));
        };
        // Links name their target by name (the alias defaults to it); checked, not rewritten.
        if r.field == "VolumesFrom" || r.field == "Links" {
            continue;
        }
        hc.insert(r.field.into(), Value::String(format!("container:{id}")));
    }
    if let Some(Value::Array(list)) = hc.get_mut("VolumesFrom") {
        for v in list.iter_mut() {
            let s = v.as_str().unwrap_or_default();
            let (name, mode) = s.split_once(':').map_or((s, None), |(n, m)| (n, Some(m)));
            let Some(id) = owned.get(name) else {
                return Err(RuleError::BadContainerRef(name.to_string()));
            };
            *v = Value::String(match mode {
                Some(m) => format!("{id}:{m}"),
                None => id.clone(),
            });
        }
    }

    hc.insert("Runtime".into(), Value::String(ctx.runtime.clone()));
    // The runtime reads the owner from the label or an annotation of the same name, and
    // refuses when they differ; io.labgpu.* are the runtime's own stamps.
    if let Some(Value::Object(ann)) = hc.get_mut("Annotations") {
        ann.retain(|k, _| *k != ctx.owner_label && !k.starts_with("io.labgpu."));
    }
    Ok(())
}

fn check_binds(
    hc: &mut Map<String, Value>,
    ctx: &UserCtx,
    resolve: &dyn Fn(&Path) -> PathBuf,
) -> Result<(), RuleError> {
    let check = |source: &str| -> Result<(), RuleError> {
        let resolved = resolve(Path::new(source));
        if ctx.bind_allow.iter().any(|p| is_under(&resolved, p)) {
            return Ok(());
        }
        Err(RuleError::BindNotAllowed {
            path: resolved,
            user: ctx.name.clone(),
            section: ctx.section(),
        })
    };
    for b in array_of(hc, "Binds", "Binds")? {
        let s = b.as_str().ok_or(RuleError::BadField {
            field: "Binds".into(),
            expected: "a list of strings",
        })?;
        // "vol:/dst" is a named volume; only "/src:/dst[:opts]" is a host path.
        let source = s.split(':').next().unwrap_or_default();
        if source.starts_with('/') {
            check(source)?;
        }
    }
    let Some(Value::Array(mounts)) = hc.get_mut("Mounts") else {
        return Ok(());
    };
    for m in mounts.iter_mut() {
        let Some(m) = as_object_mut(m, "Mounts")? else {
            continue;
        };
        canonicalize(m, &["Type", "Source", "VolumeOptions"])?;
        let kind = str_of(m, "Type", "Mounts.Type")?.to_string();
        if kind == "bind" {
            check(str_of(m, "Source", "Mounts.Source")?)?;
        }
        if kind != "volume" {
            continue;
        }
        // A local volume with `o=bind,device=/path` is a bind of /path in disguise.
        let Some(vo) = m.get_mut("VolumeOptions") else {
            continue;
        };
        let Some(vo) = as_object_mut(vo, "Mounts.VolumeOptions")? else {
            continue;
        };
        canonicalize(vo, &["DriverConfig"])?;
        let Some(dc) = vo.get_mut("DriverConfig") else {
            continue;
        };
        let Some(dc) = as_object_mut(dc, "Mounts.VolumeOptions.DriverConfig")? else {
            continue;
        };
        canonicalize(dc, &["Options"])?;
        if let Some(Value::Object(opts)) = dc.get("Options") {
            if let Some(Value::String(device)) = opts.get("device") {
                if device.starts_with('/') {
                    check(device)?;
                }
            }
        }
    }
    Ok(())
}

fn check_devices(
    hc: &mut Map<String, Value>,
    ctx: &UserCtx,
    resolve: &dyn Fn(&Path) -> PathBuf,
) -> Result<(), RuleError> {
    let Some(Value::Array(devices)) = hc.get_mut("Devices") else {
        return Ok(());
    };
    for d in devices.iter_mut() {
        let Some(d) = as_object_mut(d, "Devices")? else {
            continue;
        };
        canonicalize(d, &["PathOnHost"])?;
        let path = str_of(d, "PathOnHost", "Devices.PathOnHost")?;
        // CDI names (nvidia.com/gpu=0) and GPU nodes are the runtime's to sort out.
        if !path.starts_with('/') {
            continue;
        }
        let resolved = resolve(Path::new(path));
        let is_gpu_node = resolved
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("nvidia"))
            && (resolved.parent() == Some(Path::new("/dev"))
                || resolved.parent() == Some(ctx.gpu_dev_root.as_path())
                || resolved.starts_with("/dev/nvidia-caps"));
        if is_gpu_node || ctx.devices.contains(&resolved) {
            continue;
        }
        return Err(RuleError::DeviceNotAllowed {
            path: path.to_string(),
            user: ctx.name.clone(),
            section: ctx.section(),
        });
    }
    Ok(())
}

/// `POST /containers/{id}/update`: resource limits may change, devices may not (the
/// runtime refuses device changes too; this says so before Docker half-applies them).
pub fn check_update(body: &mut Value) -> Result<(), RuleError> {
    let Some(obj) = as_object_mut(body, "body")? else {
        return Ok(());
    };
    let fields = [
        "Devices",
        "DeviceCgroupRules",
        "DeviceRequests",
        "CgroupParent",
        "Runtime",
        "Privileged",
    ];
    canonicalize(obj, &fields)?;
    for f in fields {
        let set = match obj.get(f) {
            None | Some(Value::Null) | Some(Value::Bool(false)) => false,
            Some(Value::Array(a)) => !a.is_empty(),
            Some(Value::String(s)) => !s.is_empty(),
            Some(_) => true,
        };
        if set {
            return Err(RuleError::UpdateRefused {
                field: f.to_string(),
            });
        }
    }
    Ok(())
}
/// Whether an inspected container (`GET /containers/{id}/json`) is the caller's.
pub fn owned_by(inspect: &Value, owner_label: &str, name: &str) -> bool {
    inspect
        .get("Config")
        .and_then(|c| c.get("Labels"))
        .and_then(|l| l.get(owner_label))
        .and_then(Value::as_str)
        == Some(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::paths::normalize;
    use serde_json::json;

    use crate::proxy::request::test_ctx as ctx;

    fn rewrite(mut body: Value) -> Result<Value, RuleError> {
        rewrite_with(&mut body, &BTreeMap::new())?;
        Ok(body)
    }

    fn rewrite_with(body: &mut Value, owned: &BTreeMap<String, String>) -> Result<(), RuleError> {
        rewrite_create(body, &ctx(), owned, &|p| normalize(p))
    }

    #[test]
    fn top_level_host_config_fields_are_shadowed() {
        // No "HostConfig" key: dockerd would read Privileged/Runtime from the top level.
        let body = rewrite(json!({"Image": "x", "Privileged": true, "Runtime": "runc"})).unwrap();
        assert_eq!(body["HostConfig"]["Runtime"], "labgpu");
        assert!(body["HostConfig"].is_object());
    }

    #[test]
    fn create_stamps_owner_and_runtime_whatever_was_asked() {
        let body = rewrite(json!({
            "Image": "x",
            "Labels": {"labgpu.user": "bob", "keep": "1"},
            "HostConfig": {"Runtime": "runc", "Annotations": {"labgpu.user": "bob", "io.labgpu.owner": "bob", "other": "x"}}
        }))
        .unwrap();
        assert_eq!(body["Labels"]["labgpu.user"], "alice");
        assert_eq!(body["Labels"]["keep"], "1");
        assert_eq!(body["HostConfig"]["Runtime"], "labgpu");
        assert_eq!(body["HostConfig"]["Annotations"], json!({"other": "x"}));

        let body = rewrite(json!({"Image": "x", "HostConfig": null, "Labels": null})).unwrap();
        assert_eq!(body["Labels"], json!({"labgpu.user": "alice"}));
        assert_eq!(body["HostConfig"]["Runtime"], "labgpu");
    }

    #[test]
    fn create_sees_keys_as_go_does() {
        // Go binds "labels", "hostconfig", "runtime" (and the Kelvin-sign K) to the fields.
        let body = rewrite(json!({
            "labels": {"labgpu.user": "bob"},
            "hostconfig": {"runtime": "runc", "NetworKMode": "bridge"}
        }))
        .unwrap();
        assert_eq!(body["Labels"]["labgpu.user"], "alice");
        assert_eq!(body["HostConfig"]["Runtime"], "labgpu");
        assert!(body.get("labels").is_none());
        assert!(body["HostConfig"].get("runtime").is_none());
        assert_eq!(body["HostConfig"]["NetworkMode"], "bridge");

        let err = rewrite(json!({"HostConfig": {"privileged": true}})).unwrap_err();
        assert!(matches!(err, RuleError::Privileged { .. }), "{err}");
        let err =
            rewrite(json!({"HostConfig": {"Privileged": false, "PRIVILEGED": true}})).unwrap_err();
        assert!(matches!(err, RuleError::DuplicateKey { .. }), "{err}");
    }

    #[test]
    fn create_refusals() {
        let refused = |hc: Value| rewrite(json!({"Image": "x", "HostConfig": hc})).unwrap_err();
        let e = refused(json!({"Privileged": true}));
        assert_eq!(
            e.to_string(),
            "privileged containers are not allowed for alice (allow_privileged in [defaults] or [users.alice])"
        );
        for field in [
            "PidMode",
            "IpcMode",
            "UTSMode",
            "UsernsMode",
            "CgroupnsMode",
        ] {
            let e = refused(json!({ field: "host" }));
            assert!(
                matches!(e, RuleError::HostNamespace { field: f, .. } if f == field),
                "{e}"
            );
        }
        assert!(refused(json!({"NetworkMode": "host"}))
            .to_string()
            .contains("allow_host_network"));
        assert!(matches!(
            refused(json!({"CgroupParent": "/system.slice"})),
            RuleError::CgroupParent { .. }
        ));
        assert!(matches!(
            refused(json!({"SecurityOpt": ["seccomp=unconfined"]})),
            RuleError::Unconfined { .. }
        ));
        assert!(matches!(
            refused(json!({"SecurityOpt": ["apparmor:unconfined"]})),
            RuleError::Unconfined { .. }
        ));
        let e = refused(json!({"Binds": ["/etc:/host-etc:ro"]}));
        assert_eq!(
            e.to_string(),
            "bind mount of host path /etc is not allowed for alice (bind_allow or mounts in [defaults] or [users.alice])"
        );
        assert!(matches!(
            refused(json!({"Binds": ["/home/alice/../bob:/x"]})),
            RuleError::BindNotAllowed { .. }
        ));
        assert!(matches!(
            refused(json!({"Mounts": [{"type": "bind", "source": "/root", "target": "/r"}]})),
            RuleError::BindNotAllowed { .. }
        ));
        assert!(matches!(
            refused(
                json!({"Mounts": [{"Type": "volume", "Target": "/v", "VolumeOptions":
                {"DriverConfig": {"Options": {"type": "none", "o": "bind", "device": "/etc"}}}}]})
            ),
            RuleError::BindNotAllowed { .. }
        ));
        assert!(matches!(
            refused(
                json!({"Devices": [{"PathOnHost": "/dev/sda", "PathInContainer": "/dev/sda"}]})
            ),
            RuleError::DeviceNotAllowed { .. }
        ));
    }

    #[test]
    fn create_allows_what_the_policy_allows() {
        let body = rewrite(json!({"Image": "x", "HostConfig": {
            "Binds": ["/home/alice/code:/code", "myvol:/data", "/srv/data/set:/set:ro"],
            "Mounts": [{"Type": "bind", "Source": "/srv/data", "Target": "/d"},
                       {"Type": "tmpfs", "Target": "/t"}],
            "Devices": [{"PathOnHost": "/dev/fuse"}, {"PathOnHost": "/dev/nvidia2"},
                        {"PathOnHost": "/tmp/fake/dev/nvidia3"}, {"PathOnHost": "nvidia.com/gpu=0"}],
            "NetworkMode": "bridge", "IpcMode": "shareable", "SecurityOpt": ["no-new-privileges"],
        }}))
        .unwrap();
        assert_eq!(body["HostConfig"]["Runtime"], "labgpu");
    }

    #[test]
    fn container_references_are_pinned_to_owned_ids() {
        let mut body = json!({"HostConfig": {
            "NetworkMode": "container:web", "PidMode": "container:/web",
            "VolumesFrom": ["data:ro", "web"]
        }});
        let mut refs = create_container_refs(&mut body).unwrap();
        refs.sort();
        let names: Vec<&str> = refs.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["web", "/web", "data", "web"]);

        // A reference the server did not resolve as the caller's is refused.
        assert!(rewrite_with(&mut body.clone(), &BTreeMap::new()).is_err());

        let owned: BTreeMap<String, String> = [("web", "aaa"), ("/web", "aaa"), ("data", "bbb")]
            .into_iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        rewrite_with(&mut body, &owned).unwrap();
        let hc = &body["HostConfig"];
        assert_eq!(hc["NetworkMode"], "container:aaa");
        assert_eq!(hc["PidMode"], "container:aaa");
        assert_eq!(hc["VolumesFrom"], json!(["bbb:ro", "aaa"]));

        let mut links = json!({"HostConfig": {"Links": ["/db:/web/db", "cache"]}});
        let names: Vec<String> = create_container_refs(&mut links)
            .unwrap()
            .into_iter()
            .map(|r| r.name)
            .collect();
        assert_eq!(names, ["/db", "cache"]);
        assert!(rewrite_with(&mut links.clone(), &BTreeMap::new()).is_err());
        let owned: BTreeMap<String, String> = [("/db", "d"), ("cache", "c")]
            .into_iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        rewrite_with(&mut links, &owned).unwrap();
        assert_eq!(
            links["HostConfig"]["Links"],
            json!(["/db:/web/db", "cache"])
        );

        let mut bad = json!({"HostConfig": {"IpcMode": "container:../x"}});
        assert!(matches!(
            create_container_refs(&mut bad),
            Err(RuleError::BadContainerRef(_))
        ));
    }

    #[test]
    fn update_may_not_touch_devices() {
        check_update(&mut json!({"Memory": 1000000, "CpuShares": 2})).unwrap();
        check_update(&mut json!({"Devices": [], "DeviceCgroupRules": null})).unwrap();
        for body in [
            json!({"Devices": [{"PathOnHost": "/dev/nvidia1"}]}),
            json!({"devicecgrouprules": ["c 195:* rwm"]}),
            json!({"DeviceRequests": [{"Count": -1}]}),
            json!({"Runtime": "runc"}),
        ] {
            assert!(
                matches!(
                    check_update(&mut body.clone()),
                    Err(RuleError::UpdateRefused { .. })
                ),
                "{body}"
            );
        }
    }

    #[test]
    fn ownership_is_read_from_the_label() {
        let c = json!({"Id": "abc", "Config": {"Labels": {"labgpu.user": "alice"}}});
        assert!(owned_by(&c, "labgpu.user", "alice"));
        assert!(!owned_by(&c, "labgpu.user", "bob"));
        assert!(!owned_by(
            &json!({"Config": {"Labels": null}}),
            "labgpu.user",
            "bob"
        ));
    }
}
