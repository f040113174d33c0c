//! The host's account databases, as the user namespace checks need them: the owner's
//! account name and groups, and every uid and gid someone already has.

use std::ffi::CString;

use nix::unistd::{Gid, Group, Uid, User};

use super::subid::{Account, Known};
use crate::policy::{GroupRef, Policy};

/// The host account /etc/subuid names the owner by: the passwd entry of `uid`, else the
/// policy name (an owner pinned to a uid with no passwd entry can still be listed by uid).
pub fn account(policy_name: &str, uid: u32) -> Account {
    let name = User::from_uid(Uid::from_raw(uid))
        .ok()
        .flatten()
        .map_or_else(|| policy_name.to_string(), |u| u.name);
    Account { name, uid }
}

/// The supplementary groups of the owner's host account (getgrouplist), without the primary.
pub fn host_groups(account: &Account, gid: u32) -> Vec<u32> {
    let Ok(name) = CString::new(account.name.as_str()) else {
        return Vec::new();
    };
    nix::unistd::getgrouplist(&name, Gid::from_raw(gid))
        .map(|g| {
            g.into_iter()
                .map(Gid::as_raw)
                .filter(|g| *g != gid)
                .collect()
        })
        .unwrap_or_default()
}

/// A `[users.NAME] groups` entry as a gid; `None` for a name the host does not know.
pub fn group_gid(g: &GroupRef) -> Option<u32> {
    match g {
        GroupRef::Gid(gid) => Some(*gid),
        GroupRef::Name(n) => Group::from_name(n).ok().flatten().map(|g| g.gid.as_raw()),
    }
}

/// Every uid (`uids`) and gid (`gids`) a host account, a host group or a policy user has.
pub struct KnownIds {
    pub uids: Vec<Known>,
    pub gids: Vec<Known>,
}

pub fn known_ids(policy: &Policy) -> KnownIds {
    let mut uids = Vec::new();
    let mut gids = Vec::new();
    for (name, uid, gid) in passwd_entries() {
        uids.push(Known {
            id: uid,
            who: format!("host user {name}"),
        });
        gids.push(Known {
            id: gid,
            who: format!("host user {name}'s primary group"),
        });
    }
    for (name, gid) in group_entries() {
        gids.push(Known {
            id: gid,
            who: format!("host group {name}"),
        });
    }
    for (name, u) in &policy.users {
        if let (Some(uid), Some(gid)) = (u.uid, u.gid) {
            let who = format!("policy user [users.{name}]");
            uids.push(Known {
                id: uid,
                who: who.clone(),
            });
            gids.push(Known { id: gid, who });
        }
        for g in &u.groups {
            if let Some(id) = group_gid(g) {
                gids.push(Known {
                    id,
                    who: format!("group {g} of [users.{name}] groups"),
                });
            }
        }
    }
    KnownIds { uids, gids }
}

/// The host's account files. Read directly rather than enumerated through NSS, which
/// loads every module (systemd's costs milliseconds) and which directory services usually
/// do not enumerate anyway.
const PASSWD: &str = "/etc/passwd";
const GROUP: &str = "/etc/group";

/// (name, uid, gid) of every /etc/passwd entry.
fn passwd_entries() -> Vec<(String, u32, u32)> {
    colon_file(PASSWD)
        .filter_map(|f| {
            Some((
                f.first()?.to_string(),
                f.get(2)?.parse().ok()?,
                f.get(3)?.parse().ok()?,
            ))
        })
        .collect()
}

/// (name, gid) of every /etc/group entry.
fn group_entries() -> Vec<(String, u32)> {
    colon_file(GROUP)
        .filter_map(|f| Some((f.first()?.to_string(), f.get(2)?.parse().ok()?)))
        .collect()
}

/// The colon-separated fields of each line of `path` (none if it cannot be read).
fn colon_file(path: &str) -> impl Iterator<Item = Vec<String>> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim_start().starts_with('#') && !l.trim().is_empty())
        .map(|l| l.split(':').map(str::to_string).collect())
        .collect::<Vec<_>>()
        .into_iter()
}
