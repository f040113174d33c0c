//! `labgpu proxy`: the Docker API on a socket that knows who is calling.
//!
//! Users leave the docker group and talk to this socket instead. `identity` turns the peer's
//! SO_PEERCRED into a caller (host root is the admin; anyone else is a policy user or
//! nobody), `rules` decides per request what a policy user may do and how the request is
//! rewritten, `archive` rewrites `docker cp` uploads so that dockerd extracts only what the
//! caller could have made, and `server` moves bytes between the caller and Docker's own
//! socket.
//!
//! The tokio runtime is built here, and only here: the runtime face (`labgpu create …`,
//! started by the shim for every container) stays synchronous and quick to start.

pub mod archive;
pub mod identity;
pub mod rules;
pub mod server;

use std::path::PathBuf;

use anyhow::Context;

use crate::decide::resolve_host;
use crate::policy::{Policy, UserPolicy};
use rules::UserCtx;

#[derive(Debug, Clone)]
pub struct Options {
    pub listen: PathBuf,
    pub upstream: PathBuf,
    pub policy: PathBuf,
}

/// Runs the proxy until SIGTERM or SIGINT; the process's exit status.
pub fn run(opts: Options) -> anyhow::Result<i32> {
    crate::log::init_stderr();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the proxy's async runtime")?;
    rt.block_on(server::serve(opts))?;
    Ok(0)
}

/// What the rules need to know about policy user `name`.
pub fn user_ctx(policy: &Policy, name: &str) -> UserCtx {
    let user = policy.user(name);
    let d = &policy.defaults;
    let flag =
        |f: fn(&UserPolicy) -> Option<bool>, default: bool| user.and_then(f).unwrap_or(default);
    let bind_allow = d
        .bind_allow
        .iter()
        .chain(user.map(|u| &u.bind_allow).into_iter().flatten())
        .map(|p| p.as_path())
        .chain(
            user.map(|u| &u.mounts)
                .into_iter()
                .flatten()
                .map(|m| m.source.as_path()),
        )
        .map(resolve_host)
        .collect();
    let devices = d
        .devices
        .iter()
        .chain(user.map(|u| &u.devices).into_iter().flatten())
        .map(|p| resolve_host(p.as_path()))
        .collect();
    UserCtx {
        name: name.to_string(),
        owner_label: policy.runtime.owner_label.clone(),
        runtime: policy.proxy.runtime.clone(),
        allow_privileged: flag(|u| u.allow_privileged, d.allow_privileged),
        allow_host_namespaces: flag(|u| u.allow_host_namespaces, d.allow_host_namespaces),
        allow_host_network: flag(|u| u.allow_host_network, d.allow_host_network),
        allow_unconfined: flag(|u| u.allow_unconfined, d.allow_unconfined),
        bind_allow,
        devices,
        gpu_dev_root: resolve_host(policy.gpus.dev_root.as_path()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn user_ctx_merges_defaults_and_user() {
        let p = Policy::parse(
            Path::new("/p.toml"),
            b"version = 1\n[runtime]\nowner_label = \"owner\"\n[defaults]\nbind_allow = [\"/srv\"]\nallow_host_network = true\n[users.a]\nbind_allow = [\"/scratch/a\"]\nallow_host_network = false\nallow_privileged = true\nmounts = [{ source = \"/home/a\", destination = \"/w\" }]\n",
        )
        .unwrap();
        let c = user_ctx(&p, "a");
        assert_eq!(c.owner_label, "owner");
        assert_eq!(c.runtime, "labgpu");
        assert!(c.allow_privileged && !c.allow_host_network);
        assert_eq!(
            c.bind_allow,
            [
                PathBuf::from("/srv"),
                PathBuf::from("/scratch/a"),
                PathBuf::from("/home/a")
            ]
        );
    }
}
