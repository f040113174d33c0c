//! Request and response bodies: the slot that keeps a refused request's unread body for
//! draining, JSON bodies read with a size limit, and rewritten requests.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::header::{HeaderValue, CONTENT_LENGTH, CONTENT_TYPE, TRANSFER_ENCODING};
use hyper::{Request, Uri};
use serde_json::Value;

use super::error::{ProxyError, RuleError};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Body = BoxBody<Bytes, BoxError>;

/// JSON the proxy reads that no policy user sends (Docker's answers, the administrator's
/// creates); users' bodies are limited by `[proxy] max_body_bytes`.
pub const MAX_JSON_BODY: usize = 4 << 20;
/// `docker system df` lists every image and container; still JSON, just bigger.
pub const MAX_DF_BODY: usize = 64 << 20;

/// How long a refused upload is read for; a client still sending after that gets a broken
/// pipe.
const UPLOAD_DRAIN_TIME: Duration = Duration::from_secs(600);

/// Go's HTTP client (docker cp, import, load) reports a failed body write rather than the
/// answer that came while it was writing: a refused request's body is read to its end (and
/// dropped) while the refusal is answered.
pub async fn drain_upload(mut body: Incoming) {
    let _ = tokio::time::timeout(UPLOAD_DRAIN_TIME, async {
        while let Some(Ok(_)) = body.frame().await {}
    })
    .await;
}

/// The request body, with `handle` keeping a way back to it: what the route did not read is
/// still in the slot when the request is refused.
pub struct SharedBody(pub Arc<Mutex<Option<Incoming>>>);

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

pub fn box_err(e: hyper::Error) -> BoxError {
    Box::new(e)
}

pub fn full(bytes: Bytes) -> Body {
    Full::new(bytes).map_err(|never| match never {}).boxed()
}

pub fn with_uri(
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

pub fn with_json(mut parts: hyper::http::request::Parts, v: &Value) -> Request<Body> {
    let bytes = Bytes::from(v.to_string());
    parts.headers.remove(TRANSFER_ENCODING);
    parts.headers.insert(CONTENT_LENGTH, bytes.len().into());
    parts
        .headers
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Request::from_parts(parts, full(bytes))
}

pub async fn read_json(body: Body, limit: usize) -> Result<Value, ProxyError> {
    let bytes = read_bytes(body, limit).await?;
    if bytes.is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_slice(&bytes).map_err(|e| RuleError::BadJson(e.to_string()).into())
}

/// A whole body, of at most `limit` bytes. One frame (an answer with a length that came in
/// one read) is passed on as it is, without a copy.
pub async fn read_bytes(body: Body, limit: usize) -> Result<Bytes, ProxyError> {
    let mut body = body;
    let mut first: Option<Bytes> = None;
    let mut buf = Vec::new();
    // By hand rather than http_body_util::Limited: its boxed-error bound trips rustc's
    // higher-ranked Send check once the future is spawned.
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ProxyError::Body(e.to_string()))?;
        if let Ok(data) = frame.into_data() {
            let had = first.as_ref().map_or(buf.len(), Bytes::len);
            if had + data.len() > limit {
                return Err(ProxyError::Body(format!("larger than {limit} bytes")));
            }
            match first.take() {
                None if buf.is_empty() => first = Some(data),
                None => buf.extend_from_slice(&data),
                Some(f) => {
                    buf.extend_from_slice(&f);
                    buf.extend_from_slice(&data);
                }
            }
        }
    }
    Ok(first.unwrap_or_else(|| Bytes::from(buf)))
}
