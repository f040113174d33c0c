//! The few Docker API calls the admin commands make, synchronously over the unix socket
//! (HTTP/1.0, so Docker answers with a plain body and closes). The runtime face never calls
//! Docker: inside `create` dockerd holds the container's lock.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

/// How long an admin command waits for Docker before saying it did not answer.
const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum DockerApiError {
    #[error("cannot talk to docker at {socket}: {cause}")]
    Io {
        socket: PathBuf,
        cause: std::io::Error,
    },
    #[error("docker at {socket} answered {path} with {status}: {body}")]
    Status {
        socket: PathBuf,
        path: String,
        status: u16,
        body: String,
    },
    #[error("docker at {socket} sent a malformed answer to {path}: {reason}")]
    Malformed {
        socket: PathBuf,
        path: String,
        reason: String,
    },
}

/// How much of an error answer is kept: Docker's messages (a runtime's refusal included) fit.
const MAX_ERROR_BODY: usize = 4096;

impl DockerApiError {
    /// Docker's own sentence from an error answer (`{"message": "…"}`), if there is one.
    pub fn daemon_message(&self) -> Option<String> {
        let DockerApiError::Status { body, .. } = self else {
            return None;
        };
        let v: Value = serde_json::from_str(body).ok()?;
        Some(v.get("message")?.as_str()?.trim().to_string())
    }

    /// Whether nothing listens on the socket (missing, or refusing connections).
    pub fn is_unreachable(&self) -> bool {
        matches!(self, DockerApiError::Io { cause, .. } if matches!(
            cause.kind(),
            std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
        ))
    }
}

/// `GET path` as JSON.
pub fn get_json(socket: &Path, path: &str) -> Result<Value, DockerApiError> {
    request(socket, "GET", path)
}

/// `method path` with no body; the JSON answer (`Null` for an empty one).
pub fn request(socket: &Path, method: &str, path: &str) -> Result<Value, DockerApiError> {
    request_within(socket, method, path, TIMEOUT)
}

/// `request`, waiting up to `timeout` for each read and write (a `stop` takes as long as the
/// container's stop timeout).
pub fn request_within(
    socket: &Path,
    method: &str,
    path: &str,
    timeout: Duration,
) -> Result<Value, DockerApiError> {
    let io = |cause| DockerApiError::Io {
        socket: socket.to_path_buf(),
        cause,
    };
    let malformed = |reason: &str| DockerApiError::Malformed {
        socket: socket.to_path_buf(),
        path: path.to_string(),
        reason: reason.to_string(),
    };
    let mut stream = UnixStream::connect(socket).map_err(io)?;
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    // One write: `write!` on the socket would send each piece of the format on its own.
    let head = format!("{method} {path} HTTP/1.0\r\nHost: docker\r\nContent-Length: 0\r\n\r\n");
    stream.write_all(head.as_bytes()).map_err(io)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).map_err(io)?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| malformed("no end of headers"))?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let body = &raw[split + 4..];
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| malformed("no status"))?;
    if !(200..300).contains(&status) {
        return Err(DockerApiError::Status {
            socket: socket.to_path_buf(),
            path: path.to_string(),
            status,
            body: String::from_utf8_lossy(body)
                .trim()
                .chars()
                .take(MAX_ERROR_BODY)
                .collect(),
        });
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Null);
    }
    serde_json::from_slice(body).map_err(|e| malformed(&e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    fn serve_once(answer: &'static str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("docker.sock");
        let listener = UnixListener::bind(&sock).unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            // The whole request, or the client's write races our close (EPIPE).
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => req.extend_from_slice(&buf[..n]),
                }
            }
            s.write_all(answer.as_bytes()).unwrap();
        });
        (dir, sock)
    }

    #[test]
    fn json_answers_and_errors() {
        let (_d, sock) = serve_once(
            "HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{\"DockerRootDir\":\"/var/lib/docker\"}\n",
        );
        let v = get_json(&sock, "/info").unwrap();
        assert_eq!(v["DockerRootDir"], "/var/lib/docker");
        let (_d, sock) = serve_once("HTTP/1.0 404 Not Found\r\n\r\n{\"message\":\"no such\"}");
        let e = get_json(&sock, "/containers/x/json").unwrap_err();
        assert!(e.to_string().contains("404"), "{e}");
        assert_eq!(e.daemon_message().as_deref(), Some("no such"));
        assert!(!e.is_unreachable());
        let e = get_json(Path::new("/nonexistent.sock"), "/info").unwrap_err();
        assert!(e.is_unreachable(), "{e}");
        assert_eq!(e.daemon_message(), None);
    }
}
