//! Volumes, owned like containers: a user's new volume carries their owner label (the proxy
//! stamps it, and creates the volumes a container create would make implicitly, so no user
//! volume is unowned); only its owner may mount, inspect or remove it. Volumes with no owner
//! (the administrator's) are usable by everyone read-only, read-write where the policy lists
//! them (`writable_volumes`). A user's volume uses the `local` driver with no options, a
//! tmpfs, or a size.
//!
//! The `local` driver's options are `mount(8)` run by dockerd as root when a container
//! starts: `type=proc` (then `core_pattern`: host root), `type=overlay` with a `lowerdir` of
//! another user's home, `o=bind` with a relative `device` (resolved against dockerd's working
//! directory). A bind path checked at create time could also be swapped for a symlink before
//! the first mount. So users get no mount types but tmpfs; bind-backed volumes are the
//! administrator's (and the runtime checks what is really mounted, see `crate::volumes`).

use bytes::Bytes;
use hyper::header::{CONTENT_TYPE, HOST};
use hyper::{Request, Response, StatusCode};
use serde_json::{json, Map, Value};

use super::body::{full, read_json, with_json, with_uri, Body, MAX_JSON_BODY};
use super::error::{ProxyError, RuleError};
use super::request::{as_object_mut, check_fields, merge_owner_filter, str_of, Field, UserCtx};
use super::server::{Call, State};
use super::upstream::{access, forward, inspect_object, send, upstream_error, Access};

use Field::{Checked, Free, Refused};

/// `volume.CreateOptions`.
const CREATE: &[(&str, Field)] = &[
    ("Name", Free),
    ("Driver", Checked),
    ("DriverOpts", Checked),
    ("Labels", Checked),
    ("ClusterVolumeSpec", Refused("cluster volumes are swarm's")),
];

/// tmpfs options in `o=` that change only the tmpfs itself.
const TMPFS_FLAGS: [&str; 3] = ["nosuid", "nodev", "noexec"];
const TMPFS_VALUES: [&str; 5] = ["size", "mode", "uid", "gid", "nr_inodes"];

/// What a request on `/volumes/…` does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VolumeRoute {
    Create,
    List,
    Prune,
    Inspect { name: String },
    Remove { name: String },
}

pub async fn handle(
    call: &Call<'_>,
    route: VolumeRoute,
    req: Request<Body>,
) -> Result<Response<Body>, ProxyError> {
    match route {
        VolumeRoute::Create => {
            let (parts, body) = req.into_parts();
            let mut v = read_json(body, call.max_body()).await?;
            rewrite_volume_create(&mut v, call.ctx)?;
            let name = v
                .get("Name")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            // An existing name is answered with the existing volume: it must be the caller's.
            if !name.is_empty() {
                check_access(call, &name, Use::Manage).await?;
            }
            forward(call.state, with_json(parts, &v)).await
        }
        // Listing and pruning see only the caller's volumes.
        VolumeRoute::List | VolumeRoute::Prune => {
            let q =
                merge_owner_filter(call.query.as_deref(), &call.ctx.owner_label, &call.ctx.name)?;
            forward(call.state, with_uri(req, &call.path, Some(&q))?).await
        }
        VolumeRoute::Inspect { name } => {
            check_access(call, &name, Use::Read).await?;
            forward(call.state, req).await
        }
        VolumeRoute::Remove { name } => {
            check_access(call, &name, Use::Manage).await?;
            forward(call.state, req).await
        }
    }
}

/// What the caller wants of a volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Use {
    /// Inspect it, or mount it read-only.
    Read,
    /// Mount it read-write.
    Write,
    /// Remove it, or create it (Docker answers a create of an existing name with it).
    Manage,
}

/// How the caller may mount volume `name`: `Some(true)` read-only, `Some(false)` as asked,
/// `None` when it does not exist yet. Another user's volume, or removing the
/// administrator's, is refused.
pub async fn check_access(
    call: &Call<'_>,
    name: &str,
    want: Use,
) -> Result<Option<bool>, ProxyError> {
    let Some(volume) = inspect_object(call.state, "volumes", name).await? else {
        return Ok(None);
    };
    match access(&volume, call.ctx) {
        Access::Own => Ok(Some(false)),
        Access::Foreign => Err(ProxyError::NotYoursObject {
            what: "volume",
            name: name.to_string(),
        }),
        Access::Shared if want == Use::Manage => Err(ProxyError::Shared {
            what: "volume",
            name: name.to_string(),
            why: "only the administrator may remove or recreate it",
        }),
        Access::Shared => Ok(Some(!call.ctx.writable_volumes.iter().any(|v| v == name))),
    }
}

/// Creates volume `name` for the caller (what dockerd would do implicitly, with no owner),
/// with the driver and options a `--mount` gave (already checked). Docker answers a create
/// of a name that appeared meanwhile with that volume: its owner is checked again.
pub async fn create_owned(
    state: &State,
    ctx: &UserCtx,
    name: &str,
    driver: &str,
    options: &Map<String, Value>,
) -> Result<(), ProxyError> {
    let body = json!({
        "Name": name,
        "Driver": if driver.is_empty() { "local" } else { driver },
        "DriverOpts": options,
        "Labels": {ctx.owner_label.clone(): ctx.name.clone()},
    });
    let req = Request::post("/volumes/create")
        .header(HOST, "docker")
        .header(CONTENT_TYPE, "application/json")
        .body(full(Bytes::from(body.to_string())))
        .map_err(|_| RuleError::BadPath("/volumes/create".into()))?;
    let resp = send(state, req).await?;
    let status = resp.status();
    let v = read_json(
        http_body_util::BodyExt::boxed(http_body_util::BodyExt::map_err(
            resp.into_body(),
            super::body::box_err,
        )),
        MAX_JSON_BODY,
    )
    .await
    .unwrap_or(Value::Null);
    if status != StatusCode::CREATED && status != StatusCode::OK {
        return Err(upstream_error(
            status,
            format!("creating volume {name:?}"),
            &v,
        ));
    }
    if access(&v, ctx) != Access::Own {
        return Err(ProxyError::NotYoursObject {
            what: "volume",
            name: name.to_string(),
        });
    }
    Ok(())
}

/// Checks the driver and its options, and stamps the owner label.
pub fn rewrite_volume_create(body: &mut Value, ctx: &UserCtx) -> Result<(), RuleError> {
    let obj = as_object_mut(body, "body")?.ok_or(RuleError::BadField {
        field: "body".into(),
        expected: "an object",
    })?;
    check_fields(obj, CREATE, "")?;
    let driver = str_of(obj, "Driver", "Driver")?.to_string();
    let options = match obj.get("DriverOpts") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(o)) => o.clone(),
        Some(_) => {
            return Err(RuleError::BadField {
                field: "DriverOpts".into(),
                expected: "an object",
            })
        }
    };
    check_driver(&driver, &options)?;
    let labels = obj
        .entry("Labels")
        .or_insert_with(|| Value::Object(Map::new()));
    if labels.is_null() {
        *labels = Value::Object(Map::new());
    }
    let labels = as_object_mut(labels, "Labels")?.expect("not null");
    labels.insert(ctx.owner_label.clone(), Value::String(ctx.name.clone()));
    Ok(())
}

fn refused(option: &str, value: &str, reason: &str) -> RuleError {
    RuleError::ValueRefused {
        field: format!("volume option {option}"),
        value: value.to_string(),
        reason: reason.to_string(),
    }
}

/// The rule for a user's volume, from `docker volume create` or inline in `--mount`: the
/// `local` driver with no options, `size` alone, or `type=tmpfs` (any `device`: dockerd wants
/// one) with `o` limited to tmpfs's own size, mode, owner and flags.
pub fn check_driver(driver: &str, options: &Map<String, Value>) -> Result<(), RuleError> {
    if !matches!(driver, "" | "local") {
        return Err(refused(
            "driver",
            driver,
            "volume plugins run privileged on the host; only the local driver is allowed",
        ));
    }
    let text = |k: &str| -> Result<Option<&str>, RuleError> {
        match options.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(RuleError::BadField {
                field: format!("volume option {k}"),
                expected: "a string",
            }),
        }
    };
    if let Some(k) = options
        .keys()
        .find(|k| !matches!(k.as_str(), "type" | "device" | "o" | "size"))
    {
        return Err(refused(
            k,
            "",
            "the local driver's only user options are type=tmpfs, o and size",
        ));
    }
    match text("type")? {
        Some("tmpfs") => {}
        Some(other) => {
            return Err(refused(
                "type",
                other,
                "dockerd would mount it as root; users' volumes may only be tmpfs (ask the administrator for others)",
            ))
        }
        None => {
            if let Some(device) = text("device")? {
                return Err(refused(
                    "device",
                    device,
                    "a volume bound to a host path is the administrator's to create",
                ));
            }
            if let Some(o) = text("o")? {
                return Err(refused("o", o, "mount options go with type=tmpfs only"));
            }
        }
    }
    if let Some(o) = text("o")? {
        check_tmpfs_options(o)?;
    }
    Ok(())
}

fn check_tmpfs_options(o: &str) -> Result<(), RuleError> {
    for opt in o.split(',').filter(|s| !s.is_empty()) {
        let (k, v) = opt
            .split_once('=')
            .map_or((opt, None), |(k, v)| (k, Some(v)));
        let ok = match v {
            None => TMPFS_FLAGS.contains(&k),
            Some(v) => {
                TMPFS_VALUES.contains(&k)
                    && !v.is_empty()
                    && v.chars().all(|c| c.is_ascii_alphanumeric() || c == '%')
            }
        };
        if !ok {
            return Err(refused(
                "o",
                opt,
                "tmpfs volumes take only size=, mode=, uid=, gid=, nr_inodes=, nosuid, nodev and noexec",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::request::test_ctx as ctx;
    use serde_json::json;

    fn create(body: Value) -> Result<Value, RuleError> {
        let mut body = body;
        rewrite_volume_create(&mut body, &ctx())?;
        Ok(body)
    }

    #[test]
    fn the_owner_label_is_stamped() {
        let vol = create(json!({"Name": "v", "Labels": {"labgpu.user": "bob"}})).unwrap();
        assert_eq!(vol["Labels"]["labgpu.user"], "alice");
    }

    #[test]
    fn plain_tmpfs_and_sized_volumes_pass() {
        for opts in [
            json!(null),
            json!({}),
            json!({"size": "10G"}),
            json!({"type": "tmpfs", "device": "tmpfs", "o": "size=100m,uid=1000,mode=0700,nosuid,nodev"}),
            json!({"type": "tmpfs", "device": "/etc"}),
        ] {
            create(json!({"Name": "v", "Driver": "local", "DriverOpts": opts})).unwrap();
        }
    }

    #[test]
    fn mount_types_binds_and_foreign_options_are_refused() {
        for (opts, word) in [
            (json!({"type": "proc", "device": "proc"}), "type"),
            (json!({"type": "sysfs", "device": "sysfs"}), "type"),
            (
                json!({"type": "overlay", "device": "overlay", "o": "lowerdir=/home/bob"}),
                "type",
            ),
            (
                json!({"type": "none", "o": "bind", "device": "/home/bob"}),
                "type",
            ),
            (json!({"o": "bind", "device": "relative/path"}), "device"),
            (json!({"o": "bind"}), "mount options"),
            (
                json!({"type": "tmpfs", "device": "t", "o": "size=1m,exec"}),
                "tmpfs volumes",
            ),
            (
                json!({"type": "tmpfs", "device": "t", "o": "uid=0,lowerdir=/x"}),
                "tmpfs volumes",
            ),
            (
                json!({"type": "tmpfs", "device": "t", "o": "size=1m,mode=../x"}),
                "tmpfs volumes",
            ),
            (json!({"copy": "1"}), "only user options"),
        ] {
            let err = create(json!({"Name": "v", "DriverOpts": opts}))
                .unwrap_err()
                .to_string();
            assert!(err.contains(word), "{opts}: {err}");
        }
        let err = create(json!({"Name": "v", "Driver": "sshfs"})).unwrap_err();
        assert!(err.to_string().contains("only the local driver"), "{err}");
        let err = create(json!({"Name": "v", "Bogus": 1})).unwrap_err();
        assert!(matches!(err, RuleError::UnknownField { .. }), "{err}");
        // Go reads "driveropts" as DriverOpts.
        let err = create(json!({"Name": "v", "driveropts": {"type": "proc"}})).unwrap_err();
        assert!(err.to_string().contains("proc"), "{err}");
    }
}
