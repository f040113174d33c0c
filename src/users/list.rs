//! `labgpu user list`: each policy user with their uid, GPUs, login shell, running containers
//! and the GPU memory their processes hold (NVML's per-process numbers, where NVML answers).

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::json;

use super::containers::{self, Container};
use super::host;
use super::UserError;
use crate::gpu::{inventory_for, nvml, Inventory, Purpose};
use crate::groups::Origin;
use crate::policy::Policy;

/// One user's row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub user: String,
    pub uid: Option<u32>,
    /// The uid came from the host account named like the user, not from the policy.
    pub uid_from_host: bool,
    pub gpus: Vec<String>,
    pub login_shell: Option<String>,
    pub labgpu_login: bool,
    pub containers: Vec<Container>,
    pub gpu_memory: Option<u64>,
    /// Where the settings come from; `None`: the user's own `[users]` table alone.
    pub origin: Option<Origin>,
}

pub fn list(policy_path: &Path, docker: &Path, as_json: bool) -> Result<(), UserError> {
    let policy = Policy::load(policy_path).map_err(UserError::Broken)?;
    let found = match containers::owned(docker, &policy, None) {
        Ok(c) => Some(c),
        Err(e) => {
            eprintln!("labgpu user list: no container counts: {e}");
            None
        }
    };
    let memory = found.as_deref().and_then(|c| gpu_memory(&policy, c));
    let rows = rows(&policy, found.as_deref(), memory.as_ref());
    if as_json {
        println!("{}", to_json(&rows, found.is_some()));
    } else {
        print!("{}", table(&rows));
    }
    Ok(())
}

fn rows(
    policy: &Policy,
    found: Option<&[Container]>,
    memory: Option<&BTreeMap<String, u64>>,
) -> Vec<Row> {
    policy
        .users
        .iter()
        .map(|(name, u)| {
            let account = host::login_account(name, u.uid);
            let shell = account.as_ref().map(|a| a.shell.clone());
            Row {
                user: name.clone(),
                uid: u.uid.or(account.as_ref().map(|a| a.uid)),
                uid_from_host: u.uid.is_none() && account.is_some(),
                gpus: gpu_words(policy, name),
                labgpu_login: shell
                    .as_ref()
                    .is_some_and(|s| crate::shell::is_login_shell_name(s.as_os_str())),
                login_shell: shell.map(|s| s.display().to_string()),
                containers: found
                    .into_iter()
                    .flatten()
                    .filter(|c| c.owner == *name)
                    .cloned()
                    .collect(),
                gpu_memory: memory.map(|m| m.get(name).copied().unwrap_or(0)),
                origin: policy.origins.get(name).cloned(),
            }
        })
        .collect()
}

/// The user's GPUs as the policy writes them (`"slurm"` for a Slurm user).
fn gpu_words(policy: &Policy, name: &str) -> Vec<String> {
    match policy.user(name) {
        Some(u) if u.gpus.is_slurm() => vec!["slurm".into()],
        Some(u) => u.gpus.iter().map(ToString::to_string).collect(),
        None => Vec::new(),
    }
}

/// The POLICY column: `own`, `via G` (a group's table only), `own+G` (both); several groups
/// joined by `+`.
fn origin_word(origin: Option<&Origin>) -> String {
    let Some(o) = origin else {
        return "own".into();
    };
    let groups = o.groups.join("+");
    if o.own {
        format!("own+{groups}")
    } else {
        format!("via {groups}")
    }
}

/// "gpus, memory via group ml; cpus via group vision": which keys each group gave.
fn via_words(origin: &Origin) -> String {
    let mut by_group: Vec<(&str, Vec<&str>)> = Vec::new();
    for g in &origin.groups {
        let keys: Vec<&str> = origin
            .via
            .iter()
            .filter(|(_, from)| *from == g)
            .map(|(k, _)| k.as_str())
            .collect();
        if !keys.is_empty() {
            by_group.push((g, keys));
        }
    }
    let parts: Vec<String> = by_group
        .iter()
        .map(|(g, keys)| format!("{} via group {g}", keys.join(", ")))
        .collect();
    if parts.is_empty() {
        "nothing via its groups (own keys cover them)".into()
    } else {
        parts.join("; ")
    }
}

/// GPU memory per owner: NVML's processes, each placed in the running container whose id
/// its cgroup path names. `None` when NVML is not this host's inventory.
fn gpu_memory(policy: &Policy, found: &[Container]) -> Option<BTreeMap<String, u64>> {
    let inventory = inventory_for(&policy.gpus, &[], Purpose::Admin).ok()?;
    if inventory.source_name() != "nvml" {
        return None;
    }
    let lib = policy.gpus.nvml_lib.as_ref().map(|l| l.as_path());
    let processes = nvml::processes(lib, nvml::DEADLINE).ok()?;
    let running: Vec<&Container> = found.iter().filter(|c| c.running).collect();
    let mut by_owner = BTreeMap::new();
    for p in processes {
        let cgroup = std::fs::read_to_string(format!("/proc/{}/cgroup", p.pid)).unwrap_or_default();
        if let Some(c) = running.iter().find(|c| cgroup_names(&cgroup, &c.id)) {
            *by_owner.entry(c.owner.clone()).or_insert(0) += p.used_bytes.unwrap_or(0);
        }
    }
    Some(by_owner)
}

/// Whether a /proc/PID/cgroup text places the process in container `id` (cgroupfs
/// `/docker/<id>`, systemd `docker-<id>.scope`).
pub fn cgroup_names(cgroup: &str, id: &str) -> bool {
    id.len() == 64
        && cgroup.lines().any(|l| {
            l.rsplit(':').next().is_some_and(|path| {
                path.split('/')
                    .any(|seg| seg == id || seg == format!("docker-{id}.scope"))
            })
        })
}

fn mib(bytes: u64) -> String {
    format!("{} MiB", bytes / (1 << 20))
}

fn table(rows: &[Row]) -> String {
    let mut out = format!(
        "{:<16} {:<8} {:<20} {:<14} {:<8} {:<10} POLICY\n",
        "USER", "UID", "GPUS", "LOGIN", "RUNNING", "GPU MEMORY"
    );
    for r in rows {
        let uid = match (r.uid, r.uid_from_host) {
            (Some(u), false) => u.to_string(),
            (Some(u), true) => format!("{u}*"),
            (None, _) => "-".into(),
        };
        let gpus = if r.gpus.is_empty() {
            "-".to_string()
        } else {
            r.gpus.join(",")
        };
        let login = if r.labgpu_login {
            "labgpu-shell".to_string()
        } else {
            r.login_shell
                .as_deref()
                .map(|s| s.rsplit('/').next().unwrap_or(s).to_string())
                .unwrap_or_else(|| "-".into())
        };
        let running = r.containers.iter().filter(|c| c.running).count();
        out.push_str(&format!(
            "{:<16} {:<8} {:<20} {:<14} {:<8} {:<10} {}\n",
            r.user,
            uid,
            gpus,
            login,
            running,
            r.gpu_memory.map(mib).unwrap_or_else(|| "-".into()),
            origin_word(r.origin.as_ref()),
        ));
    }
    if rows.iter().any(|r| r.uid_from_host) {
        out.push_str("* uid of the host account of that name (the policy pins none)\n");
    }
    for r in rows {
        if let Some(o) = &r.origin {
            out.push_str(&format!("{}: {}\n", r.user, via_words(o)));
        }
    }
    out
}

fn to_json(rows: &[Row], counted: bool) -> String {
    let users: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| {
            json!({
                "user": r.user,
                "uid": r.uid,
                "uid_from_host": r.uid_from_host,
                "gpus": r.gpus,
                "login_shell": r.login_shell,
                "labgpu_login": r.labgpu_login,
                "running": counted.then(|| r.containers.iter().filter(|c| c.running).count()),
                "containers": counted.then(|| r.containers.iter().map(|c| json!({
                    "id": c.id, "name": c.name, "running": c.running,
                })).collect::<Vec<_>>()),
                "gpu_memory_bytes": r.gpu_memory,
                "own_table": r.origin.as_ref().is_none_or(|o| o.own),
                "groups": r.origin.as_ref().map(|o| o.groups.clone()).unwrap_or_default(),
                "via": r.origin.as_ref().map(|o| o.via.clone()).unwrap_or_default(),
            })
        })
        .collect();
    serde_json::to_string_pretty(&json!({ "users": users })).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn processes_are_placed_by_their_cgroup() {
        assert!(cgroup_names(&format!("4:devices:/docker/{ID}\n"), ID));
        assert!(cgroup_names(
            &format!("0::/system.slice/docker-{ID}.scope\n"),
            ID
        ));
        assert!(!cgroup_names("0::/user.slice/session-3.scope\n", ID));
        assert!(!cgroup_names(&format!("0::/docker/{ID}x\n"), ID));
        assert!(!cgroup_names("0::/docker/abc\n", "abc"));
    }

    #[test]
    fn rows_count_each_owners_running_containers() {
        let policy = Policy::parse(
            Path::new("/nonexistent/p.toml"),
            b"version = 1\n[users.alice]\nuid = 4242\ngid = 4242\ngpus = [0, \"GPU-abc\"]\n[users.bob]\nuid = 4343\ngid = 4343\n",
        )
        .unwrap();
        let c = |owner: &str, running| Container {
            id: ID.into(),
            name: format!("{owner}-x"),
            running,
            owner: owner.into(),
        };
        let found = vec![c("alice", true), c("alice", false), c("bob", true)];
        let mut mem = BTreeMap::new();
        mem.insert("alice".to_string(), 3u64 << 30);
        let rows = rows(&policy, Some(&found), Some(&mem));
        assert_eq!(rows[0].user, "alice");
        assert_eq!(rows[0].gpus, ["0", "GPU-abc"]);
        assert_eq!(rows[0].containers.len(), 2);
        assert_eq!(rows[0].gpu_memory, Some(3 << 30));
        assert_eq!(rows[1].gpu_memory, Some(0));
        let t = table(&rows);
        assert!(t.contains("alice            4242     0,GPU-abc"), "{t}");
        assert!(t.contains("3072 MiB"), "{t}");
        let j: serde_json::Value = serde_json::from_str(&to_json(&rows, true)).unwrap();
        assert_eq!(j["users"][0]["running"], 1);
        assert_eq!(j["users"][1]["containers"][0]["name"], "bob-x");
        let j: serde_json::Value = serde_json::from_str(&to_json(&rows, false)).unwrap();
        assert!(j["users"][0]["running"].is_null());
        assert_eq!(j["users"][0]["own_table"], true);
        assert!(t.lines().nth(1).unwrap().ends_with(" own"), "{t}");
    }

    #[test]
    fn group_members_are_listed_with_where_their_settings_come_from() {
        let mut policy = Policy::parse(
            Path::new("/nonexistent/p.toml"),
            b"version = 1\n[groups.ml]\ngpus = [1]\nmemory = \"8g\"\n[users.alice]\ngpus = [0]\n",
        )
        .unwrap();
        let accounts = crate::accounts::Accounts::parse(
            "alice:x:4242:4242::/:/bin/sh\nbob:x:4343:4343::/:/bin/sh\n",
            "ml:x:5000:alice,bob\n",
        );
        policy.apply_groups(&accounts).unwrap();
        let rows = rows(&policy, None, None);
        let names: Vec<&str> = rows.iter().map(|r| r.user.as_str()).collect();
        assert_eq!(names, ["alice", "bob"]);
        assert_eq!(rows[0].gpus, ["0"]);
        assert_eq!(rows[1].gpus, ["1"]);
        let t = table(&rows);
        assert!(t.contains(" own+ml\n"), "{t}");
        assert!(t.contains(" via ml\n"), "{t}");
        assert!(t.contains("alice: memory via group ml\n"), "{t}");
        assert!(t.contains("bob: gpus, memory via group ml\n"), "{t}");
        let j: serde_json::Value = serde_json::from_str(&to_json(&rows, false)).unwrap();
        assert_eq!(j["users"][1]["own_table"], false);
        assert_eq!(j["users"][1]["groups"][0], "ml");
        assert_eq!(j["users"][1]["via"]["gpus"], "ml");
    }
}
