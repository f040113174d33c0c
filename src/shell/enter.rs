//! Entering the login container: `docker exec` over the proxy socket. The Docker CLI does the
//! terminal's work (raw mode, window size, the hijacked stream, stdin's end) as users know it
//! from `docker exec -it`; exit codes and stdin/stdout/stderr pass through it unchanged.

use std::ffi::OsString;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

use serde_json::Value;

use super::{Mode, Session, ShellError};
use crate::docker_api;

/// Where the Docker CLI is looked for: root's directories only, never the login's `PATH`
/// (a program of the user's there would be a shell on the host).
const DOCKER_CLI: [&str; 2] = ["/usr/bin/docker", "/usr/local/bin/docker"];

/// The CLI's configuration directory: one that cannot exist. The user's own `~/.docker`
/// (their file, on the host) may name CLI plugins and hooks, programs the CLI would run on
/// the host; contexts there could send it elsewhere.
const DOCKER_CONFIG: &str = "/proc/self/labgpu-no-docker-config";

/// dockerd ends an exec session on this key sequence (default Ctrl-P Ctrl-Q, which would
/// hold back every Ctrl-P, bash's "previous command"). A detached login would only leave a
/// shell behind that nothing can reach again, so the sequence is one nobody types.
const DETACH_KEYS: &str = "ctrl-@,ctrl-^,ctrl-@,ctrl-^";

/// The terminal's and the locale's settings a login carries into the container.
const PASSED_ENV: [&str; 4] = ["TERM", "COLORTERM", "LANG", "LANGUAGE"];

/// How long `docker stop` waits before it kills (the first process ends at once on TERM).
const STOP_SECONDS: u64 = 10;

/// The shell run in the container when the policy names none: bash when the image has it.
const DEFAULT_LOGIN: &str = "if [ -x /bin/bash ]; then exec /bin/bash -l; fi; exec /bin/sh -l";
const DEFAULT_COMMAND: &str =
    "if [ -x /bin/bash ]; then exec /bin/bash -c \"$@\"; fi; exec /bin/sh -c \"$@\"";

/// Runs the login in the container; the exit status of what ran there.
pub fn enter(socket: &Path, session: &Session, mode: &Mode) -> Result<i32, ShellError> {
    let docker = find_docker()?;
    let tty = nix::unistd::isatty(0).unwrap_or(false);
    let mut cmd = Command::new(&docker);
    cmd.args(docker_args(socket, session, mode, tty, &passed_env()));
    // The CLI runs on the host: nothing of the login's environment reaches it (DOCKER_HOST,
    // DOCKER_API_VERSION, LD_PRELOAD, …); what the container should see went in as --env.
    cmd.env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("DOCKER_CONFIG", DOCKER_CONFIG)
        .env("DOCKER_CLI_HINTS", "false");
    if !session.stop_on_exit {
        // Nothing to do afterwards: the CLI takes this process's place (signals, job control
        // and the exit status are then simply the CLI's).
        let source = cmd.exec();
        return Err(ShellError::Spawn {
            path: docker,
            cause: source,
        });
    }
    let code = run_forwarding_signals(&mut cmd, &docker)?;
    stop_if_idle(socket, session);
    Ok(code)
}

/// `docker --host unix://SOCKET exec …`: the arguments, without the program.
pub fn docker_args(
    socket: &Path,
    session: &Session,
    mode: &Mode,
    tty: bool,
    env: &[(String, String)],
) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec![
        "--host".into(),
        format!("unix://{}", socket.display()).into(),
        "exec".into(),
        "--interactive".into(),
    ];
    if tty {
        args.push("--tty".into());
        args.push(format!("--detach-keys={DETACH_KEYS}").into());
    }
    for (k, v) in env {
        args.push("--env".into());
        args.push(format!("{k}={v}").into());
    }
    for k in ["USER", "LOGNAME"] {
        args.push("--env".into());
        args.push(format!("{k}={}", session.user).into());
    }
    args.push(session.id.clone().into());
    match (mode, &session.shell) {
        (Mode::Interactive, Some(shell)) => {
            args.push(shell.into());
            args.push("-l".into());
        }
        (Mode::Interactive, None) => {
            args.extend(["/bin/sh", "-c", DEFAULT_LOGIN].map(OsString::from));
        }
        (Mode::Command(cmd), Some(shell)) => {
            args.push(shell.into());
            args.push("-c".into());
            args.extend(cmd.iter().cloned());
        }
        (Mode::Command(cmd), None) => {
            args.extend(["/bin/sh", "-c", DEFAULT_COMMAND, "labgpu-shell"].map(OsString::from));
            args.extend(cmd.iter().cloned());
        }
    }
    args
}

/// The variables of `PASSED_ENV` and `LC_*` that are set.
fn passed_env() -> Vec<(String, String)> {
    std::env::vars()
        .filter(|(k, _)| PASSED_ENV.contains(&k.as_str()) || k.starts_with("LC_"))
        .collect()
}

fn find_docker() -> Result<PathBuf, ShellError> {
    DOCKER_CLI
        .iter()
        .map(PathBuf::from)
        .find(|p| is_executable(p))
        .ok_or_else(|| ShellError::NoDockerCli {
            looked: DOCKER_CLI.join(" and "),
        })
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The CLI's pid while it runs, for the signal handler.
static CHILD: AtomicI32 = AtomicI32::new(0);

extern "C" fn forward(sig: libc::c_int) {
    let pid = CHILD.load(Ordering::SeqCst);
    if pid > 0 {
        // SAFETY: kill is async-signal-safe; the pid is our own child's.
        unsafe { libc::kill(pid, sig) };
    }
}

/// Runs the CLI as a child (so that the container can be stopped after it), passing on the
/// signals a login gets when its connection goes (SIGHUP) or it is told to end.
fn run_forwarding_signals(cmd: &mut Command, docker: &Path) -> Result<i32, ShellError> {
    let mut child = cmd.spawn().map_err(|source| ShellError::Spawn {
        path: docker.to_path_buf(),
        cause: source,
    })?;
    CHILD.store(child.id() as i32, Ordering::SeqCst);
    for sig in [libc::SIGHUP, libc::SIGTERM, libc::SIGINT, libc::SIGQUIT] {
        // SAFETY: the handler only reads an atomic and calls kill(2); glibc's signal()
        // restarts interrupted calls (BSD semantics), so wait() goes on.
        unsafe {
            libc::signal(
                sig,
                forward as extern "C" fn(libc::c_int) as libc::sighandler_t,
            )
        };
    }
    let status = child.wait().map_err(|source| ShellError::Spawn {
        path: docker.to_path_buf(),
        cause: source,
    })?;
    CHILD.store(0, Ordering::SeqCst);
    Ok(status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1))
}

/// `session.stop_on_exit`: stops the container once no other login (exec) runs in it. A
/// failure here is only reported: what ran has already ended with its own status.
fn stop_if_idle(socket: &Path, session: &Session) {
    let id = &session.id;
    let busy = docker_api::get_json(socket, &format!("/containers/{id}/json"))
        .map(|v| other_logins(socket, &v))
        .unwrap_or(true);
    if busy {
        return;
    }
    let stop = docker_api::request_within(
        socket,
        "POST",
        &format!("/containers/{id}/stop?t={STOP_SECONDS}"),
        Duration::from_secs(STOP_SECONDS + 20),
    );
    if let Err(e) = stop {
        eprintln!(
            "labgpu-shell: your login container {} was left running: {e}",
            session.short_id()
        );
    }
}

/// Whether an inspected container still has exec sessions (other logins) running. Docker
/// lists an exec in `ExecIDs` until it has handled its end, which may be just after the
/// client saw it: each is asked whether it still runs. When in doubt, it is busy.
fn other_logins(socket: &Path, inspect: &Value) -> bool {
    exec_ids(inspect).iter().any(|e| {
        docker_api::get_json(socket, &format!("/exec/{e}/json"))
            .map(|v| v.get("Running").and_then(Value::as_bool) != Some(false))
            .unwrap_or_else(|e| e.daemon_message().is_none())
    })
}

fn exec_ids(inspect: &Value) -> Vec<&str> {
    inspect
        .get("ExecIDs")
        .and_then(Value::as_array)
        .map(|ids| ids.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn session(shell: Option<&str>) -> Session {
        Session {
            id: "c0ffee".into(),
            user: "alice".into(),
            stop_on_exit: false,
            shell: shell.map(PathBuf::from),
        }
    }

    fn strings(args: Vec<OsString>) -> Vec<String> {
        args.into_iter().map(|a| a.into_string().unwrap()).collect()
    }

    #[test]
    fn a_login_with_a_terminal() {
        let env = vec![("TERM".to_string(), "xterm-256color".to_string())];
        let args = strings(docker_args(
            Path::new("/run/labgpu/docker.sock"),
            &session(None),
            &Mode::Interactive,
            true,
            &env,
        ));
        assert_eq!(
            args[..5],
            [
                "--host",
                "unix:///run/labgpu/docker.sock",
                "exec",
                "--interactive",
                "--tty"
            ]
        );
        assert!(args.contains(&format!("--detach-keys={DETACH_KEYS}")));
        assert!(args.contains(&"TERM=xterm-256color".to_string()));
        assert!(args.contains(&"USER=alice".to_string()));
        let at = args.iter().position(|a| a == "c0ffee").unwrap();
        assert_eq!(args[at + 1..], ["/bin/sh", "-c", DEFAULT_LOGIN]);
    }

    #[test]
    fn a_command_without_a_terminal_keeps_its_words() {
        let cmd = Mode::Command(vec!["echo \"$0\" '$1'; exit 3".into(), "zero".into()]);
        let args = strings(docker_args(
            Path::new("/s"),
            &session(None),
            &cmd,
            false,
            &[],
        ));
        assert!(!args
            .iter()
            .any(|a| a == "--tty" || a.starts_with("--detach-keys")));
        let at = args.iter().position(|a| a == "c0ffee").unwrap();
        assert_eq!(
            args[at + 1..],
            [
                "/bin/sh",
                "-c",
                DEFAULT_COMMAND,
                "labgpu-shell",
                "echo \"$0\" '$1'; exit 3",
                "zero"
            ]
        );
        let args = strings(docker_args(
            Path::new("/s"),
            &session(Some("/usr/bin/zsh")),
            &cmd,
            false,
            &[],
        ));
        let at = args.iter().position(|a| a == "c0ffee").unwrap();
        assert_eq!(
            args[at + 1..],
            ["/usr/bin/zsh", "-c", "echo \"$0\" '$1'; exit 3", "zero"]
        );
    }

    /// The default command wrapper runs CMD with $0 and arguments as `sh -c` would.
    #[test]
    fn the_default_wrapper_is_sh_c() {
        let out = Command::new("/bin/sh")
            .args(["-c", DEFAULT_COMMAND, "labgpu-shell"])
            .args(["printf '%s|' \"$0\" \"$1\"; exit 7", "zero", "one two"])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "zero|one two|");
        assert_eq!(out.status.code(), Some(7));
    }

    #[test]
    fn exec_ids_of_a_container() {
        assert!(exec_ids(&json!({"ExecIDs": null})).is_empty());
        assert!(exec_ids(&json!({"ExecIDs": []})).is_empty());
        assert_eq!(exec_ids(&json!({"ExecIDs": ["e1", "e2"]})), ["e1", "e2"]);
    }
}
