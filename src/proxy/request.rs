//! What every resource's rules share: who the caller is to the policy (`UserCtx`), query
//! strings and `filters`, and reading JSON bodies the way Go's encoding/json does.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_json::{Map, Value};

use super::error::RuleError;
use crate::decide::resolve_host;
use crate::paths::normalize;
use crate::policy::{Policy, UserPolicy};

/// dockerd reads parameters with Go's `r.Form`/`r.FormValue`, which take a form-encoded or
/// multipart body's fields before the query string's: `filters` in the body of a prune, or
/// `networkmode` in the body of a build, would override what the proxy merged or checked in
/// the query. Docker clients never send such bodies.
pub fn check_content_types<'a>(values: impl IntoIterator<Item = &'a str>) -> Result<(), RuleError> {
    for v in values {
        let media = v
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        if media == "application/x-www-form-urlencoded" || media.starts_with("multipart/") {
            return Err(RuleError::FormBody(v.to_string()));
        }
    }
    Ok(())
}

/// What a request's rewrites need to know about the caller.
#[derive(Debug, Clone)]
pub struct UserCtx {
    pub name: String,
    pub owner_label: String,
    pub runtime: String,
    pub allow_privileged: bool,
    pub allow_host_namespaces: bool,
    pub allow_host_network: bool,
    pub allow_unconfined: bool,
    /// Resolved host path prefixes the caller may bind mount.
    pub bind_allow: Vec<PathBuf>,
    /// Resolved host devices the caller may pass with `--device`.
    pub devices: Vec<PathBuf>,
    /// Where the policy's GPU nodes live; GPU nodes are left to the runtime, which keeps
    /// the caller's own and drops the rest.
    pub gpu_dev_root: PathBuf,
    /// Normalized repository prefixes the caller's image names must have.
    pub image_prefixes: Vec<String>,
    /// The administrator's volumes the caller may mount read-write.
    pub writable_volumes: Vec<String>,
    /// `[proxy] state_dir`: the records of whom each container was created for.
    pub state_dir: PathBuf,
    /// Host ports the caller may publish.
    pub ports: Vec<crate::fairshare::PortRange>,
    /// The caller's fair-share ceilings.
    pub ceilings: crate::fairshare::Ceilings,
}

impl UserCtx {
    pub fn section(&self) -> String {
        format!("[defaults] or [users.{}]", self.name)
    }

    /// The host paths the policy names (bind mount prefixes, devices, the GPU node root) with
    /// their symlinks resolved now, as a create's requested paths are: what they point to
    /// at this request, never at an earlier one. Blocking (symlink walks, perhaps on a network
    /// file system): call it off the async workers.
    pub fn resolve_paths(&mut self) {
        for p in self.bind_allow.iter_mut().chain(self.devices.iter_mut()) {
            *p = resolve_host(p);
        }
        self.gpu_dev_root = resolve_host(&self.gpu_dev_root);
    }
}

/// What the rules need to know about policy user `name`. Pure: the host paths are only
/// normalized here; `UserCtx::resolve_paths` walks their symlinks where a create needs them
/// (off the async workers), so the requests that never look at them (ps, inspect, logs, …)
/// cost no file system walk and no thread hop.
pub fn user_ctx(policy: &Policy, name: &str) -> UserCtx {
    let user = policy.user(name);
    let d = &policy.defaults;
    let proxy = policy.proxy_or_default();
    let flag =
        |f: fn(&UserPolicy) -> Option<bool>, default: bool| user.and_then(f).unwrap_or(default);
    let bind_allow = d
        .bind_allow
        .iter()
        .chain(user.map(|u| &u.bind_allow).into_iter().flatten())
        .map(|p| p.as_path())
        .chain(
            user.map(|u| &u.mounts)
                .into_iter()
                .flatten()
                .map(|m| m.source.as_path()),
        )
        .map(normalize)
        .collect();
    let devices = d
        .devices
        .iter()
        .chain(user.map(|u| &u.devices).into_iter().flatten())
        .map(|p| normalize(p.as_path()))
        .collect();
    UserCtx {
        name: name.to_string(),
        owner_label: policy.runtime.owner_label.clone(),
        runtime: proxy.runtime.clone(),
        allow_privileged: flag(|u| u.allow_privileged, d.allow_privileged),
        allow_host_namespaces: flag(|u| u.allow_host_namespaces, d.allow_host_namespaces),
        allow_host_network: flag(|u| u.allow_host_network, d.allow_host_network),
        allow_unconfined: flag(|u| u.allow_unconfined, d.allow_unconfined),
        bind_allow,
        devices,
        gpu_dev_root: normalize(policy.gpus.dev_root.as_path()),
        image_prefixes: super::images::prefixes(&proxy.image_prefix, name),
        state_dir: proxy.state_dir.0.clone(),
        writable_volumes: d
            .writable_volumes
            .iter()
            .chain(user.map(|u| &u.writable_volumes).into_iter().flatten())
            .map(|v| v.0.clone())
            .collect(),
        ports: user
            .map(|u| crate::fairshare::ports_for(policy, u))
            .unwrap_or_default(),
        ceilings: user
            .map(|u| crate::fairshare::Ceilings::for_user(policy, name, u))
            .unwrap_or_default(),
    }
}

// ---------------------------------------------------------------------------------------------
// Query strings

pub fn query_pairs(query: Option<&str>) -> Vec<(String, String)> {
    form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .into_owned()
        .collect()
}

pub fn query_string(pairs: &[(String, String)]) -> String {
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

pub fn query_param(query: Option<&str>, key: &str) -> Option<String> {
    query_pairs(query)
        .into_iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v)
}

/// Sets `key` to `value`, replacing every earlier occurrence (Go reads the first, other
/// parsers the last: one copy leaves no doubt).
pub fn set_query_param(query: Option<&str>, key: &str, value: &str) -> String {
    let mut pairs: Vec<(String, String)> = query_pairs(query)
        .into_iter()
        .filter(|(k, _)| k != key)
        .collect();
    pairs.push((key.to_string(), value.to_string()));
    query_string(&pairs)
}

/// Adds `label=<owner_label>=<name>` to the `filters` parameter. Docker ANDs label filters,
/// so whatever else the caller filtered on, only their own objects can match.
pub fn merge_owner_filter(
    query: Option<&str>,
    owner_label: &str,
    name: &str,
) -> Result<String, RuleError> {
    let pairs = query_pairs(query);
    let filters: Vec<&String> = pairs
        .iter()
        .filter(|(k, _)| k == "filters")
        .map(|(_, v)| v)
        .collect();
    if filters.len() > 1 {
        return Err(RuleError::BadFilters("given more than once".into()));
    }
    let mut value = match filters.first() {
        Some(f) if !f.is_empty() => serde_json::from_str::<Value>(f)
            .map_err(|e| RuleError::BadFilters(format!("{f:?}: {e}")))?,
        _ => Value::Object(Map::new()),
    };
    let obj = value
        .as_object_mut()
        .ok_or_else(|| RuleError::BadFilters("not a JSON object".into()))?;
    let wanted = format!("{owner_label}={name}");
    // Go's filters.FromJSON reads keys exactly; only "label" is the label filter.
    match obj.get_mut("label") {
        None => {
            let mut m = Map::new();
            m.insert(wanted, Value::Bool(true));
            obj.insert("label".into(), Value::Object(m));
        }
        Some(Value::Object(m)) => {
            m.insert(wanted, Value::Bool(true));
        }
        // The pre-1.22 form: a list of values.
        Some(Value::Array(a)) => a.push(Value::String(wanted)),
        Some(_) => {
            return Err(RuleError::BadFilters(
                "label must be an object or a list".into(),
            ))
        }
    }
    let mut out: Vec<(String, String)> =
        pairs.into_iter().filter(|(k, _)| k != "filters").collect();
    out.push(("filters".into(), value.to_string()));
    Ok(query_string(&out))
}

// ---------------------------------------------------------------------------------------------
// JSON bodies

/// Go's encoding/json matches keys to struct fields case-insensitively, folding the Kelvin
/// sign to k and the long s to s; the checks below must see what Docker will see.
pub(super) fn fold(s: &str) -> String {
    s.chars().map(fold_char).collect()
}

/// One character as Go 1.21+'s encoding/json folds it (`foldRune`: the smallest rune of its
/// case-fold orbit; ASCII letters upper-cased). So the Kelvin sign is K, the long s is S and
/// the dotless ı is I: `"Contaıner"` is `Container` to dockerd. Older Go folded only K and S
/// specially; treating ı as I as well only renames (or refuses, as a duplicate) a key an old
/// dockerd would have ignored.
fn fold_char(c: char) -> char {
    if c.is_ascii() {
        return c.to_ascii_uppercase();
    }
    let single = |mut it: std::iter::Peekable<std::vec::IntoIter<char>>| {
        let first = it.next()?;
        it.peek().is_none().then_some(first)
    };
    let lower = |c: char| single(c.to_lowercase().collect::<Vec<_>>().into_iter().peekable());
    let upper = |c: char| single(c.to_uppercase().collect::<Vec<_>>().into_iter().peekable());
    let orbit = [
        Some(c),
        lower(c),
        upper(c),
        upper(c).and_then(lower),
        lower(c).and_then(upper),
    ];
    let smallest = orbit.into_iter().flatten().min().unwrap_or(c);
    smallest.to_ascii_uppercase()
}

/// Renames keys of `obj` that Go would bind to one of `fields` to that field's exact name,
/// refusing two keys that would bind to the same field.
pub(super) fn canonicalize(obj: &mut Map<String, Value>, fields: &[&str]) -> Result<(), RuleError> {
    let folded: BTreeMap<String, &str> = fields.iter().map(|f| (fold(f), *f)).collect();
    let keys: Vec<String> = obj.keys().cloned().collect();
    let mut seen = std::collections::BTreeSet::new();
    for key in keys {
        let Some(canon) = folded.get(&fold(&key)) else {
            continue;
        };
        if !seen.insert(*canon) {
            return Err(RuleError::DuplicateKey { key });
        }
        if key != *canon {
            let v = obj.remove(&key).unwrap_or(Value::Null);
            obj.insert(canon.to_string(), v);
        }
    }
    Ok(())
}

pub(super) fn as_object_mut<'a>(
    v: &'a mut Value,
    field: &str,
) -> Result<Option<&'a mut Map<String, Value>>, RuleError> {
    match v {
        Value::Null => Ok(None),
        Value::Object(m) => Ok(Some(m)),
        _ => Err(RuleError::BadField {
            field: field.to_string(),
            expected: "an object",
        }),
    }
}

pub(super) fn str_of<'a>(
    obj: &'a Map<String, Value>,
    key: &str,
    field: &str,
) -> Result<&'a str, RuleError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(""),
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(RuleError::BadField {
            field: field.to_string(),
            expected: "a string",
        }),
    }
}

pub(super) fn array_of<'a>(
    obj: &'a Map<String, Value>,
    key: &str,
    field: &str,
) -> Result<&'a [Value], RuleError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(&[]),
        Some(Value::Array(a)) => Ok(a),
        Some(_) => Err(RuleError::BadField {
            field: field.to_string(),
            expected: "a list",
        }),
    }
}

/// How the proxy treats one field of a JSON body from a policy user: the allowlist. A key
/// that is in no table is refused, never passed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Field {
    /// Harmless, or cut by the runtime whatever it says.
    Free,
    /// Checked (and maybe rewritten) by a rule of the resource.
    Checked,
    /// Refused when set to anything but its zero value; the reason ends the sentence.
    Refused(&'static str),
}

/// Whether a JSON value is set: Docker's clients send most fields with zero values.
pub(super) fn is_set(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64() != Some(0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

/// Canonicalizes `obj`'s keys to `table`'s names as Go would bind them, then refuses a key
/// the table does not know and a set `Refused` field. `path` names the object in messages
/// (`HostConfig`, `Mounts[2]`).
pub(super) fn check_fields(
    obj: &mut Map<String, Value>,
    table: &[(&str, Field)],
    path: &str,
) -> Result<(), RuleError> {
    let names: Vec<&str> = table.iter().map(|(n, _)| *n).collect();
    canonicalize(obj, &names)?;
    let field_name = |k: &str| {
        if path.is_empty() {
            k.to_string()
        } else {
            format!("{path}.{k}")
        }
    };
    for (key, value) in obj.iter() {
        match table.iter().find(|(n, _)| n == key) {
            None => {
                return Err(RuleError::UnknownField {
                    field: field_name(key),
                })
            }
            Some((_, Field::Refused(reason))) if is_set(value) => {
                return Err(RuleError::FieldRefused {
                    field: field_name(key),
                    reason,
                })
            }
            _ => {}
        }
    }
    Ok(())
}

/// Container names and ids as Docker accepts them (`[a-zA-Z0-9][a-zA-Z0-9_.-]*`, with an
/// optional leading `/`).
pub fn valid_container_ref(s: &str) -> bool {
    let s = s.strip_prefix('/').unwrap_or(s);
    s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.len() <= 256
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}
/// The caller the rules' unit tests use: alice, homes and /srv/data allowed, /dev/fuse.
#[cfg(test)]
pub fn test_ctx() -> UserCtx {
    UserCtx {
        name: "alice".into(),
        owner_label: "labgpu.user".into(),
        runtime: "labgpu".into(),
        allow_privileged: false,
        allow_host_namespaces: false,
        allow_host_network: false,
        allow_unconfined: false,
        bind_allow: vec![PathBuf::from("/home/alice"), PathBuf::from("/srv/data")],
        devices: vec![PathBuf::from("/dev/fuse")],
        gpu_dev_root: PathBuf::from("/tmp/fake/dev"),
        image_prefixes: super::images::prefixes("{user}/", "alice"),
        writable_volumes: vec!["scratch".into()],
        state_dir: PathBuf::from("/nonexistent/labgpu-state"),
        ports: vec![crate::fairshare::PortRange {
            start: 1024,
            end: 65535,
        }],
        ceilings: Default::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::path::Path;

    #[test]
    fn keys_fold_as_go_does() {
        assert_eq!(fold("Contaıner"), fold("Container"));
        assert_eq!(fold("\u{212A}ernelMemory"), fold("kernelmemory"));
        assert_eq!(fold("ReadOnly\u{017F}"), fold("readonlys"));
        assert_ne!(fold("İmage"), fold("Image"));
        assert_eq!(fold("HOSTCONFIG"), fold("HostConfig"));
    }

    #[test]
    fn form_bodies_are_refused() {
        check_content_types(["application/json", "application/x-tar"]).unwrap();
        check_content_types([]).unwrap();
        for bad in [
            "application/x-www-form-urlencoded",
            "Application/X-WWW-Form-Urlencoded; charset=utf-8",
            "multipart/form-data; boundary=x",
        ] {
            assert!(
                matches!(
                    check_content_types(["application/json", bad]),
                    Err(RuleError::FormBody(_))
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn owner_filter_is_added_and_merged() {
        let parse = |q: &str| -> Value {
            serde_json::from_str(&query_param(Some(q), "filters").unwrap()).unwrap()
        };
        let q = merge_owner_filter(None, "labgpu.user", "alice").unwrap();
        assert_eq!(parse(&q), json!({"label": {"labgpu.user=alice": true}}));

        let q = merge_owner_filter(
            Some("all=1&filters=%7B%22status%22%3A%7B%22running%22%3Atrue%7D%7D"),
            "labgpu.user",
            "alice",
        )
        .unwrap();
        assert_eq!(query_param(Some(&q), "all").as_deref(), Some("1"));
        assert_eq!(
            parse(&q),
            json!({"status": {"running": true}, "label": {"labgpu.user=alice": true}})
        );

        // A label filter naming someone else stays, ANDed with ours: it matches nothing.
        let f = r#"{"label":{"labgpu.user=bob":true}}"#;
        let q0 = query_string(&[("filters".into(), f.into())]);
        let q = merge_owner_filter(Some(&q0), "labgpu.user", "alice").unwrap();
        assert_eq!(
            parse(&q),
            json!({"label": {"labgpu.user=bob": true, "labgpu.user=alice": true}})
        );

        let q0 = query_string(&[("filters".into(), r#"{"label":["x=1"]}"#.into())]);
        let q = merge_owner_filter(Some(&q0), "labgpu.user", "alice").unwrap();
        assert_eq!(parse(&q), json!({"label": ["x=1", "labgpu.user=alice"]}));

        for bad in ["not json", "[1]", r#"{"label":3}"#] {
            let q0 = query_string(&[("filters".into(), bad.into())]);
            assert!(
                merge_owner_filter(Some(&q0), "labgpu.user", "alice").is_err(),
                "{bad}"
            );
        }
        let twice = "filters=%7B%7D&filters=%7B%7D";
        assert!(merge_owner_filter(Some(twice), "labgpu.user", "alice").is_err());
    }

    #[test]
    fn user_ctx_merges_defaults_and_user() {
        let p = Policy::parse(
            Path::new("/p.toml"),
            b"version = 1\n[runtime]\nowner_label = \"owner\"\n[defaults]\nbind_allow = [\"/srv\"]\nallow_host_network = true\n[users.a]\nbind_allow = [\"/scratch/a\"]\nallow_host_network = false\nallow_privileged = true\nmounts = [{ source = \"/home/a\", destination = \"/w\" }]\n",
        )
        .unwrap();
        let c = user_ctx(&p, "a");
        assert_eq!(c.owner_label, "owner");
        assert_eq!(c.runtime, "labgpu");
        assert!(c.allow_privileged && !c.allow_host_network);
        assert_eq!(
            c.bind_allow,
            [
                PathBuf::from("/srv"),
                PathBuf::from("/scratch/a"),
                PathBuf::from("/home/a")
            ]
        );
    }
}
