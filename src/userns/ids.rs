//! The host's account databases, as the user namespace checks need them: the owner's
//! account name and groups, and every uid and gid someone already has.

use std::ffi::{CStr, CString};

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

/// (name, uid, gid) of every passwd entry NSS enumerates.
fn passwd_entries() -> Vec<(String, u32, u32)> {
    let mut out = Vec::new();
    // SAFETY: getpwent's static buffer is read before the next call and copied out; the
    // runtime and CLI call this from one thread.
    unsafe {
        libc::setpwent();
        loop {
            let p = libc::getpwent();
            if p.is_null() {
                break;
            }
            let name = CStr::from_ptr((*p).pw_name).to_string_lossy().into_owned();
            out.push((name, (*p).pw_uid, (*p).pw_gid));
        }
        libc::endpwent();
    }
    out
}

/// (name, gid) of every group entry NSS enumerates.
fn group_entries() -> Vec<(String, u32)> {
    let mut out = Vec::new();
    // SAFETY: as in passwd_entries.
    unsafe {
        libc::setgrent();
        loop {
            let g = libc::getgrent();
            if g.is_null() {
                break;
            }
            let name = CStr::from_ptr((*g).gr_name).to_string_lossy().into_owned();
            out.push((name, (*g).gr_gid));
        }
        libc::endgrent();
    }
    out
}
