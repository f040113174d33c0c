//! BuildKit through the proxy (`docker buildx build`, the default `docker build` of CLIs
//! 23 and later): `POST /session` (the client's side of a build, which dockerd calls back
//! into) and `POST /grpc` (BuildKit's control API, gRPC over HTTP/2 on the hijacked
//! connection).
//!
//! `/grpc` is allowed only where dockerd runs BuildKit's `RUN` steps with labgpu (`gate`).
//! The proxy then speaks HTTP/2 on both sides of the upgraded connection and passes each
//! gRPC call on only if `classify` allows its method; Solve requests are decoded, checked
//! (`rules`) and re-encoded, and every call naming a build or session must name the
//! caller's own (`builds`).

pub mod builds;
mod gate;
pub mod rules;
pub mod wire;

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper::header::{HeaderValue, CONTENT_TYPE, UPGRADE};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioExecutor;

use self::builds::{Builds, Kind, CLAIM_WAIT};
use self::wire::{BridgeSolveRequest, SolveRequest, StatusRequest, WireError};
use super::body::{box_err, Body, BoxError, MAX_JSON_BODY};
use super::error::ProxyError;
use super::request::UserCtx;
use super::server::Call;
use super::upstream::{forward, send};

const SESSION_ID: &str = "x-docker-expose-session-uuid";
const SESSION_SHARED_KEY: &str = "x-docker-expose-session-sharedkey";
/// The gRPC metadata that names the build an LLBBridge call belongs to.
const BUILD_ID: &str = "buildkit-controlapi-buildid";

/// `POST /session`: the session id becomes the caller's, and its shared key (which BuildKit
/// uses to reuse an earlier transfer of the same local directory) is prefixed with the
/// caller's uid, so that no user's build starts from another user's files.
pub async fn session(
    call: &Call<'_>,
    mut req: Request<Body>,
) -> Result<Response<Body>, ProxyError> {
    let id = req
        .headers()
        .get(SESSION_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|id| valid_id(id))
        .ok_or(ProxyError::BuildKitSession(
            "it has no valid X-Docker-Expose-Session-Uuid".into(),
        ))?
        .to_string();
    if let Err(other) = call.state.builds.claim(Kind::Session, &id, call.uid) {
        return Err(ProxyError::BuildKitSession(format!(
            "session {id} is uid {other}'s"
        )));
    }
    let key = req
        .headers()
        .get(SESSION_SHARED_KEY)
        .map(|v| v.as_bytes().to_vec())
        .unwrap_or_default();
    let mut scoped = format!("{}:", rules::cache_namespace(call.uid)).into_bytes();
    scoped.extend_from_slice(&key);
    let scoped = HeaderValue::from_bytes(&scoped)
        .map_err(|_| ProxyError::BuildKitSession("its shared key is not a header value".into()))?;
    req.headers_mut().insert(SESSION_SHARED_KEY, scoped);
    forward(call.state, req).await
}

/// BuildKit's ids (refs, session ids) are short random words.
fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// `POST /grpc`: upgraded to HTTP/2 on both sides, every call mediated.
pub async fn grpc(call: &Call<'_>, mut req: Request<Body>) -> Result<Response<Body>, ProxyError> {
    gate::check(call.state).await?;
    if req.headers().get(UPGRADE).map(|v| v.as_bytes()) != Some(b"h2c") {
        return Err(ProxyError::BuildKitSession(
            "/grpc is an upgrade to h2c".into(),
        ));
    }
    let client_upgrade = hyper::upgrade::on(&mut req);
    let mut resp = send(call.state, req).await?;
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let upstream_upgrade = hyper::upgrade::on(&mut resp);
        let caller = Arc::new(Caller {
            uid: call.uid,
            ctx: call.ctx.clone(),
            builds: call.state.builds.clone(),
        });
        tokio::spawn(async move {
            match tokio::try_join!(client_upgrade, upstream_upgrade) {
                Ok((client, upstream)) => mediate(caller, client, upstream).await,
                Err(e) => tracing::debug!(error = %e, "grpc upgrade failed"),
            }
        });
    }
    Ok(resp.map(|b| b.map_err(box_err).boxed()))
}

struct Caller {
    uid: u32,
    ctx: UserCtx,
    builds: Arc<Builds>,
}

async fn mediate(
    caller: Arc<Caller>,
    client: hyper::upgrade::Upgraded,
    upstream: hyper::upgrade::Upgraded,
) {
    let (sender, conn) =
        match hyper::client::conn::http2::handshake(TokioExecutor::new(), upstream).await {
            Ok(pair) => pair,
            Err(e) => return tracing::debug!(error = %e, "grpc: HTTP/2 to dockerd failed"),
        };
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "grpc: dockerd's HTTP/2 connection ended");
        }
    });
    let service = service_fn(move |req: Request<Incoming>| {
        let (caller, sender) = (caller.clone(), sender.clone());
        async move { Ok::<_, Infallible>(one_call(&caller, sender, req).await) }
    });
    let served = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .serve_connection(client, service)
        .await;
    if let Err(e) = served {
        tracing::debug!(error = %e, "grpc: the client's HTTP/2 connection ended");
    }
}

/// One gRPC call: checked, then sent to dockerd, or answered with PERMISSION_DENIED and the
/// sentence saying why (the client prints it).
async fn one_call(
    caller: &Caller,
    mut sender: SendRequest<Body>,
    req: Request<Incoming>,
) -> Response<Body> {
    let method = req.uri().path().to_string();
    let req = match check_call(caller, &method, req).await {
        Ok(req) => req,
        Err(why) => {
            tracing::warn!(uid = caller.uid, %method, "refused: {why}");
            return grpc_refusal(&why);
        }
    };
    let sent = async {
        sender.ready().await?;
        sender.send_request(req).await
    };
    match sent.await {
        Ok(resp) => resp.map(|b| b.map_err(box_err).boxed()),
        Err(e) => grpc_error(14, &format!("labgpu proxy: dockerd: {e}")),
    }
}

/// What each gRPC method of dockerd's `/grpc` server is to a user.
#[derive(Debug, PartialEq, Eq)]
enum Method {
    /// Asks about the daemon or the shared build cache, as `/info` and `/system/df` do.
    Pass,
    Solve,
    Status,
    /// An LLBBridge call of the caller's build; `solve` for LLBBridge/Solve.
    Bridge {
        solve: bool,
    },
    Refused(&'static str),
}

fn classify(method: &str) -> Method {
    let Some((service, name)) = method.strip_prefix('/').and_then(|m| m.split_once('/')) else {
        return Method::Refused("it is not a gRPC method");
    };
    match (service, name) {
        ("moby.buildkit.v1.Control", "ListWorkers" | "Info" | "DiskUsage" | "Prune") => {
            Method::Pass
        }
        ("moby.buildkit.v1.Control", "Solve") => Method::Solve,
        ("moby.buildkit.v1.Control", "Status") => Method::Status,
        ("moby.buildkit.v1.Control", "ListenBuildHistory" | "UpdateBuildHistory") => {
            Method::Refused("the build history holds every user's builds")
        }
        ("moby.buildkit.v1.Control", "Session") => {
            Method::Refused("the session comes through POST /session")
        }
        (
            "moby.buildkit.v1.frontend.LLBBridge",
            "NewContainer" | "ReleaseContainer" | "ExecProcess",
        ) => Method::Refused(
            "interactive build containers (buildx debug, --invoke) are not checked by labgpu",
        ),
        ("moby.buildkit.v1.frontend.LLBBridge", "Solve") => Method::Bridge { solve: true },
        (
            "moby.buildkit.v1.frontend.LLBBridge",
            "ResolveImageConfig" | "ResolveSourceMeta" | "ReadFile" | "ReadDir" | "StatFile"
            | "Evaluate" | "Ping" | "Return" | "Inputs" | "Warn",
        ) => Method::Bridge { solve: false },
        // The client's own trace spans, recorded with its build; and a liveness probe.
        ("opentelemetry.proto.collector.trace.v1.TraceService", "Export")
        | ("grpc.health.v1.Health", "Check") => Method::Pass,
        _ => {
            Method::Refused("the labgpu proxy allows only the BuildKit calls of a build it checks")
        }
    }
}

async fn check_call(
    caller: &Caller,
    method: &str,
    req: Request<Incoming>,
) -> Result<Request<Body>, String> {
    let refused = |why: &str| format!("labgpu proxy: {method} is not allowed: {why}");
    match classify(method) {
        Method::Pass => Ok(req.map(|b| b.map_err(box_err).boxed())),
        Method::Refused(why) => Err(refused(why)),
        Method::Status => {
            let (parts, msg) = read_message::<StatusRequest>(req, "StatusRequest", &[1]).await?;
            owned(caller, Kind::Build, &msg.r#ref).await?;
            Ok(rebuilt(parts, &msg))
        }
        Method::Solve => {
            let (parts, msg) =
                read_message::<SolveRequest>(req, "SolveRequest", SolveRequest::FIELDS).await?;
            if !valid_id(&msg.r#ref) {
                return Err(refused("its build ref is not a BuildKit id"));
            }
            owned(caller, Kind::Session, &msg.session).await?;
            if let Err(other) = caller.builds.claim(Kind::Build, &msg.r#ref, caller.uid) {
                return Err(refused(&format!("build {} is uid {other}'s", msg.r#ref)));
            }
            let msg = rules::check_solve(msg, &caller.ctx, caller.uid)
                .map_err(|e| format!("labgpu proxy: {e}"))?;
            Ok(rebuilt(parts, &msg))
        }
        Method::Bridge { solve } => {
            let build = req
                .headers()
                .get(BUILD_ID)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            owned(caller, Kind::Build, &build).await?;
            if !solve {
                return Ok(req.map(|b| b.map_err(box_err).boxed()));
            }
            let (parts, msg) = read_message::<BridgeSolveRequest>(
                req,
                "frontend SolveRequest",
                BridgeSolveRequest::FIELDS,
            )
            .await?;
            let msg = rules::check_bridge_solve(msg, &caller.ctx, caller.uid)
                .map_err(|e| format!("labgpu proxy: {e}"))?;
            Ok(rebuilt(parts, &msg))
        }
    }
}

/// The build or session `id` must be the caller's (claimed by one of its requests).
async fn owned(caller: &Caller, kind: Kind, id: &str) -> Result<(), String> {
    if caller
        .builds
        .is_owned(kind, id, caller.uid, CLAIM_WAIT)
        .await
    {
        return Ok(());
    }
    let what = match kind {
        Kind::Build => "build",
        Kind::Session => "session",
    };
    Err(format!(
        "labgpu proxy: {what} {id:?} is not one this user started through the labgpu proxy"
    ))
}

async fn read_message<M: prost::Message + Default>(
    req: Request<Incoming>,
    what: &'static str,
    fields: &[u32],
) -> Result<(hyper::http::request::Parts, M), String> {
    let (parts, body) = req.into_parts();
    let bytes = Limited::new(body, MAX_JSON_BODY)
        .collect()
        .await
        .map_err(|e| format!("labgpu proxy: reading the {what}: {e}"))?
        .to_bytes();
    let msg = wire::unframe(&bytes)
        .and_then(|m| wire::decode::<M>(what, fields, m))
        .map_err(|e: WireError| format!("labgpu proxy: {e}"))?;
    Ok((parts, msg))
}

/// The checked message, as the proxy encodes it, with the call's headers.
fn rebuilt(mut parts: hyper::http::request::Parts, msg: &impl prost::Message) -> Request<Body> {
    parts.headers.remove(hyper::header::CONTENT_LENGTH);
    let body = Full::new(wire::frame(msg)).map_err(|e: Infallible| -> BoxError { match e {} });
    Request::from_parts(parts, body.boxed())
}

/// PERMISSION_DENIED (7).
fn grpc_refusal(message: &str) -> Response<Body> {
    grpc_error(7, message)
}

/// A trailers-only gRPC answer: the status and message in the response headers.
fn grpc_error(code: u32, message: &str) -> Response<Body> {
    let body = Full::new(Bytes::new()).map_err(|e: Infallible| -> BoxError { match e {} });
    let mut resp = Response::new(body.boxed());
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    h.insert("grpc-status", HeaderValue::from(code));
    if let Ok(v) = HeaderValue::from_str(&percent_encode(message)) {
        h.insert("grpc-message", v);
    }
    resp
}

/// gRPC's encoding of grpc-message: printable ASCII except '%' as is, every other byte as
/// %XX.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (0x20..0x7f).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_are_classified_by_an_allowlist() {
        assert_eq!(classify("/moby.buildkit.v1.Control/Solve"), Method::Solve);
        assert_eq!(classify("/moby.buildkit.v1.Control/Status"), Method::Status);
        assert_eq!(
            classify("/moby.buildkit.v1.Control/ListWorkers"),
            Method::Pass
        );
        assert_eq!(
            classify("/moby.buildkit.v1.frontend.LLBBridge/Solve"),
            Method::Bridge { solve: true }
        );
        assert_eq!(
            classify("/moby.buildkit.v1.frontend.LLBBridge/ReadFile"),
            Method::Bridge { solve: false }
        );
        for m in [
            "/moby.buildkit.v1.frontend.LLBBridge/NewContainer",
            "/moby.buildkit.v1.frontend.LLBBridge/ExecProcess",
            "/moby.buildkit.v1.Control/ListenBuildHistory",
            "/moby.buildkit.v1.Control/Session",
            "/containerd.services.content.v1.Content/Read",
            "/moby.buildkit.v1.Control/Solve2",
            "Solve",
        ] {
            assert!(matches!(classify(m), Method::Refused(_)), "{m}");
        }
    }

    #[test]
    fn grpc_messages_are_percent_encoded() {
        assert_eq!(percent_encode("a 100% ok"), "a 100%25 ok");
        assert_eq!(percent_encode("é\n"), "%C3%A9%0A");
    }

    #[test]
    fn ids_are_short_words() {
        assert!(valid_id("k3j2h1abc-x_y.z"));
        for bad in ["", "a/b", "a b", &"x".repeat(129)] {
            assert!(!valid_id(bad), "{bad}");
        }
    }
}
