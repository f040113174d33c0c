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
/// (/sys/fs/cgroup).
pub fn usage(root: &Path, m: &Membership) -> Usage {
    let unified = m
        .paths
        .get("")
        .filter(|p| p.as_str() != "/")
        .map(|p| v2_dir(root, p));
    match unified {
        // Pure v2, or a hybrid host whose engine uses the unified hierarchy.
        Some(dir) if dir.join("cgroup.procs").exists() => Usage {
            cpu_seconds: read_keyed(&dir.join("cpu.stat"), "usage_usec").map(|u| u as f64 / 1e6),
            memory_bytes: read_u64(&dir.join("memory.current")).map(|c| {
                c.saturating_sub(read_keyed(&dir.join("memory.stat"), "inactive_file").unwrap_or(0))
            }),
            pids: read_u64(&dir.join("pids.current")),
        },
        _ => {
            let cpu = v1_dir(root, m, "cpuacct");
            let mem = v1_dir(root, m, "memory");
            let pids = v1_dir(root, m, "pids");
            Usage {
                cpu_seconds: cpu
                    .and_then(|d| read_u64(&d.join("cpuacct.usage")))
                    .map(|ns| ns as f64 / 1e9),
                memory_bytes: mem.and_then(|d| {
                    let usage = read_u64(&d.join("memory.usage_in_bytes"))?;
                    let stat = d.join("memory.stat");
                    Some(
                        usage.saturating_sub(read_keyed(&stat, "total_inactive_file").unwrap_or(0)),
                    )
                }),
                pids: pids.and_then(|d| read_u64(&d.join("pids.current"))),
            }
        }
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
