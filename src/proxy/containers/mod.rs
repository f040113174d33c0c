//! Containers: `POST /containers/create` is checked against the caller's policy and rewritten
//! (owner label, runtime, pinned references); `/containers/{id}/…` needs the caller to own
//! `id`, and `update` may not touch devices.

use std::path::Path;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::Value;
use tracing::{info, warn};

mod create;
mod fairshare;
mod mounts;
mod slurm;
mod storage;

pub use create::{
    create_container_refs, named_volumes, network_names, rewrite_create, ContainerRef, Resolved,
    SESSION_LABEL,
};
pub(in crate::proxy) use create::{pin_links, ref_list, ENDPOINT};

use super::archive;
use super::body::{box_err, full, read_bytes, read_json, with_json, with_uri, Body, MAX_JSON_BODY};
use super::error::{ProxyError, RuleError};
use super::limits;
use super::request::UserCtx;
use super::request::{as_object_mut, canonicalize, set_query_param, valid_container_ref};
use super::server::{Call, State};
use super::upstream::{check_owned, delete, forward, get_json, owned_container, send};
use super::{networks, volumes};
use crate::decide::resolve_host;
use crate::policy::Policy;
use crate::records;

/// `POST /containers/create`: the body's references are looked up (containers, volumes,
/// networks, the image's volumes), missing named volumes created for the caller, then the
/// body is checked and rewritten.
pub async fn create(call: &Call<'_>, req: Request<Body>) -> Result<Response<Body>, ProxyError> {
    let (parts, body) = req.into_parts();
    let mut v = read_json(body, call.max_body()).await?;
    let max_mounts = call.policy.proxy_or_default().max_mounts;
    create::check_mount_count(&v, max_mounts)?;
    let job = slurm::job_for_create(call, &mut v).await?;
    let resolved = resolve_refs(call, &mut v).await?;
    let mut v = rewrite_off_workers(v, call.ctx.clone(), resolved).await?;
    slurm::stamp_job_label(&mut v, job);
    let image = v.get("Image").and_then(|i| i.as_str()).unwrap_or("?");
    info!(user = %call.ctx.name, %image, slurm_job = ?job, "create");
    let resp = forward(call.state, with_json(parts, &v)).await?;
    let state_dir = call.policy.proxy_or_default().state_dir.0;
    let record = records::Record {
        owner: call.ctx.name.clone(),
        session: false,
        slurm_job: job,
    };
    record_created(call.state, resp, &state_dir, record).await
}

/// `docker cp` into a container: the upload reaches dockerd rewritten (see `archive`).
async fn put_archive(
    state: &State,
    req: Request<Body>,
    owner: archive::Owner,
) -> Result<Response<Body>, ProxyError> {
    let (mut parts, body) = req.into_parts();
    // Another length than the caller's: hyper sends it chunked.
    parts.headers.remove(CONTENT_LENGTH);
    parts.headers.remove(TRANSFER_ENCODING);
    let (body, refusal) = archive::rewrite_archive(body, owner);
    let resp = forward(state, Request::from_parts(parts, body)).await;
    // A refusal aborted the upload to dockerd: whatever hyper or dockerd made of that, the
    // refusal is the answer.
    match refusal.take() {
        Some(e) => Err(e.into()),
        None => resp,
    }
}

/// `POST /containers/create` from the administrator: forwarded as sent; a container with an
/// owner label is recorded like a user's, so the runtime believes its label. A policy that
/// does not load leaves the container unrecorded (and so unlabeled to the runtime).
pub async fn admin_create(state: &State, req: Request<Body>) -> Result<Response<Body>, ProxyError> {
    let (parts, body) = req.into_parts();
    let mut v = read_json(body, MAX_JSON_BODY).await?;
    let policy = match Policy::load(&state.policy) {
        Ok(p) => p,
        Err(e) => {
            warn!(error = %e, "administrator's create not recorded: the policy does not load");
            return forward(state, with_json(parts, &v)).await;
        }
    };
    let key = policy.runtime.owner_label.clone();
    let owner = as_object_mut(&mut v, "body")?
        .map(|top| {
            canonicalize(top, &["Labels"])?;
            Ok::<_, RuleError>(
                top.get("Labels")
                    .and_then(|l| l.get(&key))
                    .and_then(Value::as_str)
                    .filter(|o| !o.is_empty())
                    .map(str::to_string),
            )
        })
        .transpose()?
        .flatten();
    let resp = forward(state, with_json(parts, &v)).await?;
    match owner {
        Some(owner) => {
            let record = records::Record {
                owner,
                session: false,
                slurm_job: None,
            };
            record_created(state, resp, &policy.proxy_or_default().state_dir.0, record).await
        }
        None => Ok(resp),
    }
}

/// Records a created container (Docker's `201 {"Id": …}`) as `record` says. If the record
/// cannot be written the container is removed again: without it the runtime would not
/// believe its owner, and the user would meet a stranger's refusal at start.
async fn record_created(
    state: &State,
    resp: Response<Body>,
    state_dir: &Path,
    record: records::Record,
) -> Result<Response<Body>, ProxyError> {
    if resp.status() != StatusCode::CREATED {
        return Ok(resp);
    }
    let (mut parts, body) = resp.into_parts();
    let created = read_json(body, MAX_JSON_BODY).await?;
    let id = created
        .get("Id")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let (dir, rid) = (state_dir.to_path_buf(), id.clone());
    let written = tokio::task::spawn_blocking(move || records::record_full(&dir, &rid, &record))
        .await
        .map_err(|e| ProxyError::Body(e.to_string()))?;
    if let Err(e) = written {
        warn!(container = %id, error = %e, "cannot record the new container; removing it");
        let _ = delete(state, &format!("/containers/{id}?force=1")).await;
        return Err(ProxyError::Record(e));
    }
    let bytes = Bytes::from(created.to_string());
    parts.headers.remove(TRANSFER_ENCODING);
    parts.headers.insert(CONTENT_LENGTH, bytes.len().into());
    Ok(Response::from_parts(parts, full(bytes)))
}

/// `rewrite_create` resolves host paths (the policy's and the request's: symlink walks,
/// perhaps on a slow network file system): on the blocking pool, within
/// `limits::CHECK_DEADLINE`.
pub(in crate::proxy) async fn rewrite_off_workers(
    mut v: Value,
    mut ctx: UserCtx,
    resolved: Resolved,
) -> Result<Value, ProxyError> {
    let work = tokio::task::spawn_blocking(move || {
        ctx.resolve_paths();
        rewrite_create(&mut v, &ctx, &resolved, &resolve_host).map(|()| v)
    });
    match tokio::time::timeout(limits::CHECK_DEADLINE, work).await {
        Ok(Ok(result)) => Ok(result?),
        Ok(Err(e)) => Err(ProxyError::Body(e.to_string())),
        Err(_) => Err(RuleError::Deadline(limits::CHECK_DEADLINE).into()),
    }
}

pub(in crate::proxy) async fn resolve_refs(
    call: &Call<'_>,
    v: &mut Value,
) -> Result<Resolved, ProxyError> {
    let mut resolved = Resolved::default();
    for r in create_container_refs(v)? {
        let full_id = owned_container(call.state, call.ctx, &r.name).await?;
        resolved.containers.insert(r.name, full_id);
    }
    for vol in create::named_volumes(v)? {
        let want = if vol.read_only {
            volumes::Use::Read
        } else {
            volumes::Use::Write
        };
        match volumes::check_access(call, &vol.name, want).await? {
            None => {
                volumes::create_owned(call.state, call.ctx, &vol.name, &vol.driver, &vol.options)
                    .await?
            }
            Some(true) => {
                resolved.read_only_volumes.insert(vol.name);
            }
            Some(false) => {}
        }
    }
    for network in create::network_names(v) {
        networks::check_network(call, &network, false).await?;
    }
    if let Some(image) = v
        .get("Image")
        .and_then(Value::as_str)
        .filter(|i| !i.is_empty())
    {
        resolved.image_volumes = image_volumes(call.state, image).await?;
    }
    Ok(resolved)
}

/// The image's `VOLUME`s; none when Docker does not have the image (the create then fails,
/// or the CLI pulls it and creates again).
async fn image_volumes(state: &State, image: &str) -> Result<Vec<String>, ProxyError> {
    if image.contains(['?', '#']) || image.starts_with('/') {
        return Ok(Vec::new());
    }
    let (status, v) = get_json(state, &format!("/images/{image}/json")).await?;
    if !status.is_success() {
        return Ok(Vec::new());
    }
    Ok(v.pointer("/Config/Volumes")
        .and_then(Value::as_object)
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default())
}

/// `/containers/{id}/{rest}`: any method, on the caller's own container only, sent on by
/// full id.
pub async fn by_id(
    call: &Call<'_>,
    id: &str,
    rest: &str,
    req: Request<Body>,
) -> Result<Response<Body>, ProxyError> {
    if rest == "json" && req.method() == Method::GET {
        return inspect(call, id, req).await;
    }
    let full_id = owned_container(call.state, call.ctx, id).await?;
    let path = if rest.is_empty() {
        format!("{}/containers/{full_id}", call.prefix)
    } else {
        format!("{}/containers/{full_id}/{rest}", call.prefix)
    };
    if rest == "archive" && req.method() == Method::PUT {
        archive::check_query(call.query.as_deref())?;
        // Absent means false to dockerd: set it, so a directory is never replaced by a file.
        let q = set_query_param(call.query.as_deref(), "noOverwriteDirNonDir", "true");
        let req = with_uri(req, &path, Some(&q))?;
        let owner = archive::owner_of(call.policy, &call.ctx.name, call.uid).await?;
        return put_archive(call.state, req, owner).await;
    }
    let req = with_uri(req, &path, call.query.as_deref())?;
    if rest == "update" && req.method() == Method::POST {
        let (parts, body) = req.into_parts();
        let mut v = read_json(body, call.max_body()).await?;
        check_update(&mut v, &call.ctx.ceilings)?;
        return forward(call.state, with_json(parts, &v)).await;
    }
    let removing = rest.is_empty() && req.method() == Method::DELETE;
    let resp = forward(call.state, req).await?;
    if removing && resp.status().is_success() {
        let dir = call.policy.proxy_or_default().state_dir.0;
        let _ = tokio::task::spawn_blocking(move || records::forget(&dir, &full_id)).await;
    }
    Ok(resp)
}

/// `docker inspect`: the caller's request goes to Docker as sent (version and query), and
/// its answer is both the ownership check and, when the container is the caller's, the
/// reply: one round trip to Docker instead of two, and what was checked is what is sent.
async fn inspect(
    call: &Call<'_>,
    name_or_id: &str,
    req: Request<Body>,
) -> Result<Response<Body>, ProxyError> {
    if !valid_container_ref(name_or_id) {
        return Err(RuleError::BadContainerRef(name_or_id.to_string()).into());
    }
    let path = format!("{}/containers/{name_or_id}/json", call.prefix);
    let resp = send(call.state, with_uri(req, &path, call.query.as_deref())?).await?;
    let (mut parts, body) = resp.into_parts();
    let bytes = read_bytes(body.map_err(box_err).boxed(), MAX_JSON_BODY).await?;
    let v = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    check_owned(call.ctx, name_or_id, parts.status, &v).await?;
    parts.headers.remove(TRANSFER_ENCODING);
    parts.headers.insert(CONTENT_LENGTH, bytes.len().into());
    Ok(Response::from_parts(parts, full(bytes)))
}

/// `POST /containers/{id}/update`: resource limits may change, devices may not (the
/// runtime refuses device changes too; this says so before Docker half-applies them).
pub fn check_update(
    body: &mut Value,
    ceilings: &crate::fairshare::Ceilings,
) -> Result<(), RuleError> {
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
    fairshare::check_update_limits(obj, ceilings)
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
    use serde_json::json;

    #[test]
    fn update_may_not_touch_devices() {
        check_update(
            &mut json!({"Memory": 1000000, "CpuShares": 2}),
            &Default::default(),
        )
        .unwrap();
        check_update(
            &mut json!({"Devices": [], "DeviceCgroupRules": null}),
            &Default::default(),
        )
        .unwrap();
        for body in [
            json!({"Devices": [{"PathOnHost": "/dev/nvidia1"}]}),
            json!({"devicecgrouprules": ["c 195:* rwm"]}),
            json!({"DeviceRequests": [{"Count": -1}]}),
            json!({"Runtime": "runc"}),
        ] {
            assert!(
                matches!(
                    check_update(&mut body.clone(), &Default::default()),
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
