//! What a non-admin request may do: path classification, `filters` merging, and the checks
//! and rewrites of request bodies. Pure functions of the request and the caller's policy, so
//! they are tested without sockets; lookups Docker has to answer (who owns container X) are
//! named here and done by the server.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use hyper::Method;
use serde_json::{Map, Value};

use crate::paths::is_under;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RuleError {
    #[error("request path {0:?} is not a Docker API path this proxy accepts")]
    BadPath(String),
    #[error("API version {0} is too old for the labgpu proxy (1.24 or newer)")]
    OldApi(String),
    #[error(
        "Content-Type {0:?} is not accepted: dockerd would read query parameters from the body"
    )]
    FormBody(String),
    #[error("{method} {path} is not allowed through the labgpu proxy")]
    NotAllowed { method: String, path: String },
    #[error("{what}: only the administrator (root on the host) may use this; {why}")]
    AdminOnly { what: String, why: &'static str },
    #[error("request body is not valid JSON: {0}")]
    BadJson(String),
    #[error("{field} must be {expected}")]
    BadField {
        field: String,
        expected: &'static str,
    },
    #[error("key {key:?} appears twice (Docker reads keys case-insensitively)")]
    DuplicateKey { key: String },
    #[error("query parameter filters is not valid: {0}")]
    BadFilters(String),
    #[error("privileged containers are not allowed for {user} (allow_privileged in {section})")]
    Privileged { user: String, section: String },
    #[error(
        "{field} = {value:?} (a host namespace) is not allowed for {user} ({key} in {section})"
    )]
    HostNamespace {
        field: &'static str,
        value: String,
        user: String,
        key: &'static str,
        section: String,
    },
    #[error(
        "{field} = {value:?} is not allowed: only the administrator places containers in cgroups"
    )]
    CgroupParent { field: &'static str, value: String },
    #[error("security option {opt:?} is not allowed for {user} (allow_unconfined in {section})")]
    Unconfined {
        opt: String,
        user: String,
        section: String,
    },
    #[error("bind mount of host path {path} is not allowed for {user} (bind_allow or mounts in {section})")]
    BindNotAllowed {
        path: PathBuf,
        user: String,
        section: String,
    },
    #[error("device {path} is not allowed for {user} (devices in {section})")]
    DeviceNotAllowed {
        path: String,
        user: String,
        section: String,
    },
    #[error("{field} cannot be changed on a running container through the labgpu proxy")]
    UpdateRefused { field: String },
    #[error("build context {0:?} would be fetched with the Docker daemon's (root's) ssh credentials; clone it yourself and build from the directory")]
    BuildRemote(String),
    #[error("container name {0:?} is not a valid container name or id")]
    BadContainerRef(String),
}

impl RuleError {
    /// Malformed requests are 400; everything the policy refuses is 403.
    pub fn status(&self) -> u16 {
        match self {
            RuleError::BadPath(_)
            | RuleError::OldApi(_)
            | RuleError::FormBody(_)
            | RuleError::BadJson(_)
            | RuleError::BadField { .. }
            | RuleError::DuplicateKey { .. }
            | RuleError::BadFilters(_)
            | RuleError::BadContainerRef(_) => 400,
            _ => 403,
        }
    }
}

/// What the server must do with a request from a policy user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Shared resources (images, networks, volumes, builds, version, ping): forward as is.
    Forward,
    /// `POST /containers/create`: check and rewrite the body.
    Create,
    /// `GET /containers/json`, `GET /events`, `POST /containers/prune`: forward with the
    /// caller's owner label merged into `filters`.
    Filtered,
    /// `GET /system/df`: forward, then drop other owners' containers from the answer.
    DiskUsage,
    /// `/containers/{id}/…`: the caller must own `id`; `rest` is what follows it.
    Container { id: String, rest: String },
    /// `/exec/{id}/…`: the caller must own the exec's container.
    Exec { id: String },
    /// `POST /commit?container=X`: the caller must own X.
    Commit,
    /// `POST /networks/{id}/connect|disconnect`: the caller must own the body's Container.
    NetworkMember,
    /// `POST /build`: forward after checking the query (cgroup parent, network mode).
    Build,
    /// `POST /volumes/create`: the owner label is stamped on the volume.
    VolumeCreate,
}

/// The path without its `/v1.41` version prefix.
pub fn strip_version(path: &str) -> &str {
    match split_version(path) {
        Some((_, rest)) => rest,
        None => path,
    }
}

fn split_version(path: &str) -> Option<(&str, &str)> {
    let rest = path.strip_prefix("/v")?;
    let end = rest.find('/').unwrap_or(rest.len());
    let version = &rest[..end];
    let is_version = !version.is_empty()
        && version.chars().all(|c| c.is_ascii_digit() || c == '.')
        && version.starts_with(|c: char| c.is_ascii_digit());
    is_version.then(|| (version, &rest[end..]))
}

/// Before API 1.24, `POST /containers/{id}/start` took a body whose host config replaced
/// the container's (runtime, privileged, binds and all), after every check here was done at
/// create. Users get the API as Docker CLIs since 1.12 (2016) speak it.
fn check_version(path: &str) -> Result<(), RuleError> {
    let Some((version, _)) = split_version(path) else {
        return Ok(());
    };
    let mut parts = version.split('.').map(|p| p.parse::<u64>().unwrap_or(0));
    let major = parts.next().unwrap_or(0);
    let minor = parts.next().unwrap_or(0);
    if (major, minor) < (1, 24) {
        return Err(RuleError::OldApi(version.to_string()));
    }
    Ok(())
}

/// Docker's router matches decoded paths; refusing anything that could decode or clean to a
/// different path keeps what is checked here the path Docker acts on.
fn check_path_shape(path: &str) -> Result<Vec<&str>, RuleError> {
    let bad = || RuleError::BadPath(path.to_string());
    let rest = path.strip_prefix('/').ok_or_else(bad)?;
    if path.contains(['%', '\\']) || path.chars().any(|c| c.is_control() || c == ' ') {
        return Err(bad());
    }
    let segments: Vec<&str> = rest.split('/').collect();
    if segments
        .iter()
        .any(|s| s.is_empty() || *s == "." || *s == "..")
    {
        return Err(bad());
    }
    Ok(segments)
}

/// Classifies a non-admin request. `path` is the request path with its version prefix.
pub fn classify(method: &Method, path: &str) -> Result<Route, RuleError> {
    check_version(path)?;
    let path = strip_version(path);
    let segs = check_path_shape(path)?;
    let not_allowed = || RuleError::NotAllowed {
        method: method.to_string(),
        path: path.to_string(),
    };
    let admin = |what: &str, why: &'static str| RuleError::AdminOnly {
        what: what.to_string(),
        why,
    };
    let get = method == Method::GET || method == Method::HEAD;
    let post = method == Method::POST;
    match segs.as_slice() {
        ["_ping"] | ["version"] | ["info"] if get => Ok(Route::Forward),
        ["containers", "json"] if get => Ok(Route::Filtered),
        ["containers", "create"] if post => Ok(Route::Create),
        ["containers", "prune"] if post => Ok(Route::Filtered),
        ["containers", id, rest @ ..] => Ok(Route::Container {
            id: id.to_string(),
            rest: rest.join("/"),
        }),
        ["exec", id, ..] => Ok(Route::Exec { id: id.to_string() }),
        ["commit"] if post => Ok(Route::Commit),
        ["events"] if get => Ok(Route::Filtered),
        ["system", "df"] if get => Ok(Route::DiskUsage),
        ["build"] if post => Ok(Route::Build),
        ["build", "prune" | "cancel"] if post => Ok(Route::Forward),
        ["images", ..] | ["distribution", ..] => Ok(Route::Forward),
        ["auth"] if post => Ok(Route::Forward),
        ["networks", _, "connect" | "disconnect"] if post => Ok(Route::NetworkMember),
        ["networks", ..] => Ok(Route::Forward),
        ["volumes", "create"] if post => Ok(Route::VolumeCreate),
        ["volumes", ..] => Ok(Route::Forward),
        // The client's side of a build: the daemon calls back into the client (file sync,
        // registry auth); it gives the caller nothing the build itself does not.
        ["session"] if post => Ok(Route::Forward),
        ["grpc"] => Err(admin(
            "the BuildKit gRPC API (/grpc)",
            "its build requests cannot be checked here; build with `DOCKER_BUILDKIT=0 docker build`",
        )),
        ["plugins", ..] => Err(admin(
            "plugins",
            "a plugin runs privileged on the host",
        )),
        ["swarm", ..] | ["nodes", ..] | ["services", ..] | ["tasks", ..] | ["secrets", ..]
        | ["configs", ..] => Err(admin(
            "swarm",
            "swarm services are not created through the labgpu runtime policy",
        )),
        _ => Err(not_allowed()),
    }
}

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
}

impl UserCtx {
    fn section(&self) -> String {
        format!("[defaults] or [users.{}]", self.name)
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
fn fold(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '\u{212A}' => 'k',
            '\u{017F}' => 's',
            c => c.to_lowercase().next().unwrap_or(c),
        })
        .collect()
}

/// Renames keys of `obj` that Go would bind to one of `fields` to that field's exact name,
/// refusing two keys that would bind to the same field.
fn canonicalize(obj: &mut Map<String, Value>, fields: &[&str]) -> Result<(), RuleError> {
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

fn as_object_mut<'a>(
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

fn str_of<'a>(obj: &'a Map<String, Value>, key: &str, field: &str) -> Result<&'a str, RuleError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(""),
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(RuleError::BadField {
            field: field.to_string(),
            expected: "a string",
        }),
    }
}

fn array_of<'a>(
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

/// Container names and ids as Docker accepts them (`[a-zA-Z0-9][a-zA-Z0-9_.-]*`, with an
/// optional leading `/`).
pub fn valid_container_ref(s: &str) -> bool {
    let s = s.strip_prefix('/').unwrap_or(s);
    s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.len() <= 256
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

const CONFIG_FIELDS: [&str; 2] = ["Labels", "HostConfig"];
const HOST_CONFIG_FIELDS: [&str; 18] = [
    "Links",
    "CgroupnsMode",
    "Privileged",
    "PidMode",
    "IpcMode",
    "UTSMode",
    "UsernsMode",
    "NetworkMode",
    "VolumesFrom",
    "CgroupParent",
    "Cgroup",
    "Runtime",
    "Binds",
    "Mounts",
    "Devices",
    "SecurityOpt",
    "Annotations",
    "DeviceCgroupRules",
];

/// Another container a create body refers to; each must be the caller's, and is replaced by
/// its full id (`rewrite_create`'s `owned`), so a rename in between cannot swap it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ContainerRef {
    pub field: &'static str,
    pub name: String,
}

/// The containers a create body joins or copies from (`--pid/--ipc/--network container:X`,
/// `--volumes-from X`, `--link X` (which copies X's environment), a cgroup shared with X).
/// Run before `rewrite_create`.
pub fn create_container_refs(body: &mut Value) -> Result<Vec<ContainerRef>, RuleError> {
    let mut refs = Vec::new();
    let top = as_object_mut(body, "body")?.ok_or(RuleError::BadField {
        field: "body".into(),
        expected: "an object",
    })?;
    canonicalize(top, &CONFIG_FIELDS)?;
    let Some(hc) = top.get_mut("HostConfig") else {
        return Ok(refs);
    };
    let Some(hc) = as_object_mut(hc, "HostConfig")? else {
        return Ok(refs);
    };
    canonicalize(hc, &HOST_CONFIG_FIELDS)?;
    for field in ["PidMode", "IpcMode", "NetworkMode", "Cgroup"] {
        let v = str_of(hc, field, field)?;
        if let Some(name) = v.strip_prefix("container:") {
            refs.push(ContainerRef {
                field,
                name: name.to_string(),
            });
        }
    }
    // `--volumes-from X[:ro]` and `--link X[:alias]`.
    for field in ["VolumesFrom", "Links"] {
        for v in array_of(hc, field, field)? {
            let s = v.as_str().ok_or(RuleError::BadField {
                field: field.into(),
                expected: "a list of strings",
            })?;
            let name = s.split_once(':').map_or(s, |(n, _)| n);
            refs.push(ContainerRef {
                field,
                name: name.to_string(),
            });
        }
    }
    for r in &refs {
        if !valid_container_ref(&r.name) {
            return Err(RuleError::BadContainerRef(r.name.clone()));
        }
    }
    Ok(refs)
}

/// Checks a `POST /containers/create` body against the caller's policy and rewrites it:
/// owner label stamped, runtime forced, references to other containers pinned to the ids
/// in `owned` (every name from `create_container_refs`, already checked to be the caller's).
/// `resolve` turns a host path into what the kernel would open (symlinks followed).
pub fn rewrite_create(
    body: &mut Value,
    ctx: &UserCtx,
    owned: &BTreeMap<String, String>,
    resolve: &dyn Fn(&Path) -> PathBuf,
) -> Result<(), RuleError> {
    // Also canonicalizes the keys the checks below read.
    let refs = create_container_refs(body)?;
    let top = body.as_object_mut().ok_or(RuleError::BadField {
        field: "body".into(),
        expected: "an object",
    })?;

    let mut labels = match top.remove("Labels") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m,
        Some(_) => {
            return Err(RuleError::BadField {
                field: "Labels".into(),
                expected: "an object",
            })
        }
    };
    labels.insert(ctx.owner_label.clone(), Value::String(ctx.name.clone()));
    top.insert("Labels".into(), Value::Object(labels));

    let hc = top
        .entry("HostConfig")
        .or_insert_with(|| Value::Object(Map::new()));
    if hc.is_null() {
        *hc = Value::Object(Map::new());
    }
    let hc = as_object_mut(hc, "HostConfig")?.expect("not null");
    // With a "HostConfig" present, dockerd ignores the deprecated host config fields at the
    // top level (all but a few resource limits), so only this object needs checking.

    if hc.get("Privileged").and_then(Value::as_bool) == Some(true) && !ctx.allow_privileged {
        return Err(RuleError::Privileged {
            user: ctx.name.clone(),
            section: ctx.section(),
        });
    }
    let host_ns = |field: &'static str, key: &'static str| RuleError::HostNamespace {
        field,
        value: "host".into(),
        user: ctx.name.clone(),
        key,
        section: ctx.section(),
    };
    for field in [
        "PidMode",
        "IpcMode",
        "UTSMode",
        "UsernsMode",
        "CgroupnsMode",
    ] {
        if str_of(hc, field, field)? == "host" && !ctx.allow_host_namespaces {
            return Err(host_ns(field, "allow_host_namespaces"));
        }
    }
    if str_of(hc, "NetworkMode", "NetworkMode")? == "host" && !ctx.allow_host_network {
        return Err(host_ns("NetworkMode", "allow_host_network"));
    }
    let parent = str_of(hc, "CgroupParent", "CgroupParent")?;
    if !parent.is_empty() {
        return Err(RuleError::CgroupParent {
            field: "CgroupParent",
            value: parent.to_string(),
        });
    }
    for opt in array_of(hc, "SecurityOpt", "SecurityOpt")? {
        let s = opt.as_str().unwrap_or_default();
        let (k, v) = s.split_once(['=', ':']).unwrap_or((s, ""));
        let unconfined = matches!(k, "seccomp" | "apparmor" | "systempaths") && v == "unconfined";
        if unconfined && !ctx.allow_unconfined {
            return Err(RuleError::Unconfined {
                opt: s.to_string(),
                user: ctx.name.clone(),
                section: ctx.section(),
            });
        }
    }
    check_binds(hc, ctx, resolve)?;
    check_devices(hc, ctx, resolve)?;

    for r in &refs {
        let Some(id) = owned.get(&r.name) else {
            return Err(RuleError::BadContainerRef(r.name.clone()));
        };
        // Links name their target by name (the alias defaults to it); checked, not rewritten.
        if r.field == "VolumesFrom" || r.field == "Links" {
            continue;
        }
        hc.insert(r.field.into(), Value::String(format!("container:{id}")));
    }
    if let Some(Value::Array(list)) = hc.get_mut("VolumesFrom") {
        for v in list.iter_mut() {
            let s = v.as_str().unwrap_or_default();
            let (name, mode) = s.split_once(':').map_or((s, None), |(n, m)| (n, Some(m)));
            let Some(id) = owned.get(name) else {
                return Err(RuleError::BadContainerRef(name.to_string()));
            };
            *v = Value::String(match mode {
                Some(m) => format!("{id}:{m}"),
                None => id.clone(),
            });
        }
    }

    hc.insert("Runtime".into(), Value::String(ctx.runtime.clone()));
    // The runtime reads the owner from the label or an annotation of the same name, and
    // refuses when they differ; io.labgpu.* are the runtime's own stamps.
    if let Some(Value::Object(ann)) = hc.get_mut("Annotations") {
        ann.retain(|k, _| *k != ctx.owner_label && !k.starts_with("io.labgpu."));
    }
    Ok(())
}

fn check_binds(
    hc: &mut Map<String, Value>,
    ctx: &UserCtx,
    resolve: &dyn Fn(&Path) -> PathBuf,
) -> Result<(), RuleError> {
    let check = |source: &str| -> Result<(), RuleError> {
        let resolved = resolve(Path::new(source));
        if ctx.bind_allow.iter().any(|p| is_under(&resolved, p)) {
            return Ok(());
        }
        Err(RuleError::BindNotAllowed {
            path: resolved,
            user: ctx.name.clone(),
            section: ctx.section(),
        })
    };
    for b in array_of(hc, "Binds", "Binds")? {
        let s = b.as_str().ok_or(RuleError::BadField {
            field: "Binds".into(),
            expected: "a list of strings",
        })?;
        // "vol:/dst" is a named volume; only "/src:/dst[:opts]" is a host path.
        let source = s.split(':').next().unwrap_or_default();
        if source.starts_with('/') {
            check(source)?;
        }
    }
    let Some(Value::Array(mounts)) = hc.get_mut("Mounts") else {
        return Ok(());
    };
    for m in mounts.iter_mut() {
        let Some(m) = as_object_mut(m, "Mounts")? else {
            continue;
        };
        canonicalize(m, &["Type", "Source", "VolumeOptions"])?;
        let kind = str_of(m, "Type", "Mounts.Type")?.to_string();
        if kind == "bind" {
            check(str_of(m, "Source", "Mounts.Source")?)?;
        }
        if kind != "volume" {
            continue;
        }
        // A local volume with `o=bind,device=/path` is a bind of /path in disguise.
        let Some(vo) = m.get_mut("VolumeOptions") else {
            continue;
        };
        let Some(vo) = as_object_mut(vo, "Mounts.VolumeOptions")? else {
            continue;
        };
        canonicalize(vo, &["DriverConfig"])?;
        let Some(dc) = vo.get_mut("DriverConfig") else {
            continue;
        };
        let Some(dc) = as_object_mut(dc, "Mounts.VolumeOptions.DriverConfig")? else {
            continue;
        };
        canonicalize(dc, &["Options"])?;
        if let Some(Value::Object(opts)) = dc.get("Options") {
            if let Some(Value::String(device)) = opts.get("device") {
                if device.starts_with('/') {
                    check(device)?;
                }
            }
        }
    }
    Ok(())
}

fn check_devices(
    hc: &mut Map<String, Value>,
    ctx: &UserCtx,
    resolve: &dyn Fn(&Path) -> PathBuf,
) -> Result<(), RuleError> {
    let Some(Value::Array(devices)) = hc.get_mut("Devices") else {
        return Ok(());
    };
    for d in devices.iter_mut() {
        let Some(d) = as_object_mut(d, "Devices")? else {
            continue;
        };
        canonicalize(d, &["PathOnHost"])?;
        let path = str_of(d, "PathOnHost", "Devices.PathOnHost")?;
        // CDI names (nvidia.com/gpu=0) and GPU nodes are the runtime's to sort out.
        if !path.starts_with('/') {
            continue;
        }
        let resolved = resolve(Path::new(path));
        let is_gpu_node = resolved
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("nvidia"))
            && (resolved.parent() == Some(Path::new("/dev"))
                || resolved.parent() == Some(ctx.gpu_dev_root.as_path())
                || resolved.starts_with("/dev/nvidia-caps"));
        if is_gpu_node || ctx.devices.contains(&resolved) {
            continue;
        }
        return Err(RuleError::DeviceNotAllowed {
            path: path.to_string(),
            user: ctx.name.clone(),
            section: ctx.section(),
        });
    }
    Ok(())
}

/// `POST /containers/{id}/update`: resource limits may change, devices may not (the
/// runtime refuses device changes too; this says so before Docker half-applies them).
pub fn check_update(body: &mut Value) -> Result<(), RuleError> {
    let Some(obj) = as_object_mut(body, "body")? else {
        return Ok(());
    };
    let fields = [
        "Devices",
        "DeviceCgroupRules",
        "DeviceRequests",
        "CgroupParent",
        "Runtime",
        "Privileged",
    ];
    canonicalize(obj, &fields)?;
    for f in fields {
        let set = match obj.get(f) {
            None | Some(Value::Null) | Some(Value::Bool(false)) => false,
            Some(Value::Array(a)) => !a.is_empty(),
            Some(Value::String(s)) => !s.is_empty(),
            Some(_) => true,
        };
        if set {
            return Err(RuleError::UpdateRefused {
                field: f.to_string(),
            });
        }
    }
    Ok(())
}

/// `POST /networks/{id}/connect|disconnect`: the container named in the body.
pub fn network_member(body: &mut Value) -> Result<String, RuleError> {
    let obj = as_object_mut(body, "body")?.ok_or(RuleError::BadField {
        field: "body".into(),
        expected: "an object",
    })?;
    canonicalize(obj, &["Container"])?;
    let name = str_of(obj, "Container", "Container")?.to_string();
    if !valid_container_ref(&name) {
        return Err(RuleError::BadContainerRef(name));
    }
    Ok(name)
}

/// Replaces the body's container with its full id.
pub fn set_network_member(body: &mut Value, id: &str) {
    if let Some(obj) = body.as_object_mut() {
        obj.insert("Container".into(), Value::String(id.to_string()));
    }
}

/// `POST /build`: the classic builder's containers use the daemon's default runtime, not
/// labgpu, so the query options that reach the host are checked here.
pub fn check_build(query: Option<&str>, ctx: &UserCtx) -> Result<(), RuleError> {
    for (k, v) in query_pairs(query) {
        match k.as_str() {
            "cgroupparent" if !v.is_empty() => {
                return Err(RuleError::CgroupParent {
                    field: "cgroupparent",
                    value: v,
                })
            }
            "networkmode" if v == "host" && !ctx.allow_host_network => {
                return Err(RuleError::HostNamespace {
                    field: "networkmode",
                    value: v,
                    user: ctx.name.clone(),
                    key: "allow_host_network",
                    section: ctx.section(),
                })
            }
            // dockerd clones git contexts as root: over ssh that is root's keys.
            // "client-session" is BuildKit reading the context from the caller's session.
            "remote"
                if !v.is_empty()
                    && v != "client-session"
                    && !["http://", "https://", "git://", "github.com/"]
                        .iter()
                        .any(|p| v.starts_with(p)) =>
            {
                return Err(RuleError::BuildRemote(v))
            }
            "networkmode" if v.starts_with("container:") => {
                return Err(RuleError::NotAllowed {
                    method: "POST".into(),
                    path: format!("/build?networkmode={v}"),
                })
            }
            _ => {}
        }
    }
    Ok(())
}

/// `POST /volumes/create`: stamps the owner label, so `docker volume ls` can tell whose
/// a volume is (volumes stay shared; see README).
pub fn rewrite_volume_create(body: &mut Value, ctx: &UserCtx) -> Result<(), RuleError> {
    let obj = as_object_mut(body, "body")?.ok_or(RuleError::BadField {
        field: "body".into(),
        expected: "an object",
    })?;
    canonicalize(obj, &["Labels"])?;
    let labels = obj
        .entry("Labels")
        .or_insert_with(|| Value::Object(Map::new()));
    if labels.is_null() {
        *labels = Value::Object(Map::new());
    }
    let labels = as_object_mut(labels, "Labels")?.expect("not null");
    labels.insert(ctx.owner_label.clone(), Value::String(ctx.name.clone()));
    Ok(())
}

/// Whether an inspected container (`GET /containers/{id}/json`) is the caller's.
pub fn owned_by(inspect: &Value, owner_label: &str, name: &str) -> bool {
    inspect
        .get("Config")
        .and_then(|c| c.get("Labels"))
        .and_then(|l| l.get(owner_label))
        .and_then(Value::as_str)
        == Some(name)
}

/// `GET /system/df`: keeps only the caller's containers.
pub fn filter_disk_usage(df: &mut Value, owner_label: &str, name: &str) {
    if let Some(Value::Array(list)) = df.get_mut("Containers") {
        list.retain(|c| {
            c.get("Labels")
                .and_then(|l| l.get(owner_label))
                .and_then(Value::as_str)
                == Some(name)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::paths::normalize;
    use serde_json::json;

    fn ctx() -> UserCtx {
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
        }
    }

    fn rewrite(mut body: Value) -> Result<Value, RuleError> {
        rewrite_with(&mut body, &BTreeMap::new())?;
        Ok(body)
    }

    fn rewrite_with(body: &mut Value, owned: &BTreeMap<String, String>) -> Result<(), RuleError> {
        rewrite_create(body, &ctx(), owned, &|p| normalize(p))
    }

    #[test]
    fn version_prefix_is_stripped() {
        assert_eq!(strip_version("/v1.41/containers/json"), "/containers/json");
        assert_eq!(strip_version("/v1.41"), "");
        assert_eq!(strip_version("/containers/json"), "/containers/json");
        assert_eq!(strip_version("/volumes/x"), "/volumes/x");
        assert_eq!(strip_version("/vx/containers"), "/vx/containers");
    }

    #[test]
    fn paths_are_classified_with_or_without_version() {
        let c = |m: Method, p: &str| classify(&m, p);
        for p in [
            "/containers/json",
            "/v1.41/containers/json",
            "/v1.24/events",
        ] {
            assert_eq!(c(Method::GET, p), Ok(Route::Filtered), "{p}");
        }
        assert_eq!(
            c(Method::POST, "/v1.41/containers/create"),
            Ok(Route::Create)
        );
        assert_eq!(
            c(Method::POST, "/v1.41/containers/prune"),
            Ok(Route::Filtered)
        );
        assert_eq!(
            c(Method::POST, "/v1.41/containers/abc/attach"),
            Ok(Route::Container {
                id: "abc".into(),
                rest: "attach".into()
            })
        );
        assert_eq!(
            c(Method::DELETE, "/containers/web"),
            Ok(Route::Container {
                id: "web".into(),
                rest: String::new()
            })
        );
        assert_eq!(
            c(Method::PUT, "/v1.41/containers/abc/archive"),
            Ok(Route::Container {
                id: "abc".into(),
                rest: "archive".into()
            })
        );
        assert_eq!(
            c(Method::POST, "/v1.41/exec/e1/start"),
            Ok(Route::Exec { id: "e1".into() })
        );
        assert_eq!(c(Method::POST, "/v1.41/commit"), Ok(Route::Commit));
        assert_eq!(c(Method::GET, "/v1.41/system/df"), Ok(Route::DiskUsage));
        assert_eq!(c(Method::POST, "/v1.41/build"), Ok(Route::Build));
        assert_eq!(c(Method::POST, "/v1.41/session"), Ok(Route::Forward));
        assert_eq!(c(Method::HEAD, "/_ping"), Ok(Route::Forward));
        assert_eq!(
            c(
                Method::GET,
                "/v1.41/images/docker.io/library/busybox:latest/json"
            ),
            Ok(Route::Forward)
        );
        assert_eq!(
            c(Method::POST, "/v1.41/networks/n1/connect"),
            Ok(Route::NetworkMember)
        );
        assert_eq!(
            c(Method::POST, "/v1.41/volumes/create"),
            Ok(Route::VolumeCreate)
        );
        assert!(matches!(
            c(Method::POST, "/v1.41/plugins/pull"),
            Err(RuleError::AdminOnly { .. })
        ));
        assert!(matches!(
            c(Method::POST, "/v1.41/swarm/init"),
            Err(RuleError::AdminOnly { .. })
        ));
        assert!(matches!(
            c(Method::POST, "/grpc"),
            Err(RuleError::AdminOnly { .. })
        ));
        assert!(matches!(
            c(Method::POST, "/v1.41/containers/json"),
            Ok(Route::Container { .. })
        ));
        assert!(matches!(
            c(Method::GET, "/v1.41/nonsense"),
            Err(RuleError::NotAllowed { .. })
        ));
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
    fn old_api_versions_are_refused() {
        for p in [
            "/v1.23/containers/x/start",
            "/v1.12/containers/create",
            "/v1/info",
        ] {
            assert!(
                matches!(classify(&Method::POST, p), Err(RuleError::OldApi(_))),
                "{p}"
            );
        }
        for p in [
            "/v1.24/containers/x/start",
            "/v1.41/containers/x/start",
            "/containers/x/start",
        ] {
            assert!(classify(&Method::POST, p).is_ok(), "{p}");
        }
    }

    #[test]
    fn top_level_host_config_fields_are_shadowed() {
        // No "HostConfig" key: dockerd would read Privileged/Runtime from the top level.
        let body = rewrite(json!({"Image": "x", "Privileged": true, "Runtime": "runc"})).unwrap();
        assert_eq!(body["HostConfig"]["Runtime"], "labgpu");
        assert!(body["HostConfig"].is_object());
    }

    #[test]
    fn paths_that_decode_or_clean_differently_are_refused() {
        for p in [
            "/v1.41/containers%2Fcreate",
            "/v1.41/containers/x/../../plugins/pull",
            "/v1.41//containers/create",
            "/v1.41/containers/./create",
            "containers/json",
            "/containers/a b/json",
        ] {
            assert!(
                matches!(classify(&Method::POST, p), Err(RuleError::BadPath(_))),
                "{p}"
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
    fn create_stamps_owner_and_runtime_whatever_was_asked() {
        let body = rewrite(json!({
            "Image": "x",
            "Labels": {"labgpu.user": "bob", "keep": "1"},
            "HostConfig": {"Runtime": "runc", "Annotations": {"labgpu.user": "bob", "io.labgpu.owner": "bob", "other": "x"}}
        }))
        .unwrap();
        assert_eq!(body["Labels"]["labgpu.user"], "alice");
        assert_eq!(body["Labels"]["keep"], "1");
        assert_eq!(body["HostConfig"]["Runtime"], "labgpu");
        assert_eq!(body["HostConfig"]["Annotations"], json!({"other": "x"}));

        let body = rewrite(json!({"Image": "x", "HostConfig": null, "Labels": null})).unwrap();
        assert_eq!(body["Labels"], json!({"labgpu.user": "alice"}));
        assert_eq!(body["HostConfig"]["Runtime"], "labgpu");
    }

    #[test]
    fn create_sees_keys_as_go_does() {
        // Go binds "labels", "hostconfig", "runtime" (and the Kelvin-sign K) to the fields.
        let body = rewrite(json!({
            "labels": {"labgpu.user": "bob"},
            "hostconfig": {"runtime": "runc", "NetworKMode": "bridge"}
        }))
        .unwrap();
        assert_eq!(body["Labels"]["labgpu.user"], "alice");
        assert_eq!(body["HostConfig"]["Runtime"], "labgpu");
        assert!(body.get("labels").is_none());
        assert!(body["HostConfig"].get("runtime").is_none());
        assert_eq!(body["HostConfig"]["NetworkMode"], "bridge");

        let err = rewrite(json!({"HostConfig": {"privileged": true}})).unwrap_err();
        assert!(matches!(err, RuleError::Privileged { .. }), "{err}");
        let err =
            rewrite(json!({"HostConfig": {"Privileged": false, "PRIVILEGED": true}})).unwrap_err();
        assert!(matches!(err, RuleError::DuplicateKey { .. }), "{err}");
    }

    #[test]
    fn create_refusals() {
        let refused = |hc: Value| rewrite(json!({"Image": "x", "HostConfig": hc})).unwrap_err();
        let e = refused(json!({"Privileged": true}));
        assert_eq!(
            e.to_string(),
            "privileged containers are not allowed for alice (allow_privileged in [defaults] or [users.alice])"
        );
        for field in [
            "PidMode",
            "IpcMode",
            "UTSMode",
            "UsernsMode",
            "CgroupnsMode",
        ] {
            let e = refused(json!({ field: "host" }));
            assert!(
                matches!(e, RuleError::HostNamespace { field: f, .. } if f == field),
                "{e}"
            );
        }
        assert!(refused(json!({"NetworkMode": "host"}))
            .to_string()
            .contains("allow_host_network"));
        assert!(matches!(
            refused(json!({"CgroupParent": "/system.slice"})),
            RuleError::CgroupParent { .. }
        ));
        assert!(matches!(
            refused(json!({"SecurityOpt": ["seccomp=unconfined"]})),
            RuleError::Unconfined { .. }
        ));
        assert!(matches!(
            refused(json!({"SecurityOpt": ["apparmor:unconfined"]})),
            RuleError::Unconfined { .. }
        ));
        let e = refused(json!({"Binds": ["/etc:/host-etc:ro"]}));
        assert_eq!(
            e.to_string(),
            "bind mount of host path /etc is not allowed for alice (bind_allow or mounts in [defaults] or [users.alice])"
        );
        assert!(matches!(
            refused(json!({"Binds": ["/home/alice/../bob:/x"]})),
            RuleError::BindNotAllowed { .. }
        ));
        assert!(matches!(
            refused(json!({"Mounts": [{"type": "bind", "source": "/root", "target": "/r"}]})),
            RuleError::BindNotAllowed { .. }
        ));
        assert!(matches!(
            refused(
                json!({"Mounts": [{"Type": "volume", "Target": "/v", "VolumeOptions":
                {"DriverConfig": {"Options": {"type": "none", "o": "bind", "device": "/etc"}}}}]})
            ),
            RuleError::BindNotAllowed { .. }
        ));
        assert!(matches!(
            refused(
                json!({"Devices": [{"PathOnHost": "/dev/sda", "PathInContainer": "/dev/sda"}]})
            ),
            RuleError::DeviceNotAllowed { .. }
        ));
    }

    #[test]
    fn create_allows_what_the_policy_allows() {
        let body = rewrite(json!({"Image": "x", "HostConfig": {
            "Binds": ["/home/alice/code:/code", "myvol:/data", "/srv/data/set:/set:ro"],
            "Mounts": [{"Type": "bind", "Source": "/srv/data", "Target": "/d"},
                       {"Type": "tmpfs", "Target": "/t"}],
            "Devices": [{"PathOnHost": "/dev/fuse"}, {"PathOnHost": "/dev/nvidia2"},
                        {"PathOnHost": "/tmp/fake/dev/nvidia3"}, {"PathOnHost": "nvidia.com/gpu=0"}],
            "NetworkMode": "bridge", "IpcMode": "shareable", "SecurityOpt": ["no-new-privileges"],
        }}))
        .unwrap();
        assert_eq!(body["HostConfig"]["Runtime"], "labgpu");
    }

    #[test]
    fn container_references_are_pinned_to_owned_ids() {
        let mut body = json!({"HostConfig": {
            "NetworkMode": "container:web", "PidMode": "container:/web",
            "VolumesFrom": ["data:ro", "web"]
        }});
        let mut refs = create_container_refs(&mut body).unwrap();
        refs.sort();
        let names: Vec<&str> = refs.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["web", "/web", "data", "web"]);

        // A reference the server did not resolve as the caller's is refused.
        assert!(rewrite_with(&mut body.clone(), &BTreeMap::new()).is_err());

        let owned: BTreeMap<String, String> = [("web", "aaa"), ("/web", "aaa"), ("data", "bbb")]
            .into_iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        rewrite_with(&mut body, &owned).unwrap();
        let hc = &body["HostConfig"];
        assert_eq!(hc["NetworkMode"], "container:aaa");
        assert_eq!(hc["PidMode"], "container:aaa");
        assert_eq!(hc["VolumesFrom"], json!(["bbb:ro", "aaa"]));

        let mut links = json!({"HostConfig": {"Links": ["/db:/web/db", "cache"]}});
        let names: Vec<String> = create_container_refs(&mut links)
            .unwrap()
            .into_iter()
            .map(|r| r.name)
            .collect();
        assert_eq!(names, ["/db", "cache"]);
        assert!(rewrite_with(&mut links.clone(), &BTreeMap::new()).is_err());
        let owned: BTreeMap<String, String> = [("/db", "d"), ("cache", "c")]
            .into_iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        rewrite_with(&mut links, &owned).unwrap();
        assert_eq!(
            links["HostConfig"]["Links"],
            json!(["/db:/web/db", "cache"])
        );

        let mut bad = json!({"HostConfig": {"IpcMode": "container:../x"}});
        assert!(matches!(
            create_container_refs(&mut bad),
            Err(RuleError::BadContainerRef(_))
        ));
    }

    #[test]
    fn update_may_not_touch_devices() {
        check_update(&mut json!({"Memory": 1000000, "CpuShares": 2})).unwrap();
        check_update(&mut json!({"Devices": [], "DeviceCgroupRules": null})).unwrap();
        for body in [
            json!({"Devices": [{"PathOnHost": "/dev/nvidia1"}]}),
            json!({"devicecgrouprules": ["c 195:* rwm"]}),
            json!({"DeviceRequests": [{"Count": -1}]}),
            json!({"Runtime": "runc"}),
        ] {
            assert!(
                matches!(
                    check_update(&mut body.clone()),
                    Err(RuleError::UpdateRefused { .. })
                ),
                "{body}"
            );
        }
    }

    #[test]
    fn build_query_is_checked() {
        check_build(
            Some("t=x&networkmode=default&dockerfile=Dockerfile"),
            &ctx(),
        )
        .unwrap();
        assert!(check_build(Some("cgroupparent=%2Fsystem.slice"), &ctx()).is_err());
        assert!(check_build(Some("networkmode=host"), &ctx()).is_err());
        assert!(check_build(Some("networkmode=container%3Aabc"), &ctx()).is_err());
        check_build(Some("remote=https%3A%2F%2Fgithub.com%2Fa%2Fb.git"), &ctx()).unwrap();
        check_build(Some("remote=github.com%2Fa%2Fb"), &ctx()).unwrap();
        check_build(Some("remote=client-session&version=2"), &ctx()).unwrap();
        for bad in ["git%40github.com%3Aa%2Fb.git", "ssh%3A%2F%2Fhost%2Frepo"] {
            assert!(
                matches!(
                    check_build(Some(&format!("remote={bad}")), &ctx()),
                    Err(RuleError::BuildRemote(_))
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn ownership_disk_usage_and_members() {
        let c = json!({"Id": "abc", "Config": {"Labels": {"labgpu.user": "alice"}}});
        assert!(owned_by(&c, "labgpu.user", "alice"));
        assert!(!owned_by(&c, "labgpu.user", "bob"));
        assert!(!owned_by(
            &json!({"Config": {"Labels": null}}),
            "labgpu.user",
            "bob"
        ));

        let mut df = json!({"Containers": [
            {"Id": "a", "Labels": {"labgpu.user": "alice"}},
            {"Id": "b", "Labels": {"labgpu.user": "bob"}},
            {"Id": "c", "Labels": {}}
        ], "Images": [{"Id": "i"}]});
        filter_disk_usage(&mut df, "labgpu.user", "alice");
        assert_eq!(
            df["Containers"],
            json!([{"Id": "a", "Labels": {"labgpu.user": "alice"}}])
        );
        assert_eq!(df["Images"], json!([{"Id": "i"}]));

        let mut body = json!({"container": "web", "EndpointConfig": {}});
        assert_eq!(network_member(&mut body).unwrap(), "web");
        set_network_member(&mut body, "abc");
        assert_eq!(body["Container"], "abc");

        let mut vol = json!({"Name": "v", "Labels": {"labgpu.user": "bob"}});
        rewrite_volume_create(&mut vol, &ctx()).unwrap();
        assert_eq!(vol["Labels"]["labgpu.user"], "alice");
    }
}
