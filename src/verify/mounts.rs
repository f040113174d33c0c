//! Mounts as `edits::mounts` allows them: every container mount backed by a host filesystem
//! maps to a host path the policy allows; a local volume is a plain directory, a tmpfs, or
//! one the policy names; kernel filesystems appear only where Docker puts them.

use std::path::{Path, PathBuf};

use procfs::process::MountInfo;

use super::container::{Ctx, Subject};
use super::{finding, Finding, Kind};
use crate::decide::{resolve_host, Decision};
use crate::edits::mounts::host_path_allowed;
use crate::volumes::{backings, volume_of};

/// Filesystems whose mounts in a container are its own instances or the cgroup view, not
/// host data, with where Docker mounts each (a `proc` elsewhere is a `-o type=proc` volume).
const KERNEL_FS: [(&str, &[&str]); 6] = [
    ("proc", &["/proc"]),
    ("sysfs", &["/sys"]),
    ("devpts", &["/dev/pts"]),
    ("mqueue", &["/dev/mqueue"]),
    ("cgroup", &["/sys/fs/cgroup"]),
    ("cgroup2", &["/sys/fs/cgroup"]),
];

pub fn check(ctx: &Ctx, s: &Subject, d: &Decision) -> Vec<Finding> {
    let mut findings = Vec::new();
    for m in s.mounts.iter() {
        if m.mount_point == Path::new("/") {
            continue;
        }
        let destination = m.mount_point.to_string_lossy();
        if let Some((_, places)) = KERNEL_FS.iter().find(|(fs, _)| *fs == m.fs_type) {
            let expected = places
                .iter()
                .any(|p| m.mount_point.starts_with(p) || m.mount_point.starts_with("/proc"));
            if !expected {
                findings.push(finding(
                    Kind::Volume,
                    format!(
                        "a {} filesystem is mounted at {destination} (a volume of type {0}?)",
                        m.fs_type
                    ),
                ));
            }
            continue;
        }
        let Some(host) = host_path(ctx.host_mounts, m) else {
            continue;
        };
        let resolved = resolve_host(&host);
        if runc_device_bind(&resolved, &m.mount_point) {
            continue;
        }
        if let Some(f) = volume_finding(ctx, d, &resolved, &destination) {
            findings.push(f);
            continue;
        }
        match host_path_allowed(&resolved, &destination, d) {
            Ok(true) => {}
            Ok(false) => findings.push(finding(
                Kind::Mount,
                format!(
                    "host path {} is mounted at {destination}, which the policy does not allow",
                    host.display()
                ),
            )),
            Err(e) => findings.push(finding(Kind::Mount, e.to_string())),
        }
    }
    findings
}

/// A local volume whose `_data` has something other than a tmpfs mounted on it.
fn volume_finding(ctx: &Ctx, d: &Decision, host: &Path, destination: &str) -> Option<Finding> {
    let (name, data) = volume_of(host, ctx.docker_root)?;
    if d.mounted_volumes.contains(&name) {
        return None;
    }
    let bad = backings(ctx.host_mounts, &data)
        .into_iter()
        .find(|b| !b.harmless())?;
    Some(finding(
        Kind::Volume,
        format!(
            "volume {name:?} at {destination} is not a plain Docker volume: {} (mounted_volumes)",
            bad.describe()
        ),
    ))
}

/// What runc binds from the host's /dev itself in a user namespace, where it cannot mknod:
/// its standard devices at their own paths, and /dev/null over the masked paths.
fn runc_device_bind(host: &Path, destination: &Path) -> bool {
    const STANDARD: [&str; 6] = [
        "/dev/null",
        "/dev/zero",
        "/dev/full",
        "/dev/random",
        "/dev/urandom",
        "/dev/tty",
    ];
    STANDARD
        .iter()
        .any(|d| host == Path::new(d) && destination == host)
        || (host == Path::new("/dev/null")
            && (destination.starts_with("/proc") || destination.starts_with("/sys")))
}

/// The host path behind a container mount: a host mount of the same filesystem whose root
/// is a prefix of the container mount's root. `None` for filesystems only the container has.
pub fn host_path(host: &[MountInfo], m: &MountInfo) -> Option<PathBuf> {
    host.iter()
        .filter(|h| h.majmin == m.majmin)
        .filter_map(|h| {
            let rest = Path::new(&m.root).strip_prefix(&h.root).ok()?;
            Some((h.root.len(), h.mount_point.join(rest)))
        })
        .max_by_key(|(len, _)| *len)
        .map(|(_, p)| p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_path_maps_through_the_longest_root() {
        let host = [
            MountInfo::from_line("22 1 8:1 / / rw - ext4 /dev/sda1 rw").unwrap(),
            MountInfo::from_line("40 22 8:1 /srv /data rw - ext4 /dev/sda1 rw").unwrap(),
            MountInfo::from_line("41 22 0:50 / /run/x rw - tmpfs tmpfs rw").unwrap(),
        ];
        let c = MountInfo::from_line("100 90 8:1 /srv/a /mnt rw - ext4 /dev/sda1 rw").unwrap();
        assert_eq!(host_path(&host, &c), Some(PathBuf::from("/data/a")));
        let private = MountInfo::from_line("101 90 0:99 / /dev rw - tmpfs tmpfs rw").unwrap();
        assert_eq!(host_path(&host, &private), None);
        let shm = MountInfo::from_line("102 90 0:50 / /dev/shm rw - tmpfs tmpfs rw").unwrap();
        assert_eq!(host_path(&host, &shm), Some(PathBuf::from("/run/x")));
    }
}
