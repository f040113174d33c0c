//! Talking to Docker: one upstream connection per request, forwarding with upgrades, and the
//! proxy's own lookups (who owns container X, which container an exec runs in).

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{HOST, UPGRADE};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::UnixStream;

use super::body::{box_err, full, read_json, Body, MAX_JSON_BODY};
use super::error::{ProxyError, RuleError};
use super::request::{valid_container_ref, UserCtx};
use super::server::State;

/// Sends one request to Docker on a connection of its own.
pub async fn send(state: &State, req: Request<Body>) -> Result<Response<Incoming>, ProxyError> {
    let stream = match UnixStream::connect(&state.upstream).await {
        Ok(s) => s,
        Err(cause) => {
            return Err(ProxyError::UpstreamConnect {
                path: state.upstream.clone(),
                cause,
            })
        }
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "upstream connection ended with an error");
        }
    });
    Ok(sender.send_request(req).await?)
}

/// Forwards as is; a `101 Switching Protocols` answer (attach, exec start, BuildKit session)
/// joins the caller's and Docker's connections byte for byte, half-closes included.
pub async fn forward(state: &State, mut req: Request<Body>) -> Result<Response<Body>, ProxyError> {
    let client_upgrade = req
        .headers()
        .contains_key(UPGRADE)
        .then(|| hyper::upgrade::on(&mut req));
    let mut resp = send(state, req).await?;
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(client_upgrade) = client_upgrade {
            let upstream_upgrade = hyper::upgrade::on(&mut resp);
            tokio::spawn(async move {
                match tokio::try_join!(client_upgrade, upstream_upgrade) {
                    Ok((client, upstream)) => {
                        let mut client = TokioIo::new(client);
                        let mut upstream = TokioIo::new(upstream);
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                    }
                    Err(e) => tracing::debug!(error = %e, "upgrade failed"),
                }
            });
        }
    }
    Ok(resp.map(|b| b.map_err(box_err).boxed()))
}

/// `DELETE path` on Docker, for the proxy's own clean-up; the status Docker answered.
pub async fn delete(state: &State, path: &str) -> Result<StatusCode, ProxyError> {
    let req = Request::delete(path)
        .header(HOST, "docker")
        .body(full(Bytes::new()))
        .map_err(|_| RuleError::BadPath(path.to_string()))?;
    Ok(send(state, req).await?.status())
}

/// `GET path` on Docker, for the proxy's own lookups.
pub async fn get_json(state: &State, path: &str) -> Result<(StatusCode, Value), ProxyError> {
    let req = Request::get(path)
        .header(HOST, "docker")
        .body(full(Bytes::new()))
        .map_err(|_| RuleError::BadPath(path.to_string()))?;
    let resp = send(state, req).await?;
    let status = resp.status();
    let body = resp.into_body().map_err(box_err).boxed();
    let v = read_json(body, MAX_JSON_BODY).await.unwrap_or(Value::Null);
    Ok((status, v))
}

pub fn upstream_error(status: StatusCode, what: String, v: &Value) -> ProxyError {
    ProxyError::UpstreamStatus {
        status,
        what,
        message: v
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("no message")
            .to_string(),
    }
}

/// The full id of `name_or_id` if it is the caller's container. Checking by id and then
/// sending the id (not the name) means a rename in between cannot swap containers.
pub async fn owned_container(
    state: &State,
    ctx: &UserCtx,
    name_or_id: &str,
) -> Result<String, ProxyError> {
    if !valid_container_ref(name_or_id) {
        return Err(RuleError::BadContainerRef(name_or_id.to_string()).into());
    }
    let (status, v) = get_json(state, &format!("/containers/{name_or_id}/json")).await?;
    check_owned(ctx, name_or_id, status, &v).await
}

/// The full id in Docker's answer `v` (with `status`) to an inspect of `name_or_id`, if the
/// container is the caller's.
pub async fn check_owned(
    ctx: &UserCtx,
    name_or_id: &str,
    status: StatusCode,
    v: &Value,
) -> Result<String, ProxyError> {
    match status {
        StatusCode::OK => {}
        StatusCode::NOT_FOUND => return Err(ProxyError::NoSuchContainer(name_or_id.to_string())),
        s => {
            return Err(upstream_error(
                s,
                format!("inspect of container {name_or_id:?}"),
                v,
            ))
        }
    }
    let id = v
        .get("Id")
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| upstream_error(status, format!("inspect of container {name_or_id:?}"), v))?;
    // The label is a copy for Docker's filters (and an image can carry it into a build
    // step's container); the proxy's record of whom it created the container for decides.
    if !super::containers::owned_by(v, &ctx.owner_label, &ctx.name) || !recorded_for(ctx, &id).await
    {
        return Err(ProxyError::NotYours(name_or_id.to_string()));
    }
    Ok(id)
}

/// Whether the proxy recorded creating container `id` for the caller. Read in place: the
/// records are small root-only files on a local disk (`[proxy] state_dir`), read in
/// microseconds, less than a hop to the blocking pool and back costs.
pub async fn recorded_for(ctx: &UserCtx, id: &str) -> bool {
    crate::records::recorded_owner(&ctx.state_dir, id)
        .ok()
        .flatten()
        .as_deref()
        == Some(ctx.name.as_str())
}

/// Whose a volume or network is to the caller, from its owner label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    Own,
    /// No owner: the administrator's.
    Shared,
    Foreign,
}

pub fn access(object: &Value, ctx: &UserCtx) -> Access {
    match object
        .get("Labels")
        .and_then(|l| l.get(&ctx.owner_label))
        .and_then(Value::as_str)
        .filter(|o| !o.is_empty())
    {
        None => Access::Shared,
        Some(o) if o == ctx.name => Access::Own,
        Some(_) => Access::Foreign,
    }
}

/// `GET /{kind}/{name}` for a volume or network: `None` when Docker has none by that name.
pub async fn inspect_object(
    state: &State,
    kind: &str,
    name: &str,
) -> Result<Option<Value>, ProxyError> {
    if !valid_container_ref(name) {
        return Err(RuleError::BadField {
            field: format!("{kind} name {name:?}"),
            expected: "a valid Docker object name",
        }
        .into());
    }
    let (status, v) = get_json(state, &format!("/{kind}/{name}")).await?;
    match status {
        StatusCode::OK => Ok(Some(v)),
        StatusCode::NOT_FOUND => Ok(None),
        s => Err(upstream_error(s, format!("inspect of {kind} {name:?}"), &v)),
    }
}

/// The container an exec instance runs in.
pub async fn exec_container(state: &State, exec_id: &str) -> Result<String, ProxyError> {
    if !valid_container_ref(exec_id) {
        return Err(RuleError::BadContainerRef(exec_id.to_string()).into());
    }
    let (status, v) = get_json(state, &format!("/exec/{exec_id}/json")).await?;
    match status {
        StatusCode::OK => {}
        StatusCode::NOT_FOUND => return Err(ProxyError::NoSuchExec(exec_id.to_string())),
        s => {
            return Err(upstream_error(
                s,
                format!("inspect of exec {exec_id:?}"),
                &v,
            ))
        }
    }
    v.get("ContainerID")
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| upstream_error(status, format!("inspect of exec {exec_id:?}"), &v))
}
