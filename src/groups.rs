//! `[groups.NAME]`: one policy table for every member of a host group.
//!
//! A group table takes the keys of a `[users.NAME]` table except the identity keys. A user's
//! table is put together key by key, at the TOML level: a key the user's own table sets is
//! theirs; any other key comes from the first of the user's groups, in the order the
//! `[groups.*]` tables appear in the file, that sets it. The result is then read exactly as a
//! `[users]` table is (`UserPolicy`), so a key the user table gains later (GPU pools, say)
//! works in group tables with no code here. Keys are never unions of two groups' values: an
//! administrator who wants a user to have both groups' GPUs lists them, and puts the more
//! specific group first.
//!
//! Membership comes from the host's account files only (`accounts`), read on every create:
//! `gpasswd -d` applies to the next container. Root is never a member (see [`Policy::resolve_user`]).

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

use crate::accounts::Accounts;
use crate::policy::{valid_user_name, Policy, PolicyError, UserPolicy};

/// One `[groups.NAME]` table.
#[derive(Debug, Clone)]
pub struct GroupTable {
    /// The host group (a name in /etc/group).
    pub name: String,
    /// The keys as written: what a member's table is merged from.
    pub table: toml::Table,
    /// The same keys read as a user's table (for checks: GPUs present, Slurm, pids).
    pub settings: UserPolicy,
}

/// The `[groups.*]` tables in the order the file lists them.
#[derive(Debug, Clone, Default)]
pub struct GroupTables(Vec<GroupTable>);

impl GroupTables {
    pub fn iter(&self) -> std::slice::Iter<'_, GroupTable> {
        self.0.iter()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn get(&self, name: &str) -> Option<&GroupTable> {
        self.0.iter().find(|g| g.name == name)
    }
}

/// Keys a group table may not set, and why (the second half of the refusal's sentence).
const REFUSED: &[(&str, &str)] = &[
    // An id is one account's: with a group's uid every member would run as the same user
    // and the proxy could not tell them apart.
    ("uid", "a uid is one account's; set it in [users.NAME]"),
    ("gid", "a gid is one account's; set it in [users.NAME]"),
    // Published host ports must be each user's alone (a user's service must not be taken
    // over by another); one range would be shared by every member.
    (
        "ports",
        "host ports must be each user's own, and a group's range would be shared by all its members; set them in [users.NAME] ports",
    ),
];

impl<'de> Deserialize<'de> for GroupTables {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(TablesVisitor)
    }
}

struct TablesVisitor;

impl<'de> Visitor<'de> for TablesVisitor {
    type Value = GroupTables;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("[groups.NAME] tables")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<GroupTables, A::Error> {
        let mut out = Vec::new();
        while let Some(name) = map.next_key::<String>()? {
            let table: toml::Table = map.next_value()?;
            out.push(group_table(name, table).map_err(serde::de::Error::custom)?);
        }
        Ok(GroupTables(out))
    }
}

/// Checks one group table: its name, no identity key, and every other key as a user's.
fn group_table(name: String, table: toml::Table) -> Result<GroupTable, String> {
    if !valid_user_name(&name) || name == "." || name == ".." {
        return Err(format!("[groups.{name}] is not a valid group name"));
    }
    if let Some((key, why)) = REFUSED.iter().find(|(k, _)| table.contains_key(*k)) {
        return Err(format!(
            "[groups.{name}] {key}: not allowed in a group table: {why}"
        ));
    }
    let settings = UserPolicy::deserialize(toml::Value::Table(table.clone()))
        .map_err(|e| format!("[groups.{name}] {}", e.message().trim()))?;
    Ok(GroupTable {
        name,
        table,
        settings,
    })
}

/// Where a policy user's settings come from, for a user a group contributes to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Origin {
    /// The user has a `[users.NAME]` table of their own.
    pub own: bool,
    /// The groups that have a table and count the user as a member, in file order.
    pub groups: Vec<String>,
    /// Each key a group supplied, with that group's name.
    pub via: BTreeMap<String, String>,
}

/// A user's table: their own keys, then each group's keys the user's table and earlier
/// groups left unset.
pub fn merge(own: Option<&toml::Table>, groups: &[&GroupTable]) -> (toml::Table, Origin) {
    let mut table = own.cloned().unwrap_or_default();
    let mut origin = Origin {
        own: own.is_some(),
        groups: groups.iter().map(|g| g.name.clone()).collect(),
        via: BTreeMap::new(),
    };
    for g in groups {
        for (key, value) in &g.table {
            if !table.contains_key(key) {
                table.insert(key.clone(), value.clone());
                origin.via.insert(key.clone(), g.name.clone());
            }
        }
    }
    (table, origin)
}

impl Policy {
    /// Makes every member of a `[groups.NAME]` table a policy user, and puts each member's
    /// own table over their groups'. Nothing to do (and nothing read) without group tables.
    pub fn apply_groups(&mut self, accounts: &Accounts) -> Result<(), PolicyError> {
        if self.groups.is_empty() {
            return Ok(());
        }
        let own = self.own_tables.take().unwrap_or_default();
        let mut names: Vec<String> = own.keys().cloned().collect();
        let pinned: Vec<u32> = self.users.values().filter_map(|u| u.uid).collect();
        for g in self.groups.iter() {
            // An account whose uid a [users] table pins is that user, not a member apart.
            let members = accounts
                .members_of(&g.name)
                .into_iter()
                .filter(|m| accounts.uid_of(m).is_none_or(|uid| !pinned.contains(&uid)));
            names.extend(members.map(String::from));
        }
        names.sort();
        names.dedup();
        let result = names
            .iter()
            .try_for_each(|n| self.resolve_user(n, own.get(n), accounts));
        self.own_tables = Some(own);
        result
    }

    /// Puts `name`'s table together from `own` (their `[users]` table as written, if any) and
    /// their groups' tables, and makes it `self.users[name]`; a user with no group table
    /// keeps their own table as it is.
    ///
    /// Whose groups: the account of the uid `own` pins (as the proxy knows the user by it),
    /// else the account named `name`. The caller skips a `name` without a table of its own
    /// whose uid another user's table pins (that account is that user).
    ///
    /// Root (by name or uid 0) is never a member: a group listing root, or root's own group,
    /// must not make a container's root, which the proxy sees as uid 0, a policy user. An
    /// administrator who wants that writes `[users.root]`. Names that could not be a cgroup
    /// directory are no one's either.
    pub fn resolve_user(
        &mut self,
        name: &str,
        own: Option<&toml::Table>,
        accounts: &Accounts,
    ) -> Result<(), PolicyError> {
        if self.groups.is_empty() || !valid_user_name(name) || name == "." || name == ".." {
            return Ok(());
        }
        let pinned = own
            .and_then(|t| t.get("uid"))
            .and_then(toml::Value::as_integer);
        let account = match pinned {
            Some(uid) => match accounts.passwd.iter().find(|p| i64::from(p.uid) == uid) {
                Some(p) => p.name.as_str(),
                None => return Ok(()), // no account: no groups
            },
            None => name,
        };
        if accounts.is_root(account) {
            return Ok(());
        }
        let theirs = accounts.groups_of(account);
        let groups: Vec<&GroupTable> = self
            .groups
            .iter()
            .filter(|g| theirs.contains(&g.name.as_str()))
            .collect();
        if groups.is_empty() {
            return Ok(());
        }
        let (table, origin) = merge(own, &groups);
        let user = UserPolicy::deserialize(toml::Value::Table(table)).map_err(|e| {
            PolicyError::Invalid {
                path: self.path.clone(),
                message: format!(
                    "[users.{name}] with [groups.{}]: {}",
                    origin.groups.join("], [groups."),
                    e.message().trim()
                ),
            }
        })?;
        self.users.insert(name.to_string(), user);
        self.origins.insert(name.to_string(), origin);
        Ok(())
    }

    /// Where `name`'s `key` comes from: `[users.NAME]`, `[groups.G]` or `[defaults]` (for
    /// messages that name the table to edit).
    pub fn table_of(&self, name: &str, key: &str) -> String {
        match self.origins.get(name).and_then(|o| o.via.get(key)) {
            Some(g) => format!("[groups.{g}]"),
            None => format!("[users.{name}]"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::policy::{GpuRef, RunAs};

    const PASSWD: &str = "root:x:0:0::/root:/bin/sh\n\
        alice:x:1001:1001::/home/alice:/bin/sh\n\
        bob:x:1002:3000::/home/bob:/bin/sh\n\
        carol:x:1003:1003::/home/carol:/bin/sh\n\
        dave:x:1004:1004::/home/dave:/bin/sh\n";
    const GROUP: &str = "root:x:0:\n\
        ml:x:3000:alice,root\n\
        vision:x:3001:alice,carol\n\
        alice:x:1001:\n";

    fn accounts() -> Accounts {
        Accounts::parse(PASSWD, GROUP)
    }

    fn parse(text: &str) -> Result<Policy, PolicyError> {
        Policy::parse(Path::new("/etc/labgpu/policy.toml"), text.as_bytes())
    }

    fn resolved(text: &str) -> Policy {
        let mut p = parse(text).unwrap();
        p.apply_groups(&accounts()).unwrap();
        p
    }

    const POLICY: &str = "version = 1\n\
        [groups.vision]\ngpus = [2]\ncpus = 4\n\
        [groups.ml]\ngpus = [0, 1]\nmemory = \"64g\"\nrun_as = \"owner\"\n\
        [users.alice]\nmemory = \"8g\"\n";

    #[test]
    fn a_member_without_a_table_gets_the_groups_keys() {
        let p = resolved(POLICY);
        // bob: ml through his passwd gid, no [users] table.
        let bob = p.user("bob").expect("bob is a policy user through ml");
        assert_eq!(bob.gpus.as_slice(), [GpuRef::Number(0), GpuRef::Number(1)]);
        assert_eq!(bob.run_as, Some(RunAs::Owner));
        assert_eq!(p.user_for_uid(1002, Some("bob")), Some("bob"));
        let o = &p.origins["bob"];
        assert!(!o.own);
        assert_eq!(o.groups, ["ml"]);
        assert_eq!(o.via["gpus"], "ml");
        assert_eq!(p.table_of("bob", "gpus"), "[groups.ml]");
    }

    #[test]
    fn the_first_group_in_the_file_wins_and_own_keys_win_over_both() {
        let p = resolved(POLICY);
        let alice = p.user("alice").unwrap();
        // vision comes first in the file: its gpus, not ml's, and no union.
        assert_eq!(alice.gpus.as_slice(), [GpuRef::Number(2)]);
        assert_eq!(alice.cpus.map(|c| c.to_string()), Some("4".into()));
        // ml still gives what vision leaves unset.
        assert_eq!(alice.run_as, Some(RunAs::Owner));
        // Her own memory, not ml's 64g.
        assert_eq!(alice.memory.map(|m| m.0), Some(8 << 30));
        let o = &p.origins["alice"];
        assert!(o.own);
        assert_eq!(o.groups, ["vision", "ml"]);
        assert_eq!(o.via.get("memory"), None);
        assert_eq!(o.via["gpus"], "vision");
        assert_eq!(p.table_of("alice", "memory"), "[users.alice]");
        // The same two groups the other way round: ml first.
        let p = resolved(
            "version = 1\n[groups.ml]\ngpus = [0, 1]\n[groups.vision]\ngpus = [2]\n[users.alice]\n",
        );
        assert_eq!(
            p.user("alice").unwrap().gpus.as_slice(),
            [GpuRef::Number(0), GpuRef::Number(1)]
        );
    }

    #[test]
    fn an_own_empty_list_overrides_the_groups() {
        let p = resolved("version = 1\n[groups.ml]\ngpus = [0]\n[users.bob]\ngpus = []\n");
        let bob = p.user("bob").unwrap();
        assert!(bob.gpus.is_empty() && bob.gpus.is_set());
    }

    #[test]
    fn non_members_and_root_get_nothing() {
        let p = resolved(POLICY);
        assert!(p.user("dave").is_none());
        assert_eq!(p.user_for_uid(1004, Some("dave")), None);
        // root is listed in ml, and is root's group's only member: never a policy user.
        assert!(p.user("root").is_none());
        let p = resolved("version = 1\n[groups.root]\ngpus = [0]\n");
        assert!(p.user("root").is_none());
        assert!(p.users.is_empty());
    }

    #[test]
    fn a_pinned_uid_makes_the_groups_those_of_its_account() {
        // [users.robert] pins bob's uid: bob's groups are his, and bob is no member apart.
        let p = resolved(
            "version = 1\n[groups.ml]\ngpus = [0]\n[users.robert]\nuid = 1002\ngid = 3000\n",
        );
        assert_eq!(p.user("robert").unwrap().gpus.len(), 1);
        assert!(p.user("bob").is_none());
        assert_eq!(p.user_for_uid(1002, Some("bob")), Some("robert"));
        // [users.alice] pinned to dave's uid: not alice's groups (vision, ml) but dave's (none).
        let p = resolved(
            "version = 1\n[groups.vision]\ngpus = [2]\n[users.alice]\nuid = 1004\ngid = 1004\n",
        );
        assert!(p.user("alice").unwrap().gpus.is_empty());
        assert!(!p.origins.contains_key("alice"));
    }

    #[test]
    fn a_policy_without_groups_is_left_as_it_is() {
        let mut p = parse("version = 1\n[users.alice]\ngpus = [3]\n").unwrap();
        p.apply_groups(&accounts()).unwrap();
        assert_eq!(p.users.len(), 1);
        assert!(p.origins.is_empty());
    }

    #[test]
    fn a_group_with_no_host_group_is_no_ones() {
        let p = resolved("version = 1\n[groups.nosuch]\ngpus = [0]\n");
        assert!(p.users.is_empty());
    }

    #[test]
    fn identity_keys_are_refused_in_group_tables() {
        for (key, line) in [
            ("uid", "uid = 5"),
            ("gid", "gid = 5"),
            ("ports", "ports = [\"20000-20099\"]"),
        ] {
            let err = parse(&format!("version = 1\n[groups.ml]\n{line}\n"))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(&format!("[groups.ml] {key}: not allowed in a group table")),
                "{err}"
            );
            assert!(err.contains("line 2"), "{err}");
        }
    }

    #[test]
    fn group_tables_are_checked_as_user_tables() {
        for (text, want) in [
            (
                "[groups.ml]\ngpuz = [0]\n",
                "[groups.ml] unknown field `gpuz`",
            ),
            ("[groups.ml]\ngpus = [\"gpu0\"]\n", "[groups.ml]"),
            ("[groups.\"a b\"]\n", "not a valid group name"),
            ("[groups.ml]\npids = 0\n", "[groups.ml] pids = 0"),
            (
                "[groups.ml]\ngpus = \"slurm\"\n",
                "[groups.ml] gpus = \"slurm\" needs a [proxy]",
            ),
            ("groups = 3\n", "line 2"),
        ] {
            let err = parse(&format!("version = 1\n{text}"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{text}: {err}");
        }
    }

    #[test]
    fn every_user_table_key_is_a_group_table_key() {
        // Keys the user table has and a group table refuses are the identity keys alone.
        let p = parse(
            "version = 1\n[groups.ml]\ngpus = [0]\ncapabilities = [\"SYS_PTRACE\"]\n\
             no_new_privileges = false\nallow_privileged = false\nallow_host_namespaces = false\n\
             allow_host_network = false\nallow_unconfined = false\nrun_as = \"owner\"\n\
             userns = \"owner\"\ngroups = [\"ml\"]\nbind_allow = [\"/srv\"]\ndevices = [\"/dev/fuse\"]\n\
             mounts = [{ source = \"/srv/ml\", destination = \"/data\" }]\nmounted_volumes = [\"nfs\"]\n\
             writable_volumes = [\"scratch\"]\nseccomp_profiles = []\ncpus = 2\nmemory = \"1g\"\n\
             pids = 100\nshm_size = \"1g\"\nsession = { image = \"lab/base:1\" }\n",
        )
        .unwrap();
        assert_eq!(p.groups.get("ml").unwrap().settings.mounts.len(), 1);
    }

    #[test]
    fn members_from_the_cache_path_resolve_alone() {
        let mut p = parse(POLICY).unwrap();
        p.users.clear();
        p.resolve_user("bob", None, &accounts()).unwrap();
        assert_eq!(p.users.len(), 1);
        assert_eq!(p.user("bob").unwrap().gpus.len(), 2);
        // A membership removed since (gpasswd -d): the next resolution sees it.
        let mut p = parse(POLICY).unwrap();
        p.users.clear();
        let without = Accounts::parse(PASSWD, "ml:x:3000:\nvision:x:3001:carol\n");
        p.resolve_user("alice", None, &without).unwrap();
        assert!(p.user("alice").is_none());
    }
}
