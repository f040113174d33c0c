//! Per-owner user namespaces (`userns = "owner"`): container root is the owner on the host,
//! container ids 1-65535 are the owner's subordinate ids, and the image still looks as it
//! does without a user namespace.
//!
//! How a create travels: `resolve` (from `decide`) reads /etc/subuid, /etc/subgid and the
//! account databases and builds the `Plan` (mappings, the owner's groups); `joins` reads what
//! the namespaces a spec joins belong to; `edits::userns` writes the mappings, the user
//! namespace, the device binds and the neutral rootfs path into the spec; then, at the
//! runtime edge, `rootfs::prepare` builds an overlay over idmapped clones of Docker's layers
//! (`layers`), puts it where Docker mounted its own (so Docker's unmount at stop removes it),
//! and leaves runc in a private mount namespace where the rootfs is reachable and Docker's
//! per-container files and volumes are idmapped too. `sys` wraps the syscalls.

pub mod ids;
pub mod joins;
pub mod layers;
pub mod mapping;
pub mod rootfs;
pub mod subid;
pub mod sys;

use std::path::{Path, PathBuf};

use crate::policy::{Policy, UserPolicy, Userns};
pub use mapping::IdMap;
use subid::{IdKind, SubidError};

/// Where runc finds the rootfs of every userns container: an empty host directory over which
/// each create's private mount namespace binds its own overlay. It must exist on the host
/// (runc checks it for `exec`), outside Docker's data root (0710 there: container root, an
/// unprivileged user outside, could not reach its rootfs).
pub const ROOTFS_DIR: &str = "/run/labgpu/rootfs";

/// Where a create's private mount namespace stages the idmapped layer clones (a tmpfs of its
/// own over this empty host directory).
pub const STAGE_DIR: &str = "/run/labgpu/stage";

#[derive(Debug, thiserror::Error)]
pub enum UsernsError {
    #[error(transparent)]
    Subid(#[from] SubidError),
    #[error("the container has no owner to map its root to, and [defaults] userns = \"owner\" in {policy}: label it, or set [runtime] unlabeled = \"deny\"")]
    NoOwner { policy: PathBuf },
    #[error("[users.{user}] userns = \"owner\" would map container root to host {kind} 0, which is root's: give {user} their own uid and gid")]
    HostRoot { user: String, kind: &'static str },
    #[error("[users.{user}] groups: host group {group} does not exist")]
    UnknownGroup { user: String, group: String },
    #[error("[users.{user}] userns = \"owner\": the owner's {n} groups need {lines} lines in gid_map, more than the kernel's {max}", max = mapping::MAX_LINES)]
    TooManyGroups {
        user: String,
        n: usize,
        lines: usize,
    },
}

/// What a userns container is made of, resolved once per create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Host ids of container root: the owner's.
    pub owner_uid: u32,
    pub owner_gid: u32,
    pub map: IdMap,
    /// The owner's supplementary groups, mapped 1:1 (container gid == host gid).
    pub extra_gids: Vec<u32>,
    /// The rootfs path runc is given (`ROOTFS_DIR`).
    pub rootfs: PathBuf,
    /// The namespaces the spec joins, with what they belong to (filled at the runtime edge).
    pub joins: Vec<joins::Join>,
}

/// Files the ranges come from (tests point them elsewhere).
#[derive(Debug, Clone)]
pub struct SubidFiles {
    pub uid: PathBuf,
    pub gid: PathBuf,
}

impl Default for SubidFiles {
    fn default() -> Self {
        SubidFiles {
            uid: PathBuf::from(subid::SUBUID),
            gid: PathBuf::from(subid::SUBGID),
        }
    }
}

/// The plan for `owner` (host ids `ids`) when the policy gives it `userns = "owner"`.
pub fn resolve(
    policy: &Policy,
    owner: Option<&str>,
    user: Option<&UserPolicy>,
    ids: Option<(u32, u32)>,
    files: &SubidFiles,
) -> Result<Option<Plan>, UsernsError> {
    if policy.userns_for(user) == Userns::Off {
        return Ok(None);
    }
    // No owner (`decide` refuses that at create; verify reports the container).
    let (Some(name), Some(user), Some((uid, gid))) = (owner, user, ids) else {
        return Ok(None);
    };
    if uid == 0 || gid == 0 {
        return Err(UsernsError::HostRoot {
            user: name.to_string(),
            kind: if uid == 0 { "uid" } else { "gid" },
        });
    }
    let account = ids::account(name, uid);
    let mut extra = ids::host_groups(&account, gid);
    for g in &user.groups {
        let gid = ids::group_gid(g).ok_or_else(|| UsernsError::UnknownGroup {
            user: name.to_string(),
            group: g.to_string(),
        })?;
        extra.push(gid);
    }
    extra.retain(|g| *g != gid && *g != 0);
    extra.sort_unstable();
    extra.dedup();
    let known = ids::known_ids(policy);
    let uid_start = subid::owner_range(
        IdKind::Uid,
        &subid::load(&files.uid)?,
        name,
        &account,
        &known.uids,
    )?;
    let gid_start = subid::owner_range(
        IdKind::Gid,
        &subid::load(&files.gid)?,
        name,
        &account,
        &known.gids,
    )?;
    let map = IdMap {
        uid: mapping::uid_map(uid, uid_start),
        gid: mapping::gid_map(gid, gid_start, &extra),
    };
    if map.gid.len() > mapping::MAX_LINES {
        return Err(UsernsError::TooManyGroups {
            user: name.to_string(),
            n: extra.len(),
            lines: map.gid.len(),
        });
    }
    Ok(Some(Plan {
        owner_uid: uid,
        owner_gid: gid,
        map,
        extra_gids: extra,
        rootfs: PathBuf::from(ROOTFS_DIR),
        joins: Vec::new(),
    }))
}

/// Whether `path` is the rootfs labgpu gives userns containers.
pub fn is_neutral_rootfs(path: &Path) -> bool {
    path == Path::new(ROOTFS_DIR)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A uid and gid no host account has, so the owner is known by its policy name.
    const UID: u32 = 3_900_001;

    fn files(dir: &Path, uid: &str, gid: &str) -> SubidFiles {
        std::fs::write(dir.join("subuid"), uid).unwrap();
        std::fs::write(dir.join("subgid"), gid).unwrap();
        SubidFiles {
            uid: dir.join("subuid"),
            gid: dir.join("subgid"),
        }
    }

    fn policy(extra: &str) -> Policy {
        let text = format!(
            "version = 1\n[users.zed]\nuid = {UID}\ngid = {UID}\nuserns = \"owner\"\n{extra}[users.off]\n"
        );
        Policy::parse(Path::new("/p.toml"), text.as_bytes()).unwrap()
    }

    #[test]
    fn the_plan_maps_root_to_the_owner_and_the_rest_to_its_ranges() {
        let d = tempfile::tempdir().unwrap();
        let f = files(d.path(), "zed:3000000:65536\n", "zed:3100000:70000\n");
        let p = policy("groups = [4100000]\n");
        let plan = resolve(&p, Some("zed"), p.user("zed"), Some((UID, UID)), &f)
            .unwrap()
            .unwrap();
        assert_eq!(plan.map.uid, mapping::uid_map(UID, 3_000_000));
        assert_eq!(plan.map.gid, mapping::gid_map(UID, 3_100_000, &[4_100_000]));
        assert_eq!(plan.extra_gids, [4_100_000]);
        assert_eq!(plan.rootfs, Path::new(ROOTFS_DIR));
        assert!(resolve(&p, Some("off"), p.user("off"), None, &f)
            .unwrap()
            .is_none());
    }

    #[test]
    fn an_owner_with_root_ids_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let f = files(d.path(), "zed:3000000:65536\n", "zed:3100000:65536\n");
        let p = policy("");
        for (ids, kind) in [((0, UID), "uid"), ((UID, 0), "gid")] {
            let err = resolve(&p, Some("zed"), p.user("zed"), Some(ids), &f).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!("[users.zed] userns = \"owner\" would map container root to host {kind} 0, which is root's: give zed their own uid and gid")
            );
        }
    }

    #[test]
    fn a_policy_group_inside_the_range_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let f = files(d.path(), "zed:3000000:65536\n", "zed:3100000:65536\n");
        let p = policy("groups = [3100005]\n");
        let err = resolve(&p, Some("zed"), p.user("zed"), Some((UID, UID)), &f).unwrap_err();
        assert!(
            err.to_string()
                .contains("contains gid 3100005 of group 3100005 of [users.zed] groups"),
            "{err}"
        );
        let p = policy("groups = [\"no-such-group-here\"]\n");
        let err = resolve(&p, Some("zed"), p.user("zed"), Some((UID, UID)), &f).unwrap_err();
        assert_eq!(
            err.to_string(),
            "[users.zed] groups: host group \"no-such-group-here\" does not exist"
        );
    }
}
