//! The decision log: one line per create/exec/refusal, to a file, never to stdout.

use std::path::Path;
use std::sync::Mutex;

pub const DEFAULT_LOG: &str = "/var/log/labgpu.log";

/// Logs to `path` (default /var/log/labgpu.log). A log that cannot be opened is skipped:
/// losing the audit line must not stop containers, and stdout is not ours to write.
pub fn init(path: Option<&Path>) {
    let path = path.unwrap_or(Path::new(DEFAULT_LOG));
    let Ok(file) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    else {
        return;
    };
    let _ = tracing_subscriber::fmt()
        .with_writer(Mutex::new(file))
        .with_ansi(false)
        .with_target(false)
        .try_init();
}

/// Logs to stderr, for long-running services whose stderr is the journal (`labgpu proxy`).
pub fn init_stderr() {
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_target(false)
        .try_init();
}
