//! Each user's parent cgroup: where a container is placed (a pure rewrite of the spec's
//! `linux.cgroupsPath`), and the I/O that creates the parent, sets its limits and removes
//! it once empty.
//!
//! cgroupfs driver (`/docker/<id>`): the container goes to `/<name>/<user>/<id>`; labgpu
//! makes `<name>/<user>` in the memory, pids and cpu hierarchies (v1) or in the unified
//! one (v2) and writes its limits; runc makes the rest of the path, as for Docker's own
//! `/docker`. systemd driver (`system.slice:docker:<id>`): the scope goes in
//! `<name>-<user>.slice`, a slice systemd creates on first use (runc asks for the scope
//! with `Slice=`), whose limits labgpu sets with `systemctl set-property --runtime` before
//! the scope is started. Writing the slice's cgroup files directly would not last: systemd
//! writes its own values back whenever it realizes the slice.
//!
//! Removing an empty parent races with a create that has set it up but whose runc has not
//! yet made the container's cgroup in it: every create holds a shared lock on the user's
//! lock file from before the parent is set up until runc has made its cgroup (the
//! descriptor stays open across the exec of runc), and removal takes it exclusively.

use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::os::fd::{AsRawFd, IntoRawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::cap::DEFAULT_PERIOD;
use super::Ceilings;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    Cgroupfs,
    Systemd,
}

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cannot {what} {path}: {cause}")]
    Io {
        what: &'static str,
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("systemctl set-property {unit} failed: {output}")]
    Systemctl { unit: String, output: String },
    #[error(
        "linux.cgroupsPath {0:?} is not slice:prefix:name, as the systemd cgroup driver writes it"
    )]
    BadSystemdPath(String),
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> CgroupError + 'a {
    move |source| CgroupError::Io {
        what,
        path: path.to_path_buf(),
        cause: source,
    }
}

/// Whose parent a container goes under, and how the driver names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub driver: Driver,
    /// `[runtime] user_cgroups`.
    pub name: String,
    pub user: String,
}

impl Placement {
    /// The systemd slice of the user: `<name>-<user>.slice`, `-` in the user's name escaped
    /// as systemd does (a `-` would otherwise make `ann-marie` a child of `ann`'s slice).
    pub fn slice(&self) -> String {
        format!("{}-{}.slice", self.name, self.user.replace('-', "\\x2d"))
    }

    /// The parent's path below a hierarchy's root.
    pub fn relative_dir(&self) -> PathBuf {
        match self.driver {
            Driver::Cgroupfs => PathBuf::from(&self.name).join(&self.user),
            Driver::Systemd => PathBuf::from(format!("{}.slice", self.name)).join(self.slice()),
        }
    }

    /// The container's `linux.cgroupsPath` under this parent, from the one Docker wrote
    /// (its last part, normally the container id, is kept).
    pub fn cgroups_path(&self, current: Option<&str>, id: &str) -> Result<String, CgroupError> {
        match self.driver {
            Driver::Cgroupfs => {
                let leaf = current
                    .and_then(|c| c.rsplit('/').find(|p| !p.is_empty()))
                    .unwrap_or(id);
                Ok(format!("/{}/{}/{leaf}", self.name, self.user))
            }
            Driver::Systemd => {
                let (prefix, unit) = match current.filter(|c| !c.is_empty()) {
                    Some(c) => {
                        let parts: Vec<&str> = c.split(':').collect();
                        match parts.as_slice() {
                            [_, prefix, name] if !name.is_empty() => (*prefix, *name),
                            _ => return Err(CgroupError::BadSystemdPath(c.to_string())),
                        }
                    }
                    None => ("labgpu", id),
                };
                Ok(format!("{}:{prefix}:{unit}", self.slice()))
            }
        }
    }
}

/// Where the cgroup hierarchies and labgpu's lock files are (tests point them elsewhere).
#[derive(Debug, Clone)]
pub struct Cgroups {
    pub root: PathBuf,
    pub lock_dir: PathBuf,
}

impl Cgroups {
    pub fn system() -> Cgroups {
        Cgroups {
            root: PathBuf::from("/sys/fs/cgroup"),
            lock_dir: PathBuf::from("/run/lock/labgpu-cgroups"),
        }
    }

    /// cgroup v2 only (a unified hierarchy at the root), else v1 (legacy or hybrid).
    pub fn unified(&self) -> bool {
        self.root.join("cgroup.controllers").exists()
    }

    /// Before runc runs: takes the user's lock (shared, kept open across exec so that it
    /// is held until runc has made the container's cgroup), then sets the parent up.
    pub fn prepare(&self, p: &Placement, c: &Ceilings) -> Result<(), CgroupError> {
        let lock = self.lock(p, libc::LOCK_SH)?.expect("blocking lock");
        // runc inherits the descriptor (and with it the lock) through execve.
        let fd = lock.into_raw_fd();
        nix::fcntl::fcntl(fd, nix::fcntl::F_SETFD(nix::fcntl::FdFlag::empty()))
            .map_err(|e| io("keep open", &self.lock_dir)(e.into()))?;
        self.apply(p, c)
    }

    /// The user's lock file, locked (`LOCK_SH` waits; `LOCK_EX` does not: `None` if busy).
    fn lock(&self, p: &Placement, how: libc::c_int) -> Result<Option<File>, CgroupError> {
        let dir = self.lock_dir.join(&p.name);
        std::fs::create_dir_all(&dir).map_err(io("create", &dir))?;
        let path = dir.join(format!("{}.lock", p.user));
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(io("open", &path))?;
        let nb = if how == libc::LOCK_EX {
            libc::LOCK_NB
        } else {
            0
        };
        // SAFETY: flock on a descriptor this function owns.
        let rc = unsafe { libc::flock(file.as_raw_fd(), how | nb) };
        if rc == 0 {
            return Ok(Some(file));
        }
        let e = std::io::Error::last_os_error();
        if e.kind() == ErrorKind::WouldBlock {
            return Ok(None);
        }
        Err(io("lock", &path)(e))
    }

    /// Creates the parent if needed and sets its limits to `c` (no limit where `c` has
    /// none).
    pub fn apply(&self, p: &Placement, c: &Ceilings) -> Result<(), CgroupError> {
        match (p.driver, self.unified()) {
            (Driver::Systemd, _) => set_slice_properties(&p.slice(), c),
            (Driver::Cgroupfs, false) => self.apply_v1(p, c),
            (Driver::Cgroupfs, true) => self.apply_v2(p, c),
        }
    }

    fn apply_v1(&self, p: &Placement, c: &Ceilings) -> Result<(), CgroupError> {
        let rel = p.relative_dir();
        let mem = self.root.join("memory").join(&rel);
        mkdir(&mem)?;
        let limit = c.memory.as_ref().map_or(-1, |m| m.value.0 as i64);
        set_v1_memory(&mem, limit)?;
        let pids = self.root.join("pids").join(&rel);
        mkdir(&pids)?;
        let max = c
            .pids
            .as_ref()
            .map_or("max".into(), |n| n.value.to_string());
        write(&pids.join("pids.max"), &max)?;
        let cpu = self.root.join("cpu").join(&rel);
        mkdir(&cpu)?;
        let quota = c
            .cpus
            .as_ref()
            .map_or(-1, |n| n.value.quota(DEFAULT_PERIOD));
        if quota > 0 {
            // The kernel refuses a parent quota below a child's (v1 only).
            lower_child_quotas(&cpu, c.cpus.as_ref().map(|n| n.value).expect("quota"))?;
        }
        write(&cpu.join("cpu.cfs_period_us"), &DEFAULT_PERIOD.to_string())?;
        write(&cpu.join("cpu.cfs_quota_us"), &quota.to_string())
    }

    fn apply_v2(&self, p: &Placement, c: &Ceilings) -> Result<(), CgroupError> {
        let top = self.root.join(&p.name);
        mkdir(&top)?;
        for dir in [&self.root, &top] {
            write(&dir.join("cgroup.subtree_control"), "+cpu +memory +pids")?;
        }
        let dir = self.root.join(p.relative_dir());
        mkdir(&dir)?;
        let mem = c
            .memory
            .as_ref()
            .map_or("max".into(), |m| m.value.0.to_string());
        write(&dir.join("memory.max"), &mem)?;
        if dir.join("memory.swap.max").exists() {
            let swap = if c.memory.is_some() { "0" } else { "max" };
            write(&dir.join("memory.swap.max"), swap)?;
        }
        let max = c
            .pids
            .as_ref()
            .map_or("max".into(), |n| n.value.to_string());
        write(&dir.join("pids.max"), &max)?;
        let quota = c
            .cpus
            .as_ref()
            .map_or("max".into(), |n| n.value.quota(DEFAULT_PERIOD).to_string());
        write(&dir.join("cpu.max"), &format!("{quota} {DEFAULT_PERIOD}"))
    }

    /// The users that have a parent under `name` now, with the driver that made it.
    pub fn parents(&self, name: &str) -> Vec<Placement> {
        let mut found = Vec::new();
        let (fs_dir, slice_dir) = if self.unified() {
            (
                self.root.join(name),
                self.root.join(format!("{name}.slice")),
            )
        } else {
            let pids = self.root.join("pids");
            (pids.join(name), pids.join(format!("{name}.slice")))
        };
        for user in subdirs(&fs_dir) {
            found.push(Placement {
                driver: Driver::Cgroupfs,
                name: name.to_string(),
                user,
            });
        }
        let prefix = format!("{name}-");
        for slice in subdirs(&slice_dir) {
            let user = slice
                .strip_prefix(&prefix)
                .and_then(|s| s.strip_suffix(".slice"))
                .map(|u| u.replace("\\x2d", "-"));
            if let Some(user) = user {
                found.push(Placement {
                    driver: Driver::Systemd,
                    name: name.to_string(),
                    user,
                });
            }
        }
        found
    }

    /// The hierarchies' directories of the parent (several under v1).
    fn dirs(&self, p: &Placement) -> Vec<PathBuf> {
        let rel = p.relative_dir();
        if self.unified() {
            return vec![self.root.join(rel)];
        }
        let mut dirs: Vec<PathBuf> = std::fs::read_dir(&self.root)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.path().join(&rel))
            .filter(|d| d.is_dir())
            .collect();
        dirs.sort();
        dirs
    }

    /// Whether no container (no child cgroup, no process) is in the parent.
    pub fn is_empty(&self, p: &Placement) -> bool {
        self.dirs(p).iter().all(|d| {
            subdirs(d).is_empty()
                && std::fs::read_to_string(d.join("cgroup.procs"))
                    .is_ok_and(|s| s.trim().is_empty())
        })
    }

    /// Removes the parent if it is empty and no create is setting it up; `Ok(false)` when
    /// it stays.
    pub fn remove_if_empty(&self, p: &Placement) -> Result<bool, CgroupError> {
        if !self.is_empty(p) {
            return Ok(false);
        }
        let Some(_lock) = self.lock(p, libc::LOCK_EX)? else {
            return Ok(false);
        };
        if !self.is_empty(p) {
            return Ok(false);
        }
        match p.driver {
            Driver::Systemd => {
                let unit = p.slice();
                systemctl(&["stop", &unit])
                    .map_err(|output| CgroupError::Systemctl { unit, output })?;
            }
            Driver::Cgroupfs => {
                for d in self.dirs(p) {
                    match std::fs::remove_dir(&d) {
                        Ok(()) => {}
                        // Busy: a container came after all; it keeps the parent.
                        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => return Ok(false),
                        Err(e) if e.kind() == ErrorKind::NotFound => {}
                        Err(e) => return Err(io("remove", &d)(e)),
                    }
                }
            }
        }
        Ok(true)
    }
}

fn subdirs(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    names.sort();
    names
}

fn mkdir(dir: &Path) -> Result<(), CgroupError> {
    match std::fs::create_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(io("create", dir)(e)),
    }
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    std::fs::write(path, value).map_err(io("write", path))
}

fn read_i64(path: &Path) -> Option<i64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// memory.limit_in_bytes, and memory.memsw.limit_in_bytes where swap is accounted (so the
/// ceiling is not got around by swapping): memsw may never be below the limit, so when
/// raising it goes first, when lowering last.
fn set_v1_memory(dir: &Path, limit: i64) -> Result<(), CgroupError> {
    let limit_file = dir.join("memory.limit_in_bytes");
    let memsw = dir.join("memory.memsw.limit_in_bytes");
    let current = read_i64(&limit_file).unwrap_or(i64::MAX);
    let raising = limit < 0 || limit > current;
    let value = limit.to_string();
    if memsw.exists() && raising {
        write(&memsw, &value)?;
    }
    write(&limit_file, &value)?;
    if memsw.exists() && !raising {
        write(&memsw, &value)?;
    }
    Ok(())
}

/// Child cgroups (containers) whose CFS quota is above `cpus` are cut to it first.
fn lower_child_quotas(dir: &Path, cpus: super::Cpus) -> Result<(), CgroupError> {
    for child in subdirs(dir) {
        let child = dir.join(child);
        let quota = read_i64(&child.join("cpu.cfs_quota_us")).unwrap_or(-1);
        let period = read_i64(&child.join("cpu.cfs_period_us")).unwrap_or(DEFAULT_PERIOD as i64);
        let allowed = cpus.quota(period.max(1) as u64);
        if quota > allowed {
            write(&child.join("cpu.cfs_quota_us"), &allowed.to_string())?;
        }
    }
    Ok(())
}

/// systemd's properties for the user's slice: the same three limits, and no swap on top
/// of `memory`.
pub fn slice_properties(c: &Ceilings) -> Vec<String> {
    let mem = c
        .memory
        .as_ref()
        .map_or("infinity".into(), |m| m.value.0.to_string());
    let swap = if c.memory.is_some() { "0" } else { "infinity" };
    let tasks = c
        .pids
        .as_ref()
        .map_or("infinity".into(), |n| n.value.to_string());
    let quota = c
        .cpus
        .as_ref()
        .map_or(String::new(), |n| format!("{}%", n.value.hundredths()));
    vec![
        format!("MemoryMax={mem}"),
        format!("MemorySwapMax={swap}"),
        format!("TasksMax={tasks}"),
        format!("CPUQuota={quota}"),
    ]
}

fn set_slice_properties(unit: &str, c: &Ceilings) -> Result<(), CgroupError> {
    let mut args = vec!["set-property", "--runtime", unit];
    let props = slice_properties(c);
    args.extend(props.iter().map(String::as_str));
    systemctl(&args).map_err(|output| CgroupError::Systemctl {
        unit: unit.to_string(),
        output,
    })
}

/// Runs systemctl; its stderr (or why it could not run) on failure.
fn systemctl(args: &[&str]) -> Result<(), String> {
    let exe = ["/usr/bin/systemctl", "/bin/systemctl"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .ok_or("systemctl is not installed")?;
    let out = Command::new(exe)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fairshare::{ByteSize, Ceiling, Cpus};

    fn placement(driver: Driver, user: &str) -> Placement {
        Placement {
            driver,
            name: "labgpu".into(),
            user: user.into(),
        }
    }

    fn ceilings() -> Ceilings {
        Ceilings {
            cpus: Some(Ceiling {
                value: Cpus::from_hundredths(150),
                key: "[defaults] cpus".into(),
            }),
            memory: Some(Ceiling {
                value: ByteSize(1 << 30),
                key: "[defaults] memory".into(),
            }),
            pids: None,
            shm_size: None,
        }
    }

    #[test]
    fn containers_go_under_their_owners_parent() {
        let fs = placement(Driver::Cgroupfs, "alice");
        assert_eq!(
            fs.cgroups_path(Some("/docker/abc"), "abc").unwrap(),
            "/labgpu/alice/abc"
        );
        assert_eq!(fs.cgroups_path(None, "abc").unwrap(), "/labgpu/alice/abc");
        let sd = placement(Driver::Systemd, "ann-marie");
        assert_eq!(sd.slice(), "labgpu-ann\\x2dmarie.slice");
        assert_eq!(
            sd.cgroups_path(Some("system.slice:docker:abc"), "abc")
                .unwrap(),
            "labgpu-ann\\x2dmarie.slice:docker:abc"
        );
        assert_eq!(
            sd.relative_dir(),
            PathBuf::from("labgpu.slice/labgpu-ann\\x2dmarie.slice")
        );
        assert!(sd.cgroups_path(Some("/docker/abc"), "abc").is_err());
    }

    #[test]
    fn slice_properties_say_every_limit() {
        assert_eq!(
            slice_properties(&ceilings()),
            [
                "MemoryMax=1073741824",
                "MemorySwapMax=0",
                "TasksMax=infinity",
                "CPUQuota=150%"
            ]
        );
        assert_eq!(
            slice_properties(&Ceilings::default()),
            [
                "MemoryMax=infinity",
                "MemorySwapMax=infinity",
                "TasksMax=infinity",
                "CPUQuota="
            ]
        );
    }

    /// A fake v1 tree: plain files stand in for the kernel's.
    #[test]
    fn v1_parent_limits_children_first_and_removal() {
        let d = tempfile::tempdir().unwrap();
        let cg = Cgroups {
            root: d.path().join("cg"),
            lock_dir: d.path().join("locks"),
        };
        for c in ["memory", "pids", "cpu", "cpuset"] {
            std::fs::create_dir_all(cg.root.join(c)).unwrap();
        }
        let p = placement(Driver::Cgroupfs, "alice");
        let child = cg.root.join("cpu/labgpu/alice/c1");
        std::fs::create_dir_all(&child).unwrap();
        std::fs::write(child.join("cpu.cfs_quota_us"), "400000").unwrap();
        std::fs::write(child.join("cpu.cfs_period_us"), "100000").unwrap();
        cg.apply(&p, &ceilings()).unwrap();
        let read = |rel: &str| std::fs::read_to_string(cg.root.join(rel)).unwrap();
        assert_eq!(
            read("memory/labgpu/alice/memory.limit_in_bytes"),
            "1073741824"
        );
        assert_eq!(read("pids/labgpu/alice/pids.max"), "max");
        assert_eq!(read("cpu/labgpu/alice/cpu.cfs_quota_us"), "150000");
        assert_eq!(read("cpu/labgpu/alice/c1/cpu.cfs_quota_us"), "150000");
        assert_eq!(cg.parents("labgpu"), std::slice::from_ref(&p));
        assert!(!cg.is_empty(&p));
        std::fs::remove_dir_all(&child).unwrap();
        // Plain directories hold files, unlike cgroups: clear them for the removal.
        for c in ["memory", "pids", "cpu"] {
            let dir = cg.root.join(c).join("labgpu/alice");
            for f in std::fs::read_dir(&dir).unwrap() {
                std::fs::remove_file(f.unwrap().path()).unwrap();
            }
            std::fs::write(dir.join("cgroup.procs"), "").unwrap();
        }
        // A create in flight holds the lock: the parent stays.
        let held = cg.lock(&p, libc::LOCK_SH).unwrap().unwrap();
        assert!(!cg.remove_if_empty(&p).unwrap());
        drop(held);
        for c in ["memory", "pids", "cpu"] {
            std::fs::remove_file(cg.root.join(c).join("labgpu/alice/cgroup.procs")).unwrap();
        }
    }
}
