//! The socket side: accept, identify the peer once per connection, apply the rules per
//! request, and forward to Docker over a fresh upstream connection per request (so an
//! upgraded stream or a long `logs -f` never blocks the caller's next request).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::header::{HeaderValue, CONTENT_LENGTH, CONTENT_TYPE, HOST, TRANSFER_ENCODING, UPGRADE};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode, Uri};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::Value;
use tokio::net::{UnixListener, UnixStream};
use tracing::{info, warn};

use super::archive::{self, ArchiveError};
use super::identity::{self, Caller, IdentityError};
use super::rules::{self, Route, RuleError, UserCtx};
use super::{user_ctx, Options};
use crate::decide::resolve_host;
use crate::policy::{Policy, PolicyError};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Body = BoxBody<Bytes, BoxError>;

/// Request bodies the proxy reads (create, update, connect) are small JSON documents.
const MAX_JSON_BODY: usize = 4 << 20;
/// `docker system df` lists every image and container; still JSON, just bigger.
const MAX_DF_BODY: usize = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error(transparent)]
    Rule(#[from] RuleError),
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    #[error("the proxy cannot use its policy: {0}")]
    Policy(#[from] PolicyError),
    #[error("cannot reach docker at {path}: {source}")]
    UpstreamConnect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("docker connection failed: {0}")]
    Upstream(#[from] hyper::Error),
    #[error("no such container: {0}")]
    NoSuchContainer(String),
    #[error("no such exec instance: {0}")]
    NoSuchExec(String),
    #[error("container {0:?} belongs to another user")]
    NotYours(String),
    #[error("docker answered {status} to {what}: {message}")]
    UpstreamStatus {
        status: StatusCode,
        what: String,
        message: String,
    },
    #[error("cannot read the request body: {0}")]
    Body(String),
    #[error("query parameter {0} is missing")]
    MissingParam(&'static str),
}

impl ProxyError {
    fn status(&self) -> StatusCode {
        match self {
            ProxyError::Rule(e) => {
                StatusCode::from_u16(e.status()).unwrap_or(StatusCode::FORBIDDEN)
            }
            ProxyError::Identity(_) | ProxyError::NotYours(_) => StatusCode::FORBIDDEN,
            ProxyError::Archive(e) => {
                StatusCode::from_u16(e.status()).unwrap_or(StatusCode::FORBIDDEN)
            }
            ProxyError::Policy(_) => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::UpstreamConnect { .. } | ProxyError::Upstream(_) => StatusCode::BAD_GATEWAY,
            ProxyError::NoSuchContainer(_) | ProxyError::NoSuchExec(_) => StatusCode::NOT_FOUND,
            ProxyError::UpstreamStatus { status, .. } => *status,
            ProxyError::Body(_) | ProxyError::MissingParam(_) => StatusCode::BAD_REQUEST,
        }
    }
}

pub struct State {
    upstream: PathBuf,
    policy: PathBuf,
    proc_root: PathBuf,
}

pub async fn serve(opts: Options) -> anyhow::Result<()> {
    let listener = listen(&opts)?;
    let state = Arc::new(State {
        upstream: opts.upstream.clone(),
        policy: opts.policy.clone(),
        proc_root: PathBuf::from("/proc"),
    });
    info!(
        listen = %opts.listen.display(),
        upstream = %opts.upstream.display(),
        policy = %opts.policy.display(),
        "proxy listening"
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    tokio::spawn(connection(state.clone(), stream));
                }
                Err(e) => {
                    // Out of fds or similar: keep serving the connections we have.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    let _ = std::fs::remove_file(&opts.listen);
    info!("proxy stopped");
    Ok(())
}

/// Binds the socket, replacing a stale one but never a live proxy or a non-socket file,
/// then applies the policy's [proxy] group and mode.
fn listen(opts: &Options) -> anyhow::Result<UnixListener> {
    let policy = Policy::load(&opts.policy)?;
    let path = &opts.listen;
    if let Some(dir) = path.parent() {
        if !dir.exists() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating the socket directory {}", dir.display()))?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
        }
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                anyhow::bail!("something is already listening on {}", path.display());
            }
            std::fs::remove_file(path)
                .with_context(|| format!("removing the stale socket {}", path.display()))?;
        }
        Ok(_) => anyhow::bail!("{} exists and is not a socket", path.display()),
        Err(_) => {}
    }
    let listener =
        UnixListener::bind(path).with_context(|| format!("listening on {}", path.display()))?;
    let mode = policy.proxy.mode();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting mode {mode:o} on {}", path.display()))?;
    if let Some(group) = &policy.proxy.socket_group {
        let gid = match group.parse::<u32>() {
            Ok(g) => nix::unistd::Gid::from_raw(g),
            Err(_) => nix::unistd::Group::from_name(group)
                .ok()
                .flatten()
                .map(|g| g.gid)
                .with_context(|| {
                    format!("[proxy] socket_group {group:?} is not a group on this host")
                })?,
        };
        nix::unistd::chown(path, None, Some(gid))
            .with_context(|| format!("giving {} to group {group:?}", path.display()))?;
    }
    Ok(listener)
}

async fn connection(state: Arc<State>, stream: UnixStream) {
    let cred = match stream.peer_cred() {
        Ok(cred) => cred,
        Err(e) => {
            warn!(error = %e, "SO_PEERCRED failed; closing the connection");
            return;
        }
    };
    let caller = if identity::is_admin(cred.uid(), cred.pid(), &state.proc_root) {
        Caller::Admin
    } else {
        let uid = cred.uid();
        let passwd = tokio::task::spawn_blocking(move || identity::passwd_name(uid))
            .await
            .ok()
            .flatten();
        Caller::Uid { uid, passwd }
    };
    let caller = Arc::new(caller);
    let service = service_fn(move |req| {
        let state = state.clone();
        let caller = caller.clone();
        async move { Ok::<_, Infallible>(handle(state, caller, req).await) }
    });
    // half_close stays off: a client that goes away mid-request (`docker run -d` leaves its
    // `wait` behind) must end the request, and with it the upstream connection. Half-closes
    // that matter, stdin EOF on attach and exec, happen after the upgrade, where
    // copy_bidirectional carries them.
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    if let Err(e) = conn.await {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

async fn handle(state: Arc<State>, caller: Arc<Caller>, req: Request<Incoming>) -> Response<Body> {
    let method = req.method().clone();
    let uri = req.uri().clone();
    let (parts, body) = req.into_parts();
    let slot = Arc::new(Mutex::new(Some(body)));
    let req = Request::from_parts(parts, SharedBody(slot.clone()).map_err(box_err).boxed());
    match route(&state, &caller, req).await {
        Ok(resp) => resp,
        Err(e) => {
            warn!(caller = %caller.describe(), %method, %uri, "refused: {e}");
            let unread = slot.lock().unwrap_or_else(|p| p.into_inner()).take();
            match unread {
                // An upload of any size, which the client means to send in full: answer now
                // and read the rest meanwhile.
                Some(body) if matches!(e, ProxyError::Archive(_)) => {
                    tokio::spawn(drain_upload(body));
                }
                Some(body) => drain(body).await,
                None => {}
            }
            error_response(&e)
        }
    }
}

/// How much of a refused request's unread body is read and dropped before answering, and for
/// how long (Go's net/http, which dockerd uses, reads up to 256 KiB the same way).
const MAX_DRAIN: usize = 1 << 20;
const DRAIN_TIME: Duration = Duration::from_secs(2);

/// A client still sending a body (`docker cp`'s archive) when it is refused would get a
/// broken pipe instead of the refusal if the connection closed under it.
async fn drain(mut body: Incoming) {
    let _ = tokio::time::timeout(DRAIN_TIME, async {
        let mut left = MAX_DRAIN;
        while let Some(Ok(frame)) = body.frame().await {
            let n = frame.data_ref().map_or(0, Bytes::len);
            if n >= left {
                break;
            }
            left -= n;
        }
    })
    .await;
}

/// How long a refused archive upload is read for; a client still sending after that gets a
/// broken pipe.
const UPLOAD_DRAIN_TIME: Duration = Duration::from_secs(600);

/// Go's HTTP client (docker cp) reports a failed body write rather than the answer that came
/// while it was writing: a refused upload is read to its end, not just its first MiB.
async fn drain_upload(mut body: Incoming) {
    let _ = tokio::time::timeout(UPLOAD_DRAIN_TIME, async {
        while let Some(Ok(_)) = body.frame().await {}
    })
    .await;
}

/// The request body, with `handle` keeping a way back to it: what the route did not read is
/// still in the slot when the request is refused.
struct SharedBody(Arc<Mutex<Option<Incoming>>>);

impl SharedBody {
    fn with<T>(&self, f: impl FnOnce(Option<&mut Incoming>) -> T) -> T {
        f(self.0.lock().unwrap_or_else(|p| p.into_inner()).as_mut())
    }
}

impl hyper::body::Body for SharedBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        self.with(|b| match b {
            Some(b) => Pin::new(b).poll_frame(cx),
            None => Poll::Ready(None),
        })
    }

    fn is_end_stream(&self) -> bool {
        self.with(|b| b.is_none_or(|b| b.is_end_stream()))
    }

    fn size_hint(&self) -> SizeHint {
        self.with(|b| b.map_or_else(|| SizeHint::with_exact(0), |b| b.size_hint()))
    }
}

/// Docker's error shape: the CLI prints `Error response from daemon: <message>`.
fn error_response(e: &ProxyError) -> Response<Body> {
    let body = serde_json::json!({ "message": format!("labgpu proxy: {e}") }).to_string();
    let mut resp = Response::new(full(body.into()));
    *resp.status_mut() = e.status();
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

fn box_err(e: hyper::Error) -> BoxError {
    Box::new(e)
}

fn full(bytes: Bytes) -> Body {
    Full::new(bytes).map_err(|never| match never {}).boxed()
}

async fn route(
    state: &State,
    caller: &Caller,
    req: Request<Body>,
) -> Result<Response<Body>, ProxyError> {
    if *caller == Caller::Admin {
        return forward(state, req).await;
    }
    // Per request, so an edit to the policy applies to the next request, not the next login.
    let policy = Policy::load(&state.policy)?;
    let name = identity::policy_user(&policy, caller)?.to_string();
    let ctx = user_ctx(&policy, &name);
    rules::check_content_types(
        req.headers()
            .get_all(CONTENT_TYPE)
            .iter()
            .map(|v| v.to_str().unwrap_or("invalid")),
    )?;
    let full_path = req.uri().path().to_string();
    let prefix = &full_path[..full_path.len() - rules::strip_version(&full_path).len()];
    let query = req.uri().query().map(str::to_string);
    match rules::classify(req.method(), &full_path)? {
        Route::Forward => forward(state, req).await,
        Route::Filtered => {
            let q = rules::merge_owner_filter(query.as_deref(), &ctx.owner_label, &name)?;
            forward(state, with_uri(req, &full_path, Some(&q))?).await
        }
        Route::DiskUsage => {
            let resp = forward(state, req).await?;
            if resp.status() != StatusCode::OK {
                return Ok(resp);
            }
            let (mut parts, body) = resp.into_parts();
            let mut df = read_json(body, MAX_DF_BODY).await?;
            rules::filter_disk_usage(&mut df, &ctx.owner_label, &name);
            let bytes = Bytes::from(df.to_string());
            parts.headers.remove(TRANSFER_ENCODING);
            parts.headers.insert(CONTENT_LENGTH, bytes.len().into());
            Ok(Response::from_parts(parts, full(bytes)))
        }
        Route::Container { id, rest } => {
            let full_id = owned_container(state, &ctx, &id).await?;
            let path = if rest.is_empty() {
                format!("{prefix}/containers/{full_id}")
            } else {
                format!("{prefix}/containers/{full_id}/{rest}")
            };
            let req = with_uri(req, &path, query.as_deref())?;
            if rest == "archive" && req.method() == Method::PUT {
                archive::check_query(query.as_deref())?;
                let owner = archive::owner_of(&policy, &name, caller_uid(caller)).await?;
                return put_archive(state, req, owner).await;
            }
            if rest == "update" && req.method() == Method::POST {
                let (parts, body) = req.into_parts();
                let mut v = read_json(body, MAX_JSON_BODY).await?;
                rules::check_update(&mut v)?;
                return forward(state, with_json(parts, &v)).await;
            }
            forward(state, req).await
        }
        Route::Exec { id } => {
            let container = exec_container(state, &id).await?;
            owned_container(state, &ctx, &container).await?;
            forward(state, req).await
        }
        Route::Commit => {
            let name_or_id = rules::query_param(query.as_deref(), "container")
                .ok_or(ProxyError::MissingParam("container"))?;
            let full_id = owned_container(state, &ctx, &name_or_id).await?;
            let q = rules::set_query_param(query.as_deref(), "container", &full_id);
            forward(state, with_uri(req, &full_path, Some(&q))?).await
        }
        Route::NetworkMember => {
            let (parts, body) = req.into_parts();
            let mut v = read_json(body, MAX_JSON_BODY).await?;
            let member = rules::network_member(&mut v)?;
            let full_id = owned_container(state, &ctx, &member).await?;
            rules::set_network_member(&mut v, &full_id);
            forward(state, with_json(parts, &v)).await
        }
        Route::Build => {
            rules::check_build(query.as_deref(), &ctx)?;
            forward(state, req).await
        }
        Route::VolumeCreate => {
            let (parts, body) = req.into_parts();
            let mut v = read_json(body, MAX_JSON_BODY).await?;
            rules::rewrite_volume_create(&mut v, &ctx)?;
            forward(state, with_json(parts, &v)).await
        }
        Route::Create => {
            let (parts, body) = req.into_parts();
            let mut v = read_json(body, MAX_JSON_BODY).await?;
            let mut owned = BTreeMap::new();
            for r in rules::create_container_refs(&mut v)? {
                let full_id = owned_container(state, &ctx, &r.name).await?;
                owned.insert(r.name, full_id);
            }
            rules::rewrite_create(&mut v, &ctx, &owned, &resolve_host)?;
            let image = v.get("Image").and_then(|i| i.as_str()).unwrap_or("?");
            info!(user = %name, %image, "create");
            forward(state, with_json(parts, &v)).await
        }
    }
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

fn caller_uid(caller: &Caller) -> u32 {
    match caller {
        Caller::Uid { uid, .. } => *uid,
        Caller::Admin => unreachable!("admins are forwarded before the rules"),
    }
}

fn with_uri(
    mut req: Request<Body>,
    path: &str,
    query: Option<&str>,
) -> Result<Request<Body>, ProxyError> {
    let pq = match query {
        Some(q) if !q.is_empty() => format!("{path}?{q}"),
        _ => path.to_string(),
    };
    *req.uri_mut() = Uri::try_from(pq.as_str()).map_err(|_| RuleError::BadPath(pq.clone()))?;
    Ok(req)
}

fn with_json(mut parts: hyper::http::request::Parts, v: &Value) -> Request<Body> {
    let bytes = Bytes::from(v.to_string());
    parts.headers.remove(TRANSFER_ENCODING);
    parts.headers.insert(CONTENT_LENGTH, bytes.len().into());
    parts
        .headers
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Request::from_parts(parts, full(bytes))
}

async fn read_json(body: Body, limit: usize) -> Result<Value, ProxyError> {
    let mut body = body;
    let mut buf = Vec::new();
    // By hand rather than http_body_util::Limited: its boxed-error bound trips rustc's
    // higher-ranked Send check once the future is spawned.
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ProxyError::Body(e.to_string()))?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > limit {
                return Err(ProxyError::Body(format!("larger than {limit} bytes")));
            }
            buf.extend_from_slice(&data);
        }
    }
    let bytes = buf;
    if bytes.is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_slice(&bytes).map_err(|e| RuleError::BadJson(e.to_string()).into())
}

/// Sends one request to Docker on a connection of its own.
async fn send(state: &State, req: Request<Body>) -> Result<Response<Incoming>, ProxyError> {
    let stream = match UnixStream::connect(&state.upstream).await {
        Ok(s) => s,
        Err(source) => {
            return Err(ProxyError::UpstreamConnect {
                path: state.upstream.clone(),
                source,
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
async fn forward(state: &State, mut req: Request<Body>) -> Result<Response<Body>, ProxyError> {
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

/// `GET path` on Docker, for the proxy's own lookups.
async fn get_json(state: &State, path: &str) -> Result<(StatusCode, Value), ProxyError> {
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

fn upstream_error(status: StatusCode, what: String, v: &Value) -> ProxyError {
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
async fn owned_container(
    state: &State,
    ctx: &UserCtx,
    name_or_id: &str,
) -> Result<String, ProxyError> {
    if !rules::valid_container_ref(name_or_id) {
        return Err(RuleError::BadContainerRef(name_or_id.to_string()).into());
    }
    let (status, v) = get_json(state, &format!("/containers/{name_or_id}/json")).await?;
    match status {
        StatusCode::OK => {}
        StatusCode::NOT_FOUND => return Err(ProxyError::NoSuchContainer(name_or_id.to_string())),
        s => {
            return Err(upstream_error(
                s,
                format!("inspect of container {name_or_id:?}"),
                &v,
            ))
        }
    }
    if !rules::owned_by(&v, &ctx.owner_label, &ctx.name) {
        return Err(ProxyError::NotYours(name_or_id.to_string()));
    }
    v.get("Id")
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| upstream_error(status, format!("inspect of container {name_or_id:?}"), &v))
}

/// The container an exec instance runs in.
async fn exec_container(state: &State, exec_id: &str) -> Result<String, ProxyError> {
    if !rules::valid_container_ref(exec_id) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;
    use std::path::Path;

    fn opts(dir: &Path, policy: &str) -> Options {
        let p = dir.join("policy.toml");
        std::fs::write(&p, policy).unwrap();
        Options {
            listen: dir.join("run/labgpu/docker.sock"),
            upstream: dir.join("docker.sock"),
            policy: p,
        }
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn socket_gets_policy_mode_and_group() {
        let dir = tempfile::tempdir().unwrap();
        let gid = nix::unistd::getgid().as_raw();
        let o = opts(
            dir.path(),
            &format!("version = 1\n[proxy]\nsocket_group = \"{gid}\"\nsocket_mode = \"0640\"\n"),
        );
        rt().block_on(async {
            let _l = listen(&o).unwrap();
            let m = std::fs::metadata(&o.listen).unwrap();
            assert_eq!(m.mode() & 0o777, 0o640);
            assert_eq!(m.gid(), gid);
            let parent = std::fs::metadata(o.listen.parent().unwrap()).unwrap();
            assert_eq!(parent.mode() & 0o777, 0o755);
        });
    }

    #[test]
    fn stale_socket_is_replaced_live_one_and_files_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let o = opts(dir.path(), "version = 1\n");
        rt().block_on(async {
            let live = listen(&o).unwrap();
            let err = listen(&o).unwrap_err().to_string();
            assert!(err.contains("already listening"), "{err}");
            drop(live);
            // The file of a dead listener is still there: a restart replaces it.
            assert!(o.listen.exists());
            let _l = listen(&o).unwrap();
            assert_eq!(std::fs::metadata(&o.listen).unwrap().mode() & 0o777, 0o666);
        });
        std::fs::remove_file(&o.listen).unwrap();
        std::fs::write(&o.listen, "not a socket").unwrap();
        let err = rt().block_on(async { listen(&o).unwrap_err().to_string() });
        assert!(err.contains("is not a socket"), "{err}");
    }

    #[test]
    fn unknown_group_and_broken_policy_stop_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let o = opts(
            dir.path(),
            "version = 1\n[proxy]\nsocket_group = \"no-such-group-xyz\"\n",
        );
        let err = rt().block_on(async { format!("{:#}", listen(&o).unwrap_err()) });
        assert!(err.contains("no-such-group-xyz"), "{err}");
        let o = opts(dir.path(), "version = 1\n[proxy]\nsocket_mode = \"0999\"\n");
        let err = rt().block_on(async { format!("{:#}", listen(&o).unwrap_err()) });
        assert!(err.contains("line 3"), "{err}");
    }
}
