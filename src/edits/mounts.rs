//! Bind mounts: the owner's mounts are added; every other host path must come from Docker's
//! own per-container files, a plain Docker volume, or a policy prefix.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::{EditError, Report};
use crate::decide::{resolve_host, Decision};
use crate::edits::stamp::owner_in_state;
use crate::paths::is_under;
use crate::spec::{array_mut, str_field};
use crate::volumes::volume_of;

/// Filesystems Docker mounts itself that carry no host data.
const PSEUDO_FS: [&str; 7] = [
    "proc", "sysfs", "tmpfs", "devpts", "mqueue", "cgroup", "cgroup2",
];

/// Files of a container Docker binds in (its own, or X's for `--network/--ipc container:X`),
/// with the only destination each may have.
const SHARED_FROM_OTHERS: [(&str, &str); 4] = [
    ("hostname", "/etc/hostname"),
    ("hosts", "/etc/hosts"),
    ("resolv.conf", "/etc/resolv.conf"),
    ("mounts/shm", "/dev/shm"),
];

/// What a BuildKit `RUN` step may bind from the data root: BuildKit's state (resolv.conf,
/// hosts, cache mounts), dockerd's TMPDIR (secret and ssh mounts) and the storage drivers'
/// layers (`--mount=type=bind,from=...`). Never `containers/` or `volumes/`: BuildKit does
/// not bind them, and nothing in a build (LLB has no host paths) can ask it to.
const BUILDKIT_OWNED: [&str; 7] = [
    "buildkit",
    "tmp",
    "overlay2",
    "fuse-overlayfs",
    "vfs",
    "btrfs",
    "zfs",
];

/// Where Docker's `--init` binary lives on Debian/Ubuntu and docker-ce installs (Debian's is
/// a symlink to tini-static, so candidates are resolved like sources).
const DOCKER_INIT: [&str; 3] = [
    "/usr/bin/docker-init",
    "/usr/libexec/docker/docker-init",
    "/usr/local/bin/docker-init",
];

pub fn apply(spec: &mut Value, d: &Decision, report: &mut Report) -> Result<(), EditError> {
    let mounts = array_mut(spec, "mounts").ok_or(EditError::Malformed {
        field: "mounts",
        reason: "not an array".into(),
    })?;
    for m in mounts.iter_mut() {
        check_mount(m, d)?;
    }
    let ours: Vec<&str> = d
        .mounts
        .iter()
        .map(|m| m.destination.as_path().to_str().unwrap_or_default())
        .collect();
    mounts.retain(|m| {
        let dest = str_field(m, "destination").unwrap_or_default();
        let shadowed = ours.contains(&dest);
        if shadowed {
            report.removed(format!("mount at {dest} (replaced by the policy's)"));
        }
        !shadowed
    });
    for m in &d.mounts {
        let mut options = vec!["rbind", "rprivate", "nosuid", "nodev"];
        if m.readonly {
            options.push("ro");
        }
        mounts.push(json!({
            "destination": m.destination.as_path(),
            "type": "bind",
            "source": resolve_host(m.source.as_path()),
            "options": options,
        }));
    }
    Ok(())
}

fn is_bind(m: &Value) -> bool {
    str_field(m, "type") == Some("bind")
        || m.get("options").and_then(Value::as_array).is_some_and(|o| {
            o.iter()
                .any(|o| matches!(o.as_str(), Some("bind" | "rbind")))
        })
}

/// Refuses a mount the policy does not allow; rewrites an allowed bind's source to the path
/// that was checked, so a symlink swapped in later is not followed by runc.
fn check_mount(m: &mut Value, d: &Decision) -> Result<(), EditError> {
    let destination = str_field(m, "destination").unwrap_or("?").to_string();
    let source = str_field(m, "source").unwrap_or_default().to_string();
    if !is_bind(m) {
        let fs = str_field(m, "type").unwrap_or_default();
        if PSEUDO_FS.contains(&fs) {
            return Ok(());
        }
        if fs == "overlay" && d.build_step && overlay_layers_owned(m, d) {
            return Ok(());
        }
        return Err(EditError::BindNotAllowed {
            source_path: PathBuf::from(format!("{source} (type {fs})")),
            destination,
            section: d.section(),
        });
    }
    let resolved = resolve_host(Path::new(&source));
    if !host_path_allowed(&resolved, &destination, d)? {
        return Err(EditError::BindNotAllowed {
            source_path: resolved,
            destination,
            section: d.section(),
        });
    }
    m["source"] = json!(resolved);
    Ok(())
}

/// Whether a host path (already resolved) may appear at `destination` in the container.
pub fn host_path_allowed(
    resolved: &Path,
    destination: &str,
    d: &Decision,
) -> Result<bool, EditError> {
    Ok(d.bind_allow.iter().any(|p| is_under(resolved, p))
        || cdi_owned(resolved, destination, d)
        || gpu_node_bound(resolved, destination, d)
        || docker_owned(resolved, destination, d)?
        || (d.build_step && buildkit_owned(resolved, d))
        || (destination == "/sbin/docker-init"
            && DOCKER_INIT
                .iter()
                .any(|p| resolved == resolve_host(Path::new(p)))))
}

/// An owned GPU node at its own place, as `edits::userns` binds them in a user namespace.
fn gpu_node_bound(source: &Path, destination: &str, d: &Decision) -> bool {
    d.userns.is_some()
        && d.nodes
            .iter()
            .any(|n| n.container_path == destination && source == resolve_host(&n.host_path))
}

/// A build step's bind from BuildKit's own directories under the data root.
fn buildkit_owned(source: &Path, d: &Decision) -> bool {
    BUILDKIT_OWNED
        .iter()
        .any(|dir| is_under(source, &d.docker_root.join(dir)))
}

/// An overlay BuildKit's snapshotter built for a build step: every layer directory in its
/// options is BuildKit's own.
fn overlay_layers_owned(m: &Value, d: &Decision) -> bool {
    let Some(options) = m.get("options").and_then(Value::as_array) else {
        return false;
    };
    let mut layers = 0;
    for o in options.iter().filter_map(Value::as_str) {
        let Some((key, value)) = o.split_once('=') else {
            continue;
        };
        if !matches!(key, "lowerdir" | "upperdir" | "workdir") {
            continue;
        }
        for dir in value.split(':') {
            let resolved = resolve_host(Path::new(dir));
            if !dir.starts_with('/') || !buildkit_owned(&resolved, d) {
                return false;
            }
            layers += 1;
        }
    }
    layers > 0
}

/// A driver file the CDI spec mounts for the owner's GPUs, at exactly its destination.
fn cdi_owned(source: &Path, destination: &str, d: &Decision) -> bool {
    d.cdi
        .iter()
        .flat_map(|e| &e.mounts)
        .any(|m| m.container_path == destination && source == resolve_host(&m.host_path))
}

/// Docker's own files for this container, its named volumes, and the few files it shares
/// between containers.
fn docker_owned(source: &Path, destination: &str, d: &Decision) -> Result<bool, EditError> {
    let root = &d.docker_root;
    if let Ok(rest) = source.strip_prefix(root.join("containers")) {
        let mut parts = rest.components();
        let Some(id) = parts.next() else {
            return Ok(false);
        };
        let inner = parts.as_path();
        let shared = SHARED_FROM_OTHERS
            .iter()
            .any(|(file, dest)| inner == Path::new(file) && destination == *dest);
        // Even this container's own directory holds config.v2.json (its owner label) and
        // hostconfig.json: only the files Docker binds, at their destinations.
        if !shared || id.as_os_str() == d.container_id.as_str() {
            return Ok(shared);
        }
        // Another container's /dev/shm or /etc/hosts is its memory and its name lookups.
        let id = id.as_os_str().to_string_lossy().into_owned();
        let owner = d
            .runc_root
            .as_ref()
            .and_then(|r| std::fs::read(r.join(&id).join("state.json")).ok())
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .and_then(|state| owner_in_state(&state));
        if d.owner.is_some() && owner == d.owner {
            return Ok(true);
        }
        return Err(EditError::ForeignContainerFile {
            source_path: source.to_path_buf(),
            container: id,
            owner: owner.unwrap_or_else(|| "no labgpu owner".into()),
        });
    }
    if let Some((name, _)) = volume_of(source, root) {
        check_volume(&name, d)?;
        return Ok(true);
    }
    Ok(false)
}

/// A local volume must be Docker's own directory, or a tmpfs, unless the policy names it:
/// `-o type=proc`, an overlay over someone's home or a relative bind are mounted there by
/// dockerd as root.
fn check_volume(name: &str, d: &Decision) -> Result<(), EditError> {
    let backings = d
        .volume_backings
        .get(name)
        .ok_or_else(|| EditError::VolumeUnknown(name.to_string()))?;
    if d.mounted_volumes.contains(name) {
        return Ok(());
    }
    match backings.iter().find(|b| !b.harmless()) {
        None => Ok(()),
        Some(b) => Err(EditError::VolumeNotAllowed {
            volume: name.to_string(),
            backing: b.describe(),
            section: d.section(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edits::testing::decision;
    use crate::policy::{AbsPath, UserMount};

    fn bind(source: &str, destination: &str) -> Value {
        json!({"destination": destination, "type": "bind", "source": source, "options": ["rbind", "rprivate"]})
    }

    fn docker_decision(root: &Path) -> Decision {
        let mut d = decision();
        d.docker_root = root.to_path_buf();
        d
    }

    #[test]
    fn docker_files_volumes_and_allowed_prefixes_pass() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let mut d = docker_decision(root);
        d.volume_backings.insert("v1".into(), vec![]);
        let c = |p: &str| {
            root.join("containers")
                .join(p)
                .to_str()
                .unwrap()
                .to_string()
        };
        let mut spec = json!({"mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm"},
            bind(&c("cid/resolv.conf"), "/etc/resolv.conf"),
            bind(&c("cid/mounts/shm"), "/dev/shm"),
            bind(root.join("volumes/v1/_data").to_str().unwrap(), "/v"),
            bind("/srv/datasets/../datasets/imagenet", "/data"),
            bind("/usr/bin/docker-init", "/sbin/docker-init"),
        ]});
        apply(&mut spec, &d, &mut Report::default()).unwrap();
        assert_eq!(spec["mounts"][5]["source"], "/srv/datasets/imagenet");
    }

    #[test]
    fn build_steps_bind_buildkits_own_directories_only() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let r = |p: &str| root.join(p).to_str().unwrap().to_string();
        let mut d = docker_decision(root);
        d.build_step = true;
        let own = json!({"mounts": [
            bind(&r("buildkit/executor/resolv.conf"), "/etc/resolv.conf"),
            bind(&r("tmp/buildkit-secrets123/s"), "/run/secrets/s"),
            bind(&r("overlay2/abc/diff"), "/src"),
            {"destination": "/cache", "type": "overlay", "source": "overlay",
             "options": [format!("lowerdir={}:{}", r("overlay2/l/A"), r("overlay2/l/B")),
                         format!("upperdir={}", r("overlay2/x/diff")),
                         format!("workdir={}", r("overlay2/x/work"))]},
        ]});
        let mut spec = own.clone();
        apply(&mut spec, &d, &mut Report::default()).unwrap();
        for (source, dest) in [
            (r("containers/other/hostname"), "/etc/hostname"),
            (r("volumes/v1/_data"), "/v"),
            ("/home/alice".to_string(), "/h"),
        ] {
            let mut spec = json!({"mounts": [bind(&source, dest)]});
            assert!(
                apply(&mut spec, &d, &mut Report::default()).is_err(),
                "{source}"
            );
        }
        let mut spec = json!({"mounts": [{"destination": "/x", "type": "overlay", "source": "overlay",
            "options": [format!("lowerdir={}:/home/alice", r("overlay2/l/A"))]}]});
        assert!(apply(&mut spec, &d, &mut Report::default()).is_err());
        // The same directories are not a container's.
        d.build_step = false;
        let mut spec = own;
        assert!(apply(&mut spec, &d, &mut Report::default()).is_err());
    }

    #[test]
    fn host_paths_and_other_containers_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let d = docker_decision(root);
        let c = |p: &str| {
            root.join("containers")
                .join(p)
                .to_str()
                .unwrap()
                .to_string()
        };
        for (source, dest) in [
            ("/", "/host"),
            ("/var/run/docker.sock", "/var/run/docker.sock"),
            ("/srv/datasets2", "/x"),
            ("/srv/datasets/../../etc", "/x"),
            (&c("other/config.v2.json") as &str, "/x"),
            (&c("other/hostname"), "/etc/passwd"),
            (&c("cid/config.v2.json"), "/x"),
            (&c("cid/hostname"), "/etc/passwd"),
            (&c(""), "/c"),
            (root.join("volumes").to_str().unwrap(), "/v"),
            ("/usr/bin/docker-init", "/init"),
        ] {
            let mut spec = json!({"mounts": [bind(source, dest)]});
            let err = apply(&mut spec, &d, &mut Report::default()).unwrap_err();
            assert!(
                matches!(err, EditError::BindNotAllowed { .. }),
                "{source}: {err}"
            );
        }
        let mut spec =
            json!({"mounts": [{"destination": "/mnt", "type": "ext4", "source": "/dev/sda1"}]});
        assert!(apply(&mut spec, &d, &mut Report::default()).is_err());
    }

    /// `--network/--ipc container:X` brings X's /etc/hosts and /dev/shm: only X's owner may.
    #[test]
    fn another_containers_files_need_the_same_owner() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let runc = root.join("runc");
        for (id, owner) in [("bobs", "bob"), ("alices", "alice")] {
            std::fs::create_dir_all(runc.join(id)).unwrap();
            let state = json!({"config": {"labels": [format!("io.labgpu.owner={owner}")]}});
            std::fs::write(runc.join(id).join("state.json"), state.to_string()).unwrap();
        }
        let mut d = docker_decision(root);
        d.runc_root = Some(runc);
        let c = |p: &str| root.join("containers").join(p);
        let mut spec = json!({"mounts": [bind(c("alices/mounts/shm").to_str().unwrap(), "/dev/shm"),
                                         bind(c("alices/hosts").to_str().unwrap(), "/etc/hosts")]});
        apply(&mut spec, &d, &mut Report::default()).unwrap();
        for id in ["bobs", "gone"] {
            let mut spec = json!({"mounts": [bind(c(&format!("{id}/mounts/shm")).to_str().unwrap(), "/dev/shm")]});
            let err = apply(&mut spec, &d, &mut Report::default())
                .unwrap_err()
                .to_string();
            assert!(err.contains(&format!("belongs to container {id}")), "{err}");
        }
    }

    #[test]
    fn symlinks_are_resolved_before_comparing() {
        let dir = tempfile::tempdir().unwrap();
        let allowed = dir.path().join("allowed");
        std::fs::create_dir(&allowed).unwrap();
        std::os::unix::fs::symlink("/etc", allowed.join("link")).unwrap();
        let mut d = decision();
        d.bind_allow = vec![resolve_host(&allowed)];
        let mut spec = json!({"mounts": [bind(allowed.join("link").to_str().unwrap(), "/x")]});
        let err = apply(&mut spec, &d, &mut Report::default()).unwrap_err();
        assert!(err.to_string().contains("host path /etc "), "{err}");
    }

    /// What the kernel has at `_data` decides, not opts.json: proc, a bind of someone's home,
    /// a mount below `_data` are refused; tmpfs and plain directories pass; the policy can
    /// name an admin's mounted volume.
    #[test]
    fn volumes_are_judged_by_what_is_mounted_on_them() {
        use crate::volumes::Backing;
        let root = Path::new("/var/lib/docker");
        let backing = |mp: &str, fs: &str, src: &str, r: &str| Backing {
            mount_point: root.join("volumes").join(mp),
            fs_type: fs.into(),
            source: src.into(),
            root: r.into(),
            shared: false,
        };
        let mut d = docker_decision(root);
        d.volume_backings.insert("plain".into(), vec![]);
        d.volume_backings.insert(
            "tmp".into(),
            vec![backing("tmp/_data", "tmpfs", "tmpfs", "/")],
        );
        d.volume_backings
            .insert("p".into(), vec![backing("p/_data", "proc", "proc", "/")]);
        d.volume_backings.insert(
            "b".into(),
            vec![backing("b/_data", "ext4", "/dev/sda1", "/home/bob")],
        );
        d.volume_backings.insert(
            "deep".into(),
            vec![backing("deep/_data/x", "sysfs", "sysfs", "/")],
        );
        d.volume_backings.insert(
            "nfs".into(),
            vec![backing("nfs/_data", "nfs4", "srv:/data", "/")],
        );
        let vol = |name: &str| bind(&format!("/var/lib/docker/volumes/{name}/_data"), "/v");
        for ok in ["plain", "tmp"] {
            apply(
                &mut json!({"mounts": [vol(ok)]}),
                &d,
                &mut Report::default(),
            )
            .unwrap();
        }
        for bad in ["p", "b", "deep", "nfs", "unseen"] {
            let err = apply(
                &mut json!({"mounts": [vol(bad)]}),
                &d,
                &mut Report::default(),
            )
            .unwrap_err()
            .to_string();
            assert!(err.contains(&format!("volume {bad:?}")), "{bad}: {err}");
        }
        d.mounted_volumes.insert("nfs".into());
        apply(
            &mut json!({"mounts": [vol("nfs")]}),
            &d,
            &mut Report::default(),
        )
        .unwrap();
    }

    #[test]
    fn policy_mounts_are_added_in_order_and_replace_same_destination() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        std::fs::create_dir_all(home.join("data")).unwrap();
        let mut d = decision();
        d.mounts = vec![
            UserMount {
                source: AbsPath(home.clone()),
                destination: AbsPath("/workspace".into()),
                readonly: false,
            },
            UserMount {
                source: AbsPath(home.join("data")),
                destination: AbsPath("/workspace/data".into()),
                readonly: true,
            },
        ];
        d.bind_allow.push(resolve_host(&home));
        let mut spec = json!({"mounts": [bind(home.join("data").to_str().unwrap(), "/workspace")]});
        apply(&mut spec, &d, &mut Report::default()).unwrap();
        let mounts = spec["mounts"].as_array().unwrap();
        assert_eq!(mounts.len(), 2);
        assert_eq!(mounts[0]["destination"], "/workspace");
        assert_eq!(mounts[0]["source"], json!(resolve_host(&home)));
        assert_eq!(
            mounts[0]["options"],
            json!(["rbind", "rprivate", "nosuid", "nodev"])
        );
        assert_eq!(
            mounts[1]["options"],
            json!(["rbind", "rprivate", "nosuid", "nodev", "ro"])
        );
    }
}
