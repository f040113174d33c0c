//! Listings and events: a user sees only their own containers (`ps`, `events`,
//! `container prune`, `system df`).

use bytes::Bytes;
use hyper::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use hyper::{Request, Response, StatusCode};
use serde_json::Value;

use super::body::{full, read_json, with_uri, Body, MAX_DF_BODY};
use super::error::ProxyError;
use super::request::merge_owner_filter;
use super::server::Call;
use super::upstream::forward;

/// `GET /containers/json`, `GET /events`, `POST /containers/prune`: the caller's owner label
/// is merged into `filters`.
pub async fn filtered(call: &Call<'_>, req: Request<Body>) -> Result<Response<Body>, ProxyError> {
    let q = merge_owner_filter(call.query.as_deref(), &call.ctx.owner_label, &call.ctx.name)?;
    forward(call.state, with_uri(req, &call.path, Some(&q))?).await
}

/// `GET /system/df`: other owners' containers are dropped from the answer.
pub async fn disk_usage(call: &Call<'_>, req: Request<Body>) -> Result<Response<Body>, ProxyError> {
    let resp = forward(call.state, req).await?;
    if resp.status() != StatusCode::OK {
        return Ok(resp);
    }
    let (mut parts, body) = resp.into_parts();
    let mut df = read_json(body, MAX_DF_BODY).await?;
    filter_disk_usage(&mut df, &call.ctx.owner_label, &call.ctx.name);
    let bytes = Bytes::from(df.to_string());
    parts.headers.remove(TRANSFER_ENCODING);
    parts.headers.insert(CONTENT_LENGTH, bytes.len().into());
    Ok(Response::from_parts(parts, full(bytes)))
}

/// `GET /system/df`: keeps only the caller's containers.
pub fn filter_disk_usage(df: &mut Value, owner_label: &str, name: &str) {
    if let Some(Value::Array(list)) = df.get_mut("Containers") {
        list.retain(|c| {
            c.get("Labels")
                .and_then(|l| l.get(owner_label))
                .and_then(Value::as_str)
                == Some(name)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn disk_usage_keeps_own_containers_only() {
        let mut df = json!({"Containers": [
            {"Id": "a", "Labels": {"labgpu.user": "alice"}},
            {"Id": "b", "Labels": {"labgpu.user": "bob"}},
            {"Id": "c", "Labels": {}}
        ], "Images": [{"Id": "i"}]});
        filter_disk_usage(&mut df, "labgpu.user", "alice");
        assert_eq!(
            df["Containers"],
            json!([{"Id": "a", "Labels": {"labgpu.user": "alice"}}])
        );
        assert_eq!(df["Images"], json!([{"Id": "i"}]));
    }
}
