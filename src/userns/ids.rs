//! The host's account databases, as the user namespace checks need them: the owner's
//! account name and groups, and every uid and gid someone already has.

use std::ffi::CString;

use nix::unistd::{Gid, Group, Uid, User};

use super::subid::{Account, Known};
use crate::accounts::{Accounts, GroupEntry, PasswdEntry};
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
    let accounts = Accounts::host();
    for PasswdEntry { name, uid, gid } in accounts.passwd {
        uids.push(Known {
            id: uid,
            who: format!("host user {name}"),
        });
        gids.push(Known {
            id: gid,
            who: format!("host user {name}'s primary group"),
        });
    }
    for GroupEntry { name, gid, .. } in accounts.groups {
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
    // A group table's groups, even while it has no member on this host.
    for table in policy.groups.iter() {
        for g in &table.settings.groups {
            if let Some(id) = group_gid(g) {
                gids.push(Known {
                    id,
                    who: format!("group {g} of [groups.{}] groups", table.name),
                });
            }
        }
    }
    KnownIds { uids, gids }
}
