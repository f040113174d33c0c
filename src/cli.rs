//! The admin face: `labgpu <command>` for anything that is not a runc subcommand.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;
use clap::Parser;

pub use crate::cli_args::{Cli, Command_, PolicyCommand, SetupCommand, SlurmCommand};
use crate::decide::{self, DecideError};
use crate::gpu::{inventory_for, Inventory, Purpose};
use crate::policy::{policy_path, GpuRef, GpusSection, Policy, PolicyError, RunAs};
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
            reclaim,
        } => verify(
            verify::Options {
                policy: policy.unwrap_or_else(policy_path),
                roots: verify_roots(roots),
                container,
                proc_root,
                reclaim,
            },
            json,
        ),
        Command_::Reclaim {
            policy,
            docker_host,
            dry_run,
        } => reclaim(&policy.unwrap_or_else(policy_path), &docker_host, dry_run),
        Command_::Gpus { policy, json } => gpus(&policy.unwrap_or_else(policy_path), json),
        Command_::Policy {
            command: PolicyCommand::Check { file, docker },
        } => policy_check(&file.unwrap_or_else(policy_path), &docker),
        Command_::Proxy {
            listen,
            upstream,
            policy,
            metrics,
            roots,
        } => crate::proxy::run(crate::proxy::Options {
            listen,
            upstream,
            policy: policy.unwrap_or_else(policy_path),
            metrics,
            roots: verify_roots(roots),
        }),
        Command_::Top {
            policy,
            socket,
            once,
            json,
            interval,
        } => crate::top::cmd::top(&crate::top::cmd::Options {
            policy: policy.unwrap_or_else(policy_path),
            socket,
            once,
            json,
            interval: std::time::Duration::from_secs_f64(interval.clamp(0.2, 3600.0)),
        }),
        Command_::Metrics { policy, roots } => {
            crate::top::cmd::print_metrics(&policy.unwrap_or_else(policy_path), verify_roots(roots))
        }
        Command_::Setup {
            command:
                SetupCommand::Docker {
                    config,
                    default,
                    dry_run,
                    remove,
                    path,
                    buildkit,
                    systemd_dir,
                },
        } => setup::docker_cli(
            &config,
            default,
            dry_run,
            remove,
            path,
            buildkit,
            &systemd_dir,
        ),
        Command_::Seccomp { command } => crate::seccomp::cmd::run(command),
        Command_::User { command } => Ok(crate::users::run(command)),
        Command_::Shell {
            command,
            args,
            socket,
        } => {
            let mode = match command {
                Some(c) => crate::shell::Mode::Command(std::iter::once(c).chain(args).collect()),
                None => crate::shell::Mode::Interactive,
            };
            Ok(crate::shell::run(
                mode,
                socket.unwrap_or_else(crate::shell::socket_from_env),
            ))
        }
        Command_::Slurm {
            command:
                SlurmCommand::Epilog {
                    policy,
                    docker,
                    job,
                },
        } => Ok(crate::slurm::epilog::run(&crate::slurm::epilog::Options {
            policy: policy.unwrap_or_else(policy_path),
            docker,
            job,
        })),
        Command_::Slurm {
            command: SlurmCommand::Job { job, policy },
        } => slurm_job(&policy.unwrap_or_else(policy_path), job),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("labgpu: {e:#}");
            2
        }
    }
}

/// The runc state roots given, else Docker's, containerd's and runc's.
fn verify_roots(roots: Vec<PathBuf>) -> Vec<PathBuf> {
    if roots.is_empty() {
        verify::DEFAULT_ROOTS.iter().map(PathBuf::from).collect()
    } else {
        roots
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

/// `labgpu reclaim`: a line per container stopped (or that would be, with `--dry-run`).
fn reclaim(path: &Path, docker: &Path, dry_run: bool) -> anyhow::Result<i32> {
    let policy = Policy::load(path)?;
    crate::log::init(policy.runtime.log.as_ref().map(|l| l.as_path()));
    let done = crate::pools::reclaim::run(&policy, docker, dry_run)?;
    let mut code = 0;
    for (v, stopped) in done {
        let what = format!(
            "container {} ({}), GPU {} of pool {:?}: {}",
            crate::pools::short(&v.container),
            v.owner,
            v.gpus.join(","),
            v.pool,
            v.reason.describe()
        );
        match stopped {
            Ok(()) if dry_run => println!("would stop {what}"),
            Ok(()) => println!("stopped {what}"),
            Err(e) => {
                println!("could not stop {what}: {e}");
                code = 1;
            }
        }
    }
    Ok(code)
}

/// `labgpu slurm job N`: the job as labgpu sees it from this node. 1 when something in the
/// chain (scontrol, the allocation, gres.conf, the device files) fails.
fn slurm_job(path: &Path, id: u32) -> anyhow::Result<i32> {
    use crate::slurm::grant::{gres_conf, job_minors, node_name, Scontrol};
    use crate::slurm::Jobs;
    let policy = Policy::load(path)?;
    let slurm = policy.slurm_or_default();
    let node = node_name(&slurm)?;
    let Some(job) = Scontrol::new(&slurm).show(id)? else {
        println!("job {id}: Slurm does not know it");
        return Ok(1);
    };
    let owner = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(job.uid))
        .ok()
        .flatten()
        .map(|u| u.name)
        .and_then(|n| policy.user_for_uid(job.uid, Some(&n)).map(str::to_string));
    println!(
        "job {id}: {}, uid {} ({}), node {node}",
        job.state,
        job.uid,
        owner.map_or("not a policy user".to_string(), |o| format!(
            "policy user {o}"
        ))
    );
    let gres = gres_conf(&slurm);
    match job_minors(&job, &node, &gres) {
        Ok(minors) if minors.is_empty() => println!("no GPU on {node}"),
        Ok(minors) => {
            let names: Vec<String> = minors.iter().map(|m| format!("nvidia{m}")).collect();
            println!(
                "GPUs on {node} (Slurm's {:?}, through {}): {}",
                job.gpus_on(&node).unwrap_or_default(),
                gres.display(),
                names.join(", ")
            );
        }
        Err(e) => {
            println!("error: {e}");
            return Ok(1);
        }
    }
    Ok(0)
}

/// A `[groups.NAME]` for a group /etc/group does not have applies to no one: a warning,
/// not an error (the group may be created later). The number of warnings.
fn check_groups_exist(policy: &Policy) -> usize {
    if policy.groups.is_empty() {
        return 0;
    }
    let accounts = crate::accounts::Accounts::host();
    let mut warnings = 0;
    for g in policy.groups.iter() {
        if !accounts.has_group(&g.name) {
            println!(
                "warning: [groups.{0}]: no group {0} in {1}, so the table applies to no one (groups only in LDAP or SSSD are not read)",
                g.name,
                crate::accounts::GROUP
            );
            warnings += 1;
        }
    }
    warnings
}

/// The runtime reads owner labels and volumes under the data root the policy pins (or
/// daemon.json names): it must be the one Docker uses. 1 when they differ.
fn check_docker_root(policy: &Policy, docker: &Path) -> usize {
    let pinned =
        crate::owner::docker_root(policy.runtime.docker_root.as_ref().map(|r| r.as_path()));
    let reported = crate::docker_api::get_json(docker, "/info")
        .ok()
        .and_then(|info| info.get("DockerRootDir")?.as_str().map(PathBuf::from));
    match reported {
        None => {
            println!(
                "note: Docker did not answer on {}: [runtime] docker_root ({}) not compared with its data root",
                docker.display(),
                pinned.display()
            );
            0
        }
        Some(r) if crate::decide::resolve_host(&r) == crate::decide::resolve_host(&pinned) => 0,
        Some(r) => {
            println!(
                "error: [runtime] docker_root is {} but Docker's data root is {} (docker info): set docker_root = \"{}\"",
                pinned.display(),
                r.display(),
                r.display()
            );
            1
        }
    }
}

/// What `userns = "owner"` needs of the host: dockerd without userns-remap, idmapped mounts
/// on Docker's layers; and what it means for unlabeled containers. (errors, warnings)
fn check_userns_host(policy: &Policy, docker: &Path) -> (usize, usize) {
    use crate::policy::{Unlabeled, Userns};
    let users: Vec<&String> = policy
        .users
        .iter()
        .filter(|(_, u)| policy.userns_for(Some(u)) == Userns::Owner)
        .map(|(n, _)| n)
        .collect();
    let (mut errors, mut warnings) = (0, 0);
    if policy.defaults.userns == Userns::Owner && policy.runtime.unlabeled == Unlabeled::NoGpu {
        println!("warning: [defaults] userns = \"owner\" with [runtime] unlabeled = \"no-gpu\": unlabeled containers have no owner to map root to and are refused");
        warnings += 1;
    }
    if users.is_empty() {
        return (errors, warnings);
    }
    let remap = crate::docker_api::get_json(docker, "/info")
        .ok()
        .and_then(|info| info.get("SecurityOptions").cloned())
        .and_then(|o| serde_json::from_value::<Vec<String>>(o).ok())
        .is_some_and(|o| o.iter().any(|s| s.split(',').any(|f| f == "name=userns")));
    if remap {
        println!("error: Docker's userns-remap is on (docker info); userns = \"owner\" ({}) needs it off", users.iter().map(|u| format!("[users.{u}]")).collect::<Vec<_>>().join(", "));
        errors += 1;
    }
    let root = crate::owner::docker_root(policy.runtime.docker_root.as_ref().map(|r| r.as_path()));
    if nix::unistd::geteuid().is_root() {
        if let Err(e) = crate::userns::rootfs::probe(&root.join("overlay2")) {
            println!("error: {e}");
            errors += 1;
        }
    } else {
        println!(
            "note: not root: idmapped mounts under {} not tried",
            root.display()
        );
    }
    (errors, warnings)
}

/// The policy tables giving `minor` (whole GPU or a MIG slice of it): users by name for
/// their own `gpus`, `[groups.NAME]` for a group's (shared by its members by design).
fn owners_of(policy: &Policy, inventory: &dyn Inventory, minor: u32) -> Vec<String> {
    let has = |gpus: &[GpuRef]| {
        gpus.iter()
            .any(|r| inventory.resolve(r).is_ok_and(|g| g.minor == minor))
    };
    let users = policy
        .users
        .iter()
        .filter(|(n, u)| own_key(policy, n, "gpus") && has(&u.gpus))
        .map(|(n, _)| n.clone());
    let groups = policy
        .groups
        .iter()
        .filter(|g| has(&g.settings.gpus))
        .map(|g| format!("[groups.{}]", g.name));
    users.chain(groups).collect()
}

/// Whether `name`'s `key` is their own table's (not a group's).
fn own_key(policy: &Policy, name: &str, key: &str) -> bool {
    policy
        .origins
        .get(name)
        .is_none_or(|o| !o.via.contains_key(key))
}

/// Every GPU the policy's user and group tables name.
fn policy_gpu_refs(policy: &Policy) -> Vec<&GpuRef> {
    let users = policy.users.values().flat_map(|u| &u.gpus);
    let groups = policy.groups.iter().flat_map(|g| &g.settings.gpus);
    let pooled = policy.pools.values().flat_map(|pool| &pool.gpus);
    users.chain(groups).chain(pooled).collect()
}

/// The policy at `path`, or None when there is no file there yet: listing GPUs is the first
/// thing an admin does, before writing a policy that names them.
fn policy_if_present(path: &Path) -> anyhow::Result<Option<Policy>> {
    match Policy::load(path) {
        Ok(p) => Ok(Some(p)),
        Err(PolicyError::Read { cause, .. }) if cause.kind() == std::io::ErrorKind::NotFound => {
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

fn gpus(path: &Path, json: bool) -> anyhow::Result<i32> {
    let loaded = policy_if_present(path)?;
    let default_gpus = GpusSection::default();
    let section = loaded.as_ref().map_or(&default_gpus, |p| &p.gpus);
    let refs: Vec<&GpuRef> = loaded.iter().flat_map(policy_gpu_refs).collect();
    let inventory = inventory_for(section, &refs, Purpose::Admin).with_context(|| {
        if loaded.is_some() {
            format!("reading the GPU inventory for {}", path.display())
        } else {
            "reading the GPU inventory (no policy: default [gpus] settings)".to_string()
        }
    })?;
    let pooled = match &loaded {
        Some(p) => crate::pools::view(p, &inventory)?,
        None => Vec::new(),
    };
    let pool_of = |minor: u32| pooled.iter().filter(move |g| g.minor == Some(minor));
    let owners = |minor: u32| {
        let mut o = loaded
            .as_ref()
            .map(|p| owners_of(p, &inventory, minor))
            .unwrap_or_default();
        o.extend(pool_of(minor).map(|g| g.describe()));
        o
    };
    let dash = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    if json {
        let rows: Vec<serde_json::Value> = inventory
            .gpus()
            .iter()
            .map(|g| {
                serde_json::json!({
                    "index": g.index,
                    "minor": g.minor,
                    "uuid": g.uuid,
                    "name": g.name,
                    "nodes": g.nodes.iter().map(|n| n.host_path.clone()).collect::<Vec<_>>(),
                    "mig": g.migs.iter().map(|m| serde_json::json!({
                        "gi": m.gi, "ci": m.ci, "uuid": m.uuid, "node": m.cap.host_path,
                    })).collect::<Vec<_>>(),
                    "owners": owners(g.minor),
                    "pool": pool_of(g.minor).collect::<Vec<_>>(),
                })
            })
            .collect();
        let out = serde_json::json!({
            "policy": loaded.as_ref().map(|_| path),
            "source": inventory.source_name(),
            "gpus": rows,
            "control_nodes": inventory.control_nodes().iter().map(|n| n.host_path.clone()).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(0);
    }
    println!(
        "{:<6} {:<6} {:<42} {:<24} {:<18} OWNERS",
        "INDEX", "MINOR", "UUID", "NAME", "NODES"
    );
    for g in inventory.gpus() {
        let nodes: Vec<String> = g
            .nodes
            .iter()
            .map(|n| n.host_path.display().to_string())
            .collect();
        println!(
            "{:<6} {:<6} {:<42} {:<24} {:<18} {}",
            dash(g.index.map(|i| i.to_string())),
            g.minor,
            dash(g.uuid.clone()),
            dash(g.name.clone()),
            nodes.join(","),
            dash(Some(owners(g.minor).join(",")).filter(|o| !o.is_empty())),
        );
        for m in &g.migs {
            println!(
                "  MIG {}:{}{:<10} {:<42} {}",
                g.minor,
                m.gi,
                m.ci.map_or(String::new(), |c| format!(" ci {c}")),
                dash(m.uuid.clone()),
                m.cap.host_path.display()
            );
        }
    }
    let control: Vec<String> = inventory
        .control_nodes()
        .iter()
        .map(|n| n.host_path.display().to_string())
        .collect();
    println!(
        "{} GPUs (from {}); control nodes: {}",
        inventory.gpus().len(),
        inventory.source_name(),
        if control.is_empty() {
            "none".into()
        } else {
            control.join(", ")
        }
    );
    if loaded.is_none() {
        println!(
            "note: no policy found at {}, so no owners are shown (GPUs read with the default [gpus] settings)",
            path.display()
        );
    }
    Ok(0)
}

fn policy_check(path: &Path, docker: &Path) -> anyhow::Result<i32> {
    let policy = match Policy::load(path) {
        Ok(p) => p,
        Err(e) => {
            println!("error: {e}");
            return Ok(1);
        }
    };
    let refs = policy_gpu_refs(&policy);
    let inventory = inventory_for(&policy.gpus, &refs, Purpose::Admin)
        .with_context(|| format!("reading the GPU inventory for {}", path.display()))?;
    let mut errors = 0;
    let mut warnings = 0;
    // Each table's GPUs and mount sources once: the users' own, then the groups'.
    let own = policy.users.iter().map(|(name, user)| {
        let table = format!("[users.{name}]");
        let gpus = own_key(&policy, name, "gpus").then_some(&user.gpus[..]);
        let mounts = own_key(&policy, name, "mounts").then_some(&user.mounts[..]);
        (table, gpus.unwrap_or_default(), mounts.unwrap_or_default())
    });
    let groups = policy.groups.iter().map(|g| {
        let s = &g.settings;
        (format!("[groups.{}]", g.name), &s.gpus[..], &s.mounts[..])
    });
    for (table, gpus, mounts) in own.chain(groups) {
        for id in gpus {
            if let Err(e) = inventory.resolve(id) {
                println!("error: {table} gpus: {e}");
                errors += 1;
            }
        }
        for m in mounts {
            if !m.source.as_path().exists() {
                println!(
                    "error: {table} mounts: source {} does not exist",
                    m.source.as_path().display()
                );
                errors += 1;
            }
        }
    }
    warnings += check_groups_exist(&policy);
    for (name, user) in &policy.users {
        if let Err(e) = decide::userns_plan(&policy, Some(name), Some(user)) {
            println!("error: {e}");
            errors += 1;
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
    if let Some(g) = policy.proxy.as_ref().and_then(|p| p.socket_group.as_ref()) {
        let known =
            g.parse::<u32>().is_ok() || matches!(nix::unistd::Group::from_name(g), Ok(Some(_)));
        if !known {
            println!("error: [proxy] socket_group {g:?} is not a group on this host");
            errors += 1;
        }
    }
    errors += check_docker_root(&policy, docker);
    let (e, w) = check_userns_host(&policy, docker);
    errors += e;
    warnings += w;
    let (slurm_errors, slurm_warnings) = crate::slurm::grant::check_node(&policy, &inventory);
    for e in &slurm_errors {
        println!("error: {e}");
    }
    for w in &slurm_warnings {
        println!("warning: {w}");
    }
    errors += slurm_errors.len();
    warnings += slurm_warnings.len();
    for gpu in inventory.gpus() {
        let owners = owners_of(&policy, &inventory, gpu.minor);
        if owners.len() > 1 {
            println!(
                "warning: GPU {} is shared by {}",
                gpu.minor,
                owners.join(", ")
            );
            warnings += 1;
        }
    }
    let via_groups = policy.origins.values().filter(|o| !o.own).count();
    let groups = match policy.groups.len() {
        0 => String::new(),
        n => format!(" ({via_groups} through {n} group tables)"),
    };
    println!(
        "{}: {} users{groups}, {} GPUs on this host, {errors} errors, {warnings} warnings",
        path.display(),
        policy.users.len(),
        inventory.gpus().len()
    );
    Ok(i32::from(errors > 0))
}
