//! `POST /labgpu/session`: the caller's login container, for `labgpu shell`.
//!
//! The proxy finds it by its own record (owner and `session`), never by name or label: names
//! are global and first come, first served, and labels are anyone's to write. When there is
//! none, the proxy makes one from the policy's `session` settings. The create body is the
//! proxy's, not the caller's, and still goes through the same checks and rewrite as any
//! create of theirs (owner label, runtime, mounts); the runtime then gives it the owner's GPUs
//! and mounts as for any other container. Starting it and entering it are ordinary requests
//! of the caller's (`start`, `exec`).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::header::{CONTENT_TYPE, HOST};
use hyper::{Request, Response, StatusCode};
use serde_json::{json, Value};
use tracing::{info, warn};

use super::body::{box_err, full, read_json, Body, MAX_JSON_BODY};
use super::containers::{self, SESSION_LABEL};
use super::error::{ProxyError, RuleError};
use super::server::Call;
use super::upstream::{delete, get_json, send, upstream_error};
use crate::records::{self, Record};

/// Where a login lands, and the container's working directory.
pub const WORKDIR: &str = "/workspace";

/// The login container's first process: it only keeps the container up for logins to
/// enter, reaps what they leave behind, and ends at once on `docker stop`.
const KEEP_ALIVE: &str = "trap 'exit 0' TERM INT HUP; while :; do sleep 3600 & wait $!; done";

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("no login image is set for {user}: the administrator sets [defaults] session = {{ image = \"…\" }} (or session in [users.{user}]) in {policy}")]
    NoImage { user: String, policy: PathBuf },
    #[error("the login image {image:?} (session image for {user} in {policy}) is not on this host: the administrator pulls or builds it (docker pull {image})")]
    ImageMissing {
        image: String,
        user: String,
        policy: PathBuf,
    },
    #[error("cannot read the proxy's records of login containers: {0}")]
    Records(records::RecordError),
}

/// One lock per user: two logins at once (a terminal and an editor's remote extension)
/// find or make the same container, never two.
fn user_lock(name: &str) -> Arc<tokio::sync::Mutex<()>> {
    static LOCKS: OnceLock<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>> = OnceLock::new();
    let mut locks = LOCKS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    locks.entry(name.to_string()).or_default().clone()
}

/// Finds or makes the caller's login container; answers with its id and what the shell
/// needs from the policy (which the caller may not be able to read).
pub async fn ensure(call: &Call<'_>) -> Result<Response<Body>, ProxyError> {
    let lock = user_lock(&call.ctx.name);
    let _held = lock.lock().await;
    let settings = call.policy.session_for(&call.ctx.name);
    let (id, created) = match find(call).await? {
        Some(id) => (id, false),
        None => (create(call, settings.image.as_deref()).await?, true),
    };
    let answer = json!({
        "Id": id,
        "Created": created,
        "User": call.ctx.name,
        "StopOnExit": settings.stop_on_exit,
        "Shell": settings.shell,
        "WorkingDir": WORKDIR,
    });
    let mut resp = Response::new(full(Bytes::from(answer.to_string())));
    resp.headers_mut()
        .insert(CONTENT_TYPE, "application/json".parse().expect("static"));
    Ok(resp)
}

/// The caller's recorded login container that Docker still has. A record whose container
/// is gone (removed behind the proxy's back) is forgotten on the way.
async fn find(call: &Call<'_>) -> Result<Option<String>, ProxyError> {
    let (dir, owner) = (call.ctx.state_dir.clone(), call.ctx.name.clone());
    let ids = tokio::task::spawn_blocking(move || records::sessions_of(&dir, &owner))
        .await
        .map_err(|e| ProxyError::Body(e.to_string()))?
        .map_err(SessionError::Records)?;
    for id in ids {
        let (status, v) = get_json(call.state, &format!("/containers/{id}/json")).await?;
        match status {
            StatusCode::OK if containers::owned_by(&v, &call.ctx.owner_label, &call.ctx.name) => {
                return Ok(Some(id));
            }
            StatusCode::OK => {
                warn!(container = %id, user = %call.ctx.name, "a session record names a container labelled for someone else; ignored");
            }
            StatusCode::NOT_FOUND => {
                let dir = call.ctx.state_dir.clone();
                let _ = tokio::task::spawn_blocking(move || records::forget(&dir, &id)).await;
            }
            s => {
                return Err(upstream_error(
                    s,
                    format!("inspect of login container {id}"),
                    &v,
                ))
            }
        }
    }
    Ok(None)
}

/// Makes the caller's login container from `image`, checked and rewritten like any create
/// of theirs, and records it as their session.
async fn create(call: &Call<'_>, image: Option<&str>) -> Result<String, ProxyError> {
    let user = call.ctx.name.clone();
    let image = image.ok_or_else(|| SessionError::NoImage {
        user: user.clone(),
        policy: call.policy.path.clone(),
    })?;
    check_image(call, image).await?;
    let mut body = session_body(&user, image, &host_name());
    let resolved = containers::resolve_refs(call, &mut body).await?;
    let mut body = containers::rewrite_off_workers(body, call.ctx.clone(), resolved).await?;
    body["Labels"][SESSION_LABEL] = Value::String(user.clone());
    let name = format!("session-{user}");
    let (mut status, mut v) = post_create(call, Some(&name), &body).await?;
    if status == StatusCode::CONFLICT {
        // Someone holds the name (names are global): the name is cosmetic.
        (status, v) = post_create(call, None, &body).await?;
    }
    if status != StatusCode::CREATED {
        return Err(upstream_error(
            status,
            format!("create of {user}'s login container from {image:?}"),
            &v,
        ));
    }
    let id = v
        .get("Id")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let (dir, rid) = (call.ctx.state_dir.clone(), id.clone());
    let record = Record {
        owner: user.clone(),
        session: true,
        // A login is no Slurm job step: a `gpus = "slurm"` user's login container gets what
        // [slurm] outside_job says.
        slurm_job: None,
    };
    let written = tokio::task::spawn_blocking(move || records::record_full(&dir, &rid, &record))
        .await
        .map_err(|e| ProxyError::Body(e.to_string()))?;
    if let Err(e) = written {
        warn!(container = %id, error = %e, "cannot record the login container; removing it");
        let _ = delete(call.state, &format!("/containers/{id}?force=1")).await;
        return Err(ProxyError::Record(e));
    }
    info!(%user, %image, container = %id, "login container created");
    Ok(id)
}

/// Docker's answer for the image; a missing one is said in the administrator's terms.
async fn check_image(call: &Call<'_>, image: &str) -> Result<(), ProxyError> {
    let (status, v) = get_json(call.state, &format!("/images/{image}/json")).await?;
    match status {
        s if s.is_success() => Ok(()),
        StatusCode::NOT_FOUND => Err(SessionError::ImageMissing {
            image: image.to_string(),
            user: call.ctx.name.clone(),
            policy: call.policy.path.clone(),
        }
        .into()),
        s => Err(upstream_error(s, format!("inspect of image {image:?}"), &v)),
    }
}

/// `POST /containers/create[?name=…]` with the proxy's own body.
async fn post_create(
    call: &Call<'_>,
    name: Option<&str>,
    body: &Value,
) -> Result<(StatusCode, Value), ProxyError> {
    let path = match name {
        Some(n) => format!("{}/containers/create?name={n}", call.prefix),
        None => format!("{}/containers/create", call.prefix),
    };
    let req = Request::post(&path)
        .header(HOST, "docker")
        .header(CONTENT_TYPE, "application/json")
        .body(full(Bytes::from(body.to_string())))
        .map_err(|_| RuleError::BadPath(path.clone()))?;
    let resp = send(call.state, req).await?;
    let status = resp.status();
    let v = read_json(resp.into_body().map_err(box_err).boxed(), MAX_JSON_BODY)
        .await
        .unwrap_or(Value::Null);
    Ok((status, v))
}

/// The create body of `user`'s login container: the image, a working directory of
/// /workspace, a host name that names the user, and a first process that only keeps the
/// container up. GPUs and mounts are the runtime's to add, as for every container.
pub fn session_body(user: &str, image: &str, host: &str) -> Value {
    json!({
        "Image": image,
        "Hostname": hostname_for(user, host),
        "WorkingDir": WORKDIR,
        "Entrypoint": ["/bin/sh", "-c", KEEP_ALIVE],
        "Cmd": [],
        "Env": [format!("LABGPU_USER={user}")],
        "Tty": false,
        "OpenStdin": false,
        "AttachStdin": false,
        "AttachStdout": false,
        "AttachStderr": false,
        "Labels": {},
        "HostConfig": {},
    })
}

/// `<user>-<host>`, as one DNS label (letters, digits and '-', at most 63).
pub fn hostname_for(user: &str, host: &str) -> String {
    let short = host.split('.').next().unwrap_or_default();
    let raw = if short.is_empty() {
        user.to_string()
    } else {
        format!("{user}-{short}")
    };
    let mut label: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(63)
        .collect();
    while label.ends_with('-') {
        label.pop();
    }
    let label = label.trim_start_matches('-').to_string();
    if label.is_empty() {
        "session".to_string()
    } else {
        label
    }
}

/// This host's name (the kernel's, as `hostname` prints it).
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::containers::{rewrite_create, Resolved};
    use crate::proxy::request::user_ctx;

    #[test]
    fn host_names_name_the_user() {
        assert_eq!(hostname_for("alice", "gpu1.lab.example.org"), "alice-gpu1");
        assert_eq!(hostname_for("a_b.c", "Node_7"), "a-b-c-node-7");
        assert_eq!(hostname_for("alice", ""), "alice");
        assert_eq!(hostname_for("-x-", "-"), "x");
        assert_eq!(hostname_for("__", ""), "session");
        let long = "u".repeat(80);
        assert_eq!(hostname_for(&long, "h").len(), 63);
    }

    /// The proxy's own body passes the checks every user create passes, and comes out with
    /// the owner label and the forced runtime like any other.
    #[test]
    fn the_session_body_passes_the_user_rules() {
        let policy = crate::policy::Policy::parse(
            std::path::Path::new("/p.toml"),
            b"version = 1\n[proxy]\n[users.alice]\ngpus = [0]\n",
        )
        .unwrap();
        let ctx = user_ctx(&policy, "alice");
        let mut body = session_body("alice", "lab/base:1", "gpu1");
        rewrite_create(&mut body, &ctx, &Resolved::default(), &|p| p.to_path_buf()).unwrap();
        assert_eq!(body["Labels"]["labgpu.user"], "alice");
        assert_eq!(body["HostConfig"]["Runtime"], "labgpu");
        assert_eq!(body["WorkingDir"], "/workspace");
        assert_eq!(body["Hostname"], "alice-gpu1");
        assert_eq!(body["Entrypoint"][0], "/bin/sh");
        assert!(body["Labels"].get(SESSION_LABEL).is_none());
    }
}
