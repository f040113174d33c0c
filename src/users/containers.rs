//! A user's containers, through Docker's API as the administrator: found by owner (as the
//! runtime decides it: the proxy's record with `[proxy]`, the owner label without), stopped
//! or removed for `user rm`, counted for `user list`.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::docker_api::{self, DockerApiError};
use crate::policy::Policy;
use crate::records;

/// How long `docker stop` waits before it kills.
const STOP_SECONDS: u64 = 10;

/// A container as `GET /containers/json` lists it, with its owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Container {
    pub id: String,
    pub name: String,
    pub running: bool,
    pub owner: String,
}

/// The containers with an owner (of `owner`, when given), running or not.
pub fn owned(
    docker: &Path,
    policy: &Policy,
    owner: Option<&str>,
) -> Result<Vec<Container>, DockerApiError> {
    let label = &policy.runtime.owner_label;
    let filter = match owner {
        Some(o) => format!("{label}={o}"),
        None => label.clone(),
    };
    let filters = serde_json::json!({ "label": [filter] }).to_string();
    let query = form_urlencoded::Serializer::new(String::new())
        .append_pair("all", "1")
        .append_pair("filters", &filters)
        .finish();
    let listed = docker_api::get_json(docker, &format!("/containers/json?{query}"))?;
    let state_dir = policy.proxy.as_ref().map(|p| p.state_dir.0.clone());
    let mut out = Vec::new();
    for c in listed.as_array().into_iter().flatten() {
        let Some(id) = c.get("Id").and_then(Value::as_str) else {
            continue;
        };
        let labelled = c
            .pointer(&format!(
                "/Labels/{}",
                label.replace('~', "~0").replace('/', "~1")
            ))
            .and_then(Value::as_str)
            .unwrap_or_default();
        // With the proxy, its record says whose a container is; the label may be forged.
        let owner_is = match &state_dir {
            Some(dir) => records::recorded_owner(dir, id).ok().flatten(),
            None => Some(labelled.to_string()),
        };
        let Some(owner_is) = owner_is.filter(|o| !o.is_empty()) else {
            continue;
        };
        if owner.is_some_and(|o| o != owner_is) {
            continue;
        }
        out.push(Container {
            id: id.to_string(),
            name: c
                .pointer("/Names/0")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .trim_start_matches('/')
                .to_string(),
            running: c.get("State").and_then(Value::as_str) == Some("running"),
            owner: owner_is,
        });
    }
    Ok(out)
}

/// Stops a running container (`docker stop -t 10`).
pub fn stop(docker: &Path, c: &Container) -> Result<(), DockerApiError> {
    if !c.running {
        return Ok(());
    }
    docker_api::request_within(
        docker,
        "POST",
        &format!("/containers/{}/stop?t={STOP_SECONDS}", c.id),
        Duration::from_secs(STOP_SECONDS + 30),
    )
    .map(drop)
}

/// Removes a container (`docker rm -f`; its volumes stay) and the proxy's record of it.
pub fn remove(docker: &Path, policy: &Policy, c: &Container) -> Result<(), DockerApiError> {
    docker_api::request_within(
        docker,
        "DELETE",
        &format!("/containers/{}?force=1", c.id),
        Duration::from_secs(STOP_SECONDS + 30),
    )?;
    if let Some(p) = &policy.proxy {
        let _ = records::forget(p.state_dir.as_path(), &c.id);
    }
    Ok(())
}
