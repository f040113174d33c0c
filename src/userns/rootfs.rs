//! The runtime edge of a userns create: the rootfs and Docker's per-container files as the
//! owner's user namespace needs them, mounted so that nothing outlives the container.
//!
//! 1. Idmapped, private clones of the container layer and each lower layer (Docker's ids on
//!    disk read as the owner's host ids, so the image looks unchanged inside).
//! 2. In the host's mount namespace, whatever is mounted on Docker's `merged` (Docker's own
//!    overlay, or a stale one of labgpu's) is detached.
//! 3. A private mount namespace for this process (and runc after it): the clones are staged
//!    on a tmpfs, an overlay is mounted over them on `ROOTFS_DIR` with the owner's fsuid (its
//!    work directory must be creatable through the idmap), and a copy of that overlay is
//!    attached on `merged` in the host's namespace, where dockerd expects a rootfs and where
//!    its own unmount at stop (or `rm -f`, or restart) removes it.
//! 4. Back in the private namespace, Docker's per-container files and volumes are covered by
//!    idmapped clones at their own paths, which is where runc looks for them.
//!
//! The private namespace ends when runc create exits; the container's own mount namespace
//! ends with the container. A failure at any step leaves at most an empty `merged`, which
//! Docker's clean-up of the failed start handles.

use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;
use serde_json::Value;

use super::layers::{self, LayerError, Layers};
use super::{sys, Plan, ROOTFS_DIR, STAGE_DIR};
use crate::spec::str_field;
use crate::volumes::volume_of;

/// Docker's files of a container that runc binds in (its own, or X's for `container:X`).
const CONTAINER_FILES: [&str; 4] = ["hostname", "hosts", "resolv.conf", "mounts/shm"];

#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error(transparent)]
    Layer(#[from] LayerError),
    #[error(
        "this kernel has no idmapped mounts ({0}); userns = \"owner\" needs Linux 5.12 or later"
    )]
    Kernel(io::Error),
    #[error("{path} is on a {fs} filesystem that cannot be idmapped ({cause}); userns = \"owner\" needs idmapped mounts there")]
    NoIdmap {
        path: PathBuf,
        fs: String,
        cause: io::Error,
    },
    #[error("overlayfs refused idmapped layers for {merged} ({cause}); userns = \"owner\" needs Linux 5.19 or later")]
    Overlay { merged: PathBuf, cause: io::Error },
    #[error("{what} {path} is mounted in the host's mount table as {fs}, not Docker's overlay; refusing to unmount it")]
    Unexpected {
        what: &'static str,
        path: PathBuf,
        fs: String,
    },
    #[error("labgpu's runtime process has {0} threads; the user namespace setup needs one (this is a bug: please report it)")]
    Threads(usize),
    #[error("cannot {what} {path}: {cause}")]
    Io {
        what: &'static str,
        path: PathBuf,
        cause: io::Error,
    },
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> RootfsError + 'a {
    move |cause| RootfsError::Io {
        what,
        path: path.to_path_buf(),
        cause,
    }
}

fn nix_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(nix::Error) -> RootfsError + 'a {
    move |e| io_err(what, path)(io::Error::from(e))
}

/// Docker's per-container files and volume directories among the spec's bind sources:
/// root-owned on disk, and written by container root as they are without a user namespace.
pub fn idmapped_sources(spec: &Value, docker_root: &Path) -> Vec<PathBuf> {
    let containers = docker_root.join("containers");
    let mut out: Vec<PathBuf> = Vec::new();
    let mounts = spec.get("mounts").and_then(Value::as_array);
    for m in mounts.into_iter().flatten() {
        let bind = str_field(m, "type") == Some("bind")
            || m.get("options").and_then(Value::as_array).is_some_and(|o| {
                o.iter()
                    .any(|o| matches!(o.as_str(), Some("bind" | "rbind")))
            });
        let Some(source) = str_field(m, "source").filter(|_| bind).map(PathBuf::from) else {
            continue;
        };
        let docker_file = source.strip_prefix(&containers).is_ok_and(|rest| {
            let mut c = rest.components();
            c.next().is_some() && CONTAINER_FILES.iter().any(|f| c.as_path() == Path::new(f))
        });
        let volume = volume_of(&source, docker_root).is_some_and(|(_, data)| data == source);
        if (docker_file || volume) && !out.contains(&source) {
            out.push(source);
        }
    }
    out
}

/// Everything above, for a create whose spec `edits::userns` has rewritten. `docker_rootfs`
/// is the `root.path` Docker gave (its `merged`).
pub fn prepare(
    plan: &Plan,
    docker_root: &Path,
    docker_rootfs: &Path,
    sources: &[PathBuf],
) -> Result<(), RootfsError> {
    let threads = sys::thread_count();
    if threads > 1 {
        return Err(RootfsError::Threads(threads));
    }
    for dir in [ROOTFS_DIR, STAGE_DIR] {
        ensure_dir(Path::new(dir))?;
    }
    let layers = layers::from_rootfs(docker_root, docker_rootfs)?;
    let userns = sys::idmap_userns(&plan.map).map_err(|e| match e.raw_os_error() {
        Some(libc::EINVAL | libc::ENOSYS) => RootfsError::Kernel(e),
        _ => io_err("create a user namespace for", Path::new("the idmap"))(e),
    })?;
    let mut clones = vec![idmapped_clone(&layers.dir, &userns)?];
    for l in &layers.lowers {
        clones.push(idmapped_clone(l, &userns)?);
    }
    let cwd =
        std::env::current_dir().map_err(io_err("read", Path::new("the working directory")))?;
    let host_ns = std::fs::File::open("/proc/self/ns/mnt")
        .map_err(io_err("open", Path::new("/proc/self/ns/mnt")))?;
    let docker_overlay = detach_all(&layers.merged)?;
    // The last reference to Docker's overlay syncs the filesystem under it when released
    // (tens to hundreds of milliseconds under write load): not on the create path.
    sys::release_in_background(docker_overlay)
        .map_err(io_err("hand off the unmounted overlay of", &layers.merged))?;
    nix::sched::unshare(CloneFlags::CLONE_NEWNS).map_err(nix_err(
        "unshare the mount namespace of",
        Path::new("labgpu"),
    ))?;
    nix::mount::mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_SLAVE,
        None::<&str>,
    )
    .map_err(nix_err("make private the mounts under", Path::new("/")))?;
    let private_ns = std::fs::File::open("/proc/self/ns/mnt")
        .map_err(io_err("open", Path::new("/proc/self/ns/mnt")))?;
    let overlay = mount_overlay(plan, &layers, clones, &cwd)?;
    nix::sched::setns(&host_ns, CloneFlags::CLONE_NEWNS).map_err(nix_err(
        "enter the host mount namespace for",
        &layers.merged,
    ))?;
    let attached = sys::attach(&overlay, &layers.merged)
        .map_err(io_err("mount the rootfs on", &layers.merged));
    nix::sched::setns(&private_ns, CloneFlags::CLONE_NEWNS).map_err(nix_err(
        "return to the private mount namespace from",
        &layers.merged,
    ))?;
    std::env::set_current_dir(&cwd).map_err(io_err("return to", &cwd))?;
    attached?;
    for s in sources {
        let clone = idmapped_clone(s, &userns)?;
        sys::attach(&clone, s).map_err(io_err("mount an idmapped copy on", s))?;
    }
    Ok(())
}

/// Whether `dir` (Docker's `overlay2`) can be idmapped, as `labgpu policy check` asks: a
/// throwaway user namespace, one detached clone, dropped at once.
pub fn probe(dir: &Path) -> Result<(), RootfsError> {
    let map = super::IdMap {
        uid: super::mapping::uid_map(65534, 4_000_000_000),
        gid: super::mapping::gid_map(65534, 4_000_000_000, &[]),
    };
    let userns = sys::idmap_userns(&map).map_err(RootfsError::Kernel)?;
    idmapped_clone(dir, &userns).map(drop)
}

/// A root-owned directory labgpu mounts on inside private namespaces.
fn ensure_dir(dir: &Path) -> Result<(), RootfsError> {
    std::fs::create_dir_all(dir).map_err(io_err("create", dir))?;
    let meta = std::fs::symlink_metadata(dir).map_err(io_err("inspect", dir))?;
    if !meta.is_dir() || std::os::unix::fs::MetadataExt::uid(&meta) != 0 {
        return Err(RootfsError::Io {
            what: "use",
            path: dir.to_path_buf(),
            cause: io::Error::other("not a directory owned by root"),
        });
    }
    Ok(())
}

/// A detached, private clone of `path` through which on-disk ids read as `userns` maps them.
fn idmapped_clone(path: &Path, userns: &OwnedFd) -> Result<OwnedFd, RootfsError> {
    let tree = sys::clone_tree(path).map_err(|e| match e.raw_os_error() {
        Some(libc::ENOSYS) => RootfsError::Kernel(e),
        _ => io_err("clone the mount of", path)(e),
    })?;
    sys::set_idmap(&tree, userns).map_err(|e| match e.raw_os_error() {
        Some(libc::ENOSYS) => RootfsError::Kernel(e),
        Some(libc::EINVAL | libc::EPERM | libc::EOPNOTSUPP) => RootfsError::NoIdmap {
            path: path.to_path_buf(),
            fs: fs_name(path),
            cause: e,
        },
        _ => io_err("idmap the mount of", path)(e),
    })?;
    Ok(tree)
}

/// Stages the clones in this (private) namespace and mounts the overlay on `ROOTFS_DIR`;
/// returns a detached copy of it for the host's `merged`.
fn mount_overlay(
    plan: &Plan,
    layers: &Layers,
    clones: Vec<OwnedFd>,
    cwd: &Path,
) -> Result<OwnedFd, RootfsError> {
    let stage = Path::new(STAGE_DIR);
    nix::mount::mount(
        Some("tmpfs"),
        stage,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=0755,size=64k"),
    )
    .map_err(nix_err("mount a staging tmpfs on", stage))?;
    for (i, clone) in clones.iter().enumerate() {
        let dir = stage.join(i.to_string());
        std::fs::create_dir(&dir).map_err(io_err("create", &dir))?;
        sys::attach(clone, &dir).map_err(io_err("stage a layer on", &dir))?;
    }
    // Relative names from the staging directory keep the options within one page for
    // Docker's 128 layers.
    let lower: Vec<String> = (1..clones.len()).map(|i| i.to_string()).collect();
    let data = format!(
        "index=off,lowerdir={},upperdir=0/diff,workdir=0/work",
        lower.join(":")
    );
    std::env::set_current_dir(stage).map_err(io_err("enter", stage))?;
    let target = Path::new(ROOTFS_DIR);
    let mounted = sys::with_fs_ids(plan.owner_uid, plan.owner_gid, || {
        nix::mount::mount(
            Some("overlay"),
            target,
            Some("overlay"),
            MsFlags::empty(),
            Some(data.as_str()),
        )
    });
    std::env::set_current_dir(cwd).map_err(io_err("return to", cwd))?;
    match mounted {
        Err(e) => return Err(io_err("switch filesystem ids to mount", target)(e)),
        Ok(Err(e)) => {
            return Err(RootfsError::Overlay {
                merged: layers.merged.clone(),
                cause: e.into(),
            })
        }
        Ok(Ok(())) => {}
    }
    sys::clone_tree(target).map_err(io_err("clone the overlay on", target))
}

/// Unmounts every mount stacked on `merged` in this namespace (Docker's overlay, or one
/// labgpu left there before a dockerd restart); anything but an overlay is refused. Returns
/// a descriptor on each, which keeps its filesystem alive until it is closed.
fn detach_all(merged: &Path) -> Result<Vec<OwnedFd>, RootfsError> {
    let table = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(io_err("read", Path::new("/proc/self/mountinfo")))?;
    let mut count = 0;
    for line in table.lines() {
        let Ok(m) = procfs::process::MountInfo::from_line(line) else {
            continue;
        };
        if m.mount_point != merged {
            continue;
        }
        if m.fs_type != "overlay" {
            return Err(RootfsError::Unexpected {
                what: "Docker's rootfs",
                path: merged.to_path_buf(),
                fs: m.fs_type,
            });
        }
        count += 1;
    }
    let mut held = Vec::with_capacity(count);
    for _ in 0..count {
        let top = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH)
            .open(merged)
            .map_err(io_err("open", merged))?;
        held.push(OwnedFd::from(top));
        nix::mount::umount2(merged, MntFlags::MNT_DETACH)
            .map_err(nix_err("unmount Docker's overlay from", merged))?;
    }
    Ok(held)
}

/// The filesystem type of `path`, for messages.
fn fs_name(path: &Path) -> String {
    let Ok(st) = nix::sys::statfs::statfs(path) else {
        return "unknown".into();
    };
    let magic = st.filesystem_type().0 as u64;
    match magic {
        0xEF53 => "ext4".into(),
        0x5846_5342 => "xfs".into(),
        0x9123_683E => "btrfs".into(),
        0x0102_1994 => "tmpfs".into(),
        0x794C_7630 => "overlay".into(),
        0x6969 => "nfs".into(),
        0x2FC1_2FC1 => "zfs".into(),
        0x6573_5546 => "fuse".into(),
        0x8584_58F6 => "ramfs".into(),
        0x6265_6572 => "sysfs".into(),
        0x9FA0 => "proc".into(),
        m => format!("0x{m:x}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_dockers_own_files_and_volume_data_are_idmapped() {
        let root = Path::new("/var/lib/docker");
        let spec = json!({"mounts": [
            {"destination": "/etc/hosts", "type": "bind", "source": "/var/lib/docker/containers/abc/hosts"},
            {"destination": "/dev/shm", "type": "bind", "source": "/var/lib/docker/containers/abc/mounts/shm"},
            {"destination": "/x", "type": "bind", "source": "/var/lib/docker/containers/abc/config.v2.json"},
            {"destination": "/v", "source": "/var/lib/docker/volumes/v1/_data", "options": ["rbind"]},
            {"destination": "/w", "type": "bind", "source": "/home/alice"},
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/etc/hosts2", "type": "bind", "source": "/var/lib/docker/containers/abc/hosts"}
        ]});
        assert_eq!(
            idmapped_sources(&spec, root),
            [
                PathBuf::from("/var/lib/docker/containers/abc/hosts"),
                PathBuf::from("/var/lib/docker/containers/abc/mounts/shm"),
                PathBuf::from("/var/lib/docker/volumes/v1/_data"),
            ]
        );
    }
}
