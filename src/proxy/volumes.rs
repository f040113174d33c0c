//! Volumes: a user's new volume carries their owner label.

use hyper::{Request, Response};
use serde_json::{Map, Value};

use super::body::{read_json, with_json, Body, MAX_JSON_BODY};
use super::error::{ProxyError, RuleError};
use super::request::{as_object_mut, canonicalize, UserCtx};
use super::server::Call;
use super::upstream::forward;

/// `POST /volumes/create`.
pub async fn create(call: &Call<'_>, req: Request<Body>) -> Result<Response<Body>, ProxyError> {
    let (parts, body) = req.into_parts();
    let mut v = read_json(body, MAX_JSON_BODY).await?;
    rewrite_volume_create(&mut v, call.ctx)?;
    forward(call.state, with_json(parts, &v)).await
}

/// `POST /volumes/create`: stamps the owner label, so `docker volume ls` can tell whose
/// a volume is (volumes stay shared; see README).
pub fn rewrite_volume_create(body: &mut Value, ctx: &UserCtx) -> Result<(), RuleError> {
    let obj = as_object_mut(body, "body")?.ok_or(RuleError::BadField {
        field: "body".into(),
        expected: "an object",
    })?;
    canonicalize(obj, &["Labels"])?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::request::test_ctx as ctx;
    use serde_json::json;

    #[test]
    fn the_owner_label_is_stamped() {
        let mut vol = json!({"Name": "v", "Labels": {"labgpu.user": "bob"}});
        rewrite_volume_create(&mut vol, &ctx()).unwrap();
        assert_eq!(vol["Labels"]["labgpu.user"], "alice");
    }
}
