//! Reading runc's command line without owning it: find the subcommand and the few values
//! labgpu needs, and leave every byte for runc.
//!
//! Flags are not validated: runc versions add flags, and a strict parser here would break
//! Docker on the next runc upgrade.

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

pub const RUNC_SUBCOMMANDS: [&str; 17] = [
    "checkpoint",
    "create",
    "delete",
    "events",
    "exec",
    "features",
    "kill",
    "list",
    "pause",
    "ps",
    "restore",
    "resume",
    "run",
    "spec",
    "start",
    "state",
    "update",
];

/// runc's global flags that take a value (`--root R` or `--root=R`).
const GLOBAL_VALUE_FLAGS: [&str; 5] = ["--root", "--log", "--log-format", "--criu", "--rootless"];

/// Flags of the subcommands labgpu reads that take a value. Used only to skip values when
/// looking for the container id, the last positional argument.
const SUB_VALUE_FLAGS: [&str; 38] = [
    "--bundle",
    "-b",
    "--pid-file",
    "--console-socket",
    "--process",
    "-p",
    "--cwd",
    "--env",
    "-e",
    "--user",
    "-u",
    "--additional-gids",
    "-g",
    "--cap",
    "-c",
    "--apparmor",
    "--process-label",
    "--preserve-fds",
    "--cgroup",
    "--resources",
    "-r",
    "--image-path",
    // update's limits
    "--blkio-weight",
    "--cpu-period",
    "--cpu-quota",
    "--cpu-share",
    "--cpu-rt-period",
    "--cpu-rt-runtime",
    "--cpuset-cpus",
    "--cpuset-mems",
    "--kernel-memory",
    "--kernel-memory-tcp",
    "--memory",
    "--memory-reservation",
    "--memory-swap",
    "--pids-limit",
    "--l3-cache-schema",
    "--mem-bw-schema",
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Face {
    /// A runc subcommand: handled (maybe) and then handed to runc.
    Runtime(Invocation),
    /// `--version`/`-v` before any subcommand: runc's answer, with labgpu's appended.
    Version,
    /// Anything else: labgpu's own admin CLI.
    Admin,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    pub subcommand: String,
    /// Index in argv (program name at 0) of the subcommand word.
    pub sub_index: usize,
    pub root: Option<PathBuf>,
    pub log: Option<PathBuf>,
    pub log_format: Option<String>,
    /// `--systemd-cgroup`: runc makes cgroups through systemd (`linux.cgroupsPath` is
    /// `slice:prefix:name`).
    pub systemd_cgroup: bool,
}

impl Invocation {
    /// The arguments after the subcommand.
    pub fn sub_args<'a>(&self, argv: &'a [OsString]) -> &'a [OsString] {
        &argv[self.sub_index + 1..]
    }
}

pub fn dispatch(argv: &[OsString]) -> Face {
    let mut root = None;
    let mut log = None;
    let mut log_format = None;
    let mut systemd_cgroup = false;
    let mut i = 1;
    while i < argv.len() {
        let arg = argv[i].as_bytes();
        if arg == b"--version" || arg == b"-v" {
            return Face::Version;
        }
        if !arg.starts_with(b"-") {
            let word = String::from_utf8_lossy(arg);
            return if RUNC_SUBCOMMANDS.contains(&word.as_ref()) {
                Face::Runtime(Invocation {
                    subcommand: word.into_owned(),
                    sub_index: i,
                    root,
                    log,
                    log_format,
                    systemd_cgroup,
                })
            } else {
                Face::Admin
            };
        }
        let (name, inline) = split_eq(arg);
        if name == b"--systemd-cgroup" {
            systemd_cgroup = inline.is_none_or(|v| v != b"false");
        }
        if GLOBAL_VALUE_FLAGS.iter().any(|f| f.as_bytes() == name) {
            let value = match inline {
                Some(v) => Some(os(v)),
                None => {
                    i += 1;
                    argv.get(i).cloned()
                }
            };
            match name {
                b"--root" => root = value.map(PathBuf::from),
                b"--log" => log = value.map(PathBuf::from),
                b"--log-format" => log_format = value.map(|v| v.to_string_lossy().into_owned()),
                _ => {}
            }
        }
        i += 1;
    }
    Face::Admin
}

/// The value of a subcommand flag (`--bundle B`, `--bundle=B`, `-b B`), first match.
pub fn flag_value(args: &[OsString], names: &[&str]) -> Option<OsString> {
    let mut i = 0;
    while i < args.len() {
        let arg = args[i].as_bytes();
        if arg == b"--" {
            return None;
        }
        let (name, inline) = split_eq(arg);
        if names.iter().any(|n| n.as_bytes() == name) {
            return match inline {
                Some(v) => Some(os(v)),
                None => args.get(i + 1).cloned(),
            };
        }
        i += 1;
    }
    None
}

/// Whether any of `names` appears as a flag (either form).
pub fn has_flag(args: &[OsString], names: &[&str]) -> bool {
    args.iter().take_while(|a| a.as_bytes() != b"--").any(|a| {
        let (name, _) = split_eq(a.as_bytes());
        names.iter().any(|n| n.as_bytes() == name)
    })
}

/// The container id: the first positional argument after the subcommand's flags.
pub fn container_id(args: &[OsString]) -> Option<String> {
    let mut i = 0;
    while i < args.len() {
        let arg = args[i].as_bytes();
        if arg == b"--" {
            return args.get(i + 1).map(|a| a.to_string_lossy().into_owned());
        }
        if arg.starts_with(b"-") && arg.len() > 1 {
            let (name, inline) = split_eq(arg);
            if inline.is_none() && SUB_VALUE_FLAGS.iter().any(|f| f.as_bytes() == name) {
                i += 1;
            }
            i += 1;
            continue;
        }
        return Some(String::from_utf8_lossy(arg).into_owned());
    }
    None
}

fn split_eq(arg: &[u8]) -> (&[u8], Option<&[u8]>) {
    if arg.starts_with(b"--") {
        if let Some(pos) = arg.iter().position(|&b| b == b'=') {
            return (&arg[..pos], Some(&arg[pos + 1..]));
        }
    }
    (arg, None)
}

fn os(bytes: &[u8]) -> OsString {
    std::ffi::OsStr::from_bytes(bytes).to_os_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    #[test]
    fn docker_create_is_parsed() {
        let argv = v(&[
            "labgpu",
            "--root",
            "/run/docker/runtime-runc/moby",
            "--log",
            "/b/log.json",
            "--log-format",
            "json",
            "--systemd-cgroup",
            "create",
            "--bundle",
            "/b",
            "--pid-file",
            "/b/init.pid",
            "--console-socket",
            "/tmp/pty.sock",
            "abc123",
        ]);
        let Face::Runtime(inv) = dispatch(&argv) else {
            panic!("not runtime")
        };
        assert_eq!(inv.subcommand, "create");
        assert_eq!(inv.sub_index, 8);
        assert_eq!(
            inv.root,
            Some(PathBuf::from("/run/docker/runtime-runc/moby"))
        );
        assert_eq!(inv.log, Some(PathBuf::from("/b/log.json")));
        assert_eq!(inv.log_format.as_deref(), Some("json"));
        assert!(inv.systemd_cgroup);
        let sub = inv.sub_args(&argv);
        assert_eq!(flag_value(sub, &["--bundle", "-b"]), Some("/b".into()));
        assert_eq!(container_id(sub).as_deref(), Some("abc123"));
    }

    #[test]
    fn equals_forms_and_short_flags() {
        let argv = v(&[
            "labgpu",
            "--root=/r",
            "--log=/l",
            "run",
            "-b",
            "/bb",
            "--detach",
            "id1",
        ]);
        let Face::Runtime(inv) = dispatch(&argv) else {
            panic!()
        };
        assert_eq!(inv.root, Some(PathBuf::from("/r")));
        assert_eq!(inv.log, Some(PathBuf::from("/l")));
        let sub = inv.sub_args(&argv);
        assert_eq!(flag_value(sub, &["--bundle", "-b"]), Some("/bb".into()));
        assert_eq!(container_id(sub).as_deref(), Some("id1"));
        let argv = v(&["labgpu", "create", "--bundle=/x", "id2"]);
        let Face::Runtime(inv) = dispatch(&argv) else {
            panic!()
        };
        assert_eq!(
            flag_value(inv.sub_args(&argv), &["--bundle", "-b"]),
            Some("/x".into())
        );
    }

    #[test]
    fn exec_id_skips_flag_values() {
        let args = v(&[
            "--process",
            "/tmp/p.json",
            "--detach",
            "--pid-file",
            "/b/e.pid",
            "cid",
        ]);
        assert_eq!(container_id(&args).as_deref(), Some("cid"));
        assert!(has_flag(
            &v(&["--cap=CAP_SYS_ADMIN", "cid"]),
            &["--cap", "-c"]
        ));
        assert!(!has_flag(&v(&["cid", "--", "--cap"]), &["--cap"]));
    }

    #[test]
    fn other_words_go_to_the_admin_cli() {
        assert_eq!(dispatch(&v(&["labgpu"])), Face::Admin);
        assert_eq!(dispatch(&v(&["labgpu", "verify"])), Face::Admin);
        assert_eq!(dispatch(&v(&["labgpu", "--help"])), Face::Admin);
        assert_eq!(
            dispatch(&v(&["labgpu", "--debug", "policy", "check"])),
            Face::Admin
        );
        assert_eq!(dispatch(&v(&["labgpu", "--version"])), Face::Version);
        assert_eq!(dispatch(&v(&["labgpu", "--debug", "-v"])), Face::Version);
        assert!(matches!(
            dispatch(&v(&["labgpu", "--debug", "state", "x"])),
            Face::Runtime(_)
        ));
        // An unknown future global flag is skipped as a boolean, not an error.
        assert!(matches!(
            dispatch(&v(&["labgpu", "--new-flag", "features"])),
            Face::Runtime(_)
        ));
    }
}
