//! The socket side: accept, identify the peer once per connection, and per request load the
//! policy, classify the path (`routes`) and hand it to its resource's rules. Each request goes
//! to Docker over a fresh upstream connection (so an upgraded stream or a long `logs -f` never
//! blocks the caller's next request).

use std::convert::Infallible;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::service::service_fn;
use hyper::{Method, Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{UnixListener, UnixStream};
use tracing::{info, warn};

use super::body::{box_err, drain_upload, full, Body, SharedBody};
use super::error::{ProxyError, RuleError};
use super::identity::{self, Caller};
use super::limits::{self, Connections, IdleTimeout, PolicyCache};
use super::observe::{self, Refusals};
use super::request::{check_content_types, user_ctx, UserCtx};
use super::routes::{self, Route};
use super::upstream::forward;
use super::{buildkit, containers, exec, images, networks, session, system, volumes, Options};
use crate::policy::Policy;

pub struct State {
    pub upstream: PathBuf,
    pub policy: PathBuf,
    pub proc_root: PathBuf,
    pub policies: Arc<PolicyCache>,
    /// Callers' passwd names, for a few seconds while /etc/passwd is unchanged.
    pub names: Arc<identity::NameCache>,
    pub conns: Arc<Connections>,
    pub refusals: Arc<Refusals>,
    /// The last look at the host, for `/labgpu/top`.
    pub views: observe::ViewCache,
    /// runc state roots the metrics' verify audit scans.
    pub roots: Vec<PathBuf>,
    /// Whose BuildKit builds and sessions are whose.
    pub builds: Arc<super::buildkit::builds::Builds>,
}

pub async fn serve(opts: Options) -> anyhow::Result<()> {
    let listener = listen(&opts)?;
    let metrics = match metrics_addr(&opts)? {
        Some(addr) => Some(observe::bind(&addr)?),
        None => None,
    };
    let state = Arc::new(State {
        upstream: opts.upstream.clone(),
        policy: opts.policy.clone(),
        proc_root: PathBuf::from("/proc"),
        policies: Arc::new(PolicyCache::default()),
        names: Arc::default(),
        conns: Arc::new(Connections::default()),
        refusals: Arc::new(Refusals::default()),
        views: observe::ViewCache::default(),
        roots: opts.roots.clone(),
        builds: Arc::default(),
    });
    if let Some((l, addr)) = metrics {
        tokio::spawn(observe::serve_metrics(state.clone(), l, addr));
    }
    info!(
        listen = %opts.listen.display(),
        upstream = %opts.upstream.display(),
        policy = %opts.policy.display(),
        "proxy listening"
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::spawn(prune_records(opts.policy.clone()));
    tokio::spawn(super::cgroups::follow_policy(
        opts.policy.clone(),
        state.policies.clone(),
    ));
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    tokio::spawn(connection(state.clone(), stream));
                }
                Err(e) => {
                    // Out of fds or similar: keep serving the connections we have.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    let _ = std::fs::remove_file(&opts.listen);
    info!("proxy stopped");
    Ok(())
}

/// `--metrics`, else `[proxy] metrics`, else none.
fn metrics_addr(opts: &Options) -> anyhow::Result<Option<String>> {
    if opts.metrics.is_some() {
        return Ok(opts.metrics.clone());
    }
    Ok(Policy::load(&opts.policy)?.proxy.and_then(|p| p.metrics))
}

/// How often the records of containers Docker no longer has are removed.
const PRUNE_EVERY: Duration = Duration::from_secs(600);

/// Removes, now and every `PRUNE_EVERY`, the records of containers removed without the proxy
/// (`--rm`, `docker container prune`, the administrator's `docker rm`).
async fn prune_records(policy: PathBuf) {
    let mut tick = tokio::time::interval(PRUNE_EVERY);
    loop {
        tick.tick().await;
        let policy = policy.clone();
        let pruned = tokio::task::spawn_blocking(move || {
            let policy = Policy::load(&policy).ok()?;
            let root =
                crate::owner::docker_root(policy.runtime.docker_root.as_ref().map(|r| r.as_path()));
            Some(crate::records::prune(
                policy.proxy_or_default().state_dir.as_path(),
                &root,
            ))
        })
        .await;
        if let Ok(Some(n)) = pruned.map(|n| n.filter(|n| *n > 0)) {
            info!(records = n, "pruned the records of removed containers");
        }
    }
}

/// Binds the socket, replacing a stale one but never a live proxy or a non-socket file,
/// then applies the policy's [proxy] group and mode.
fn listen(opts: &Options) -> anyhow::Result<UnixListener> {
    let policy = Policy::load(&opts.policy)?;
    let Some(proxy) = &policy.proxy else {
        anyhow::bail!(
            "{} has no [proxy] table: add one (with it the runtime trusts an owner only on \
             containers the proxy created, so users cannot forge the owner label)",
            opts.policy.display()
        );
    };
    let path = &opts.listen;
    if let Some(dir) = path.parent() {
        if !dir.exists() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating the socket directory {}", dir.display()))?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
        }
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                anyhow::bail!("something is already listening on {}", path.display());
            }
            std::fs::remove_file(path)
                .with_context(|| format!("removing the stale socket {}", path.display()))?;
        }
        Ok(_) => anyhow::bail!("{} exists and is not a socket", path.display()),
        Err(_) => {}
    }
    let listener =
        UnixListener::bind(path).with_context(|| format!("listening on {}", path.display()))?;
    let mode = proxy.mode();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting mode {mode:o} on {}", path.display()))?;
    if let Some(group) = &proxy.socket_group {
        let gid = match group.parse::<u32>() {
            Ok(g) => nix::unistd::Gid::from_raw(g),
            Err(_) => nix::unistd::Group::from_name(group)
                .ok()
                .flatten()
                .map(|g| g.gid)
                .with_context(|| {
                    format!("[proxy] socket_group {group:?} is not a group on this host")
                })?,
        };
        nix::unistd::chown(path, None, Some(gid))
            .with_context(|| format!("giving {} to group {group:?}", path.display()))?;
    }
    Ok(listener)
}

async fn connection(state: Arc<State>, stream: UnixStream) {
    let cred = match stream.peer_cred() {
        Ok(cred) => cred,
        Err(e) => {
            warn!(error = %e, "SO_PEERCRED failed; closing the connection");
            return;
        }
    };
    let uid = cred.uid();
    let (caller, _slot) = if identity::is_admin(uid, cred.pid(), &state.proc_root) {
        (Caller::Admin, None)
    } else {
        // Now, before the peer's pid could be reused: its Slurm job (one small /proc read).
        let job = crate::slurm::cgroup::job_of(&state.proc_root, cred.pid(), uid);
        match admit(&state, uid, job).await {
            Ok(admitted) => admitted,
            Err((reason, message)) => {
                state.refusals.count(reason);
                // Cheap: one non-blocking write, then the descriptor is gone.
                let _ = stream.try_write(&limits::refusal_bytes(&message));
                return;
            }
        }
    };
    let caller = Arc::new(caller);
    let service = service_fn(move |req| {
        let state = state.clone();
        let caller = caller.clone();
        async move { Ok::<_, Infallible>(handle(state, caller, req).await) }
    });
    // half_close stays off: a client that goes away mid-request (`docker run -d` leaves its
    // `wait` behind) must end the request, and with it the upstream connection. Half-closes
    // that matter, stdin EOF on attach and exec, happen after the upgrade, where
    // copy_bidirectional carries them.
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits::HEADER_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    if let Err(e) = conn.await {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

/// Counts a non-administrator's connection against their limit: first the policy users'
/// limit, before anything costs (a flood of connections is refused here, at accept), then,
/// once the uid is known not to be a policy user, the small one for strangers.
async fn admit(
    state: &State,
    uid: u32,
    job: crate::slurm::CgroupJob,
) -> Result<(Caller, Option<limits::Slot>), (&'static str, String)> {
    let policy = state.policies.load(&state.policy).ok();
    let proxy = policy
        .as_ref()
        .map(|p| p.proxy_or_default())
        .unwrap_or_default();
    let slot = state
        .conns
        .open(uid, proxy.max_connections_per_user)
        .map_err(|n| {
            let message = format!(
                "uid {uid} has {n} connections open, the most {} allows",
                "[proxy] max_connections_per_user"
            );
            ("connection_limit", message)
        })?;
    let passwd = match state.names.get(uid) {
        Some(name) => name,
        // NSS may be LDAP or SSSD: off the async workers.
        None => {
            let names = state.names.clone();
            tokio::task::spawn_blocking(move || names.lookup(uid, identity::passwd_name))
                .await
                .ok()
                .flatten()
        }
    };
    let known = policy
        .as_ref()
        .is_some_and(|p| p.user_for_uid(uid, passwd.as_deref()).is_some());
    if !known && state.conns.count(uid) > proxy.max_connections_unknown {
        let message = format!(
            "uid {uid} is not a user in the policy and has {} connections open ([proxy] max_connections_unknown)",
            state.conns.count(uid) - 1
        );
        return Err(("unknown_user_connections", message));
    }
    Ok((Caller::Uid { uid, passwd, job }, Some(slot)))
}

async fn handle(state: Arc<State>, caller: Arc<Caller>, req: Request<Incoming>) -> Response<Body> {
    let method = req.method().clone();
    let uri = req.uri().clone();
    let (parts, body) = req.into_parts();
    let slot = Arc::new(Mutex::new(Some(body)));
    let body = IdleTimeout::new(SharedBody(slot.clone()).map_err(box_err), limits::BODY_IDLE);
    let req = Request::from_parts(parts, body.boxed());
    match route(&state, &caller, req).await {
        Ok(resp) => resp,
        Err(e) => {
            warn!(caller = %caller.describe(), %method, %uri, "refused: {e}");
            state.refusals.count(e.reason());
            let unread = slot.lock().unwrap_or_else(|p| p.into_inner()).take();
            // An upload of any size (docker cp, import, load, a build context), which the
            // client means to send in full: answer now and read the rest meanwhile.
            if let Some(body) = unread {
                tokio::spawn(drain_upload(body));
            }
            error_response(&e)
        }
    }
}

/// Docker's error shape: the CLI prints `Error response from daemon: <message>`.
fn error_response(e: &ProxyError) -> Response<Body> {
    let body = serde_json::json!({ "message": format!("labgpu proxy: {e}") }).to_string();
    let mut resp = Response::new(full(body.into()));
    *resp.status_mut() = e.status();
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// One policy user's request, as the resources' rules see it.
pub struct Call<'a> {
    pub state: &'a State,
    pub policy: &'a Policy,
    pub ctx: &'a UserCtx,
    /// The caller's host uid (SO_PEERCRED).
    pub uid: u32,
    /// The Slurm job the caller's process runs in (its cgroups, at accept).
    pub job: crate::slurm::CgroupJob,
    /// The request path as sent, version prefix included (`/v1.41/containers/json`).
    pub path: String,
    /// The version prefix alone (`/v1.41`, or empty).
    pub prefix: String,
    pub query: Option<String>,
}

impl Call<'_> {
    /// The largest JSON request body this caller's requests may have.
    pub fn max_body(&self) -> usize {
        self.policy
            .proxy
            .as_ref()
            .map_or(1 << 20, |p| p.max_body_bytes)
    }
}

async fn route(
    state: &State,
    caller: &Caller,
    req: Request<Body>,
) -> Result<Response<Body>, ProxyError> {
    if *caller == Caller::Admin {
        let path = routes::strip_version(req.uri().path());
        // labgpu's own endpoints are not Docker's: not forwarded, for root either.
        if path.starts_with("/labgpu/") {
            return match routes::classify(req.method(), req.uri().path())? {
                Route::Top => observe::top(state, None).await,
                _ => Err(RuleError::NotAllowed {
                    method: req.method().to_string(),
                    path: path.to_string(),
                }
                .into()),
            };
        }
        if req.method() == Method::POST && path == "/containers/create" {
            return containers::admin_create(state, req).await;
        }
        return forward(state, req).await;
    }
    // Per request, so an edit to the policy applies to the next request, not the next login
    // (parsed only when it changed). The context is pure: a create resolves the policy's
    // host paths itself, off the async workers.
    let policy = state.policies.load(&state.policy)?;
    let name = identity::policy_user(&policy, caller)?.to_string();
    let Caller::Uid { uid, job, .. } = caller else {
        unreachable!("the administrator was forwarded above");
    };
    let (uid, job) = (*uid, job.clone());
    let ctx = user_ctx(&policy, &name);
    check_content_types(
        req.headers()
            .get_all(CONTENT_TYPE)
            .iter()
            .map(|v| v.to_str().unwrap_or("invalid")),
    )?;
    // Go before 1.17 (dockerd up to about 20.10.14) also splits a query at ';': what this
    // proxy reads as one value it would read as two parameters. No client sends a raw ';'.
    if req.uri().query().is_some_and(|q| q.contains(';')) {
        return Err(RuleError::BadQuery("a raw ';' (escape it as %3B)".into()).into());
    }
    let path = req.uri().path().to_string();
    let call = Call {
        state,
        policy: &policy,
        ctx: &ctx,
        uid,
        job,
        prefix: path[..path.len() - routes::strip_version(&path).len()].to_string(),
        query: req.uri().query().map(str::to_string),
        path,
    };
    match routes::classify(req.method(), &call.path)? {
        Route::Forward => forward(state, req).await,
        Route::Listing(what) => system::filtered(&call, what, req).await,
        Route::DiskUsage => system::disk_usage(&call, req).await,
        Route::Container { id, rest } => containers::by_id(&call, &id, &rest, req).await,
        Route::Create => containers::create(&call, req).await,
        Route::Exec { id } => exec::by_id(&call, &id, req).await,
        Route::Commit => images::commit(&call, req).await,
        Route::Build => images::build(&call, req).await,
        Route::BuildKitSession => buildkit::session(&call, req).await,
        Route::BuildKit => buildkit::grpc(&call, req).await,
        Route::Images(r) => images::handle(&call, r, req).await,
        Route::Volumes(r) => volumes::handle(&call, r, req).await,
        Route::Networks(r) => networks::handle(&call, r, req).await,
        Route::Top => observe::top(state, Some(name)).await,
        Route::Session => session::ensure(&call).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;
    use std::path::Path;

    fn opts(dir: &Path, policy: &str) -> Options {
        let p = dir.join("policy.toml");
        std::fs::write(&p, policy).unwrap();
        Options {
            listen: dir.join("run/labgpu/docker.sock"),
            upstream: dir.join("docker.sock"),
            policy: p,
            metrics: None,
            roots: Vec::new(),
        }
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn socket_gets_policy_mode_and_group() {
        let dir = tempfile::tempdir().unwrap();
        let gid = nix::unistd::getgid().as_raw();
        let o = opts(
            dir.path(),
            &format!("version = 1\n[proxy]\nsocket_group = \"{gid}\"\nsocket_mode = \"0640\"\n"),
        );
        rt().block_on(async {
            let _l = listen(&o).unwrap();
            let m = std::fs::metadata(&o.listen).unwrap();
            assert_eq!(m.mode() & 0o777, 0o640);
            assert_eq!(m.gid(), gid);
            let parent = std::fs::metadata(o.listen.parent().unwrap()).unwrap();
            assert_eq!(parent.mode() & 0o777, 0o755);
        });
    }

    #[test]
    fn stale_socket_is_replaced_live_one_and_files_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let o = opts(dir.path(), "version = 1\n");
        let err = rt().block_on(async { listen(&o).unwrap_err().to_string() });
        assert!(err.contains("has no [proxy] table"), "{err}");
        let o = opts(dir.path(), "version = 1\n[proxy]\n");
        rt().block_on(async {
            let live = listen(&o).unwrap();
            let err = listen(&o).unwrap_err().to_string();
            assert!(err.contains("already listening"), "{err}");
            drop(live);
            // The file of a dead listener is still there: a restart replaces it.
            assert!(o.listen.exists());
            let _l = listen(&o).unwrap();
            assert_eq!(std::fs::metadata(&o.listen).unwrap().mode() & 0o777, 0o666);
        });
        std::fs::remove_file(&o.listen).unwrap();
        std::fs::write(&o.listen, "not a socket").unwrap();
        let err = rt().block_on(async { listen(&o).unwrap_err().to_string() });
        assert!(err.contains("is not a socket"), "{err}");
    }

    #[test]
    fn unknown_group_and_broken_policy_stop_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let o = opts(
            dir.path(),
            "version = 1\n[proxy]\nsocket_group = \"no-such-group-xyz\"\n",
        );
        let err = rt().block_on(async { format!("{:#}", listen(&o).unwrap_err()) });
        assert!(err.contains("no-such-group-xyz"), "{err}");
        let o = opts(dir.path(), "version = 1\n[proxy]\nsocket_mode = \"0999\"\n");
        let err = rt().block_on(async { format!("{:#}", listen(&o).unwrap_err()) });
        assert!(err.contains("line 3"), "{err}");
    }
}
