//! Which container a process runs in, from the kernel: `/proc/<pid>/cgroup`. Docker,
//! containerd and CRI-O name a container's cgroup after its id, and only root can move a
//! process between cgroups, so a process inside a container cannot claim another's.

use std::collections::BTreeMap;
use std::path::Path;

/// A process's cgroup membership: the container it is in, and its cgroup paths by
/// hierarchy (`memory`, `cpu,cpuacct`, `""` for cgroup v2's unified one).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Membership {
    pub container: Option<String>,
    pub paths: BTreeMap<String, String>,
}

/// Parses a `/proc/<pid>/cgroup` text. The container is the innermost path component that
/// is a container id (`<id>`, `docker-<id>.scope`, `cri-containerd-<id>.scope`,
/// `crio-<id>.scope`, `libpod-<id>.scope`); hierarchies that disagree mean none.
pub fn parse(text: &str) -> Membership {
    let mut m = Membership::default();
    let mut seen: Option<Option<String>> = None;
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        // The named systemd hierarchy says nothing about resources.
        if controllers.starts_with("name=") {
            continue;
        }
        let id = container_in(path);
        match &seen {
            None => seen = Some(id),
            // A v1 controller the engine does not manage (net_cls, rdma) stays at "/".
            Some(prev) if *prev != id && id.is_some() && prev.is_some() => {
                return Membership::default()
            }
            Some(None) if id.is_some() => seen = Some(id),
            _ => {}
        }
        m.paths.insert(controllers.to_string(), path.to_string());
    }
    m.container = seen.flatten();
    m
}

/// The innermost container id named in a cgroup path.
fn container_in(path: &str) -> Option<String> {
    path.rsplit('/').find_map(|c| {
        let c = c.strip_suffix(".scope").unwrap_or(c);
        let id = ["docker-", "cri-containerd-", "crio-", "libpod-"]
            .iter()
            .find_map(|p| c.strip_prefix(p))
            .unwrap_or(c);
        is_container_id(id).then(|| id.to_string())
    })
}

/// Docker's and containerd's ids: 64 lower-case hex digits.
pub fn is_container_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// What /proc says about one process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcInfo {
    pub pid: u32,
    pub uid: Option<u32>,
    pub comm: Option<String>,
    pub membership: Membership,
}

/// Reads one process; `None` when it is gone.
pub fn read(proc_root: &Path, pid: u32) -> Option<ProcInfo> {
    let dir = proc_root.join(pid.to_string());
    let cgroup = std::fs::read_to_string(dir.join("cgroup")).ok()?;
    let status = std::fs::read_to_string(dir.join("status")).unwrap_or_default();
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().next()?.parse().ok());
    let comm = std::fs::read_to_string(dir.join("comm"))
        .ok()
        .map(|c| c.trim_end().to_string());
    Some(ProcInfo {
        pid,
        uid,
        comm,
        membership: parse(&cgroup),
    })
}

/// Every container with a process on this host: its id and one of its processes'
/// cgroup paths (all processes of a container share them, sub-cgroups aside).
pub fn containers(proc_root: &Path) -> BTreeMap<String, Membership> {
    let mut found = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(proc_root) else {
        return found;
    };
    for e in entries.flatten() {
        let is_pid = e
            .file_name()
            .to_str()
            .is_some_and(|n| n.parse::<u32>().is_ok());
        if !is_pid {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(e.path().join("cgroup")) else {
            continue;
        };
        let m = parse(&text);
        let Some(id) = m.container.clone() else {
            continue;
        };
        // The shallowest paths: the container's own cgroup, not a child some process made.
        let depth = |m: &Membership| m.paths.values().map(|p| p.len()).sum::<usize>();
        match found.get(&id) {
            Some(prev) if depth(prev) <= depth(&m) => {}
            _ => {
                found.insert(id, m);
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f4e1c0b2a99887766554433221100ffeeddccbbaa99887766554433221100aa";

    #[test]
    fn docker_on_cgroup_v1_cgroupfs() {
        let text = format!(
            "12:pids:/docker/{ID}\n11:cpu,cpuacct:/docker/{ID}\n10:memory:/docker/{ID}\n\
             9:net_cls,net_prio:/\n1:name=systemd:/docker/{ID}\n0::/\n"
        );
        let m = parse(&text);
        assert_eq!(m.container.as_deref(), Some(ID));
        assert_eq!(m.paths["memory"], format!("/docker/{ID}"));
        assert_eq!(m.paths["cpu,cpuacct"], format!("/docker/{ID}"));
        assert!(!m.paths.contains_key("name=systemd"));
    }

    #[test]
    fn systemd_scopes_and_other_engines() {
        for path in [
            format!("/system.slice/docker-{ID}.scope"),
            format!("/kubepods.slice/kubepods-pod1.slice/cri-containerd-{ID}.scope"),
            format!("/machine.slice/libpod-{ID}.scope/container"),
            format!("/kubepods/besteffort/pod1/{ID}"),
        ] {
            let m = parse(&format!("0::{path}\n"));
            assert_eq!(m.container.as_deref(), Some(ID), "{path}");
            assert_eq!(m.paths[""], path);
        }
    }

    #[test]
    fn host_processes_and_lookalikes_are_in_no_container() {
        for text in [
            "0::/user.slice/user-1000.slice/session-1.scope\n",
            "4:memory:/process_api/b3ad210edda340b56a46404841f4474b\n",
            // 64 characters, not all hex; upper case is not Docker's.
            &format!("0::/docker/{}\n", "g".repeat(64)),
            &format!("0::/docker/{}\n", ID.to_uppercase()),
        ] {
            assert_eq!(parse(text).container, None, "{text}");
        }
    }

    #[test]
    fn hierarchies_naming_two_containers_name_none() {
        let other = "a".repeat(64);
        let text = format!("8:pids:/docker/{ID}\n4:memory:/docker/{other}\n");
        assert_eq!(parse(&text).container, None);
    }

    #[test]
    fn a_proc_tree_is_grouped_by_container() {
        let d = tempfile::tempdir().unwrap();
        let write = |pid: u32, cgroup: &str| {
            let dir = d.path().join(pid.to_string());
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("cgroup"), cgroup).unwrap();
            std::fs::write(
                dir.join("status"),
                "Name:\tx\nUid:\t1001\t1001\t1001\t1001\n",
            )
            .unwrap();
            std::fs::write(dir.join("comm"), "python\n").unwrap();
        };
        write(10, &format!("0::/docker/{ID}/child\n"));
        write(11, &format!("0::/docker/{ID}\n"));
        write(12, "0::/init.scope\n");
        let found = containers(d.path());
        assert_eq!(found.len(), 1);
        assert_eq!(found[ID].paths[""], format!("/docker/{ID}"));
        let p = read(d.path(), 10).unwrap();
        assert_eq!(p.uid, Some(1001));
        assert_eq!(p.comm.as_deref(), Some("python"));
        assert_eq!(p.membership.container.as_deref(), Some(ID));
        assert!(read(d.path(), 99).is_none());
    }
}
