//! `/etc/subuid` and `/etc/subgid`: the owner's subordinate range, and the rules that make it
//! safe to map: no other user's range overlaps it, and it holds no id a host account, a host
//! group or a policy user has (else container root could make files that are someone else's,
//! or a container process could *be* someone else to the proxy's `SO_PEERCRED`).

use std::fmt;
use std::path::{Path, PathBuf};

use super::mapping::SUBORDINATE_IDS;

pub const SUBUID: &str = "/etc/subuid";
pub const SUBGID: &str = "/etc/subgid";

/// Where shadow's useradd starts allocating (login.defs SUB_UID_MIN), for suggestions.
const SUGGEST_MIN: u64 = 100_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdKind {
    Uid,
    Gid,
}

impl IdKind {
    pub fn file(self) -> &'static str {
        match self {
            IdKind::Uid => SUBUID,
            IdKind::Gid => SUBGID,
        }
    }

    fn usermod_flag(self) -> &'static str {
        match self {
            IdKind::Uid => "--add-subuids",
            IdKind::Gid => "--add-subgids",
        }
    }
}

impl fmt::Display for IdKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IdKind::Uid => "uid",
            IdKind::Gid => "gid",
        })
    }
}

/// One line of /etc/subuid: `owner:start:count`, owner a name or a numeric uid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub owner: String,
    pub start: u64,
    pub count: u64,
}

impl Entry {
    fn end(&self) -> u64 {
        self.start + self.count
    }
}

/// Host account whose ranges are looked up: /etc/subuid names it by name or by uid.
#[derive(Debug, Clone)]
pub struct Account {
    pub name: String,
    pub uid: u32,
}

impl Account {
    fn owns(&self, e: &Entry) -> bool {
        e.owner == self.name || e.owner == self.uid.to_string()
    }
}

/// An id someone has on this host, and whose it is ("host user bob", "policy user carol").
#[derive(Debug, Clone)]
pub struct Known {
    pub id: u32,
    pub who: String,
}

#[derive(Debug, thiserror::Error)]
pub enum SubidError {
    #[error("cannot read {path}: {cause}")]
    Read {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("[users.{user}] userns = \"owner\" needs a subordinate {kind} range of {SUBORDINATE_IDS} ids for host user {account} in {file}, and {have}: add one with `usermod {flag} {suggest} {account}`", file = kind.file(), flag = kind.usermod_flag())]
    Missing {
        kind: IdKind,
        user: String,
        account: String,
        have: String,
        suggest: String,
    },
    #[error("the subordinate {kind} range {start}-{last} of host user {account} in {file} overlaps {other}'s range {other_start}-{other_last}: [users.{user}] userns = \"owner\" needs a range no other user shares", file = kind.file(), last = start + u64::from(SUBORDINATE_IDS) - 1, other_last = other_end - 1)]
    Overlap {
        kind: IdKind,
        user: String,
        account: String,
        start: u64,
        other: String,
        other_start: u64,
        other_end: u64,
    },
    #[error("the subordinate {kind} range {start}-{last} of host user {account} in {file} contains {kind} {id} of {who}: a container of [users.{user}] (userns = \"owner\") could act as them; give {account} a range that holds no host or policy id", file = kind.file(), last = start + u64::from(SUBORDINATE_IDS) - 1)]
    ContainsId {
        kind: IdKind,
        user: String,
        account: String,
        start: u64,
        id: u32,
        who: String,
    },
}

/// The entries of a subordinate id file; comments, blank and malformed lines are skipped
/// (shadow's own tools ignore them too). A missing file has no entries.
pub fn load(path: &Path) -> Result<Vec<Entry>, SubidError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(parse(&text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(source) => Err(SubidError::Read {
            path: path.to_path_buf(),
            cause: source,
        }),
    }
}

pub fn parse(text: &str) -> Vec<Entry> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| {
            let mut f = l.trim().split(':');
            let (owner, start, count) = (f.next()?, f.next()?, f.next()?);
            if f.next().is_some() || owner.is_empty() {
                return None;
            }
            Some(Entry {
                owner: owner.to_string(),
                start: start.parse().ok()?,
                count: count.parse().ok()?,
            })
        })
        .collect()
}

/// The start of the owner's first range long enough for container ids 1-65535, checked
/// against every other entry and every known id. `user` is the policy user (for messages).
pub fn owner_range(
    kind: IdKind,
    entries: &[Entry],
    user: &str,
    account: &Account,
    known: &[Known],
) -> Result<u32, SubidError> {
    let need = u64::from(SUBORDINATE_IDS);
    let own: Vec<&Entry> = entries.iter().filter(|e| account.owns(e)).collect();
    let Some(range) = own
        .iter()
        .find(|e| e.count >= need && e.start + need <= u64::from(u32::MAX))
    else {
        let have = match own.iter().map(|e| e.count).max() {
            None => "there is none".to_string(),
            Some(n) => format!("the longest there has {n}"),
        };
        return Err(SubidError::Missing {
            kind,
            user: user.to_string(),
            account: account.name.clone(),
            have,
            suggest: suggest(entries, known),
        });
    };
    let used = range.start..range.start + need;
    if let Some(other) = entries
        .iter()
        .find(|e| !account.owns(e) && e.start < used.end && used.start < e.end())
    {
        return Err(SubidError::Overlap {
            kind,
            user: user.to_string(),
            account: account.name.clone(),
            start: used.start,
            other: other.owner.clone(),
            other_start: other.start,
            other_end: other.end(),
        });
    }
    if let Some(k) = known.iter().find(|k| used.contains(&u64::from(k.id))) {
        return Err(SubidError::ContainsId {
            kind,
            user: user.to_string(),
            account: account.name.clone(),
            start: used.start,
            id: k.id,
            who: k.who.clone(),
        });
    }
    Ok(range.start as u32)
}

/// A free `FIRST-LAST` range after every existing one (65536-aligned, as useradd allocates),
/// holding no known id.
fn suggest(entries: &[Entry], known: &[Known]) -> String {
    let step = u64::from(SUBORDINATE_IDS) + 1;
    let mut start = entries
        .iter()
        .map(Entry::end)
        .max()
        .unwrap_or(0)
        .max(SUGGEST_MIN);
    start = start.div_ceil(step) * step;
    while known
        .iter()
        .any(|k| (start..start + step).contains(&u64::from(k.id)))
    {
        start += step;
    }
    format!("{start}-{}", start + step - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice() -> Account {
        Account {
            name: "alice".into(),
            uid: 1001,
        }
    }

    fn known() -> Vec<Known> {
        vec![
            Known {
                id: 1002,
                who: "host user bob".into(),
            },
            Known {
                id: 65534,
                who: "host user nobody".into(),
            },
        ]
    }

    #[test]
    fn parse_skips_comments_and_junk() {
        let e = parse("# c\nalice:100000:65536\n\nbob:x:1\n1003:231072:65536\nbad\n");
        assert_eq!(e.len(), 2);
        assert_eq!(e[1].owner, "1003");
    }

    #[test]
    fn first_long_enough_range_by_name_or_uid() {
        let e = parse("alice:100000:100\n1001:300000:65536\nbob:165536:65536\n");
        let start = owner_range(IdKind::Uid, &e, "alice", &alice(), &known()).unwrap();
        assert_eq!(start, 300000);
    }

    #[test]
    fn missing_or_short_says_how_to_add_one() {
        let e = parse("bob:165536:65536\nalice:100000:100\n");
        let msg = owner_range(IdKind::Uid, &e, "alice", &alice(), &known())
            .unwrap_err()
            .to_string();
        assert_eq!(
            msg,
            "[users.alice] userns = \"owner\" needs a subordinate uid range of 65535 ids for host user alice in /etc/subuid, and the longest there has 100: add one with `usermod --add-subuids 262144-327679 alice`"
        );
        let msg = owner_range(IdKind::Gid, &[], "alice", &alice(), &known())
            .unwrap_err()
            .to_string();
        assert!(msg.contains("/etc/subgid, and there is none"), "{msg}");
        assert!(
            msg.contains("usermod --add-subgids 131072-196607 alice"),
            "{msg}"
        );
    }

    #[test]
    fn overlap_with_another_user_is_refused() {
        let e = parse("alice:100000:65536\nbob:150000:65536\n");
        let msg = owner_range(IdKind::Uid, &e, "alice", &alice(), &known())
            .unwrap_err()
            .to_string();
        assert_eq!(
            msg,
            "the subordinate uid range 100000-165534 of host user alice in /etc/subuid overlaps bob's range 150000-215535: [users.alice] userns = \"owner\" needs a range no other user shares"
        );
        // Only the part in use counts: bob starting right after it is fine.
        let e = parse("alice:100000:65536\nbob:165535:65536\n");
        assert!(owner_range(IdKind::Uid, &e, "alice", &alice(), &known()).is_ok());
    }

    #[test]
    fn a_range_holding_someones_id_is_refused() {
        let e = parse("alice:1000:65536\n");
        let msg = owner_range(IdKind::Uid, &e, "alice", &alice(), &known())
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("range 1000-66534 of host user alice in /etc/subuid contains uid 1002 of host user bob"),
            "{msg}"
        );
    }
}
