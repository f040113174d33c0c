//! `labgpu top` and `labgpu metrics` on the command line.
//!
//! Root reads the host itself. Anyone else asks the proxy (`GET /labgpu/top` on its
//! socket), which knows them by SO_PEERCRED and answers with their part of the host only:
//! a user cannot read other users' records, and should not see their processes.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;

use super::{collect, fill_rates, metrics, render, Sources, View};
use crate::policy::Policy;

/// The gap between the two looks a single answer (`--once`, `--json`) takes, so that it can
/// say how many cores are in use.
const RATE_GAP: Duration = Duration::from_millis(1000);

/// The proxy's read-only endpoint for `labgpu top`.
pub const TOP_PATH: &str = "/labgpu/top";

#[derive(Debug, Clone)]
pub struct Options {
    pub policy: PathBuf,
    /// The proxy's socket; `None`: read the host directly as root, else the default socket.
    pub socket: Option<PathBuf>,
    pub once: bool,
    pub json: bool,
    pub interval: Duration,
}

/// Where the views come from.
enum Source {
    Host(Box<Policy>),
    Proxy(PathBuf),
}

impl Source {
    fn look(&self) -> anyhow::Result<View> {
        match self {
            Source::Host(policy) => Ok(collect(policy, &Sources::default())),
            Source::Proxy(socket) => {
                let v = crate::docker_api::get_json(socket, TOP_PATH).with_context(|| {
                    format!(
                        "labgpu top asks the labgpu proxy on {} (--socket or DOCKER_HOST to name another)",
                        socket.display()
                    )
                })?;
                serde_json::from_value(v).with_context(|| {
                    format!(
                        "{} answered {TOP_PATH} with something that is not labgpu top's view",
                        socket.display()
                    )
                })
            }
        }
    }
}

/// The socket a user's `labgpu top` asks: `--socket`, else DOCKER_HOST when it names a
/// unix socket (users point it at the proxy), else the proxy's default.
fn user_socket(given: Option<&Path>) -> PathBuf {
    if let Some(s) = given {
        return s.to_path_buf();
    }
    std::env::var("DOCKER_HOST")
        .ok()
        .and_then(|h| h.strip_prefix("unix://").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(crate::cli_args::DEFAULT_PROXY_SOCKET))
}

pub fn top(opts: &Options) -> anyhow::Result<i32> {
    let source = if nix::unistd::geteuid().is_root() && opts.socket.is_none() {
        Source::Host(Box::new(Policy::load(&opts.policy)?))
    } else {
        Source::Proxy(user_socket(opts.socket.as_deref()))
    };
    let mut prev = source.look()?;
    if opts.once || opts.json {
        std::thread::sleep(RATE_GAP);
        let mut cur = source.look()?;
        fill_rates(&prev, &mut cur);
        if opts.json {
            println!("{}", serde_json::to_string_pretty(&cur)?);
        } else {
            print!("{}", render::screen(&cur));
        }
        return Ok(0);
    }
    let mut stdout = std::io::stdout();
    // The first screen at once (without CPU rates, which need a second look).
    write!(stdout, "\x1b[H\x1b[2J{}", render::screen(&prev))?;
    stdout.flush()?;
    loop {
        std::thread::sleep(opts.interval);
        let mut cur = match source.look() {
            Ok(v) => v,
            Err(e) => {
                // Keep the last screen and say why it is not fresh; the proxy may be
                // restarting.
                let _ = writeln!(stdout, "labgpu top: {e:#}");
                continue;
            }
        };
        fill_rates(&prev, &mut cur);
        // Home, clear, draw: no alternate screen to restore when the user presses Ctrl-C.
        write!(stdout, "\x1b[H\x1b[2J{}", render::screen(&cur))?;
        stdout.flush()?;
        prev = cur;
    }
}

/// `labgpu metrics`: one scrape's worth on stdout (for node_exporter's textfile collector),
/// without the proxy's refusal counters, which only the proxy's listener has.
pub fn print_metrics(policy: &Path, roots: Vec<PathBuf>) -> anyhow::Result<i32> {
    if !nix::unistd::geteuid().is_root() {
        anyhow::bail!(
            "labgpu metrics reads every user's containers and must run as root; users run `labgpu top`"
        );
    }
    let p = Policy::load(policy)?;
    print!("{}", scrape(&p, roots, None));
    Ok(0)
}

/// The metrics text for the whole host: the view, `verify`'s audit over `roots`, and the
/// refusal counts given.
pub fn scrape(
    policy: &Policy,
    roots: Vec<PathBuf>,
    refusals: Option<&std::collections::BTreeMap<String, u64>>,
) -> String {
    let view = collect(policy, &Sources::default());
    let audit = crate::verify::run(&crate::verify::Options {
        policy: policy.path.clone(),
        roots,
        container: None,
        proc_root: PathBuf::from("/proc"),
        reclaim: false,
    })
    .map_err(|e| e.to_string());
    metrics::render(
        &view,
        &metrics::Extra {
            audit: Some(audit.as_ref().map_err(Clone::clone)),
            refusals,
        },
    )
}
