//! Listings and events: a user sees only their own containers (`ps`, `events`,
//! `container prune`, `system df`). The owner label is merged into Docker's `filters`, which
//! narrows what Docker sends; what comes back is then kept only where the proxy's record says
//! the container is the caller's (a container the proxy did not create, such as a build step
//! from an image carrying the label, is nobody's).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::Frame;
use hyper::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use hyper::{Request, Response, StatusCode};
use serde_json::{json, Value};

use super::body::{full, read_bytes, with_uri, Body, BoxError, MAX_DF_BODY};
use super::error::{ProxyError, RuleError};
use super::request::{merge_owner_filter, query_param, query_string};
use super::server::Call;
use super::upstream::{delete, forward, get_json};
use crate::records;

/// What a listing request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listing {
    /// `GET /containers/json`.
    Containers,
    /// `GET /events`.
    Events,
    /// `POST /containers/prune`.
    Prune,
}

pub async fn filtered(
    call: &Call<'_>,
    what: Listing,
    req: Request<Body>,
) -> Result<Response<Body>, ProxyError> {
    match what {
        Listing::Prune => prune(call).await,
        Listing::Containers => {
            let q =
                merge_owner_filter(call.query.as_deref(), &call.ctx.owner_label, &call.ctx.name)?;
            let resp = forward(call.state, with_uri(req, &call.path, Some(&q))?).await?;
            keep_recorded(call, resp, Value::as_array_mut).await
        }
        Listing::Events => {
            let q =
                merge_owner_filter(call.query.as_deref(), &call.ctx.owner_label, &call.ctx.name)?;
            let resp = forward(call.state, with_uri(req, &call.path, Some(&q))?).await?;
            let (parts, body) = resp.into_parts();
            let events = OwnEvents {
                inner: body,
                buf: BytesMut::new(),
                dir: call.ctx.state_dir.clone(),
                owner: call.ctx.name.clone(),
                seen: HashMap::new(),
                done: false,
            };
            Ok(Response::from_parts(parts, events.boxed()))
        }
    }
}

/// Whether container `id` (a JSON string) was recorded for `owner`.
fn recorded(dir: &Path, id: Option<&Value>, owner: &str) -> bool {
    id.and_then(Value::as_str)
        .and_then(|id| records::recorded_owner(dir, id).ok().flatten())
        .as_deref()
        == Some(owner)
}

/// Records read in place (microseconds each) rather than on the blocking pool, up to this
/// many per answer; a longer list would hold up the proxy's other requests meanwhile.
const RECORDS_IN_PLACE: usize = 64;

/// Docker's JSON answer with the containers not recorded for the caller dropped from the
/// list `list` finds in it (non-200 answers pass unchanged). An answer left as it was is
/// sent as Docker sent it, not parsed and written again.
async fn keep_recorded(
    call: &Call<'_>,
    resp: Response<Body>,
    list: fn(&mut Value) -> Option<&mut Vec<Value>>,
) -> Result<Response<Body>, ProxyError> {
    if resp.status() != StatusCode::OK {
        return Ok(resp);
    }
    let (mut parts, body) = resp.into_parts();
    let raw = read_bytes(body, MAX_DF_BODY).await?;
    let mut v = if raw.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&raw).map_err(|e| RuleError::BadJson(e.to_string()))?
    };
    let (dir, owner) = (call.ctx.state_dir.clone(), call.ctx.name.clone());
    let drop_foreign = move |v: &mut Value| match list(v) {
        Some(items) => {
            let before = items.len();
            items.retain(|c| recorded(&dir, c.get("Id"), &owner));
            items.len() != before
        }
        None => false,
    };
    let changed = if list(&mut v).is_some_and(|l| l.len() > RECORDS_IN_PLACE) {
        let (v2, changed) = tokio::task::spawn_blocking(move || {
            let changed = drop_foreign(&mut v);
            (v, changed)
        })
        .await
        .map_err(|e| ProxyError::Body(e.to_string()))?;
        v = v2;
        changed
    } else {
        drop_foreign(&mut v)
    };
    let bytes = if changed {
        Bytes::from(v.to_string())
    } else {
        raw
    };
    parts.headers.remove(TRANSFER_ENCODING);
    parts.headers.insert(CONTENT_LENGTH, bytes.len().into());
    Ok(Response::from_parts(parts, full(bytes)))
}

/// The `Containers` list of a `GET /system/df` answer.
fn df_containers(df: &mut Value) -> Option<&mut Vec<Value>> {
    df.get_mut("Containers")?.as_array_mut()
}

/// `GET /system/df`: other owners' containers are dropped from the answer.
pub async fn disk_usage(call: &Call<'_>, req: Request<Body>) -> Result<Response<Body>, ProxyError> {
    let resp = forward(call.state, req).await?;
    keep_recorded(call, resp, df_containers).await
}

/// The events stream (one JSON object per line), without container events of containers not
/// recorded for the caller. Volume and network events carry labels only the proxy sets.
struct OwnEvents {
    inner: Body,
    buf: BytesMut,
    dir: PathBuf,
    owner: String,
    /// Container id → the caller's, so each record is read once per stream.
    seen: HashMap<String, bool>,
    done: bool,
}

impl OwnEvents {
    fn keep(&mut self, line: &[u8]) -> bool {
        let Ok(ev) = serde_json::from_slice::<Value>(line) else {
            return false;
        };
        if ev.get("Type").and_then(Value::as_str) != Some("container") {
            return true;
        }
        let Some(id) = ev.pointer("/Actor/ID").and_then(Value::as_str) else {
            return false;
        };
        if let Some(k) = self.seen.get(id) {
            return *k;
        }
        let mine = recorded(&self.dir, Some(&json!(id)), &self.owner);
        self.seen.insert(id.to_string(), mine);
        mine
    }

    /// The complete lines in the buffer that are kept (the rest waits for more bytes).
    fn take_lines(&mut self, all: bool) -> Bytes {
        let mut out = BytesMut::new();
        loop {
            let line = match self.buf.iter().position(|b| *b == b'\n') {
                Some(i) => self.buf.split_to(i + 1),
                None if all && !self.buf.is_empty() => self.buf.split(),
                None => break,
            };
            if self.keep(line.trim_ascii()) {
                out.extend_from_slice(&line);
            }
        }
        out.freeze()
    }
}

impl hyper::body::Body for OwnEvents {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        this.buf.extend_from_slice(&data);
                        // A line longer than any event is not one: drop it.
                        if this.buf.len() > 1 << 20 && !this.buf.contains(&b'\n') {
                            this.buf.clear();
                        }
                        let out = this.take_lines(false);
                        if !out.is_empty() {
                            return Poll::Ready(Some(Ok(Frame::data(out))));
                        }
                    }
                }
                Poll::Ready(None) => {
                    this.done = true;
                    let out = this.take_lines(true);
                    if !out.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(out))));
                    }
                }
            }
        }
    }
}

/// `POST /containers/prune`: done by the proxy, so that only containers recorded for the
/// caller are removed: the stopped ones matching the caller's `label`, `label!` and `until`
/// filters. Answers as Docker does (`ContainersDeleted`; `SpaceReclaimed` is not known).
async fn prune(call: &Call<'_>) -> Result<Response<Body>, ProxyError> {
    let filters = match query_param(call.query.as_deref(), "filters") {
        Some(f) if !f.is_empty() => serde_json::from_str::<Value>(&f)
            .map_err(|e| RuleError::BadFilters(format!("{f:?}: {e}")))?,
        _ => json!({}),
    };
    let obj = filters
        .as_object()
        .ok_or_else(|| RuleError::BadFilters("not a JSON object".into()))?;
    let mut list_filters = serde_json::Map::new();
    let mut until = None;
    for (k, v) in obj {
        match k.as_str() {
            "label" | "label!" => {
                list_filters.insert(k.clone(), v.clone());
            }
            "until" => until = Some(until_of(v)?),
            other => {
                return Err(RuleError::BadFilters(format!(
                    "{other} is not a container prune filter the labgpu proxy knows"
                ))
                .into())
            }
        }
    }
    list_filters.insert(
        "status".into(),
        json!({"created": true, "exited": true, "dead": true}),
    );
    let q = query_string(&[
        ("all".into(), "1".into()),
        ("filters".into(), Value::Object(list_filters).to_string()),
    ]);
    let q = merge_owner_filter(Some(&q), &call.ctx.owner_label, &call.ctx.name)?;
    let (status, list) = get_json(call.state, &format!("/containers/json?{q}")).await?;
    if !status.is_success() {
        return Err(super::upstream::upstream_error(
            status,
            "container list".into(),
            &list,
        ));
    }
    let mut deleted = Vec::new();
    for c in list.as_array().into_iter().flatten() {
        let Some(id) = c.get("Id").and_then(Value::as_str) else {
            continue;
        };
        let created = c.get("Created").and_then(Value::as_i64).unwrap_or(i64::MAX);
        if until.is_some_and(|u| created >= u) || !super::upstream::recorded_for(call.ctx, id).await
        {
            continue;
        }
        if delete(call.state, &format!("/containers/{id}"))
            .await?
            .is_success()
        {
            deleted.push(id.to_string());
        }
    }
    let body = json!({"ContainersDeleted": deleted, "SpaceReclaimed": 0}).to_string();
    let mut resp = Response::new(full(Bytes::from(body)));
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}

/// The `until` prune filter as a unix time: a Go duration before now (`24h`, `90m`, `1h30m`)
/// or unix seconds.
pub fn until_of(v: &Value) -> Result<i64, RuleError> {
    let values: Vec<String> = match v {
        Value::Object(m) => m.keys().cloned().collect(),
        Value::Array(a) => a
            .iter()
            .filter_map(|x| x.as_str().map(str::to_string))
            .collect(),
        _ => Vec::new(),
    };
    let [value] = values.as_slice() else {
        return Err(RuleError::BadFilters("until takes one value".into()));
    };
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    if let Ok(secs) = value.split('.').next().unwrap_or("").parse::<i64>() {
        return Ok(secs);
    }
    parse_go_duration(value)
        .and_then(|d| now.checked_sub(i64::try_from(d.as_secs()).ok()?))
        .ok_or_else(|| {
            RuleError::BadFilters(format!(
                "until {value:?}: give a duration (24h, 90m) or unix seconds"
            ))
        })
}

/// `1h30m`, `24h`, `45s`: Go's time.ParseDuration for h, m, s.
fn parse_go_duration(s: &str) -> Option<Duration> {
    let mut total = 0u64;
    let mut num = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let n: u64 = num.parse().ok()?;
        num.clear();
        let unit = match c {
            'h' => 3600,
            'm' => 60,
            's' => 1,
            _ => return None,
        };
        // Go's ParseDuration refuses what overflows, too.
        total = total.checked_add(n.checked_mul(unit)?)?;
    }
    num.is_empty()
        .then_some(Duration::from_secs(total))
        .filter(|_| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_keep_own_containers_and_other_types() {
        let d = tempfile::tempdir().unwrap();
        records::record(d.path(), "mine", "alice").unwrap();
        records::record(d.path(), "bobs", "bob").unwrap();
        let mut f = OwnEvents {
            inner: full(Bytes::new()),
            buf: BytesMut::new(),
            dir: d.path().to_path_buf(),
            owner: "alice".into(),
            seen: HashMap::new(),
            done: false,
        };
        f.buf.extend_from_slice(
            b"{\"Type\":\"container\",\"Actor\":{\"ID\":\"mine\"}}\n\
              {\"Type\":\"container\",\"Actor\":{\"ID\":\"bobs\"}}\n\
              {\"Type\":\"container\",\"Actor\":{\"ID\":\"buildstep\"}}\n\
              {\"Type\":\"volume\",\"Actor\":{\"ID\":\"v\"}}\n{\"Type\":\"cont",
        );
        let out = String::from_utf8(f.take_lines(false).to_vec()).unwrap();
        assert_eq!(
            out,
            "{\"Type\":\"container\",\"Actor\":{\"ID\":\"mine\"}}\n{\"Type\":\"volume\",\"Actor\":{\"ID\":\"v\"}}\n"
        );
        assert_eq!(&f.buf[..], b"{\"Type\":\"cont");
    }

    #[test]
    fn until_accepts_durations_and_seconds() {
        assert_eq!(parse_go_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_go_duration("24h"), Some(Duration::from_secs(86400)));
        assert_eq!(parse_go_duration("5"), None);
        assert_eq!(parse_go_duration("5d"), None);
        assert_eq!(until_of(&json!(["1700000000"])).unwrap(), 1_700_000_000);
        assert!(until_of(&json!({"24h": true})).unwrap() > 1_700_000_000);
        assert!(until_of(&json!(["2024-01-01T00:00:00Z"])).is_err());
        // Overflowed u64 (the product, the sum), then i64 (fuzz/fuzz_targets/proxy_query.rs).
        assert_eq!(parse_go_duration("9999999999999999h"), None);
        assert_eq!(
            parse_go_duration("5124095576030431h5124095576030431h"),
            None
        );
        assert!(until_of(&json!(["9999999999999999h"])).is_err());
        assert!(until_of(&json!({"4000000000000000h": true})).is_err());
    }
}
