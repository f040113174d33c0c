//! `labgpu shell`, installed as `/usr/bin/labgpu-shell`: a lab user's login shell.
//!
//! `login` or `sshd` runs it as the user (`-labgpu-shell` for a login, `labgpu-shell -c CMD`
//! for `ssh host CMD`, scp, rsync and sftp). It never gives a shell on the host: it asks the
//! labgpu proxy for the user's login container (`POST /labgpu/session`, found by the proxy's
//! record or made from the policy's `session` settings), starts it if it is stopped, and
//! enters it with the Docker CLI over the proxy socket, where the user's identity and the
//! policy apply as to any other request (`enter`). Any failure is one sentence on stderr
//! and a non-zero exit.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::cli_args::DEFAULT_PROXY_SOCKET;
use crate::docker_api::{self, DockerApiError};

mod enter;

/// The name the login shell is installed under; `main` dispatches on it.
pub const SHELL_NAME: &str = "labgpu-shell";
/// Where the packaged login shell lives (what `labgpu user add --login` sets).
pub const SHELL_PATH: &str = "/usr/bin/labgpu-shell";
/// Names another proxy socket (sshd's `SetEnv`, tests); the default is the packaged one.
pub const SOCKET_ENV: &str = "LABGPU_PROXY_SOCKET";

/// Exit status for a login that could not be opened (no shell ran).
const EXIT_REFUSED: i32 = 1;
/// Exit status for arguments a login shell does not take.
const EXIT_USAGE: i32 = 2;

/// A container start runs the runtime (and possibly NVML): longer than the usual answer.
const START_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, thiserror::Error)]
pub enum ShellError {
    #[error(
        "root is the administrator, not a lab user: labgpu-shell is for the users in the policy"
    )]
    Root,
    #[error("cannot reach the labgpu proxy at {socket}: it is not running; ask the administrator to start it (systemctl start labgpu-proxy)")]
    ProxyDown { socket: PathBuf },
    #[error("{0}")]
    Refused(String),
    #[error("the labgpu proxy at {socket} did not answer: {reason}")]
    NoAnswer { socket: PathBuf, reason: String },
    #[error("your login container {id} did not start: {reason}")]
    Start { id: String, reason: String },
    #[error("the docker client is not installed (looked for {looked}); ask the administrator to install docker-cli or docker.io")]
    NoDockerCli { looked: String },
    #[error("cannot run the docker client {path}: {cause}")]
    Spawn {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{0}")]
    Usage(String),
}

/// What the login asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// A login: an interactive shell in the container.
    Interactive,
    /// `-c CMD [ARG0 ARGS…]`: CMD run by the container's shell, as `sh -c` would.
    Command(Vec<OsString>),
}

/// Whether `argv0` names the login shell (`labgpu-shell`, `-labgpu-shell`, a path to it).
pub fn is_login_shell_name(argv0: &OsStr) -> bool {
    let base = Path::new(argv0)
        .file_name()
        .map_or(&b""[..], |n| n.as_bytes());
    let base = base.strip_prefix(b"-").unwrap_or(base);
    base == SHELL_NAME.as_bytes()
}

/// The login shell's own argument parsing: what `login`, `sshd`, `su` and editors pass to
/// a shell. `-l`, `--login` and `-i` are accepted and change nothing (a login is always a
/// login shell in the container).
pub fn parse_args(args: &[OsString]) -> Result<Mode, ShellError> {
    let mut i = 0;
    while i < args.len() {
        match args[i].as_bytes() {
            b"-l" | b"--login" | b"-i" | b"-li" | b"-il" => i += 1,
            b"-c" => {
                let rest = &args[i + 1..];
                if rest.is_empty() {
                    return Err(ShellError::Usage("-c needs a command".into()));
                }
                return Ok(Mode::Command(rest.to_vec()));
            }
            other => {
                return Err(ShellError::Usage(format!(
                    "{:?} is not an option of labgpu-shell (it takes -c COMMAND, or nothing for a login)",
                    String::from_utf8_lossy(other)
                )))
            }
        }
    }
    Ok(Mode::Interactive)
}

/// `labgpu-shell ARGS…` (argv[0] dispatch); the process's exit status.
pub fn main(argv: Vec<OsString>) -> i32 {
    match parse_args(argv.get(1..).unwrap_or_default()) {
        Ok(mode) => run(mode, socket_from_env()),
        Err(e) => {
            eprintln!("labgpu-shell: {e}");
            EXIT_USAGE
        }
    }
}

/// The proxy socket: `LABGPU_PROXY_SOCKET`, else the packaged default.
pub fn socket_from_env() -> PathBuf {
    match std::env::var_os(SOCKET_ENV) {
        Some(s) if !s.is_empty() => PathBuf::from(s),
        _ => PathBuf::from(DEFAULT_PROXY_SOCKET),
    }
}

/// Opens the login; the exit status of what ran in the container, or 1 with one sentence on
/// stderr when none could run.
pub fn run(mode: Mode, socket: PathBuf) -> i32 {
    match open(&socket).and_then(|session| enter::enter(&socket, &session, &mode)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("labgpu-shell: {e}");
            EXIT_REFUSED
        }
    }
}

/// The proxy's answer about the caller's login container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub id: String,
    pub user: String,
    pub stop_on_exit: bool,
    pub shell: Option<PathBuf>,
}

impl Session {
    fn from_answer(v: &Value) -> Option<Session> {
        Some(Session {
            id: v.get("Id")?.as_str()?.to_string(),
            user: v.get("User")?.as_str()?.to_string(),
            stop_on_exit: v.get("StopOnExit")?.as_bool()?,
            shell: v.get("Shell").and_then(Value::as_str).map(PathBuf::from),
        })
    }

    fn short_id(&self) -> &str {
        &self.id[..self.id.len().min(12)]
    }
}

/// Finds or makes the login container through the proxy and makes sure it runs.
fn open(socket: &Path) -> Result<Session, ShellError> {
    if nix::unistd::geteuid().is_root() {
        return Err(ShellError::Root);
    }
    let answer = docker_api::request(socket, "POST", "/labgpu/session")
        .map_err(|e| proxy_error(socket, e))?;
    let session = Session::from_answer(&answer).ok_or_else(|| ShellError::NoAnswer {
        socket: socket.to_path_buf(),
        reason: format!("an answer labgpu-shell does not understand: {answer}"),
    })?;
    ensure_running(socket, &session)?;
    Ok(session)
}

/// Starts (or unpauses) the container when it is not running.
fn ensure_running(socket: &Path, session: &Session) -> Result<(), ShellError> {
    let id = &session.id;
    let state = docker_api::get_json(socket, &format!("/containers/{id}/json"))
        .map_err(|e| proxy_error(socket, e))?;
    let flag = |k: &str| {
        state
            .pointer(&format!("/State/{k}"))
            .and_then(Value::as_bool)
    };
    let action = match (flag("Running"), flag("Paused")) {
        (Some(true), Some(true)) => "unpause",
        (Some(true), _) => return Ok(()),
        _ => "start",
    };
    docker_api::request_within(
        socket,
        "POST",
        &format!("/containers/{id}/{action}"),
        START_TIMEOUT,
    )
    .map(drop)
    .map_err(|e| match proxy_error(socket, e) {
        ShellError::Refused(reason) => ShellError::Start {
            id: session.short_id().to_string(),
            reason,
        },
        other => other,
    })
}

/// A failed request to the proxy, as the user should read it: the proxy's (or Docker's)
/// own sentence without the proxy's prefix.
fn proxy_error(socket: &Path, e: DockerApiError) -> ShellError {
    if e.is_unreachable() {
        return ShellError::ProxyDown {
            socket: socket.to_path_buf(),
        };
    }
    if let Some(message) = e.daemon_message() {
        let message = message
            .strip_prefix("labgpu proxy: ")
            .unwrap_or(&message)
            .to_string();
        return ShellError::Refused(message);
    }
    ShellError::NoAnswer {
        socket: socket.to_path_buf(),
        reason: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixListener;

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    #[test]
    fn login_shell_names() {
        for n in [
            "labgpu-shell",
            "-labgpu-shell",
            "/usr/bin/labgpu-shell",
            "/tmp/x/labgpu-shell",
        ] {
            assert!(is_login_shell_name(OsStr::new(n)), "{n}");
        }
        for n in [
            "labgpu",
            "-labgpu",
            "labgpu-shell2",
            "/usr/bin/labgpu",
            "--labgpu-shell",
        ] {
            assert!(!is_login_shell_name(OsStr::new(n)), "{n}");
        }
    }

    #[test]
    fn arguments_as_sshd_and_login_pass_them() {
        assert_eq!(parse_args(&[]).unwrap(), Mode::Interactive);
        assert_eq!(parse_args(&os(&["-l"])).unwrap(), Mode::Interactive);
        assert_eq!(
            parse_args(&os(&["-c", "id; ls /dev"])).unwrap(),
            Mode::Command(os(&["id; ls /dev"]))
        );
        // What follows CMD is $0 and the arguments, as for sh -c; a CMD may start with '-'.
        assert_eq!(
            parse_args(&os(&["-l", "-c", "-x", "a0", "a1"])).unwrap(),
            Mode::Command(os(&["-x", "a0", "a1"]))
        );
        assert!(parse_args(&os(&["-c"])).is_err());
        let e = parse_args(&os(&["--rcfile", "x"])).unwrap_err();
        assert!(e.to_string().contains("--rcfile"), "{e}");
        assert!(parse_args(&os(&["script.sh"])).is_err());
    }

    fn serve(answers: Vec<&'static str>) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("proxy.sock");
        let listener = UnixListener::bind(&sock).unwrap();
        std::thread::spawn(move || {
            for answer in answers {
                let (mut s, _) = listener.accept().unwrap();
                read_request(&mut s);
                s.write_all(answer.as_bytes()).unwrap();
            }
        });
        (dir, sock)
    }

    /// Reads a whole request (headers and a Content-Length body) before the answer goes out:
    /// closing on a half-read request would break the client's pipe.
    fn read_request(s: &mut std::os::unix::net::UnixStream) {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let head_end = got.windows(4).position(|w| w == b"\r\n\r\n");
            if let Some(end) = head_end {
                let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
                let body: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                if got.len() >= end + 4 + body {
                    return;
                }
            }
            match s.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    }

    #[test]
    fn refusals_are_the_proxys_sentence() {
        let (_d, sock) = serve(vec![
            "HTTP/1.1 403 Forbidden\r\nContent-Type: application/json\r\n\r\n{\"message\":\"labgpu proxy: uid 1003 (carol) is not a user in /etc/labgpu/policy.toml [users]; ask the administrator to add it\"}",
        ]);
        let e = docker_api::request(&sock, "POST", "/labgpu/session").unwrap_err();
        assert_eq!(
            proxy_error(&sock, e).to_string(),
            "uid 1003 (carol) is not a user in /etc/labgpu/policy.toml [users]; ask the administrator to add it"
        );
        let missing = PathBuf::from("/nonexistent/labgpu.sock");
        let e = docker_api::request(&missing, "POST", "/labgpu/session").unwrap_err();
        let said = proxy_error(&missing, e).to_string();
        assert!(
            said.starts_with("cannot reach the labgpu proxy at /nonexistent/labgpu.sock"),
            "{said}"
        );
    }

    #[test]
    fn a_stopped_container_is_started_and_a_refused_start_is_said() {
        let answer = serde_json::json!({"Id": "0123456789abcdef", "User": "alice", "StopOnExit": false, "Shell": null});
        let session = Session::from_answer(&answer).unwrap();
        assert_eq!(session.short_id(), "0123456789ab");
        let (_d, sock) = serve(vec![
            "HTTP/1.0 200 OK\r\n\r\n{\"State\":{\"Running\":false,\"Paused\":false}}",
            "HTTP/1.0 500 Internal Server Error\r\n\r\n{\"message\":\"OCI runtime create failed: labgpu: owner alice: GPU 7 is not present on this host\"}",
        ]);
        let e = ensure_running(&sock, &session).unwrap_err().to_string();
        assert_eq!(
            e,
            "your login container 0123456789ab did not start: OCI runtime create failed: labgpu: owner alice: GPU 7 is not present on this host"
        );
        let (_d, sock) = serve(vec![
            "HTTP/1.0 200 OK\r\n\r\n{\"State\":{\"Running\":true,\"Paused\":false}}",
        ]);
        ensure_running(&sock, &session).unwrap();
    }
}
