//! The runtime face: prepare what runc will read (config.json, the exec process, update's
//! resources), then replace this process with runc, same argv. Nothing is printed to stdout:
//! containerd parses runc's.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::argv::{container_id, flag_value, has_flag, Invocation};
use crate::decide::{self, decide, DecideError};
use crate::edits::{self, stamp, EditError, Report};
use crate::fairshare::cap::{cap_resources, Mode};
use crate::fairshare::cgroup::{Cgroups, Driver};
use crate::fairshare::Ceilings;
use crate::gpu::{inventory_for, GpuError, Purpose};
use crate::owner::{self, OwnerError};
use crate::policy::{policy_path, Policy, PolicyError, Unlabeled, Userns};
use crate::policy_cache::RuntimePolicy;
use crate::refusal;
use crate::spec::{self, SpecError};
use crate::userns::joins;
use crate::userns::rootfs::{self as userns_rootfs, RootfsError};
use crate::volumes::{self, VolumeError};

/// Where runc is looked for when the policy does not say.
pub const RUNC_CANDIDATES: [&str; 4] = [
    "/usr/bin/runc",
    "/usr/sbin/runc",
    "/usr/local/bin/runc",
    "/usr/local/sbin/runc",
];

/// The mount table of this process, which runc (exec'd in its place) binds volumes from.
const MOUNT_TABLE: &str = "/proc/self/mountinfo";

/// runc's state root when `--root` is not given (runc run as root).
const RUNC_DEFAULT_ROOT: &str = "/run/runc";

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error(transparent)]
    Owner(#[from] OwnerError),
    #[error(transparent)]
    Gpu(#[from] GpuError),
    #[error(transparent)]
    Decide(#[from] DecideError),
    #[error(transparent)]
    Edit(#[from] EditError),
    #[error(transparent)]
    Volume(#[from] VolumeError),
    #[error(transparent)]
    Slurm(#[from] crate::slurm::SlurmError),
    #[error(transparent)]
    Pool(#[from] crate::pools::PoolError),
    #[error("runc not found: set [runtime] runc in the policy or install runc at one of {}", RUNC_CANDIDATES.join(", "))]
    NoRunc,
    #[error("runc {0} from [runtime] runc does not exist")]
    RuncMissing(PathBuf),
    #[error("runc {0} is labgpu itself; [runtime] runc must name the real runc")]
    RuncIsSelf(PathBuf),
    #[error("cannot run {path}: {cause}")]
    Exec {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{0} was called without a container id")]
    NoId(String),
    #[error("cannot determine the bundle directory: {0}")]
    NoBundle(std::io::Error),
    #[error("exec flag {0} is not allowed: capabilities and security labels come from the policy")]
    ExecFlag(String),
    #[error("exec -u/-g is not allowed: [users.{0}] run_as = \"owner\" fixes the user")]
    ExecUser(String),
    #[error("cannot read runc state {path}: {reason}")]
    State { path: PathBuf, reason: String },
    #[error("container {id} was created for {owner:?}, who is no longer in {policy} [users]")]
    OwnerGone {
        id: String,
        owner: String,
        policy: PathBuf,
    },
    #[error("container was not created through the labgpu proxy, so its {key}={label:?} label is not trusted, and {policy} [runtime] unlabeled = \"deny\"")]
    NotFromProxy {
        key: String,
        label: String,
        policy: PathBuf,
    },
    #[error("labgpu stopped on an internal error ({0}), so runc was not run; this is a bug in labgpu, please report it")]
    Panic(String),
    #[error("cannot set up the parent cgroup of {owner}'s containers (fair share: cpus, memory, pids in [defaults] or [users.{owner}]): {cause}")]
    Cgroup {
        owner: String,
        cause: crate::fairshare::cgroup::CgroupError,
    },
    #[error(transparent)]
    UpdateCap(#[from] crate::fairshare::cap::CapError),
    #[error("update flag {flag} is not allowed for {owner}'s containers: their limits are capped by the policy (cpus, memory, pids in [defaults] or [users.{owner}]); pass --resources")]
    UpdateFlag { flag: String, owner: String },
    #[error("update --resources {0} would need capping to the owner's ceilings: pass the resources on stdin (--resources -)")]
    UpdateFile(String),
    #[error("{cause} ([users.{owner}] userns)")]
    Userns { owner: String, cause: RootfsError },
    #[error("runc {0} of a container with userns = \"owner\" is not supported; set userns = \"off\" for its owner to checkpoint and restore")]
    UsernsSubcommand(String),
    #[error("updating device rules of a running container is not allowed (linux.resources.devices in update)")]
    UpdateDevices,
    #[error("cannot read update resources from {what}: {cause}")]
    UpdateInput { what: String, cause: std::io::Error },
}

/// Handles a runc subcommand and execs runc; returns only on failure, with the exit code.
pub fn handle(argv: &[OsString], inv: &Invocation) -> i32 {
    // exec_runc returns only if execve failed, which is a refusal like any other.
    let err = match refuse_panics(|| prepare(argv, inv)) {
        Ok(runc) => exec_runc(&runc, argv),
        Err(e) => e,
    };
    tracing::error!(subcommand = %inv.subcommand, error = %err, "refused");
    refusal::report(inv, &err.to_string());
    1
}

/// Everything `handle` does before it execs runc (policy, owner, inventory, spec rewrite and
/// atomic write for create; the process file for exec; ...): returns the runc to exec.
/// Public so that benches/rewrite.rs can time labgpu's own share of a create.
pub fn prepare(argv: &[OsString], inv: &Invocation) -> Result<PathBuf, RuntimeError> {
    let path = policy_path();
    match inv.subcommand.as_str() {
        "create" | "run" | "restore" => prepare_create(argv, inv, &path),
        "exec" => prepare_exec(argv, inv, &path),
        "update" => prepare_update(argv, inv, &path),
        "delete" => {
            if let Some(id) = container_id(inv.sub_args(argv)) {
                crate::pools::on_delete(&path, &id);
            }
            passthrough_runc(&path)
        }
        _ => passthrough_runc(&path),
    }
}

/// The runc for a subcommand labgpu does not inspect: the one the last create resolved for
/// this very policy file (see `policy_cache`), else `[runtime] runc` read leniently, so that
/// a policy broken mid-edit never blocks stop, kill or delete.
fn passthrough_runc(policy_path: &Path) -> Result<PathBuf, RuntimeError> {
    match crate::policy_cache::cached_runc(policy_path) {
        Some(runc) => Ok(runc),
        None => find_runc(Policy::runc_hint(policy_path).as_deref()),
    }
}

/// `prepare`, with a panic (a bug) turned into a refusal: the user gets a sentence in runc's
/// log like any other refusal, and runc never runs a spec the edits did not finish.
fn refuse_panics(
    prepare: impl FnOnce() -> Result<PathBuf, RuntimeError> + std::panic::UnwindSafe,
) -> Result<PathBuf, RuntimeError> {
    std::panic::catch_unwind(prepare).unwrap_or_else(|payload| {
        let what = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic".into());
        Err(RuntimeError::Panic(what))
    })
}

fn exec_runc(runc: &Path, argv: &[OsString]) -> RuntimeError {
    let cause = std::process::Command::new(runc).args(&argv[1..]).exec();
    RuntimeError::Exec {
        path: runc.to_path_buf(),
        cause,
    }
}

/// The runc binary: `[runtime] runc`, else the first of the standard locations.
pub fn find_runc(configured: Option<&Path>) -> Result<PathBuf, RuntimeError> {
    let runc = match configured {
        Some(p) if p.is_file() => p.to_path_buf(),
        Some(p) => return Err(RuntimeError::RuncMissing(p.to_path_buf())),
        None => RUNC_CANDIDATES
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
            .ok_or(RuntimeError::NoRunc)?,
    };
    // A daemon.json or policy pointing runc at labgpu would recurse forever.
    let me = std::env::current_exe().and_then(std::fs::canonicalize);
    if let (Ok(me), Ok(target)) = (me, std::fs::canonicalize(&runc)) {
        if me == target {
            return Err(RuntimeError::RuncIsSelf(runc));
        }
    }
    Ok(runc)
}

/// The policy (from the cache when it matches the file, see `policy_cache`) and the runc it
/// names; the decision log is opened where the policy says.
fn load_policy(path: &Path) -> Result<(RuntimePolicy, PathBuf), RuntimeError> {
    let loaded = RuntimePolicy::load(path)?;
    crate::log::init(loaded.policy.runtime.log.as_ref().map(|l| l.as_path()));
    let runc = find_runc(loaded.policy.runtime.runc.as_ref().map(|r| r.as_path()))?;
    loaded.remember(&runc);
    Ok((loaded, runc))
}

/// create / run / restore: rewrite `<bundle>/config.json` to the owner's policy.
fn prepare_create(
    argv: &[OsString],
    inv: &Invocation,
    policy_path: &Path,
) -> Result<PathBuf, RuntimeError> {
    let sub = inv.sub_args(argv);
    let id = container_id(sub).ok_or_else(|| RuntimeError::NoId(inv.subcommand.clone()))?;
    let bundle = match flag_value(sub, &["--bundle", "-b"]) {
        Some(b) => PathBuf::from(b),
        None => std::env::current_dir().map_err(RuntimeError::NoBundle)?,
    };
    let (mut loaded, runc) = load_policy(policy_path)?;
    let config = bundle.join("config.json");
    let mut spec = spec::load(&config)?;
    let root = owner::docker_root(
        loaded
            .policy
            .runtime
            .docker_root
            .as_ref()
            .map(|r| r.as_path()),
    );
    if is_buildkit_step(&bundle, &root) {
        prepare_build_step(&loaded.policy, &mut spec, root, &id)?;
        spec::write_atomic(&config, &spec)?;
        return Ok(runc);
    }
    let ownership = owner::resolve(&loaded.policy, &spec, &id, &root)?;
    if let Some(o) = &ownership.owner {
        loaded.with_user(o)?;
        // The owner's subordinate ids are checked against every user's ids.
        if loaded.policy.userns_for(loaded.policy.user(o)) != Userns::Off {
            loaded.with_all_users()?;
        }
    }
    let policy = &loaded.policy;
    if let (None, Some(label)) = (&ownership.owner, &ownership.ignored_label) {
        if policy.runtime.unlabeled == Unlabeled::Deny {
            return Err(RuntimeError::NotFromProxy {
                key: policy.runtime.owner_label.clone(),
                label: label.clone(),
                policy: policy.path.clone(),
            });
        }
    }
    let owner = ownership.owner;
    let slurm_gpus = crate::slurm::grant::for_owner(policy, owner.as_deref(), ownership.slurm_job)?;
    let user = owner.as_deref().and_then(|o| policy.user(o));
    let pool_refs = user
        .into_iter()
        .flat_map(|u| u.pools.keys())
        .filter_map(|p| policy.pools.get(p))
        .flat_map(|p| p.gpus.iter());
    let refs: Vec<_> = user
        .into_iter()
        .flat_map(|u| u.gpus.iter())
        .chain(pool_refs)
        .collect();
    let inventory = inventory_for(&policy.gpus, &refs, Purpose::Runtime)?;
    let backings = volumes::spec_backings(&spec, &root, Path::new(MOUNT_TABLE))?;
    let mut decision = decide(policy, owner.as_deref(), &inventory, root, &id)?;
    if let Some(minors) = &slurm_gpus {
        decision.grant_minors(policy, &inventory, minors)?;
    }
    decision.runc_root = Some(runc_root(inv));
    decision.volume_backings = backings;
    // Docker's rootfs, before the userns edit points the spec at the neutral directory.
    let docker_rootfs = spec
        .pointer("/root/path")
        .and_then(Value::as_str)
        .map(PathBuf::from);
    if let Some(plan) = decision.userns.as_mut() {
        if inv.subcommand == "restore" {
            return Err(RuntimeError::UsernsSubcommand(inv.subcommand.clone()));
        }
        plan.joins = joins::resolve(&spec, Path::new("/proc"));
    }
    decision.docker_cdi =
        crate::cdi::docker_applied(&crate::cdi::docker_spec_dirs(Path::new(owner::DAEMON_JSON)));
    decision.cgroup_driver = driver(inv);
    let allocation = match (owner.as_deref(), user) {
        (Some(o), Some(u)) => crate::pools::allocate_for_create(&crate::pools::Create {
            policy,
            owner: o,
            user: u,
            inventory: &inventory,
            owned: &decision.grants,
            docker_root: &decision.docker_root,
            id: &id,
            runc_root: &runc_root(inv),
        })?,
        _ => Default::default(),
    };
    let allocated = !allocation.entries.is_empty();
    let finished = finish_create(
        policy,
        &inventory,
        &mut decision,
        allocation,
        &mut spec,
        &config,
        docker_rootfs,
    );
    let report = match finished {
        Ok(report) => report,
        Err(e) => {
            if allocated {
                crate::pools::release(&policy.path, &id, &runc_root(inv));
            }
            return Err(e);
        }
    };
    tracing::info!(
        container = %id,
        owner = decision.owner.as_deref().unwrap_or("-"),
        ignored_label = ownership.ignored_label.as_deref().unwrap_or("-"),
        gpus = ?decision.gpu_ids,
        pool_gpus = ?decision.pool_gpus,
        slurm_job = ?ownership.slurm_job,
        removed = ?report.removed,
        added = ?report.added,
        "{} allowed",
        inv.subcommand
    );
    Ok(runc)
}

/// The rest of a create once pool GPUs are allocated (given back if this fails): the edits,
/// the owner's parent cgroup, config.json, the user namespace's rootfs.
fn finish_create(
    policy: &Policy,
    inventory: &dyn crate::gpu::Inventory,
    decision: &mut decide::Decision,
    allocation: crate::pools::Allocation,
    spec: &mut Value,
    config: &Path,
    docker_rootfs: Option<PathBuf>,
) -> Result<Report, RuntimeError> {
    decision.add_pool_gpus(policy, inventory, allocation)?;
    let decision = &*decision;
    let mut report = Report::default();
    edits::apply_all(spec, decision, &mut report)?;
    if let Some(placement) = decision.placement() {
        Cgroups::system()
            .prepare(&placement, &decision.ceilings)
            .map_err(|source| RuntimeError::Cgroup {
                owner: placement.user.clone(),
                cause: source,
            })?;
    }
    spec::write_atomic(config, spec)?;
    if let Some(plan) = &decision.userns {
        let sources = userns_rootfs::idmapped_sources(spec, &decision.docker_root);
        let rootfs = docker_rootfs.unwrap_or_default();
        userns_rootfs::prepare(plan, &decision.docker_root, &rootfs, &sources).map_err(
            |source| RuntimeError::Userns {
                owner: decision.owner.clone().unwrap_or_default(),
                cause: source,
            },
        )?;
    }
    Ok(report)
}

/// Where dockerd's BuildKit puts a `RUN` step's bundle: `<data-root>/buildkit/executor/<id>`.
/// Only dockerd writes there, and only BuildKit runs runc (this binary, when
/// `DOCKER_BUILDKIT_RUNC_COMMAND` names it) with a bundle there.
const BUILDKIT_EXECUTOR: &str = "buildkit/executor";

/// Whether this create is a BuildKit `RUN` step of the pinned Docker data root.
fn is_buildkit_step(bundle: &Path, docker_root: &Path) -> bool {
    let executor = decide::resolve_host(&docker_root.join(BUILDKIT_EXECUTOR));
    bundle
        .parent()
        .is_some_and(|p| decide::resolve_host(p) == executor)
}

/// A BuildKit `RUN` step: nobody's container (a build's user is the proxy's to check, on
/// `/grpc`), so `[defaults]` without GPUs whatever `unlabeled` says, always with
/// no-new-privileges, and binds from BuildKit's own directories.
fn prepare_build_step(
    policy: &Policy,
    spec: &mut serde_json::Value,
    root: PathBuf,
    id: &str,
) -> Result<(), RuntimeError> {
    let inventory = inventory_for(&policy.gpus, &[], Purpose::Runtime)?;
    let mut decision = decide::decide_for_user(policy, None, None, &inventory, root, id)?;
    decision.build_step = true;
    decision.process.no_new_privileges = true;
    decision.runc_root = Some(PathBuf::from(RUNC_DEFAULT_ROOT));
    let mut report = Report::default();
    edits::apply_all(spec, &decision, &mut report)?;
    tracing::info!(
        container = %id,
        removed = ?report.removed,
        added = ?report.added,
        "BuildKit build step allowed"
    );
    Ok(())
}

/// exec: cut the process file to the owner's rules, read from runc's state of the container.
fn prepare_exec(
    argv: &[OsString],
    inv: &Invocation,
    policy_path: &Path,
) -> Result<PathBuf, RuntimeError> {
    let sub = inv.sub_args(argv);
    for flag in ["--cap", "-c", "--apparmor", "--process-label"] {
        if has_flag(sub, &[flag]) {
            return Err(RuntimeError::ExecFlag(flag.to_string()));
        }
    }
    let id = container_id(sub).ok_or_else(|| RuntimeError::NoId("exec".into()))?;
    let (mut loaded, runc) = load_policy(policy_path)?;
    let root = inv
        .root
        .clone()
        .unwrap_or_else(|| PathBuf::from(RUNC_DEFAULT_ROOT));
    let state = runc_state(&root, &id)?;
    let owner = stamp::owner_in_state(&state);
    if let Some(o) = &owner {
        loaded.with_user(o)?;
    }
    let policy = &loaded.policy;
    let user = match decide::policy_user(policy, owner.as_deref()) {
        Err(DecideError::UnknownOwner { owner, policy }) => {
            return Err(RuntimeError::OwnerGone { id, owner, policy })
        }
        other => other?,
    };
    let mut rules = decide::process_rules(policy, owner.as_deref(), user)?;
    // The container's own user namespace decides, not today's policy: its root is already
    // someone unprivileged outside.
    if let Some(gids) = userns_gids(&state) {
        rules = rules.in_userns(&gids);
    }
    let mut report = Report::default();
    match flag_value(sub, &["--process", "-p"]) {
        Some(file) => {
            let file = PathBuf::from(file);
            let mut process = spec::load(&file)?;
            edits::process::sanitize(&mut process, &rules, &mut report)?;
            spec::write_atomic(&file, &process)?;
        }
        // Without --process runc builds the process from the (already cut) config.json plus
        // flags; only the identity flags could widen it.
        None if rules.user.is_some()
            && has_flag(sub, &["--user", "-u", "--additional-gids", "-g"]) =>
        {
            return Err(RuntimeError::ExecUser(owner.unwrap_or_default()))
        }
        None => {}
    }
    tracing::info!(
        container = %id,
        owner = owner.as_deref().unwrap_or("-"),
        removed = ?report.removed,
        "exec allowed"
    );
    Ok(runc)
}

fn driver(inv: &Invocation) -> Driver {
    if inv.systemd_cgroup {
        Driver::Systemd
    } else {
        Driver::Cgroupfs
    }
}

fn runc_root(inv: &Invocation) -> PathBuf {
    inv.root
        .clone()
        .unwrap_or_else(|| PathBuf::from(RUNC_DEFAULT_ROOT))
}

/// The owner labgpu stamped at create, from runc's state (`config.labels`, which holds the
/// spec annotations as `key=value`). `None` for an unlabeled or unstamped container.
pub fn stamped_owner(root: &Path, id: &str) -> Result<Option<String>, RuntimeError> {
    Ok(stamp::owner_in_state(&runc_state(root, id)?))
}

/// The gids a container with a user namespace maps 1:1 (the owner's groups), from runc's
/// state; `None` when it has no user namespace.
fn userns_gids(state: &Value) -> Option<Vec<u32>> {
    let config = state.get("config")?;
    let has_map = |k: &str| {
        config
            .get(k)
            .and_then(Value::as_array)
            .is_some_and(|a| !a.is_empty())
    };
    if !has_map("uid_mappings") {
        return None;
    }
    let gids = config
        .get("gid_mappings")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|m| {
            let n = |k: &str| m.get(k).and_then(Value::as_u64);
            match (n("container_id"), n("host_id"), n("size")) {
                (Some(c), Some(h), Some(1)) if c == h && c != 0 => u32::try_from(c).ok(),
                _ => None,
            }
        })
        .collect();
    Some(gids)
}

/// runc's `state.json` of container `id` under `root`.
fn runc_state(root: &Path, id: &str) -> Result<Value, RuntimeError> {
    if !owner::valid_container_id(id) {
        return Err(OwnerError::BadId(id.to_string()).into());
    }
    let path = root.join(id).join("state.json");
    let state_err = |reason: String| RuntimeError::State {
        path: path.clone(),
        reason,
    };
    let bytes = std::fs::read(&path).map_err(|e| state_err(e.to_string()))?;
    serde_json::from_slice(&bytes).map_err(|e| state_err(e.to_string()))
}

/// update: refuse device changes, and cut limits to the owner's ceilings (`docker update`
/// cannot raise a container above them). With `--resources -` the JSON is read from stdin
/// and handed to runc through a memfd on fd 0, so runc reads exactly what was checked.
fn prepare_update(
    argv: &[OsString],
    inv: &Invocation,
    policy_path: &Path,
) -> Result<PathBuf, RuntimeError> {
    let runc = passthrough_runc(policy_path)?;
    let sub = inv.sub_args(argv);
    let ceilings = update_ceilings(sub, inv, policy_path)?;
    if let Some((owner, c)) = &ceilings {
        let flags = [
            "--memory",
            "--memory-swap",
            "--cpu-quota",
            "--cpu-period",
            "--pids-limit",
            "--memory-reservation",
        ];
        if let Some(flag) = flags.iter().find(|f| has_flag(sub, &[f])) {
            if c.needs_parent() {
                return Err(RuntimeError::UpdateFlag {
                    flag: flag.to_string(),
                    owner: owner.clone(),
                });
            }
        }
    }
    let Some(source) = flag_value(sub, &["--resources", "-r"]) else {
        return Ok(runc);
    };
    let input_err = |what: &str| {
        let what = what.to_string();
        move |cause| RuntimeError::UpdateInput { what, cause }
    };
    let from_stdin = source == "-";
    let bytes = if from_stdin {
        let mut buf = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buf)
            .map_err(input_err("stdin"))?;
        buf
    } else {
        std::fs::read(&source).map_err(input_err(&source.to_string_lossy()))?
    };
    if touches_devices(&bytes) {
        return Err(RuntimeError::UpdateDevices);
    }
    let mut out = bytes;
    if let Some((owner, c)) = &ceilings {
        if let Some((capped, cuts)) = capped_update(&out, c)? {
            if !from_stdin {
                return Err(RuntimeError::UpdateFile(
                    source.to_string_lossy().into_owned(),
                ));
            }
            tracing::info!(owner = %owner, removed = ?cuts, "update cut to the ceilings");
            out = capped;
        }
    }
    if from_stdin {
        replay_stdin(&out).map_err(input_err("stdin"))?;
    }
    Ok(runc)
}

/// The owner of the container being updated and their ceilings; `None` when it has no
/// owner or the policy sets no ceiling for them.
fn update_ceilings(
    sub: &[OsString],
    inv: &Invocation,
    policy_path: &Path,
) -> Result<Option<(String, Ceilings)>, RuntimeError> {
    let Some(id) = container_id(sub) else {
        return Ok(None);
    };
    let root = runc_root(inv);
    // No such container: runc says so itself.
    if owner::valid_container_id(&id) && !root.join(&id).join("state.json").exists() {
        return Ok(None);
    }
    let Some(owner) = stamped_owner(&root, &id)? else {
        return Ok(None);
    };
    let (mut loaded, _) = load_policy(policy_path)?;
    loaded.with_user(&owner)?;
    let policy = &loaded.policy;
    let Some(user) = policy.user(&owner) else {
        return Ok(None);
    };
    let c = Ceilings::for_user(policy, &owner, user);
    Ok((!c.is_empty()).then_some((owner, c)))
}

/// An update's resources after the cut, with a sentence per cut.
type Capped = (Vec<u8>, Vec<String>);

/// The update's resources cut to `c`: `None` when nothing was cut (or the input is not
/// JSON, which runc rejects itself).
fn capped_update(bytes: &[u8], c: &Ceilings) -> Result<Option<Capped>, RuntimeError> {
    let Ok(mut v) = serde_json::from_slice::<Value>(bytes) else {
        return Ok(None);
    };
    let cuts = cap_resources(&mut v, c, Mode::Present)?;
    if cuts.is_empty() {
        return Ok(None);
    }
    Ok(Some((v.to_string().into_bytes(), cuts)))
}

fn touches_devices(resources: &[u8]) -> bool {
    // Unparseable input is runc's to reject; it cannot carry device rules runc would apply.
    serde_json::from_slice::<Value>(resources)
        .ok()
        .and_then(|v| v.get("devices").cloned())
        .is_some_and(|d| !d.is_null() && d.as_array().is_none_or(|a| !a.is_empty()))
}

fn replay_stdin(bytes: &[u8]) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let fd =
        nix::sys::memfd::memfd_create(c"labgpu-update", nix::sys::memfd::MemFdCreateFlag::empty())
            .map_err(std::io::Error::from)?;
    let mut file = std::fs::File::from(fd);
    file.write_all(bytes)?;
    std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(0))?;
    nix::unistd::dup2(file.as_raw_fd(), 0).map_err(std::io::Error::from)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buildkit_steps_are_told_by_their_bundle_directory() {
        let root = Path::new("/var/lib/docker");
        assert!(is_buildkit_step(
            Path::new("/var/lib/docker/buildkit/executor/k3j2h1"),
            root
        ));
        for bundle in [
            "/run/docker/containerd/daemon/io.containerd.runtime.v2.task/moby/abc",
            "/var/lib/docker/buildkit/executor",
            "/var/lib/docker/buildkit/executor/x/y",
            "/var/lib/other/buildkit/executor/k3j2h1",
        ] {
            assert!(!is_buildkit_step(Path::new(bundle), root), "{bundle}");
        }
    }

    #[test]
    fn update_device_detection() {
        assert!(touches_devices(
            br#"{"devices":[{"allow":true,"access":"rwm"}]}"#
        ));
        assert!(!touches_devices(
            br#"{"memory":{"limit":1000},"devices":[]}"#
        ));
        assert!(!touches_devices(
            br#"{"memory":{"limit":1000},"devices":null}"#
        ));
        assert!(!touches_devices(b"not json"));
    }

    #[test]
    fn a_panic_in_prepare_is_a_refusal() {
        let e = refuse_panics(|| panic!("index {} out of range", 3)).unwrap_err();
        assert!(
            matches!(&e, RuntimeError::Panic(m) if m == "index 3 out of range"),
            "{e:?}"
        );
        assert!(e.to_string().contains("runc was not run"), "{e}");
        let ok = refuse_panics(|| Ok(PathBuf::from("/usr/bin/runc")));
        assert_eq!(ok.unwrap(), PathBuf::from("/usr/bin/runc"));
    }

    #[test]
    fn stamped_owner_reads_runc_state_labels() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("c1")).unwrap();
        std::fs::write(
            d.path().join("c1/state.json"),
            r#"{"id":"c1","config":{"labels":["io.labgpu.gpus=0","io.labgpu.owner=alice","bundle=/b"]}}"#,
        )
        .unwrap();
        assert_eq!(
            stamped_owner(d.path(), "c1").unwrap().as_deref(),
            Some("alice")
        );
        assert!(stamped_owner(d.path(), "missing").is_err());
        assert!(stamped_owner(d.path(), "../c1").is_err());
    }
}
