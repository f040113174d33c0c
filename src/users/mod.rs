//! `labgpu user add|set|rm|list`: the admin's day with the policy's users.
//!
//! Every edit takes the lock next to the policy (`file`), reads the file again, changes only
//! the user's table in the text (`edit`), checks the whole result with `Policy::parse`
//! exactly as the runtime loads it, plus what only this host can say (the user's GPUs, a uid
//! another user has, mount sources), does what the host needs (`host`: directories, the login
//! shell), and only then replaces the file. Input that would not load changes nothing.
//! `containers` finds a user's containers through Docker's API; `list` reports.

use std::path::{Path, PathBuf};

use crate::cli_args::{ContainersAction, UserChanges, UserCommand, UserTarget};
use crate::docker_api::DockerApiError;
use crate::gpu::{inventory_for, GpuError, Inventory, Purpose};
use crate::policy::{policy_path, GpuRef, Policy, PolicyError};

pub mod containers;
pub mod edit;
pub mod file;
pub mod host;
mod list;

use edit::{EditError, GpuSpec, MountSpec};
use host::HostError;

#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error(transparent)]
    Edit(#[from] EditError),
    #[error(transparent)]
    File(#[from] file::FileError),
    #[error(transparent)]
    Host(#[from] HostError),
    #[error("the policy does not load as it is, so labgpu will not edit it: {0}")]
    Broken(PolicyError),
    #[error("the change was not made, the result would not load: {0}")]
    Invalid(PolicyError),
    #[error("the change was not made: [users.{user}] gpus: {cause}")]
    Gpu { user: String, cause: GpuError },
    #[error("the change was not made: cannot read this host's GPUs: {0}")]
    Inventory(GpuError),
    #[error("the change was not made: uid {uid} is already [users.{other}]'s")]
    UidTaken { uid: u32, other: String },
    #[error("--mount {spec:?}: {why}")]
    BadMount { spec: String, why: &'static str },
    #[error("the change was not made: mount source {0} does not exist (--make-dirs creates it)")]
    NoSource(PathBuf),
    #[error("--gpus {spec:?}: {why}")]
    BadGpus { spec: String, why: String },
    #[error("--set {0:?} must be KEY=VALUE")]
    BadSet(String),
    #[error("[users.{0}] gpus is \"slurm\": give a whole list with --gpus instead")]
    SlurmList(String),
    #[error("nothing was changed: cannot stop {user}'s containers: {cause} (--containers keep takes the user out anyway)")]
    Docker { user: String, cause: DockerApiError },
    #[error("[users.{user}] was written, but its login shell was not set: {cause}")]
    LoginAfterWrite { user: String, cause: HostError },
}

/// `labgpu user …`; the exit status (1 with one sentence on stderr when refused).
pub fn run(command: UserCommand) -> i32 {
    let result = match command {
        UserCommand::Add {
            name,
            changes,
            target,
        } => add(&name, &changes, &target),
        UserCommand::Set {
            name,
            changes,
            add_gpus,
            remove_gpus,
            unmount,
            set,
            unset,
            target,
        } => {
            let more = SetOnly {
                add_gpus,
                remove_gpus,
                unmount,
                set,
                unset,
            };
            self::set(&name, &changes, &more, &target)
        }
        UserCommand::Rm {
            name,
            containers,
            target,
        } => rm(&name, containers, &target),
        UserCommand::List { json, target } => {
            list::list(&target_policy(&target), &target.docker, json)
        }
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("labgpu user: {e}");
            1
        }
    }
}

fn target_policy(t: &UserTarget) -> PathBuf {
    t.policy.clone().unwrap_or_else(policy_path)
}

/// What `user set` changes beyond `UserChanges`.
struct SetOnly {
    add_gpus: Option<String>,
    remove_gpus: Option<String>,
    unmount: Vec<PathBuf>,
    set: Vec<String>,
    unset: Vec<String>,
}

/// The options checked on their own, before the file is touched.
struct Parsed {
    gpus: Option<GpuSpec>,
    mounts: Vec<MountSpec>,
}

fn parse_changes(c: &UserChanges) -> Result<Parsed, UserError> {
    Ok(Parsed {
        gpus: c.gpus.as_deref().map(parse_gpus).transpose()?,
        mounts: c
            .mounts
            .iter()
            .map(|m| parse_mount(m))
            .collect::<Result<_, _>>()?,
    })
}

/// `0,1`, `GPU-…,MIG-…`, `1:2`, `slurm`, or `""`/`none` for no GPU.
pub fn parse_gpus(spec: &str) -> Result<GpuSpec, UserError> {
    let s = spec.trim();
    if s == "slurm" {
        return Ok(GpuSpec::Slurm);
    }
    if s.is_empty() || s == "none" {
        return Ok(GpuSpec::List(Vec::new()));
    }
    let mut refs = Vec::new();
    for part in s.split(',') {
        let r: GpuRef = part.trim().parse().map_err(|why| UserError::BadGpus {
            spec: spec.to_string(),
            why,
        })?;
        if !refs.contains(&r) {
            refs.push(r);
        }
    }
    Ok(GpuSpec::List(refs))
}

/// Container paths a user's mount may not cover: the container's own kernel interfaces.
const SYSTEM_DESTINATIONS: [&str; 4] = ["/", "/proc", "/sys", "/dev"];

/// `SOURCE:DESTINATION[:ro]`, both absolute and plain.
pub fn parse_mount(spec: &str) -> Result<MountSpec, UserError> {
    let bad = |why| UserError::BadMount {
        spec: spec.to_string(),
        why,
    };
    let parts: Vec<&str> = spec.split(':').collect();
    let (source, destination, readonly) = match parts.as_slice() {
        [s, d] => (*s, *d, false),
        [s, d, "ro"] => (*s, *d, true),
        [s, d, "rw"] => (*s, *d, false),
        [_, _, _] => return Err(bad("the third part may only be ro or rw")),
        _ => {
            return Err(bad(
                "it must be SOURCE:DESTINATION or SOURCE:DESTINATION:ro",
            ))
        }
    };
    let (source, destination) = (PathBuf::from(source), PathBuf::from(destination));
    if !edit::plain_absolute(&source) || !edit::plain_absolute(&destination) {
        return Err(bad(
            "SOURCE and DESTINATION must be absolute paths without . or ..",
        ));
    }
    let system = SYSTEM_DESTINATIONS
        .iter()
        .any(|s| destination == Path::new(s) || (*s != "/" && destination.starts_with(s)));
    if system {
        return Err(bad(
            "DESTINATION may not be /, or cover the container's /proc, /sys or /dev",
        ));
    }
    Ok(MountSpec {
        source,
        destination,
        readonly,
    })
}

fn load(path: &Path, text: &str) -> Result<Policy, UserError> {
    Policy::parse(path, text.as_bytes()).map_err(UserError::Broken)
}

fn validate(path: &Path, text: &str) -> Result<Policy, UserError> {
    Policy::parse(path, text.as_bytes()).map_err(UserError::Invalid)
}

/// The other policy user who is `uid` (theirs pinned, or their host account's).
fn uid_owner(policy: &Policy, uid: u32, except: &str) -> Option<String> {
    policy
        .users
        .iter()
        .filter(|(n, _)| n.as_str() != except)
        .find(|(n, u)| u.uid.or_else(|| host::account_by_name(n).map(|a| a.uid)) == Some(uid))
        .map(|(n, _)| n.clone())
}

fn check_uid_free(policy: &Policy, name: &str, uid: u32) -> Result<(), UserError> {
    match uid_owner(policy, uid, name) {
        Some(other) => Err(UserError::UidTaken { uid, other }),
        None => Ok(()),
    }
}

/// Resolves `name`'s GPUs on this host; notes for GPUs another user has too.
fn check_gpus(policy: &Policy, name: &str) -> Result<Vec<String>, UserError> {
    let Some(user) = policy.user(name) else {
        return Ok(Vec::new());
    };
    let refs: Vec<&GpuRef> = user.gpus.iter().collect();
    if refs.is_empty() {
        return Ok(Vec::new());
    }
    let inventory =
        inventory_for(&policy.gpus, &refs, Purpose::Admin).map_err(UserError::Inventory)?;
    let mut notes = Vec::new();
    for r in refs {
        let minor = inventory
            .resolve(r)
            .map_err(|source| UserError::Gpu {
                user: name.to_string(),
                cause: source,
            })?
            .minor;
        let sharing: Vec<&str> = policy
            .users
            .iter()
            .filter(|(n, u)| {
                n.as_str() != name
                    && u.gpus
                        .iter()
                        .any(|o| inventory.resolve(o).is_ok_and(|g| g.minor == minor))
            })
            .map(|(n, _)| n.as_str())
            .collect();
        if !sharing.is_empty() {
            notes.push(format!(
                "note: GPU {r} is also {}'s: they share it",
                sharing.join("'s and ")
            ));
        }
    }
    Ok(notes)
}

/// New mounts' sources must exist, unless they are to be made.
fn check_sources(mounts: &[MountSpec], make_dirs: bool) -> Result<(), UserError> {
    for m in mounts {
        if !make_dirs && std::fs::symlink_metadata(&m.source).is_err() {
            return Err(UserError::NoSource(m.source.clone()));
        }
    }
    Ok(())
}

/// What `--login` will do, settled before anything is written.
struct Login {
    account: host::Account,
    shell: PathBuf,
}

fn plan_login(c: &UserChanges, name: &str, uid: Option<u32>) -> Result<Option<Login>, UserError> {
    if !c.login {
        return Ok(None);
    }
    let shell = host::shell_path(c.shell_path.as_deref())?;
    let account = host::login_account(name, uid).ok_or(match uid {
        Some(uid) => HostError::NoLoginAccount { uid },
        None => HostError::NoAccount {
            name: name.to_string(),
        },
    })?;
    Ok(Some(Login { account, shell }))
}

/// Creates the new mounts' missing sources, then writes `text` (when the file changes),
/// then sets the login shell.
fn apply(
    locked: &file::Locked,
    text: Option<&str>,
    make: Option<(&[MountSpec], u32, u32)>,
    login: Option<&Login>,
    name: &str,
) -> Result<(), UserError> {
    if let Some((mounts, uid, gid)) = make {
        for m in mounts {
            host::make_dir(&m.source, uid, gid)?;
        }
    }
    if let Some(text) = text {
        locked.replace(text)?;
    }
    if let Some(l) = login {
        host::set_login_shell(&l.account, &l.shell).map_err(|source| {
            UserError::LoginAfterWrite {
                user: name.to_string(),
                cause: source,
            }
        })?;
        println!(
            "login shell of {} is {}: their logins land in their container",
            l.account.name,
            l.shell.display()
        );
        if let Some(why) = login_gap(locked, name) {
            println!("note: {name}'s logins will be refused until {why}");
        }
        if !host::in_etc_shells(&l.shell) {
            println!(
                "note: {} is not in /etc/shells (the package adds it; chsh and some PAM setups refuse shells not listed there)",
                l.shell.display()
            );
        }
    }
    Ok(())
}

/// What the policy as written lacks for `name`'s logins to open.
fn login_gap(locked: &file::Locked, name: &str) -> Option<&'static str> {
    let policy = Policy::load(&locked.path).ok()?;
    if policy.proxy.is_none() {
        return Some(
            "the policy has a [proxy] table and labgpu proxy runs (labgpu-shell goes through it)",
        );
    }
    if policy.session_for(name).image.is_none() {
        return Some("a login image is set: [defaults] session = { image = \"…\" }");
    }
    None
}

fn add(name: &str, c: &UserChanges, target: &UserTarget) -> Result<(), UserError> {
    let parsed = parse_changes(c)?;
    let locked = file::lock(&target_policy(target))?;
    let text = locked.read()?;
    let before = load(&locked.path, &text)?;
    if before.users.contains_key(name) {
        return Err(EditError::Exists(name.to_string()).into());
    }
    let (uid, gid) = host::ids_for(name, c.uid, c.gid)?;
    check_uid_free(&before, name, uid)?;
    let mut doc = edit::parse(&text)?;
    let mut entries = vec![
        ("uid", toml_edit::Value::from(i64::from(uid))),
        ("gid", toml_edit::Value::from(i64::from(gid))),
    ];
    if let Some(g) = &parsed.gpus {
        entries.push(("gpus", edit::gpus_value(g)));
    }
    if !parsed.mounts.is_empty() {
        entries.push(("mounts", edit::mounts_value(&parsed.mounts)));
    }
    edit::add_user(&mut doc, name, entries)?;
    let new_text = doc.to_string();
    let after = validate(&locked.path, &new_text)?;
    let notes = check_gpus(&after, name)?;
    check_sources(&parsed.mounts, c.make_dirs)?;
    let login = plan_login(c, name, Some(uid))?;
    let make = c.make_dirs.then_some((parsed.mounts.as_slice(), uid, gid));
    apply(&locked, Some(&new_text), make, login.as_ref(), name)?;
    println!(
        "added [users.{name}] (uid {uid}, gid {gid}, GPUs {}) to {}",
        gpus_text(&parsed.gpus),
        locked.path.display()
    );
    notes.iter().for_each(|n| println!("{n}"));
    note_leftovers(&target.docker, &after, name);
    Ok(())
}

/// Containers of a former user of the same name (removed with `--containers stop`) are the
/// new user's now, their login container included: says so, when Docker answers.
fn note_leftovers(docker: &Path, policy: &Policy, name: &str) {
    let Ok(found) = containers::owned(docker, policy, Some(name)) else {
        return;
    };
    if !found.is_empty() {
        let names: Vec<String> = found.into_iter().map(|c| c.name).collect();
        println!(
            "note: Docker still has containers of an earlier {name}, which are this {name}'s now: {} (docker rm them if that is someone else)",
            names.join(", ")
        );
    }
}

fn gpus_text(g: &Option<GpuSpec>) -> String {
    match g {
        None => "none".into(),
        Some(GpuSpec::Slurm) => "from Slurm".into(),
        Some(GpuSpec::List(l)) if l.is_empty() => "none".into(),
        Some(GpuSpec::List(l)) => l
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", "),
    }
}

fn set(name: &str, c: &UserChanges, more: &SetOnly, target: &UserTarget) -> Result<(), UserError> {
    let parsed = parse_changes(c)?;
    let sets = parse_sets(&more.set)?;
    let locked = file::lock(&target_policy(target))?;
    let text = locked.read()?;
    let before = load(&locked.path, &text)?;
    let current = before
        .user(name)
        .ok_or_else(|| EditError::Missing(name.to_string()))?;
    let mut doc = edit::parse(&text)?;
    let new_gpus = gpu_change(name, &doc, current.gpus.to_vec(), &parsed, more)?;
    let user = edit::user_mut(&mut doc, name)?;
    if c.uid.is_some() || c.gid.is_some() {
        let (uid, gid) = host::ids_for(name, c.uid.or(current.uid), c.gid.or(current.gid))?;
        edit::set_value(user, "uid", i64::from(uid).into());
        edit::set_value(user, "gid", i64::from(gid).into());
    }
    if let Some(g) = &new_gpus {
        edit::set_value(user, "gpus", edit::gpus_value(g));
    }
    edit_keys(user, name, &parsed.mounts, more, &sets)?;
    let new_text = doc.to_string();
    let after = validate(&locked.path, &new_text)?;
    let edited = after.user(name).expect("set keeps the user");
    if let Some(uid) = edited.uid.filter(|u| Some(*u) != current.uid) {
        check_uid_free(&after, name, uid)?;
    }
    let gpus_touched = new_gpus.is_some() || sets.iter().any(|(k, _)| k == "gpus");
    let notes = if gpus_touched {
        check_gpus(&after, name)?
    } else {
        Vec::new()
    };
    check_sources(&parsed.mounts, c.make_dirs)?;
    let login = plan_login(c, name, edited.uid)?;
    let changed = new_text != text;
    if !changed && login.is_none() {
        println!("[users.{name}] already says that: nothing changed");
        return Ok(());
    }
    let ids = if c.make_dirs && !parsed.mounts.is_empty() {
        Some(host::ids_for(name, edited.uid, edited.gid)?)
    } else {
        None
    };
    let make = ids.map(|(uid, gid)| (parsed.mounts.as_slice(), uid, gid));
    apply(
        &locked,
        changed.then_some(new_text.as_str()),
        make,
        login.as_ref(),
        name,
    )?;
    if changed {
        println!("changed [users.{name}] in {}", locked.path.display());
    }
    notes.iter().for_each(|n| println!("{n}"));
    let lost_gpu = current.gpus.iter().any(|g| !edited.gpus.contains(g));
    if lost_gpu || !more.unmount.is_empty() {
        note_running(&target.docker, &after, name);
    }
    Ok(())
}

/// `--set KEY=VALUE` pairs.
fn parse_sets(sets: &[String]) -> Result<Vec<(String, String)>, UserError> {
    sets.iter()
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
            _ => Err(UserError::BadSet(kv.clone())),
        })
        .collect()
}

/// Mounts out and in, then `--set` and `--unset`, in the user's table.
fn edit_keys(
    user: &mut dyn toml_edit::TableLike,
    name: &str,
    mounts: &[MountSpec],
    more: &SetOnly,
    sets: &[(String, String)],
) -> Result<(), UserError> {
    for d in &more.unmount {
        edit::remove_mount(user, name, d)?;
    }
    for m in mounts {
        edit::add_mount(user, name, m)?;
    }
    for (k, v) in sets {
        edit::set_path(user, k, v)?;
    }
    for k in &more.unset {
        edit::unset_path(user, name, k)?;
    }
    Ok(())
}

/// The GPU list `user set` writes, if it changes it.
fn gpu_change(
    name: &str,
    doc: &toml_edit::DocumentMut,
    current: Vec<GpuRef>,
    parsed: &Parsed,
    more: &SetOnly,
) -> Result<Option<GpuSpec>, UserError> {
    if let Some(g) = &parsed.gpus {
        return Ok(Some(g.clone()));
    }
    if more.add_gpus.is_none() && more.remove_gpus.is_none() {
        return Ok(None);
    }
    let is_slurm = doc
        .get("users")
        .and_then(|u| u.get(name))
        .and_then(|u| u.get("gpus"))
        .and_then(|g| g.as_str())
        == Some("slurm");
    if is_slurm {
        return Err(UserError::SlurmList(name.to_string()));
    }
    let list = |s: &Option<String>| -> Result<Vec<GpuRef>, UserError> {
        match s.as_deref().map(parse_gpus).transpose()? {
            None => Ok(Vec::new()),
            Some(GpuSpec::List(l)) => Ok(l),
            Some(GpuSpec::Slurm) => Err(UserError::BadGpus {
                spec: "slurm".into(),
                why: "slurm is set with --gpus slurm".into(),
            }),
        }
    };
    let (add, remove) = (list(&more.add_gpus)?, list(&more.remove_gpus)?);
    let mut gpus: Vec<GpuRef> = current
        .into_iter()
        .filter(|g| !remove.contains(g))
        .collect();
    for g in add {
        if !gpus.contains(&g) {
            gpus.push(g);
        }
    }
    Ok(Some(GpuSpec::List(gpus)))
}

/// Running containers were made with the old GPUs and mounts: they keep them until they are
/// recreated. Says which, when Docker answers.
fn note_running(docker: &Path, policy: &Policy, name: &str) {
    let Ok(found) = containers::owned(docker, policy, Some(name)) else {
        return;
    };
    let running: Vec<String> = found
        .into_iter()
        .filter(|c| c.running)
        .map(|c| c.name)
        .collect();
    if !running.is_empty() {
        println!(
            "note: {name}'s running containers keep the GPUs and mounts they were created with until they are recreated: {} (labgpu verify flags them)",
            running.join(", ")
        );
    }
}

fn rm(name: &str, action: ContainersAction, target: &UserTarget) -> Result<(), UserError> {
    let locked = file::lock(&target_policy(target))?;
    let text = locked.read()?;
    let before = load(&locked.path, &text)?;
    let user = before
        .user(name)
        .ok_or_else(|| EditError::Missing(name.to_string()))?
        .clone();
    let handled = handle_containers(&target.docker, &before, name, action)?;
    let mut doc = edit::parse(&text)?;
    edit::remove_user(&mut doc, name)?;
    let new_text = doc.to_string();
    validate(&locked.path, &new_text)?;
    locked.replace(&new_text)?;
    drop(locked);
    // A container made between the sweep and the write: the user could still create then.
    let late = handle_containers(&target.docker, &before, name, action).unwrap_or_default();
    println!("removed [users.{name}] from {}", before.path.display());
    let all: Vec<String> = handled.into_iter().chain(late).collect();
    match action {
        ContainersAction::Keep => {}
        _ if all.is_empty() => println!("{name} had no containers"),
        ContainersAction::Stop => println!("stopped {name}'s containers: {}", all.join(", ")),
        ContainersAction::Remove => println!("removed {name}'s containers: {}", all.join(", ")),
    }
    let kept: Vec<String> = user
        .mounts
        .iter()
        .map(|m| m.source.as_path().display().to_string())
        .collect();
    if !kept.is_empty() {
        println!("kept their data directories: {}", kept.join(", "));
    }
    if let Some(account) = host::login_account(name, user.uid)
        .filter(|a| crate::shell::is_login_shell_name(a.shell.as_os_str()))
    {
        println!(
            "note: {}'s login shell is still {}: their logins are refused until it is changed (usermod -s /bin/bash {})",
            account.name,
            account.shell.display(),
            account.name
        );
    }
    Ok(())
}

/// Stops or removes `name`'s containers; their names. Any failure stops the removal.
fn handle_containers(
    docker: &Path,
    policy: &Policy,
    name: &str,
    action: ContainersAction,
) -> Result<Vec<String>, UserError> {
    if action == ContainersAction::Keep {
        return Ok(Vec::new());
    }
    let fail = |source| UserError::Docker {
        user: name.to_string(),
        cause: source,
    };
    let found = containers::owned(docker, policy, Some(name)).map_err(fail)?;
    let mut done = Vec::new();
    for c in found {
        match action {
            ContainersAction::Stop if !c.running => continue,
            ContainersAction::Stop => containers::stop(docker, &c),
            _ => containers::remove(docker, policy, &c),
        }
        .map_err(fail)?;
        done.push(c.name);
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpu_lists() {
        assert_eq!(parse_gpus("slurm").unwrap(), GpuSpec::Slurm);
        assert_eq!(parse_gpus("").unwrap(), GpuSpec::List(vec![]));
        assert_eq!(parse_gpus("none").unwrap(), GpuSpec::List(vec![]));
        assert_eq!(
            parse_gpus("0, 1,GPU-8f6e2b1c,0").unwrap(),
            GpuSpec::List(vec![
                GpuRef::Number(0),
                GpuRef::Number(1),
                GpuRef::Uuid("GPU-8f6e2b1c".into())
            ])
        );
        let e = parse_gpus("0,gpu1").unwrap_err().to_string();
        assert!(e.contains("\"gpu1\""), "{e}");
    }

    #[test]
    fn mounts_are_plain_absolute_and_leave_the_system_alone() {
        let m = parse_mount("/data/alice:/workspace").unwrap();
        assert_eq!(m.source, Path::new("/data/alice"));
        assert!(!m.readonly);
        assert!(parse_mount("/srv/ds:/ds:ro").unwrap().readonly);
        assert!(!parse_mount("/srv/ds:/ds:rw").unwrap().readonly);
        for bad in [
            "data:/workspace",
            "/data:workspace",
            "/data/../etc:/x",
            "/data",
            "/a:/b:rx",
            "/a:/b:ro:x",
            "/a:/",
            "/a:/proc",
            "/a:/dev/shm",
            "/a:/sys/fs",
        ] {
            assert!(parse_mount(bad).is_err(), "{bad}");
        }
        assert!(parse_mount("/a:/devices").is_ok());
    }

    #[test]
    fn a_uid_is_one_users() {
        let p = Policy::parse(
            Path::new("/p.toml"),
            b"version = 1\n[users.alice]\nuid = 5000\ngid = 5000\n[users.root]\n",
        )
        .unwrap();
        assert_eq!(uid_owner(&p, 5000, "bob").as_deref(), Some("alice"));
        assert_eq!(uid_owner(&p, 5000, "alice"), None);
        // [users.root] has no uid: its host account's (0) is taken.
        assert_eq!(uid_owner(&p, 0, "x").as_deref(), Some("root"));
        assert!(matches!(
            check_uid_free(&p, "bob", 5000),
            Err(UserError::UidTaken { .. })
        ));
    }
}
