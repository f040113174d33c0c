//! Networks. A user's network carries their owner label and takes no driver options and no
//! address configuration (they add bridges, routes and NAT rules on the host); only its
//! owner may connect containers to it, disconnect, inspect or remove it. Networks with no
//! owner (the administrator's, and Docker's own `bridge`, `none`) stay usable by everyone.
//! A user connects and disconnects only their own containers.

use bytes::Bytes;
use hyper::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use hyper::{Request, Response, StatusCode};
use serde_json::{Map, Value};

use super::body::{full, read_json, with_json, with_uri, Body, MAX_DF_BODY};
use super::containers::{pin_links, ref_list, ENDPOINT};
use super::error::{ProxyError, RuleError};
use super::request::{
    as_object_mut, check_fields, merge_owner_filter, str_of, valid_container_ref, Field, UserCtx,
};
use super::server::Call;
use super::upstream::{access, forward, inspect_object, owned_container, Access};
use std::collections::BTreeMap;

use Field::{Checked, Free, Refused};

/// What a request on `/networks/…` does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetworkRoute {
    Create,
    List,
    Prune,
    Inspect {
        id: String,
    },
    Remove {
        id: String,
    },
    /// `connect` or `disconnect`.
    Member {
        id: String,
    },
}

const NO_HOST_CHANGES: &str =
    "users' networks take no driver or address options (they change the host's bridges, routes and NAT)";

/// `network.CreateRequest` (API 1.24 to 1.51).
const CREATE: &[(&str, Field)] = &[
    ("Name", Free),
    ("CheckDuplicate", Free),
    ("Driver", Checked),
    ("Scope", Checked),
    ("EnableIPv4", Free),
    ("EnableIPv6", Free),
    ("IPAM", Checked),
    ("Internal", Free),
    ("Attachable", Free),
    ("Ingress", Refused("ingress networks are swarm's")),
    (
        "ConfigOnly",
        Refused("configuration-only networks are the administrator's"),
    ),
    (
        "ConfigFrom",
        Refused("configuration-only networks are the administrator's"),
    ),
    ("Options", Refused(NO_HOST_CHANGES)),
    ("Labels", Checked),
];

const IPAM: &[(&str, Field)] = &[
    ("Driver", Checked),
    ("Config", Refused(NO_HOST_CHANGES)),
    ("Options", Refused(NO_HOST_CHANGES)),
];

pub async fn handle(
    call: &Call<'_>,
    route: NetworkRoute,
    req: Request<Body>,
) -> Result<Response<Body>, ProxyError> {
    match route {
        NetworkRoute::Create => {
            let (parts, body) = req.into_parts();
            let mut v = read_json(body, call.max_body()).await?;
            rewrite_network_create(&mut v, call.ctx)?;
            forward(call.state, with_json(parts, &v)).await
        }
        NetworkRoute::List => list(call, req).await,
        NetworkRoute::Prune => {
            let q =
                merge_owner_filter(call.query.as_deref(), &call.ctx.owner_label, &call.ctx.name)?;
            forward(call.state, with_uri(req, &call.path, Some(&q))?).await
        }
        NetworkRoute::Inspect { id } => {
            check_network(call, &id, false).await?;
            forward(call.state, req).await
        }
        NetworkRoute::Remove { id } => {
            check_network(call, &id, true).await?;
            forward(call.state, req).await
        }
        NetworkRoute::Member { id } => {
            check_network(call, &id, false).await?;
            member(call, req).await
        }
    }
}

/// The network must be the caller's, or (unless `manage`) the administrator's.
pub async fn check_network(call: &Call<'_>, id: &str, manage: bool) -> Result<(), ProxyError> {
    let Some(network) = inspect_object(call.state, "networks", id).await? else {
        // Docker answers "not found" itself.
        return Ok(());
    };
    match access(&network, call.ctx) {
        Access::Own => Ok(()),
        Access::Shared if !manage => Ok(()),
        Access::Shared => Err(ProxyError::Shared {
            what: "network",
            name: id.to_string(),
            why: "only the administrator may remove it",
        }),
        Access::Foreign => Err(ProxyError::NotYoursObject {
            what: "network",
            name: id.to_string(),
        }),
    }
}

/// `GET /networks`: the caller's networks and the administrator's; not other users'.
async fn list(call: &Call<'_>, req: Request<Body>) -> Result<Response<Body>, ProxyError> {
    let resp = forward(call.state, req).await?;
    if resp.status() != StatusCode::OK {
        return Ok(resp);
    }
    let (mut parts, body) = resp.into_parts();
    let mut v = read_json(body, MAX_DF_BODY).await?;
    if let Some(list) = v.as_array_mut() {
        list.retain(|n| access(n, call.ctx) != Access::Foreign);
    }
    let bytes = Bytes::from(v.to_string());
    parts.headers.remove(TRANSFER_ENCODING);
    parts.headers.insert(CONTENT_LENGTH, bytes.len().into());
    Ok(Response::from_parts(parts, full(bytes)))
}

/// Checks a network create against `CREATE` and stamps the owner label.
pub fn rewrite_network_create(body: &mut Value, ctx: &UserCtx) -> Result<(), RuleError> {
    let obj = as_object_mut(body, "body")?.ok_or(RuleError::BadField {
        field: "body".into(),
        expected: "an object",
    })?;
    check_fields(obj, CREATE, "")?;
    let refused = |field: &str, value: &str, reason: &str| RuleError::ValueRefused {
        field: field.to_string(),
        value: value.to_string(),
        reason: reason.to_string(),
    };
    let driver = str_of(obj, "Driver", "Driver")?;
    if !matches!(driver, "" | "bridge") {
        return Err(refused(
            "network driver",
            driver,
            "users' networks are bridges (macvlan, ipvlan and overlay reach the host's interfaces or swarm)",
        ));
    }
    let scope = str_of(obj, "Scope", "Scope")?;
    if !matches!(scope, "" | "local") {
        return Err(refused("network scope", scope, "only local networks"));
    }
    if let Some(ipam) = obj.get_mut("IPAM") {
        if let Some(ipam) = as_object_mut(ipam, "IPAM")? {
            check_fields(ipam, IPAM, "IPAM")?;
            let driver = str_of(ipam, "Driver", "IPAM.Driver")?;
            if !matches!(driver, "" | "default") {
                return Err(refused("IPAM driver", driver, NO_HOST_CHANGES));
            }
        }
    }
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

/// `POST /networks/{id}/connect|disconnect`: the container must be the caller's, and the
/// endpoint settings obey the create rules (no driver options; links only to the caller's
/// containers, pinned to their ids).
async fn member(call: &Call<'_>, req: Request<Body>) -> Result<Response<Body>, ProxyError> {
    let (parts, body) = req.into_parts();
    let mut v = read_json(body, call.max_body()).await?;
    let (member, links) = network_member(&mut v)?;
    let full_id = owned_container(call.state, call.ctx, &member).await?;
    let mut owned = BTreeMap::new();
    for name in links {
        let id = owned_container(call.state, call.ctx, &name).await?;
        owned.insert(name, id);
    }
    set_network_member(&mut v, &full_id, &owned)?;
    forward(call.state, with_json(parts, &v)).await
}

/// `network.ConnectOptions` / `DisconnectOptions`.
const MEMBER: &[(&str, Field)] = &[
    ("Container", Checked),
    ("EndpointConfig", Checked),
    ("Force", Free),
];

/// The container a connect/disconnect body names, and the containers its endpoint links to.
pub fn network_member(body: &mut Value) -> Result<(String, Vec<String>), RuleError> {
    let obj = as_object_mut(body, "body")?.ok_or(RuleError::BadField {
        field: "body".into(),
        expected: "an object",
    })?;
    check_fields(obj, MEMBER, "")?;
    let name = str_of(obj, "Container", "Container")?.to_string();
    if !valid_container_ref(&name) {
        return Err(RuleError::BadContainerRef(name));
    }
    let mut links = Vec::new();
    if let Some(ep) = obj.get_mut("EndpointConfig") {
        if let Some(ep) = as_object_mut(ep, "EndpointConfig")? {
            check_fields(ep, ENDPOINT, "EndpointConfig")?;
            links = ref_list(ep, "Links")?;
        }
    }
    for l in &links {
        if !valid_container_ref(l) {
            return Err(RuleError::BadContainerRef(l.clone()));
        }
    }
    Ok((name, links))
}

/// Replaces the body's container, and its links' containers, with their full ids.
pub fn set_network_member(
    body: &mut Value,
    id: &str,
    links: &BTreeMap<String, String>,
) -> Result<(), RuleError> {
    let Some(obj) = body.as_object_mut() else {
        return Ok(());
    };
    obj.insert("Container".into(), Value::String(id.to_string()));
    if let Some(Value::Array(l)) = obj
        .get_mut("EndpointConfig")
        .and_then(|e| e.get_mut("Links"))
    {
        pin_links(l, links)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::request::test_ctx as ctx;
    use serde_json::json;

    #[test]
    fn network_create_takes_no_host_options_and_gets_the_owner() {
        let mut ok = json!({"Name": "n", "Driver": "bridge", "Internal": true,
            "IPAM": {"Driver": "default", "Config": []}, "Labels": {"labgpu.user": "bob"}});
        rewrite_network_create(&mut ok, &ctx()).unwrap();
        assert_eq!(ok["Labels"]["labgpu.user"], "alice");
        for (bad, word) in [
            (
                json!({"Name": "n", "Options": {"com.docker.network.bridge.name": "eth0"}}),
                "Options",
            ),
            (
                json!({"Name": "n", "IPAM": {"Config": [{"Subnet": "10.0.0.0/8"}]}}),
                "IPAM.Config",
            ),
            (json!({"Name": "n", "Driver": "macvlan"}), "macvlan"),
            (
                json!({"Name": "n", "IPAM": {"Driver": "custom"}}),
                "IPAM driver",
            ),
            (json!({"Name": "n", "Ingress": true}), "Ingress"),
            (
                json!({"Name": "n", "ipam": {"options": {"x": "y"}}}),
                "IPAM.Options",
            ),
            (json!({"Name": "n", "Bogus": 1}), "Bogus"),
        ] {
            let e = rewrite_network_create(&mut bad.clone(), &ctx())
                .unwrap_err()
                .to_string();
            assert!(e.contains(word), "{bad}: {e}");
        }
    }

    #[test]
    fn the_member_is_read_and_pinned() {
        let mut body =
            json!({"container": "web", "EndpointConfig": {"Links": ["db:d"], "Aliases": ["w"]}});
        let (name, links) = network_member(&mut body).unwrap();
        assert_eq!((name.as_str(), links), ("web", vec!["db".to_string()]));
        let owned = BTreeMap::from([("db".to_string(), "dbid".to_string())]);
        set_network_member(&mut body, "abc", &owned).unwrap();
        assert_eq!(body["Container"], "abc");
        assert_eq!(body["EndpointConfig"]["Links"], json!(["dbid:d"]));
        assert!(network_member(&mut json!({"Container": "../x"})).is_err());
        // "Contaıner" is Container to Go 1.21+: two containers, refused.
        let e = network_member(&mut json!({"Container": "mine", "Contaıner": "bobs"})).unwrap_err();
        assert!(matches!(e, RuleError::DuplicateKey { .. }), "{e}");
        let e = network_member(&mut json!({"Container": "c",
            "EndpointConfig": {"DriverOpts": {"com.docker.network.endpoint.sysctls": "x"}}}))
        .unwrap_err();
        assert!(e.to_string().contains("DriverOpts"), "{e}");
    }
}
