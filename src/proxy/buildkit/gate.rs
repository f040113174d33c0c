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
    let pid = if comm(&state.proc_root, pid).as_deref() == Some("dockerd") {
        pid
    } else {
        // Socket activation (Debian's docker.socket): the peer credentials are those of
        // whoever listened, systemd; dockerd is the other holder of the listening socket.
        // Socket activation: the peer is systemd, which never has the variable. Without a
        // dockerd holding the socket the peer itself is asked (and refused unless it has it).
        socket_holder(&state.proc_root, &state.upstream, "dockerd").unwrap_or(pid)
    };
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

fn comm(proc_root: &Path, pid: i32) -> Option<String> {
    let c = std::fs::read_to_string(proc_root.join(pid.to_string()).join("comm")).ok()?;
    Some(c.trim_end().to_string())
}

/// The process named `name` that holds the listening unix socket at `path` (the kernel's
/// /proc/net/unix names it; the holder's fd links to its inode).
fn socket_holder(proc_root: &Path, path: &Path, name: &str) -> Option<i32> {
    let table = std::fs::read_to_string(proc_root.join("net/unix")).ok()?;
    // The kernel lists the path as bound (/run/docker.sock, not /var/run/docker.sock).
    let real = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let (path, real) = (path.to_str()?, real.to_str()?);
    let inodes: Vec<String> = table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            (cols.len() >= 8 && (cols[7] == path || cols[7] == real))
                .then(|| format!("socket:[{}]", cols[6]))
        })
        .collect();
    if inodes.is_empty() {
        return None;
    }
    for entry in std::fs::read_dir(proc_root).ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if comm(proc_root, pid).as_deref() != Some(name) {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        let holds = fds.flatten().any(|fd| {
            std::fs::read_link(fd.path())
                .is_ok_and(|l| inodes.iter().any(|i| l.as_os_str() == i.as_str()))
        });
        if holds {
            return Some(pid);
        }
    }
    None
}

fn api_version(v: &str) -> (u64, u64) {
    let mut parts = v.split('.').map(|p| p.parse::<u64>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_socket_activated_dockerd_is_found_by_its_listening_socket() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        std::fs::create_dir_all(p.join("net")).unwrap();
        std::fs::write(
            p.join("net/unix"),
            "Num       RefCount Protocol Flags    Type St Inode Path\n\
             0000000000000000: 00000003 00000000 00010000 0001 01 4242 /run/docker.sock\n\
             0000000000000000: 00000003 00000000 00010000 0001 01 77 /run/other.sock\n",
        )
        .unwrap();
        for (pid, name, inode) in [
            (1, "systemd", 4242),
            (30, "containerd", 77),
            (40, "dockerd", 4242),
        ] {
            let fd = p.join(format!("{pid}/fd"));
            std::fs::create_dir_all(&fd).unwrap();
            std::fs::write(p.join(format!("{pid}/comm")), format!("{name}\n")).unwrap();
            std::os::unix::fs::symlink(format!("socket:[{inode}]"), fd.join("3")).unwrap();
        }
        let sock = Path::new("/run/docker.sock");
        assert_eq!(socket_holder(p, sock, "dockerd"), Some(40));
        assert_eq!(
            socket_holder(p, Path::new("/run/other.sock"), "dockerd"),
            None
        );
        assert_eq!(comm(p, 1).as_deref(), Some("systemd"));
    }

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
