//! What the proxy shows about the host: `GET /labgpu/top` on its socket (the caller's part of
//! `labgpu top`'s view: root's is the whole host, a user's their own containers and GPU
//! processes), the refusals it counts by reason, and the Prometheus listener
//! (`--metrics`, `[proxy] metrics`) that serves them with the rest of the metrics.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tracing::{info, warn};

use super::body::{full, Body};
use super::error::ProxyError;
use super::server::State;
use crate::policy::Policy;
use crate::top::{self, Sources, View};

/// The proxy's refusals since it started, by `ProxyError::reason`.
#[derive(Debug, Default)]
pub struct Refusals(Mutex<BTreeMap<String, u64>>);

impl Refusals {
    pub fn count(&self, reason: &str) {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        *m.entry(reason.to_string()).or_default() += 1;
    }

    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// How long one look at the host serves every `/labgpu/top` caller: a user polling in a
/// loop (or many users' `labgpu top`) costs one /proc scan and one NVML query a second.
const VIEW_FRESH: Duration = Duration::from_secs(1);

/// The last whole-host view, shared by all callers; the lock is held while a new one is
/// taken, so concurrent callers wait for it instead of each taking their own.
#[derive(Debug, Default)]
pub struct ViewCache(tokio::sync::Mutex<Option<(Instant, Arc<View>)>>);

impl ViewCache {
    async fn get(&self, policy: Arc<Policy>, src: Sources) -> Result<Arc<View>, ProxyError> {
        let mut slot = self.0.lock().await;
        if let Some((at, view)) = slot.as_ref() {
            if at.elapsed() < VIEW_FRESH && view_policy_matches(view, &policy) {
                return Ok(view.clone());
            }
        }
        let view = tokio::task::spawn_blocking(move || top::collect(&policy, &src))
            .await
            .map_err(|e| ProxyError::Body(e.to_string()))?;
        let view = Arc::new(view);
        *slot = Some((Instant::now(), view.clone()));
        Ok(view)
    }
}

/// A view is per policy only through its list of users; a policy edit within the second
/// simply waits for the next look (owners come from records, not from the policy).
fn view_policy_matches(view: &View, policy: &Policy) -> bool {
    policy
        .users
        .keys()
        .all(|u| view.users.iter().any(|v| &v.user == u))
}

/// `GET /labgpu/top`: the whole view for the administrator (`user` None), else `user`'s part.
pub async fn top(state: &State, user: Option<String>) -> Result<Response<Body>, ProxyError> {
    let policy = state.policies.load(&state.policy)?;
    let src = Sources {
        proc_root: state.proc_root.clone(),
        ..Sources::default()
    };
    let all = state.views.get(policy.clone(), src).await?;
    let view = match user {
        None => (*all).clone(),
        Some(name) => {
            let granted = tokio::task::spawn_blocking({
                let (policy, name) = (policy.clone(), name.clone());
                move || top::granted_minors(&policy, &name)
            })
            .await
            .map_err(|e| ProxyError::Body(e.to_string()))?;
            top::restrict(&all, &name, &granted)
        }
    };
    let body = serde_json::to_vec(&view).map_err(|e| ProxyError::Body(e.to_string()))?;
    Ok(with_type(full(body.into()), "application/json"))
}

fn with_type(body: Body, content_type: &'static str) -> Response<Body> {
    let mut resp = Response::new(body);
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

/// Binds the metrics listener. A public address is allowed (the administrator chose it) but
/// logged: the metrics name every user and what they run.
pub fn bind(addr: &str) -> anyhow::Result<(TcpListener, SocketAddr)> {
    use anyhow::Context;
    let parsed: SocketAddr = addr.parse().with_context(|| {
        format!("--metrics {addr:?} is not an address and port such as 127.0.0.1:9400")
    })?;
    let std_listener = std::net::TcpListener::bind(parsed)
        .with_context(|| format!("listening for metrics on {parsed}"))?;
    std_listener.set_nonblocking(true)?;
    let local = std_listener.local_addr()?;
    if !local.ip().is_loopback() {
        warn!(%local, "the metrics listener is reachable from other hosts");
    }
    Ok((TcpListener::from_std(std_listener)?, local))
}

/// Serves `GET /metrics` until the proxy stops. One scrape runs at a time: a second
/// scraper waits for the first one's answer instead of doubling the work.
pub async fn serve_metrics(state: Arc<State>, listener: TcpListener, addr: SocketAddr) {
    info!(%addr, "metrics listening");
    let one_at_a_time = Arc::new(tokio::sync::Mutex::new(()));
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                warn!(error = %e, "metrics accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (state, lock) = (state.clone(), one_at_a_time.clone());
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let (state, lock) = (state.clone(), lock.clone());
                async move { Ok::<_, Infallible>(metrics_answer(&state, &lock, req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn metrics_answer<B>(
    state: &Arc<State>,
    lock: &tokio::sync::Mutex<()>,
    req: Request<B>,
) -> Response<Body> {
    if req.method() != Method::GET || req.uri().path() != "/metrics" {
        let mut resp = with_type(
            full("labgpu serves GET /metrics only\n".into()),
            "text/plain",
        );
        *resp.status_mut() = StatusCode::NOT_FOUND;
        return resp;
    }
    let _one = lock.lock().await;
    let policy = match state.policies.load(&state.policy) {
        Ok(p) => p,
        Err(e) => {
            let mut resp = with_type(full(format!("{e}\n").into()), "text/plain");
            *resp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            return resp;
        }
    };
    let (roots, refusals) = (state.roots.clone(), state.refusals.snapshot());
    let text =
        tokio::task::spawn_blocking(move || top::cmd::scrape(&policy, roots, Some(&refusals)))
            .await
            .unwrap_or_else(|e| format!("# scrape failed: {e}\n"));
    with_type(full(text.into()), top::metrics::CONTENT_TYPE)
}
