//! The policy file as text the admin wrote: `[users.NAME]` tables added, changed and
//! removed with `toml_edit`, so that every comment, key order and blank line of the rest of
//! the file stays as it was. Pure functions of the document; checking the result is the
//! caller's (`Policy::parse`, as the runtime loads it).

use std::path::{Path, PathBuf};

use toml_edit::{Array, DocumentMut, InlineTable, Item, RawString, Table, TableLike, Value};

use crate::policy::GpuRef;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EditError {
    #[error("{0}")]
    Toml(String),
    #[error("[users.{0}] is already in the policy")]
    Exists(String),
    #[error("[users.{0}] is not in the policy")]
    Missing(String),
    #[error(
        "users in the policy are written in a form labgpu cannot edit ({0}); edit the file by hand"
    )]
    Layout(String),
    #[error("[users.{user}] has no mount at {destination}")]
    NoSuchMount { user: String, destination: PathBuf },
    #[error("[users.{user}] already has a mount at {destination}")]
    MountExists { user: String, destination: PathBuf },
    #[error("[users.{user}] has no key {key}")]
    NoSuchKey { user: String, key: String },
    #[error("key {0:?} is not a key of a user's table (KEY or KEY.SUBKEY)")]
    BadKey(String),
}

/// A `--mount SRC:DST[:ro]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountSpec {
    pub source: PathBuf,
    pub destination: PathBuf,
    pub readonly: bool,
}

/// `--gpus`: a list, or the GPUs of the caller's Slurm job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GpuSpec {
    List(Vec<GpuRef>),
    Slurm,
}

pub fn parse(text: &str) -> Result<DocumentMut, EditError> {
    text.parse::<DocumentMut>()
        .map_err(|e| EditError::Toml(e.to_string().trim().to_string()))
}

/// The TOML value a `GpuSpec` is written as: `[0, "GPU-…"]` or `"slurm"`.
pub fn gpus_value(gpus: &GpuSpec) -> Value {
    match gpus {
        GpuSpec::Slurm => Value::from("slurm"),
        GpuSpec::List(refs) => {
            let mut a = Array::new();
            for r in refs {
                match r {
                    GpuRef::Number(n) => a.push(i64::from(*n)),
                    other => a.push(other.to_string()),
                }
            }
            Value::Array(a)
        }
    }
}

fn mount_value(m: &MountSpec) -> InlineTable {
    let mut t = InlineTable::new();
    t.insert("source", Value::from(path_str(&m.source)));
    t.insert("destination", Value::from(path_str(&m.destination)));
    if m.readonly {
        t.insert("readonly", Value::from(true));
    }
    t
}

fn path_str(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// `mounts = [...]`, one mount per line when there are several.
pub fn mounts_value(mounts: &[MountSpec]) -> Value {
    let mut a = Array::new();
    for m in mounts {
        a.push(mount_value(m));
    }
    Value::Array(layout_array(a))
}

fn layout_array(mut a: Array) -> Array {
    let multi = a.len() > 1;
    for v in a.iter_mut() {
        v.decor_mut().set_prefix(if multi { "\n  " } else { "" });
        v.decor_mut().set_suffix("");
    }
    a.set_trailing_comma(multi);
    a.set_trailing(if multi { "\n" } else { "" });
    a
}

/// The `users` table, created (implicit, so no bare `[users]` header appears) if missing.
fn users_mut(doc: &mut DocumentMut) -> Result<&mut Table, EditError> {
    let item = doc.entry("users").or_insert_with(|| {
        let mut t = Table::new();
        t.set_implicit(true);
        Item::Table(t)
    });
    item.as_table_mut()
        .ok_or_else(|| EditError::Layout("users is not a table".into()))
}

/// Adds `[users.NAME]` with `entries`, after the last user's table (or at the end of the
/// file when there is none), with a blank line before it.
pub fn add_user(
    doc: &mut DocumentMut,
    name: &str,
    entries: Vec<(&str, Value)>,
) -> Result<(), EditError> {
    if users_mut(doc)?.contains_key(name) {
        return Err(EditError::Exists(name.to_string()));
    }
    let mut table = Table::new();
    for (k, v) in entries {
        table.insert(k, Item::Value(v));
    }
    let last_user = users_mut(doc)?
        .iter()
        .filter_map(|(_, item)| item.as_table().and_then(Table::position))
        .max();
    let mut prefix = String::from("\n");
    let position = match last_user {
        Some(p) => {
            shift_positions(doc.as_table_mut(), p);
            p + 1
        }
        None => {
            // The end of the file: what trails the last table (comments, commented-out
            // examples) stays above the new table.
            let trailing = raw(doc.trailing());
            if !trailing.trim().is_empty() {
                prefix = trailing.trim_end_matches('\n').to_string() + "\n\n";
                doc.set_trailing("");
            }
            max_position(doc.as_table()).map_or(0, |p| p + 1)
        }
    };
    table.set_position(position);
    table.decor_mut().set_prefix(prefix);
    users_mut(doc)?.insert(name, Item::Table(table));
    Ok(())
}

/// Removes `[users.NAME]` with the comment lines right above its header (no blank line in
/// between); comments further up are kept, above whatever comes next.
pub fn remove_user(doc: &mut DocumentMut, name: &str) -> Result<(), EditError> {
    let users = doc
        .get_mut("users")
        .and_then(Item::as_table_like_mut)
        .ok_or_else(|| EditError::Missing(name.to_string()))?;
    let removed = users
        .remove(name)
        .ok_or_else(|| EditError::Missing(name.to_string()))?;
    let Item::Table(table) = removed else {
        // `alice = { … }` in `[users]`: the key took its own comments with it.
        return Ok(());
    };
    let kept = detached_comments(table.decor().prefix().map(raw).unwrap_or_default());
    if kept.is_empty() {
        return Ok(());
    }
    let after = table.position().unwrap_or(isize::MAX);
    match next_table(doc.as_table_mut(), after) {
        Some(next) => {
            let prefix = join(&kept, next.decor().prefix().map(raw).unwrap_or_default());
            next.decor_mut().set_prefix(prefix);
        }
        None => {
            let rest = raw(doc.trailing()).to_string();
            // At the end of the file the blank line that separated the table goes too.
            let trailing = if rest.trim().is_empty() {
                kept.trim_end_matches('\n').to_string() + "\n"
            } else {
                join(&kept, &rest)
            };
            doc.set_trailing(trailing);
        }
    }
    Ok(())
}

/// What of a removed table's prefix belongs to the rest of the file: everything up to its
/// last blank line, if that holds a comment.
fn detached_comments(prefix: &str) -> String {
    let lines: Vec<&str> = prefix.split_inclusive('\n').collect();
    let Some(blank) = lines.iter().rposition(|l| l.trim().is_empty()) else {
        return String::new();
    };
    let kept: String = lines[..=blank].concat();
    if kept.lines().any(|l| l.trim_start().starts_with('#')) {
        kept
    } else {
        String::new()
    }
}

/// `kept` (which ends with a blank line) above `next`, without doubling the blank line.
fn join(kept: &str, next: &str) -> String {
    let mut rest = next;
    while let Some((line, after)) = rest.split_once('\n') {
        if !line.trim().is_empty() {
            break;
        }
        rest = after;
    }
    format!("{kept}{rest}")
}

fn raw(r: &RawString) -> &str {
    r.as_str().unwrap_or_default()
}

/// Every table's position, depth first.
fn for_each_table(table: &mut Table, f: &mut dyn FnMut(&mut Table)) {
    for (_, item) in table.iter_mut() {
        match item {
            Item::Table(t) => {
                f(t);
                for_each_table(t, f);
            }
            Item::ArrayOfTables(a) => {
                for t in a.iter_mut() {
                    f(t);
                    for_each_table(t, f);
                }
            }
            _ => {}
        }
    }
}

fn shift_positions(root: &mut Table, after: isize) {
    for_each_table(root, &mut |t| {
        if let Some(p) = t.position().filter(|p| *p > after) {
            t.set_position(p + 1);
        }
    });
}

fn max_position(root: &Table) -> Option<isize> {
    let mut root = root.clone();
    let mut max = None;
    for_each_table(&mut root, &mut |t| {
        max = max.max(t.position());
    });
    max
}

/// A way down to a table: a key, or an item of an array of tables.
#[derive(Debug, Clone)]
enum Step {
    Key(String),
    Item(String, usize),
}

/// The first table after position `after` that has a header of its own.
fn next_table(root: &mut Table, after: isize) -> Option<&mut Table> {
    let mut best: Option<(isize, Vec<Step>)> = None;
    find_next(root, after, &mut Vec::new(), &mut best);
    let (_, steps) = best?;
    let mut t = root;
    for step in steps {
        t = match step {
            Step::Key(k) => t.get_mut(&k)?.as_table_mut()?,
            Step::Item(k, i) => t.get_mut(&k)?.as_array_of_tables_mut()?.get_mut(i)?,
        };
    }
    Some(t)
}

fn consider(t: &Table, after: isize, path: &[Step], best: &mut Option<(isize, Vec<Step>)>) {
    if let Some(p) = t.position().filter(|p| *p > after && !t.is_implicit()) {
        if best.as_ref().is_none_or(|(b, _)| p < *b) {
            *best = Some((p, path.to_vec()));
        }
    }
}

fn find_next(
    table: &Table,
    after: isize,
    path: &mut Vec<Step>,
    best: &mut Option<(isize, Vec<Step>)>,
) {
    for (key, item) in table.iter() {
        match item {
            Item::Table(t) => {
                path.push(Step::Key(key.to_string()));
                consider(t, after, path, best);
                find_next(t, after, path, best);
                path.pop();
            }
            Item::ArrayOfTables(a) => {
                for (i, t) in a.iter().enumerate() {
                    path.push(Step::Item(key.to_string(), i));
                    consider(t, after, path, best);
                    find_next(t, after, path, best);
                    path.pop();
                }
            }
            _ => {}
        }
    }
}

/// `[users.NAME]` (or `NAME = { … }` in `[users]`) to change in place.
pub fn user_mut<'d>(
    doc: &'d mut DocumentMut,
    name: &str,
) -> Result<&'d mut dyn TableLike, EditError> {
    doc.get_mut("users")
        .and_then(Item::as_table_like_mut)
        .and_then(|u| u.get_mut(name))
        .and_then(Item::as_table_like_mut)
        .ok_or_else(|| EditError::Missing(name.to_string()))
}

/// Sets `key` to `value`, keeping the old value's comments and spacing.
pub fn set_value(table: &mut dyn TableLike, key: &str, mut value: Value) {
    if let Some(old) = table.get_mut(key).and_then(Item::as_value_mut) {
        *value.decor_mut() = old.decor().clone();
        *old = value;
        return;
    }
    table.insert(key, Item::Value(value));
}

/// `KEY` or `KEY.SUBKEY` as the path of a key in a user's table.
pub fn key_path(key: &str) -> Result<Vec<&str>, EditError> {
    let parts: Vec<&str> = key.split('.').collect();
    let ok = parts.len() <= 2
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        });
    if ok {
        Ok(parts)
    } else {
        Err(EditError::BadKey(key.to_string()))
    }
}

/// `--set KEY[.SUBKEY]=VALUE`: VALUE as TOML, or as a string when it is not TOML.
pub fn set_path(user: &mut dyn TableLike, key: &str, value: &str) -> Result<(), EditError> {
    let mut value = value
        .parse::<Value>()
        .unwrap_or_else(|_| Value::from(value));
    // Written the way toml_edit writes values, whatever spacing the command line had.
    value.decor_mut().clear();
    match &mut value {
        Value::Array(a) => a.fmt(),
        Value::InlineTable(t) => t.fmt(),
        _ => {}
    }
    match key_path(key)?.as_slice() {
        [k] => set_value(user, k, value),
        [k, sub] => {
            if !user.contains_key(k) {
                user.insert(k, Item::Value(Value::InlineTable(InlineTable::new())));
            }
            let inner = user
                .get_mut(k)
                .and_then(Item::as_table_like_mut)
                .ok_or_else(|| EditError::BadKey(format!("{k} is not a table, so {key}")))?;
            set_value(inner, sub, value);
        }
        _ => unreachable!("key_path allows one or two parts"),
    }
    Ok(())
}

/// `--unset KEY[.SUBKEY]`.
pub fn unset_path(user: &mut dyn TableLike, name: &str, key: &str) -> Result<(), EditError> {
    let missing = || EditError::NoSuchKey {
        user: name.to_string(),
        key: key.to_string(),
    };
    match key_path(key)?.as_slice() {
        [k] => user.remove(k).map(drop).ok_or_else(missing),
        [k, sub] => user
            .get_mut(k)
            .and_then(Item::as_table_like_mut)
            .and_then(|t| t.remove(sub))
            .map(drop)
            .ok_or_else(missing),
        _ => unreachable!("key_path allows one or two parts"),
    }
}

/// Appends a mount to the user's `mounts` (created when missing).
pub fn add_mount(user: &mut dyn TableLike, name: &str, m: &MountSpec) -> Result<(), EditError> {
    let Some(existing) = user.get_mut("mounts") else {
        user.insert("mounts", Item::Value(mounts_value(std::slice::from_ref(m))));
        return Ok(());
    };
    let array = existing
        .as_array_mut()
        .ok_or_else(|| EditError::Layout(format!("[users.{name}] mounts is not an array")))?;
    if array
        .iter()
        .any(|v| mount_destination(v) == Some(m.destination.as_path()))
    {
        return Err(EditError::MountExists {
            user: name.to_string(),
            destination: m.destination.clone(),
        });
    }
    // Follow the array's own layout: one per line if it already is.
    let multi_line = array.iter().any(|v| raw_prefix(v).contains('\n')) || !array.is_empty();
    array.push(mount_value(m));
    if multi_line {
        let indent = array
            .iter()
            .find_map(|v| raw_prefix(v).rsplit('\n').next().map(str::to_string))
            .filter(|i| !i.is_empty())
            .unwrap_or_else(|| "  ".into());
        for v in array.iter_mut() {
            let p = raw_prefix(v).to_string();
            if !p.contains('\n') {
                v.decor_mut().set_prefix(format!("\n{indent}"));
            }
        }
        array.set_trailing_comma(true);
        if !raw(array.trailing()).contains('\n') {
            array.set_trailing("\n");
        }
    }
    Ok(())
}

fn raw_prefix(v: &Value) -> &str {
    v.decor().prefix().map(raw).unwrap_or_default()
}

fn mount_destination(v: &Value) -> Option<&Path> {
    v.as_inline_table()?
        .get("destination")?
        .as_str()
        .map(Path::new)
}

/// Takes the mount at `destination` out of the user's `mounts`.
pub fn remove_mount(
    user: &mut dyn TableLike,
    name: &str,
    destination: &Path,
) -> Result<(), EditError> {
    let missing = || EditError::NoSuchMount {
        user: name.to_string(),
        destination: destination.to_path_buf(),
    };
    let array = user
        .get_mut("mounts")
        .and_then(Item::as_array_mut)
        .ok_or_else(missing)?;
    let before = array.len();
    array.retain(|v| mount_destination(v) != Some(destination));
    if array.len() == before {
        return Err(missing());
    }
    if array.is_empty() {
        array.set_trailing_comma(false);
        array.set_trailing("");
    }
    Ok(())
}

/// A path as the policy wants it: absolute, not `/`, without `.`, `..` or empty parts.
pub fn plain_absolute(p: &Path) -> bool {
    let s = p.to_string_lossy();
    s.strip_prefix('/').is_some_and(|rest| {
        rest.split('/')
            .all(|seg| !seg.is_empty() && seg != "." && seg != "..")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = r#"# The lab's policy.
version = 1

[runtime]
unlabeled = "deny"   # nobody's containers are refused

[defaults]
run_as = "image"

# --- people ---

# alice: PhD student
[users.alice]
uid = 1001
gid = 1001
gpus = [0, 1]   # the two A100s
mounts = [
  { source = "/home/alice", destination = "/workspace" },
]

# bob: postdoc
[users.bob]
uid = 1002
gid = 1002

# The proxy.
[proxy]
state_dir = "/var/lib/labgpu"
# end of file
"#;

    fn doc() -> DocumentMut {
        parse(POLICY).unwrap()
    }

    /// The lines of `after` that are not in `before`, and those of `before` not in
    /// `after`, in a line diff that keeps order (what `diff` would show).
    fn changed(before: &str, after: &str) -> (Vec<String>, Vec<String>) {
        let b: Vec<&str> = before.lines().collect();
        let a: Vec<&str> = after.lines().collect();
        let mut start = 0;
        while start < b.len() && start < a.len() && b[start] == a[start] {
            start += 1;
        }
        let mut end = 0;
        while end < b.len() - start
            && end < a.len() - start
            && b[b.len() - 1 - end] == a[a.len() - 1 - end]
        {
            end += 1;
        }
        (
            b[start..b.len() - end]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            a[start..a.len() - end]
                .iter()
                .map(|s| s.to_string())
                .collect(),
        )
    }

    #[test]
    fn add_goes_after_the_last_user_and_touches_nothing_else() {
        let mut d = doc();
        add_user(
            &mut d,
            "carol",
            vec![
                ("uid", Value::from(1003)),
                ("gid", Value::from(1003)),
                ("gpus", gpus_value(&GpuSpec::List(vec![GpuRef::Number(2)]))),
            ],
        )
        .unwrap();
        let out = d.to_string();
        assert_eq!(
            out,
            POLICY.replace(
                "gid = 1002\n",
                "gid = 1002\n\n[users.carol]\nuid = 1003\ngid = 1003\ngpus = [2]\n"
            )
        );
        assert!(out.find("[users.carol]").unwrap() < out.find("# The proxy.").unwrap());
        assert_eq!(
            add_user(&mut d, "carol", vec![]),
            Err(EditError::Exists("carol".into()))
        );
    }

    #[test]
    fn add_to_a_policy_without_users_goes_to_the_end() {
        let text = "version = 1\n\n[defaults]\nrun_as = \"image\"\n\n# One table per user:\n# [users.alice]\n# gpus = [0]\n";
        let mut d = parse(text).unwrap();
        add_user(
            &mut d,
            "dave",
            vec![("uid", Value::from(5)), ("gid", Value::from(5))],
        )
        .unwrap();
        let out = d.to_string();
        assert_eq!(out, format!("{text}\n[users.dave]\nuid = 5\ngid = 5\n"),);
        let mut d = parse("version = 1\n").unwrap();
        add_user(&mut d, "e", vec![("uid", Value::from(5))]).unwrap();
        assert_eq!(d.to_string(), "version = 1\n\n[users.e]\nuid = 5\n");
    }

    #[test]
    fn mounts_are_written_one_per_line_when_several() {
        let m = |s: &str, d: &str, ro| MountSpec {
            source: s.into(),
            destination: d.into(),
            readonly: ro,
        };
        let mut d = parse("version = 1\n").unwrap();
        add_user(
            &mut d,
            "a",
            vec![("mounts", mounts_value(&[m("/d/a", "/workspace", false)]))],
        )
        .unwrap();
        assert!(d
            .to_string()
            .contains("mounts = [{ source = \"/d/a\", destination = \"/workspace\" }]\n"));
        add_user(
            &mut d,
            "b",
            vec![(
                "mounts",
                mounts_value(&[m("/d/b", "/workspace", false), m("/srv/ds", "/ds", true)]),
            )],
        )
        .unwrap();
        assert!(d.to_string().contains(
            "mounts = [\n  { source = \"/d/b\", destination = \"/workspace\" },\n  { source = \"/srv/ds\", destination = \"/ds\", readonly = true },\n]\n"
        ), "{d}");
        // Added to alice's multi-line list, in its layout.
        let mut d = doc();
        add_mount(
            user_mut(&mut d, "alice").unwrap(),
            "alice",
            &m("/srv/x", "/x", true),
        )
        .unwrap();
        let (removed, added) = changed(POLICY, &d.to_string());
        assert!(removed.is_empty(), "{d}");
        assert_eq!(
            added,
            ["  { source = \"/srv/x\", destination = \"/x\", readonly = true },"]
        );
        let err = add_mount(
            user_mut(&mut d, "alice").unwrap(),
            "alice",
            &m("/y", "/x", false),
        );
        assert!(matches!(err, Err(EditError::MountExists { .. })));
        remove_mount(user_mut(&mut d, "alice").unwrap(), "alice", Path::new("/x")).unwrap();
        assert_eq!(d.to_string(), POLICY);
        assert!(remove_mount(user_mut(&mut d, "bob").unwrap(), "bob", Path::new("/x")).is_err());
    }

    #[test]
    fn set_keeps_comments_on_the_changed_line() {
        let mut d = doc();
        let alice = user_mut(&mut d, "alice").unwrap();
        set_value(
            alice,
            "gpus",
            gpus_value(&GpuSpec::List(vec![GpuRef::Number(0)])),
        );
        set_path(alice, "run_as", "owner").unwrap();
        set_path(alice, "allow_host_network", "true").unwrap();
        set_path(alice, "session.image", "lab/pytorch:2.3").unwrap();
        let out = d.to_string();
        let (removed, added) = changed(POLICY, &out);
        let mounts = [
            "mounts = [",
            "  { source = \"/home/alice\", destination = \"/workspace\" },",
            "]",
        ];
        let want_removed: Vec<&str> = ["gpus = [0, 1]   # the two A100s"]
            .into_iter()
            .chain(mounts)
            .collect();
        let want_added: Vec<&str> = ["gpus = [0]   # the two A100s"]
            .into_iter()
            .chain(mounts)
            .chain([
                "run_as = \"owner\"",
                "allow_host_network = true",
                "session = { image = \"lab/pytorch:2.3\" }",
            ])
            .collect();
        assert_eq!(removed, want_removed, "{out}");
        assert_eq!(added, want_added, "{out}");
        let alice = user_mut(&mut d, "alice").unwrap();
        unset_path(alice, "alice", "session.image").unwrap();
        unset_path(alice, "alice", "session").unwrap();
        unset_path(alice, "alice", "run_as").unwrap();
        unset_path(alice, "alice", "allow_host_network").unwrap();
        assert!(unset_path(alice, "alice", "nope").is_err());
        assert!(set_path(alice, "a.b.c", "1").is_err());
        assert!(set_path(alice, "uid", "2").is_ok());
        assert!(user_mut(&mut d, "zed").is_err());
    }

    #[test]
    fn remove_takes_the_table_and_its_own_comment() {
        let mut d = doc();
        remove_user(&mut d, "bob").unwrap();
        let out = d.to_string();
        let (removed, added) = changed(POLICY, &out);
        assert!(added.is_empty(), "{out}");
        assert_eq!(
            removed,
            [
                "# bob: postdoc",
                "[users.bob]",
                "uid = 1002",
                "gid = 1002",
                ""
            ],
            "{out}"
        );
        // alice's table is preceded by a section comment, which stays.
        let mut d = doc();
        remove_user(&mut d, "alice").unwrap();
        let out = d.to_string();
        assert!(
            out.contains("# --- people ---\n\n# bob: postdoc\n[users.bob]"),
            "{out}"
        );
        assert!(!out.contains("PhD"), "{out}");
        assert_eq!(
            remove_user(&mut d, "alice"),
            Err(EditError::Missing("alice".into()))
        );
        // Inline users in [users].
        let mut d = parse("version = 1\n[users]\n# a\na = { uid = 1, gid = 1 }\nb = {}\n").unwrap();
        remove_user(&mut d, "a").unwrap();
        assert_eq!(d.to_string(), "version = 1\n[users]\nb = {}\n");
    }

    #[test]
    fn add_then_remove_round_trips() {
        let text = "version = 1\n\n[users.a]\nuid = 1\n\n# trailing words\n";
        let mut d = parse(text).unwrap();
        remove_user(&mut d, "a").unwrap();
        assert_eq!(d.to_string(), "version = 1\n\n# trailing words\n");
        for text in [
            POLICY,
            "version = 1\n\n[defaults]\nrun_as = \"image\"\n\n# examples:\n# [users.x]\n",
            "version = 1\n",
        ] {
            let mut d = parse(text).unwrap();
            add_user(&mut d, "zed", vec![("uid", Value::from(9))]).unwrap();
            let mut d = parse(&d.to_string()).unwrap();
            remove_user(&mut d, "zed").unwrap();
            assert_eq!(d.to_string(), text);
        }
    }

    #[test]
    fn set_values_are_written_plainly() {
        let mut d = doc();
        let bob = user_mut(&mut d, "bob").unwrap();
        set_path(bob, "session", "{image=\"busybox\",stop_on_exit=true}").unwrap();
        set_path(bob, "capabilities", "[ \"CAP_MKNOD\" ]").unwrap();
        let out = d.to_string();
        assert!(
            out.contains("session = { image = \"busybox\", stop_on_exit = true }\n"),
            "{out}"
        );
        assert!(out.contains("capabilities = [\"CAP_MKNOD\"]\n"), "{out}");
    }

    #[test]
    fn paths_must_be_plain_and_absolute() {
        assert!(plain_absolute(Path::new("/data/alice")));
        for bad in ["data", "/data/../etc", "/data/./x", "", "/", "//x", "/x/"] {
            assert!(!plain_absolute(Path::new(bad)), "{bad}");
        }
    }
}
