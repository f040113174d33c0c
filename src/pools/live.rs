//! Whether an allocation still has a container behind it. An entry is dropped only when it is
//! provably dead: neither its container's init (runc's state) nor the labgpu process that made
//! it (pid and start time, so a recycled pid does not count) is alive. This is what frees a
//! GPU after a kill -9 mid-create, a create runc refused, or a container that stopped.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::state::Entry;

/// A process as the kernel names it for good: pid and start time (clock ticks after boot,
/// field 22 of /proc/<pid>/stat).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcId {
    pub pid: i32,
    pub start: u64,
}

impl ProcId {
    /// This process.
    pub fn current(proc_root: &Path) -> Option<ProcId> {
        ProcId::of(proc_root, std::process::id() as i32)
    }

    pub fn of(proc_root: &Path, pid: i32) -> Option<ProcId> {
        if pid <= 0 {
            return None;
        }
        let stat = std::fs::read_to_string(proc_root.join(pid.to_string()).join("stat")).ok()?;
        // The name (field 2) may hold spaces and parentheses: count from the last ')'.
        let rest = &stat[stat.rfind(')')? + 1..];
        let start = rest.split_whitespace().nth(19)?.parse().ok()?;
        Some(ProcId { pid, start })
    }

    pub fn alive(&self, proc_root: &Path) -> bool {
        ProcId::of(proc_root, self.pid) == Some(*self)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// The container's init runs (created, running or paused).
    Running(ProcId),
    /// The create is still going on (labgpu, then runc create, in the same process).
    Creating,
    /// runc's state is there but cannot be read: not proof of anything, so kept.
    Unknown,
    Dead,
}

/// Where the entry's container stands.
pub fn liveness(e: &Entry, proc_root: &Path) -> Liveness {
    let state = e.runc_root.join(&e.container).join("state.json");
    match std::fs::read(&state) {
        Ok(bytes) => match init_of(&bytes) {
            Some(init) if init.alive(proc_root) => return Liveness::Running(init),
            Some(_) => {}
            None if e.creator.alive(proc_root) => return Liveness::Creating,
            None => return Liveness::Unknown,
        },
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
            if !e.creator.alive(proc_root) {
                return Liveness::Unknown;
            }
        }
        Err(_) => {}
    }
    if e.creator.alive(proc_root) {
        Liveness::Creating
    } else {
        Liveness::Dead
    }
}

/// The init process recorded in a runc `state.json`.
fn init_of(bytes: &[u8]) -> Option<ProcId> {
    let v: Value = serde_json::from_slice(bytes).ok()?;
    Some(ProcId {
        pid: i32::try_from(v.get("init_process_pid")?.as_i64()?).ok()?,
        start: v.get("init_process_start")?.as_u64()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(root: &Path, creator: ProcId) -> Entry {
        Entry {
            pool: "p".into(),
            gpu: "0".into(),
            minor: 0,
            container: "c1".into(),
            runc_root: root.to_path_buf(),
            owner: "alice".into(),
            since: 0,
            creator,
            last_busy: None,
        }
    }

    fn gone() -> ProcId {
        ProcId {
            pid: i32::MAX - 1,
            start: 1,
        }
    }

    #[test]
    fn this_process_is_alive_and_a_recycled_pid_is_not() {
        let me = ProcId::current(Path::new("/proc")).unwrap();
        assert!(me.alive(Path::new("/proc")));
        let recycled = ProcId {
            start: me.start + 1,
            ..me
        };
        assert!(!recycled.alive(Path::new("/proc")));
        assert!(!gone().alive(Path::new("/proc")));
    }

    #[test]
    fn an_entry_lives_while_its_creator_or_its_init_does() {
        let proc = Path::new("/proc");
        let d = tempfile::tempdir().unwrap();
        let me = ProcId::current(proc).unwrap();
        assert_eq!(liveness(&entry(d.path(), me), proc), Liveness::Creating);
        assert_eq!(liveness(&entry(d.path(), gone()), proc), Liveness::Dead);
        std::fs::create_dir(d.path().join("c1")).unwrap();
        let state = |init: ProcId| {
            serde_json::json!({"id": "c1", "init_process_pid": init.pid,
                               "init_process_start": init.start})
            .to_string()
        };
        std::fs::write(d.path().join("c1/state.json"), state(me)).unwrap();
        assert_eq!(
            liveness(&entry(d.path(), gone()), proc),
            Liveness::Running(me)
        );
        // A stopped container: runc's state is still there, its init is not.
        std::fs::write(d.path().join("c1/state.json"), state(gone())).unwrap();
        assert_eq!(liveness(&entry(d.path(), gone()), proc), Liveness::Dead);
        std::fs::write(d.path().join("c1/state.json"), "garbage").unwrap();
        assert_eq!(liveness(&entry(d.path(), gone()), proc), Liveness::Unknown);
    }
}
