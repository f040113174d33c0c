//! Networks: shared; a user may connect or disconnect only their own containers.

use hyper::{Request, Response};
use serde_json::Value;

use super::body::{read_json, with_json, Body, MAX_JSON_BODY};
use super::error::{ProxyError, RuleError};
use super::request::{as_object_mut, canonicalize, str_of, valid_container_ref};
use super::server::Call;
use super::upstream::{forward, owned_container};

/// `POST /networks/{id}/connect|disconnect`.
pub async fn member(call: &Call<'_>, req: Request<Body>) -> Result<Response<Body>, ProxyError> {
    let (parts, body) = req.into_parts();
    let mut v = read_json(body, MAX_JSON_BODY).await?;
    let member = network_member(&mut v)?;
    let full_id = owned_container(call.state, call.ctx, &member).await?;
    set_network_member(&mut v, &full_id);
    forward(call.state, with_json(parts, &v)).await
}

/// `POST /networks/{id}/connect|disconnect`: the container named in the body.
pub fn network_member(body: &mut Value) -> Result<String, RuleError> {
    let obj = as_object_mut(body, "body")?.ok_or(RuleError::BadField {
        field: "body".into(),
        expected: "an object",
    })?;
    canonicalize(obj, &["Container"])?;
    let name = str_of(obj, "Container", "Container")?.to_string();
    if !valid_container_ref(&name) {
        return Err(RuleError::BadContainerRef(name));
    }
    Ok(name)
}

/// Replaces the body's container with its full id.
pub fn set_network_member(body: &mut Value, id: &str) {
    if let Some(obj) = body.as_object_mut() {
        obj.insert("Container".into(), Value::String(id.to_string()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_member_is_read_and_pinned() {
        let mut body = json!({"container": "web", "EndpointConfig": {}});
        assert_eq!(network_member(&mut body).unwrap(), "web");
        set_network_member(&mut body, "abc");
        assert_eq!(body["Container"], "abc");
        assert!(network_member(&mut json!({"Container": "../x"})).is_err());
    }
}
