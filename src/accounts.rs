//! The host's account files, `/etc/passwd` and `/etc/group`, read directly: who has which
//! ids (user namespaces) and who belongs to which group (`[groups.NAME]` policy tables).
//!
//! Read as files rather than through NSS: NSS loads every module (systemd's costs
//! milliseconds), directory services usually do not enumerate, and these two files are
//! root's to write. Groups that exist only in LDAP or SSSD are therefore not seen; a
//! directory user listed as a member of a group in `/etc/group` is.

use std::path::Path;

pub const PASSWD: &str = "/etc/passwd";
pub const GROUP: &str = "/etc/group";

/// One `/etc/passwd` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswdEntry {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

/// One `/etc/group` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupEntry {
    pub name: String,
    pub gid: u32,
    pub members: Vec<String>,
}

/// Both files as they were when read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Accounts {
    pub passwd: Vec<PasswdEntry>,
    pub groups: Vec<GroupEntry>,
}

impl Accounts {
    /// The host's files now. A file that cannot be read counts as empty: nobody is then a
    /// member of anything, which grants nothing.
    pub fn host() -> Accounts {
        Accounts::read(Path::new(PASSWD), Path::new(GROUP))
    }

    pub fn read(passwd: &Path, group: &Path) -> Accounts {
        let text = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
        Accounts::parse(&text(passwd), &text(group))
    }

    pub fn parse(passwd: &str, group: &str) -> Accounts {
        let passwd = colon_lines(passwd)
            .filter_map(|f| {
                Some(PasswdEntry {
                    name: f.first()?.to_string(),
                    uid: f.get(2)?.parse().ok()?,
                    gid: f.get(3)?.parse().ok()?,
                })
            })
            .collect();
        let groups = colon_lines(group)
            .filter_map(|f| {
                Some(GroupEntry {
                    name: f.first()?.to_string(),
                    gid: f.get(2)?.parse().ok()?,
                    members: f
                        .get(3)
                        .map(|m| {
                            m.split(',')
                                .map(str::trim)
                                .filter(|m| !m.is_empty())
                                .map(str::to_string)
                                .collect()
                        })
                        .unwrap_or_default(),
                })
            })
            .collect();
        Accounts { passwd, groups }
    }

    /// The names of the groups `user` belongs to: the group of their passwd entry's gid and
    /// every group that lists them as a member.
    pub fn groups_of(&self, user: &str) -> Vec<&str> {
        let primary: Vec<u32> = self
            .passwd
            .iter()
            .filter(|p| p.name == user)
            .map(|p| p.gid)
            .collect();
        self.groups
            .iter()
            .filter(|g| primary.contains(&g.gid) || g.members.iter().any(|m| m == user))
            .map(|g| g.name.as_str())
            .collect()
    }

    /// Everyone who belongs to group `name`: the accounts whose passwd gid is its gid, and its
    /// listed members.
    pub fn members_of(&self, name: &str) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for g in self.groups.iter().filter(|g| g.name == name) {
            let primary = self.passwd.iter().filter(|p| p.gid == g.gid);
            for m in primary
                .map(|p| p.name.as_str())
                .chain(g.members.iter().map(String::as_str))
            {
                if !out.contains(&m) {
                    out.push(m);
                }
            }
        }
        out
    }

    /// The uid of the passwd entry named `name`.
    pub fn uid_of(&self, name: &str) -> Option<u32> {
        self.passwd.iter().find(|p| p.name == name).map(|p| p.uid)
    }

    pub fn has_group(&self, name: &str) -> bool {
        self.groups.iter().any(|g| g.name == name)
    }

    /// Whether `name`'s passwd entry is uid 0 (root by any name).
    pub fn is_root(&self, name: &str) -> bool {
        name == "root" || self.passwd.iter().any(|p| p.name == name && p.uid == 0)
    }
}

/// The colon-separated fields of each line that is not blank or a comment.
fn colon_lines(text: &str) -> impl Iterator<Item = Vec<&str>> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#') && !l.trim().is_empty())
        .map(|l| l.split(':').collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\n\
        # a comment\n\
        alice:x:1001:1001::/home/alice:/bin/sh\n\
        bob:x:1002:3000::/home/bob:/bin/sh\n\
        toor:x:0:0::/root:/bin/sh\n\
        broken:x:notanumber:1\n";
    const GROUP: &str = "root:x:0:\n\
        alice:x:1001:\n\
        ml:x:3000:alice, carol\n\
        vision:x:3001:\n\
        empty:x:3002\n";

    #[test]
    fn membership_is_the_passwd_gid_or_the_member_list() {
        let a = Accounts::parse(PASSWD, GROUP);
        assert_eq!(a.groups_of("alice"), ["alice", "ml"]);
        // bob's primary gid is ml's; /etc/group need not list him.
        assert_eq!(a.groups_of("bob"), ["ml"]);
        // carol has no passwd entry here (a directory user) but is listed.
        assert_eq!(a.groups_of("carol"), ["ml"]);
        assert!(a.groups_of("mallory").is_empty());
        assert_eq!(a.members_of("ml"), ["bob", "alice", "carol"]);
        assert!(a.members_of("vision").is_empty());
        assert!(a.members_of("nosuch").is_empty());
        assert!(a.has_group("empty") && !a.has_group("nosuch"));
        assert!(a.passwd.iter().all(|p| p.name != "broken"));
    }

    #[test]
    fn root_is_recognised_by_uid_as_well_as_by_name() {
        let a = Accounts::parse(PASSWD, GROUP);
        assert!(a.is_root("root") && a.is_root("toor"));
        assert!(!a.is_root("alice"));
    }

    #[test]
    fn unreadable_files_make_nobody_a_member() {
        let a = Accounts::read(
            Path::new("/nonexistent/passwd"),
            Path::new("/nonexistent/g"),
        );
        assert_eq!(a, Accounts::default());
    }
}
