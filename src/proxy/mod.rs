//! `labgpu proxy`: the Docker API on a socket that knows who is calling.
//!
//! Users leave the docker group and talk to this socket instead. `identity` turns the peer's
//! SO_PEERCRED into a caller (host root is the admin; anyone else is a policy user or
//! nobody); `routes` is the table of API paths a user may call; one module per API resource
//! (`containers`, `exec`, `images`, `volumes`, `networks`, `system`) decides what a policy
//! user may do there and how the request is rewritten, `archive` rewrites `docker cp`
//! uploads so that dockerd extracts only what the caller could have made; `server` accepts
//! and dispatches, and `upstream` moves bytes to and from Docker's own socket. labgpu's own
//! endpoints: `observe` answers the read-only `/labgpu/top` and serves the Prometheus
//! metrics; `session` makes the login container `labgpu shell` enters.
//!
//! The tokio runtime is built here, and only here: the runtime face (`labgpu create …`,
//! started by the shim for every container) stays synchronous and quick to start.

pub mod archive;
pub mod body;
pub mod buildkit;
pub mod cgroups;
pub mod containers;
pub mod error;
pub mod exec;
pub mod identity;
pub mod images;
pub mod limits;
pub mod networks;
pub mod observe;
pub mod request;
pub mod routes;
pub mod server;
pub mod session;
pub mod stream;
pub mod system;
pub mod upstream;
pub mod volumes;

use std::path::PathBuf;

use anyhow::Context;

#[derive(Debug, Clone)]
pub struct Options {
    pub listen: PathBuf,
    pub upstream: PathBuf,
    pub policy: PathBuf,
    /// Where to serve Prometheus metrics (`--metrics`); `[proxy] metrics` when `None`.
    pub metrics: Option<String>,
    /// runc state roots the metrics' verify audit scans.
    pub roots: Vec<PathBuf>,
}

/// How many threads run the proxy's async work, unless `LABGPU_PROXY_WORKERS` says: 0 runs
/// everything on the main thread (tokio's current-thread runtime).
const WORKERS: usize = 0;

/// Runs the proxy until SIGTERM or SIGINT; the process's exit status.
pub fn run(opts: Options) -> anyhow::Result<i32> {
    crate::log::init_stderr();
    let workers = std::env::var("LABGPU_PROXY_WORKERS")
        .ok()
        .and_then(|w| w.parse::<usize>().ok())
        .unwrap_or(WORKERS);
    let mut builder = match workers {
        0 => tokio::runtime::Builder::new_current_thread(),
        n => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n);
            b
        }
    };
    let rt = builder
        .enable_all()
        .build()
        .context("starting the proxy's async runtime")?;
    rt.block_on(server::serve(opts))?;
    Ok(0)
}
