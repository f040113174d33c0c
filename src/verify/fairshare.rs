//! Fair share, as `edits::fairshare` places containers: a container whose owner has
//! ceilings must run inside the owner's parent cgroup (either driver's form), or it is not
//! counted against them.

use std::path::Path;

use super::{finding, Finding, Kind};
use crate::decide::Decision;
use crate::fairshare::cgroup::Driver;

/// `proc_dir`: the container's /proc/<pid>.
pub fn check(proc_dir: &Path, d: &Decision) -> Vec<Finding> {
    let Some(mut p) = d.placement() else {
        return Vec::new();
    };
    let Ok(cgroups) = std::fs::read_to_string(proc_dir.join("cgroup")) else {
        return vec![finding(
            Kind::Unreadable,
            "cannot read its /proc/<pid>/cgroup".into(),
        )];
    };
    let mut parents = Vec::new();
    for driver in [Driver::Cgroupfs, Driver::Systemd] {
        p.driver = driver;
        parents.push(format!("/{}/", p.relative_dir().display()));
    }
    let lines: Vec<(&str, &str)> = cgroups
        .lines()
        .filter_map(|l| {
            let mut it = l.splitn(3, ':');
            it.next()?;
            Some((it.next()?, it.next()?))
        })
        .collect();
    // cgroup v1: the hierarchies whose limits the parent sets; v2: the one unified line.
    let v1 = lines.iter().any(|(ctrls, _)| !ctrls.is_empty());
    let limited = |ctrls: &str| {
        if v1 {
            ctrls
                .split(',')
                .any(|c| matches!(c, "memory" | "pids" | "cpu"))
        } else {
            ctrls.is_empty()
        }
    };
    let outside = lines
        .iter()
        .filter(|(ctrls, _)| limited(ctrls))
        .any(|(_, path)| !parents.iter().any(|parent| path.contains(parent.as_str())));
    if outside {
        let owner = p.user.clone();
        return vec![finding(
            Kind::FairShare,
            format!(
                "runs outside {owner}'s parent cgroup, so its use is not counted against their ceilings (cpus, memory, pids in [defaults] or [users.{owner}])"
            ),
        )];
    }
    Vec::new()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edits::testing::decision;
    use crate::fairshare::{ByteSize, Ceiling};

    fn subject(cgroup: &str) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("cgroup"), cgroup).unwrap();
        d
    }

    #[test]
    fn a_capped_owners_container_must_be_in_their_parent() {
        let mut d = decision();
        d.ceilings.memory = Some(Ceiling {
            value: ByteSize(1 << 30),
            key: "[defaults] memory".into(),
        });
        let inside_v1 = "12:pids:/labgpu/alice/c1\n4:cpu,cpuacct:/labgpu/alice/c1\n9:memory:/labgpu/alice/c1\n1:name=systemd:/system.slice/x\n0::/\n";
        let s = subject(inside_v1);
        assert!(check(s.path(), &d).is_empty());
        let s = subject("0::/labgpu.slice/labgpu-alice.slice/docker-c1.scope\n");
        assert!(check(s.path(), &d).is_empty());
        let s = subject("12:pids:/docker/c1\n9:memory:/docker/c1\n4:cpu,cpuacct:/docker/c1\n");
        let f = check(s.path(), &d);
        assert_eq!(f.len(), 1);
        assert!(
            f[0].detail.contains("outside alice's parent cgroup"),
            "{:?}",
            f[0]
        );
        // No ceilings: wherever Docker put it.
        assert!(check(s.path(), &decision()).is_empty());
    }
}
