//! The admin face: `labgpu <command>` for anything that is not a runc subcommand.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;
use clap::Parser;

pub use crate::cli_args::{Cli, Command_, PolicyCommand, SetupCommand};
use crate::decide::{self, DecideError};
use crate::gpu::{inventory_for, Inventory, Purpose};
use crate::policy::{policy_path, GpuRef, Policy, RunAs};
use crate::runtime::find_runc;
use crate::setup;
use crate::verify;

pub fn main(argv: Vec<OsString>) -> i32 {
    let cli = Cli::parse_from(argv);
    let result = match cli.command {
        Command_::Verify {
            policy,
            roots,
            json,
            container,
            proc_root,
        } => verify(
            verify::Options {
                policy: policy.unwrap_or_else(policy_path),
                roots: if roots.is_empty() {
                    verify::DEFAULT_ROOTS.iter().map(PathBuf::from).collect()
                } else {
                    roots
                },
                container,
                proc_root,
            },
            json,
        ),
        Command_::Policy {
            command: PolicyCommand::Check { file },
        } => policy_check(&file.unwrap_or_else(policy_path)),
        Command_::Proxy {
            listen,
            upstream,
            policy,
        } => crate::proxy::run(crate::proxy::Options {
            listen,
            upstream,
            policy: policy.unwrap_or_else(policy_path),
        }),
        Command_::Setup {
            command:
                SetupCommand::Docker {
                    config,
                    default,
                    dry_run,
                    remove,
                    path,
                },
        } => setup::docker_cli(&config, default, dry_run, remove, path),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("labgpu: {e:#}");
            2
        }
    }
}

/// `labgpu --version`: runc's answer first, byte for byte (docker info parses its
/// "runc version X" line), then labgpu's own on a line without the word "version".
pub fn version() -> i32 {
    let runc = find_runc(Policy::runc_hint(&policy_path()).as_deref());
    match runc.map(|r| Command::new(r).arg("--version").output()) {
        Ok(Ok(out)) => {
            use std::io::Write;
            let mut stdout = std::io::stdout();
            let _ = stdout.write_all(&out.stdout);
            let _ = writeln!(stdout, "labgpu: {}", env!("CARGO_PKG_VERSION"));
            i32::from(!out.status.success())
        }
        Ok(Err(e)) => {
            eprintln!("labgpu: cannot run runc --version: {e}");
            1
        }
        Err(e) => {
            eprintln!("labgpu: {e}");
            1
        }
    }
}

fn verify(opts: verify::Options, json: bool) -> anyhow::Result<i32> {
    let audit = match verify::run(&opts) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("labgpu verify: could not audit: {e}");
            return Ok(2);
        }
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&audit)?);
    } else {
        print!("{}", verify::render_table(&audit));
    }
    Ok(audit.exit_code())
}

fn policy_check(path: &Path) -> anyhow::Result<i32> {
    let policy = match Policy::load(path) {
        Ok(p) => p,
        Err(e) => {
            println!("error: {e}");
            return Ok(1);
        }
    };
    let refs: Vec<&GpuRef> = policy.users.values().flat_map(|u| &u.gpus).collect();
    let inventory = inventory_for(&policy.gpus, &refs, Purpose::Admin)
        .with_context(|| format!("reading the GPU inventory for {}", path.display()))?;
    let mut errors = 0;
    let mut warnings = 0;
    for (name, user) in &policy.users {
        for id in &user.gpus {
            if let Err(e) = inventory.resolve(id) {
                println!("error: [users.{name}] gpus: {e}");
                errors += 1;
            }
        }
        for m in &user.mounts {
            if !m.source.as_path().exists() {
                println!(
                    "error: [users.{name}] mounts: source {} does not exist",
                    m.source.as_path().display()
                );
                errors += 1;
            }
        }
        let run_as = user.run_as.unwrap_or(policy.defaults.run_as);
        if run_as == RunAs::Owner {
            if let Err(e @ DecideError::NoUid { .. }) =
                decide::process_rules(&policy, Some(name), Some(user))
            {
                println!("error: {e}");
                errors += 1;
            }
        }
    }
    if let Some(g) = &policy.proxy.socket_group {
        let known =
            g.parse::<u32>().is_ok() || matches!(nix::unistd::Group::from_name(g), Ok(Some(_)));
        if !known {
            println!("error: [proxy] socket_group {g:?} is not a group on this host");
            errors += 1;
        }
    }
    for gpu in inventory.gpus() {
        let owners: Vec<&str> = policy
            .users
            .iter()
            .filter(|(_, u)| {
                u.gpus
                    .iter()
                    .any(|r| inventory.resolve(r).is_ok_and(|g| g.minor == gpu.minor))
            })
            .map(|(n, _)| n.as_str())
            .collect();
        if owners.len() > 1 {
            println!(
                "warning: GPU {} is shared by {}",
                gpu.minor,
                owners.join(", ")
            );
            warnings += 1;
        }
    }
    println!(
        "{}: {} users, {} GPUs on this host, {errors} errors, {warnings} warnings",
        path.display(),
        policy.users.len(),
        inventory.gpus().len()
    );
    Ok(i32::from(errors > 0))
}
