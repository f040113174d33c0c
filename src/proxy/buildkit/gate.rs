//! Whether BuildKit builds may run at all: only where dockerd runs BuildKit's `RUN` steps
//! with labgpu. dockerd 26 and later take the runc BuildKit runs from
//! `DOCKER_BUILDKIT_RUNC_COMMAND` (which `labgpu setup docker` sets in a systemd drop-in);
//! older dockerds run the first `runc` on their `PATH`, which labgpu does not replace, so
//! their BuildKit stays refused. The proxy reads the variable from the environment of the
//! dockerd it talks to (the peer of its upstream socket; the proxy runs as root), so a
//! restart without the drop-in closes `/grpc` again.

use std::path::{Path, PathBuf};

use tokio::net::UnixStream;

use crate::proxy::error::ProxyError;
use crate::proxy::server::State;
use crate::proxy::upstream::get_json;

pub const RUNC_VAR: &str = "DOCKER_BUILDKIT_RUNC_COMMAND";
/// Docker 26.0's API version, the first whose dockerd reads `RUNC_VAR`.
const FIRST_API: (u64, u64) = (1, 45);

pub async fn check(state: &State) -> Result<(), ProxyError> {
    let (_, version) = get_json(state, "/version").await?;
    let api = version["ApiVersion"].as_str().unwrap_or_default();
    if api_version(api) < FIRST_API {
        return Err(ProxyError::BuildKitOldDocker {
            version: version["Version"].as_str().unwrap_or("?").to_string(),
        });
    }
    let stream = UnixStream::connect(&state.upstream)
        .await
        .map_err(|source| ProxyError::UpstreamConnect {
            path: state.upstream.clone(),
            cause: source,
        })?;
    let pid = stream.peer_cred().ok().and_then(|c| c.pid()).unwrap_or(0);
    drop(stream);
    let found = dockerd_runc(&state.proc_root, pid);
    let me = std::env::current_exe().and_then(std::fs::canonicalize).ok();
    match (&found, &me) {
        (Some(runc), Some(me)) if std::fs::canonicalize(runc).ok().as_ref() == Some(me) => Ok(()),
        _ => Err(ProxyError::BuildKitRunc {
            found: found.map_or_else(|| "unset".into(), |p| p.display().to_string()),
            labgpu: me.unwrap_or_default(),
        }),
    }
}

/// `DOCKER_BUILDKIT_RUNC_COMMAND` in the environment of process `pid`.
fn dockerd_runc(proc_root: &Path, pid: i32) -> Option<PathBuf> {
    if pid <= 0 {
        return None;
    }
    let environ = std::fs::read(proc_root.join(pid.to_string()).join("environ")).ok()?;
    let prefix = format!("{RUNC_VAR}=");
    environ
        .split(|b| *b == 0)
        .filter_map(|e| e.strip_prefix(prefix.as_bytes()))
        .next_back()
        .map(|v| PathBuf::from(String::from_utf8_lossy(v).into_owned()))
        .filter(|p| p.is_absolute())
}

fn api_version(v: &str) -> (u64, u64) {
    let mut parts = v.split('.').map(|p| p.parse::<u64>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_versions_compare_as_numbers() {
        assert!(api_version("1.41") < FIRST_API);
        assert!(api_version("1.45") >= FIRST_API);
        assert!(api_version("1.100") >= FIRST_API);
        assert!(api_version("garbage") < FIRST_API);
    }

    #[test]
    fn the_variable_is_read_from_the_process_environment() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("42")).unwrap();
        std::fs::write(
            d.path().join("42/environ"),
            b"PATH=/usr/bin\0DOCKER_BUILDKIT_RUNC_COMMAND=/usr/bin/labgpu\0HOME=/root\0",
        )
        .unwrap();
        assert_eq!(
            dockerd_runc(d.path(), 42),
            Some(PathBuf::from("/usr/bin/labgpu"))
        );
        std::fs::create_dir(d.path().join("43")).unwrap();
        std::fs::write(
            d.path().join("43/environ"),
            b"DOCKER_BUILDKIT_RUNC_COMMAND=labgpu\0",
        )
        .unwrap();
        assert_eq!(
            dockerd_runc(d.path(), 43),
            None,
            "a relative path is looked up on PATH"
        );
        assert_eq!(dockerd_runc(d.path(), 44), None);
        assert_eq!(dockerd_runc(d.path(), 0), None);
    }
}
