//! A container's CPU time, memory and task count, read from its cgroup's files on v1 or v2.
//! The figures are the ones `docker stats` shows: memory without the inactive page cache.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::procs::Membership;

/// What a container's cgroup says it uses; each figure is absent when its file is.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    /// CPU time used since the container started, in seconds (a counter).
    pub cpu_seconds: Option<f64>,
    pub memory_bytes: Option<u64>,
    pub pids: Option<u64>,
}

/// Reads the usage of the cgroups in `m`, under the cgroup file system at `root`
/// (/sys/fs/cgroup). Each figure comes from the unified hierarchy where it has the file,
/// else from the v1 controller's: a hybrid host puts a container in both, with the
/// controllers (memory, pids) on the v1 side only.
pub fn usage(root: &Path, m: &Membership) -> Usage {
    let v2 = m
        .paths
        .get("")
        .filter(|p| p.as_str() != "/")
        .map(|p| v2_dir(root, p))
        .filter(|d| d.join("cgroup.procs").exists());
    let v2 = v2.as_deref();
    let v1 = |controller| v1_dir(root, m, controller);
    Usage {
        cpu_seconds: v2
            .and_then(|d| read_keyed(&d.join("cpu.stat"), "usage_usec"))
            .map(|u| u as f64 / 1e6)
            .or_else(|| {
                let d = v1("cpuacct")?;
                read_u64(&d.join("cpuacct.usage")).map(|ns| ns as f64 / 1e9)
            }),
        memory_bytes: v2
            .and_then(|d| {
                let current = read_u64(&d.join("memory.current"))?;
                let inactive = read_keyed(&d.join("memory.stat"), "inactive_file");
                Some(current.saturating_sub(inactive.unwrap_or(0)))
            })
            .or_else(|| {
                let d = v1("memory")?;
                let usage = read_u64(&d.join("memory.usage_in_bytes"))?;
                let inactive = read_keyed(&d.join("memory.stat"), "total_inactive_file");
                Some(usage.saturating_sub(inactive.unwrap_or(0)))
            }),
        pids: v2
            .and_then(|d| read_u64(&d.join("pids.current")))
            .or_else(|| read_u64(&v1("pids")?.join("pids.current"))),
    }
}

/// The unified hierarchy: /sys/fs/cgroup itself on v2, /sys/fs/cgroup/unified on a hybrid.
fn v2_dir(root: &Path, path: &str) -> PathBuf {
    let rel = path.trim_start_matches('/');
    if root.join("cgroup.controllers").exists() {
        root.join(rel)
    } else {
        root.join("unified").join(rel)
    }
}

/// A v1 controller's directory: mounted as its hierarchy's name (`cpu,cpuacct`) or, where
/// the distribution mounts each controller alone or links them, as the controller's.
fn v1_dir(root: &Path, m: &Membership, controller: &str) -> Option<PathBuf> {
    let (hierarchy, path) = m
        .paths
        .iter()
        .find(|(h, _)| h.split(',').any(|c| c == controller))?;
    let rel = path.trim_start_matches('/');
    [hierarchy.as_str(), controller]
        .iter()
        .map(|mount| root.join(mount).join(rel))
        .find(|d| d.is_dir())
}

fn read_u64(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// A `key value` line of a stat file.
fn read_keyed(path: &Path, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok())?
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::top::procs::parse;

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join(name), text).unwrap();
    }

    #[test]
    fn v1_with_joined_cpu_cpuacct() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        write(
            &r.join("cpu,cpuacct/docker/c1"),
            "cpuacct.usage",
            "2500000000\n",
        );
        write(
            &r.join("memory/docker/c1"),
            "memory.usage_in_bytes",
            "3000\n",
        );
        write(
            &r.join("memory/docker/c1"),
            "memory.stat",
            "cache 10\ntotal_inactive_file 1000\n",
        );
        write(&r.join("pids/docker/c1"), "pids.current", "7\n");
        let m = parse("11:cpu,cpuacct:/docker/c1\n10:memory:/docker/c1\n9:pids:/docker/c1\n0::/\n");
        let u = usage(r, &m);
        assert_eq!(u.cpu_seconds, Some(2.5));
        assert_eq!(u.memory_bytes, Some(2000));
        assert_eq!(u.pids, Some(7));
    }

    #[test]
    fn v1_with_each_controller_mounted_alone() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        write(
            &r.join("cpuacct/docker/c1"),
            "cpuacct.usage",
            "1000000000\n",
        );
        let m = parse("2:cpuacct:/docker/c1\n1:cpu:/docker/c1\n");
        let u = usage(r, &m);
        assert_eq!(u.cpu_seconds, Some(1.0));
        assert_eq!(u.memory_bytes, None);
    }

    /// Docker on a hybrid host: the container's unified cgroup exists but has no memory or
    /// pids controller; those come from v1.
    #[test]
    fn hybrid_takes_what_the_unified_side_lacks_from_v1() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        let u = r.join("unified/docker/c1");
        write(&u, "cgroup.procs", "42\n");
        write(&u, "cpu.stat", "usage_usec 2000000\n");
        write(
            &r.join("memory/docker/c1"),
            "memory.usage_in_bytes",
            "5000\n",
        );
        write(&r.join("pids/docker/c1"), "pids.current", "4\n");
        let m = parse("8:pids:/docker/c1\n4:memory:/docker/c1\n0::/docker/c1\n");
        let got = usage(r, &m);
        assert_eq!(got.cpu_seconds, Some(2.0));
        assert_eq!(got.memory_bytes, Some(5000));
        assert_eq!(got.pids, Some(4));
    }

    #[test]
    fn v2_unified() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        write(r, "cgroup.controllers", "cpu memory pids\n");
        let c = r.join("system.slice/docker-c1.scope");
        write(&c, "cgroup.procs", "42\n");
        write(&c, "cpu.stat", "usage_usec 1500000\nuser_usec 1000000\n");
        write(&c, "memory.current", "8192\n");
        write(&c, "memory.stat", "anon 4096\ninactive_file 4096\n");
        write(&c, "pids.current", "3\n");
        let u = usage(r, &parse("0::/system.slice/docker-c1.scope\n"));
        assert_eq!(u.cpu_seconds, Some(1.5));
        assert_eq!(u.memory_bytes, Some(4096));
        assert_eq!(u.pids, Some(3));
    }
}
