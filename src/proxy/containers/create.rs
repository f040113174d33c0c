//! `POST /containers/create` from a policy user: every field of the body is in one of the
//! tables below (free, checked, or refused when set); anything else is refused. Then the
//! owner label is stamped, the runtime forced, and references to other containers pinned.
//!
//! Go's encoding/json binds keys case-insensitively, so keys are first renamed to the exact
//! field names (`check_fields`), and the checks read what dockerd will read.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::mounts::{check_binds, check_devices, check_mounts};
use super::{fairshare, storage};
use crate::edits::{annotations, system_paths};
use crate::proxy::error::RuleError;
use crate::proxy::request::{
    array_of, as_object_mut, check_fields, str_of, valid_container_ref, Field, UserCtx,
};

use Field::{Checked, Free, Refused};

/// The label on a user's login container (`labgpu shell`). The proxy stamps it on the
/// containers it makes from the policy's `session` settings and refuses it from users; the
/// proxy's record, not the label, says which container is the session.
pub const SESSION_LABEL: &str = "labgpu.session";

/// The body's top level: `container.Config`, the inner `HostConfig` and `NetworkingConfig`,
/// and the few deprecated top-level resource fields dockerd still honours next to them.
const CONFIG: &[(&str, Field)] = &[
    ("Hostname", Free),
    ("Domainname", Free),
    ("User", Free),
    ("AttachStdin", Free),
    ("AttachStdout", Free),
    ("AttachStderr", Free),
    ("ExposedPorts", Free),
    ("Tty", Free),
    ("OpenStdin", Free),
    ("StdinOnce", Free),
    ("Env", Free),
    ("Cmd", Free),
    ("Healthcheck", Free),
    ("ArgsEscaped", Free),
    ("Image", Free),
    ("Volumes", Free),
    ("WorkingDir", Free),
    ("Entrypoint", Free),
    ("NetworkDisabled", Free),
    ("MacAddress", Free),
    ("OnBuild", Free),
    ("StopSignal", Free),
    ("StopTimeout", Free),
    ("Shell", Free),
    ("Labels", Checked),
    ("HostConfig", Checked),
    ("NetworkingConfig", Checked),
    ("Memory", Free),
    ("MemorySwap", Free),
    ("CpuShares", Free),
    ("CpusetCpus", Free),
    ("Cpuset", Free),
];

const NOT_ON_LINUX: &str = "it is for Windows containers";
const CGROUP_PARENT: &str = "only the administrator places containers in cgroups";

/// `container.HostConfig` with its embedded `Resources` (API 1.24 to 1.51).
const HOST_CONFIG: &[(&str, Field)] = &[
    ("Binds", Checked),
    ("ContainerIDFile", Free),
    ("LogConfig", Checked),
    ("NetworkMode", Checked),
    // Host ports only from the caller's `ports` (fairshare::check_ports).
    ("PortBindings", Checked),
    ("RestartPolicy", Free),
    ("AutoRemove", Free),
    ("VolumeDriver", Checked),
    ("VolumesFrom", Checked),
    ("ConsoleSize", Free),
    ("Annotations", Checked),
    // Capabilities beyond the policy's are cut by the runtime, whatever is asked.
    ("CapAdd", Free),
    ("CapDrop", Free),
    ("CgroupnsMode", Checked),
    ("Dns", Free),
    ("DnsOptions", Free),
    ("DnsSearch", Free),
    ("ExtraHosts", Free),
    ("GroupAdd", Free),
    ("IpcMode", Checked),
    ("Cgroup", Checked),
    ("Links", Checked),
    ("OomScoreAdj", Checked),
    ("PidMode", Checked),
    ("Privileged", Checked),
    ("PublishAllPorts", Checked),
    ("ReadonlyRootfs", Free),
    ("SecurityOpt", Checked),
    ("StorageOpt", Checked),
    ("Tmpfs", Free),
    ("UTSMode", Checked),
    ("UsernsMode", Checked),
    ("ShmSize", Checked),
    // Docker accepts only namespaced sysctls, and runc checks again.
    ("Sysctls", Free),
    ("Runtime", Checked),
    ("Isolation", Checked),
    ("Mounts", Checked),
    ("MaskedPaths", Checked),
    ("ReadonlyPaths", Checked),
    ("Init", Free),
    ("CpuShares", Free),
    ("Memory", Free),
    ("NanoCpus", Free),
    ("CgroupParent", Refused(CGROUP_PARENT)),
    ("BlkioWeight", Free),
    ("BlkioWeightDevice", Free),
    ("BlkioDeviceReadBps", Free),
    ("BlkioDeviceWriteBps", Free),
    ("BlkioDeviceReadIOps", Free),
    ("BlkioDeviceWriteIOps", Free),
    ("CpuPeriod", Free),
    ("CpuQuota", Free),
    ("CpuRealtimePeriod", Free),
    ("CpuRealtimeRuntime", Free),
    ("CpusetCpus", Free),
    ("CpusetMems", Free),
    ("Devices", Checked),
    // Narrowed by the runtime to the owner's GPUs and Docker's standard devices.
    ("DeviceCgroupRules", Free),
    // `--gpus`: the runtime neutralises NVIDIA_VISIBLE_DEVICES and the hook.
    ("DeviceRequests", Free),
    ("KernelMemory", Free),
    ("KernelMemoryTCP", Free),
    ("MemoryReservation", Free),
    ("MemorySwap", Free),
    ("MemorySwappiness", Free),
    (
        "OomKillDisable",
        Refused("a container the kernel cannot OOM-kill can take the host's memory from everyone"),
    ),
    ("PidsLimit", Free),
    ("Ulimits", Free),
    ("CpuCount", Refused(NOT_ON_LINUX)),
    ("CpuPercent", Refused(NOT_ON_LINUX)),
    ("IOMaximumIOps", Refused(NOT_ON_LINUX)),
    ("IOMaximumBandwidth", Refused(NOT_ON_LINUX)),
];

const NETWORKING_CONFIG: &[(&str, Field)] = &[("EndpointsConfig", Checked)];

/// `network.EndpointSettings`, one per network the container joins at create (and the
/// `EndpointConfig` of `network connect`).
pub(in crate::proxy) const ENDPOINT: &[(&str, Field)] = &[
    ("IPAMConfig", Free),
    ("Links", Checked),
    ("Aliases", Free),
    ("MacAddress", Free),
    (
        "DriverOpts",
        Refused("endpoint driver options set interface sysctls and names on the host's side"),
    ),
    ("GwPriority", Free),
    ("NetworkID", Free),
    ("EndpointID", Free),
    ("Gateway", Free),
    ("IPAddress", Free),
    ("IPPrefixLen", Free),
    ("IPv6Gateway", Free),
    ("GlobalIPv6Address", Free),
    ("GlobalIPv6PrefixLen", Free),
    ("DNSNames", Free),
];

const LOG_CONFIG: &[(&str, Field)] = &[("Type", Checked), ("Config", Checked)];

/// Log drivers that write where Docker keeps logs on this host. The others (syslog, gelf,
/// fluentd, awslogs, splunk, …) connect out from the host's network, or with the daemon's
/// cloud credentials, on the user's behalf.
const LOG_DRIVERS: [&str; 4] = ["json-file", "local", "journald", "none"];
const LOG_OPTIONS: [&str; 9] = [
    "max-size",
    "max-file",
    "compress",
    "mode",
    "max-buffer-size",
    "labels",
    "env",
    "env-regex",
    "tag",
];

/// Another container a create body refers to; each must be the caller's, and is replaced by
/// its full id (`rewrite_create`'s `owned`), so a rename in between cannot swap it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ContainerRef {
    pub field: &'static str,
    pub name: String,
}

fn body_object(body: &mut Value) -> Result<&mut Map<String, Value>, RuleError> {
    as_object_mut(body, "body")?.ok_or(RuleError::BadField {
        field: "body".into(),
        expected: "an object",
    })
}

/// The body's top level, `HostConfig` and `NetworkingConfig` with their keys canonical and
/// every key known. Run first: everything below reads canonical keys.
fn check_shape(body: &mut Value) -> Result<(), RuleError> {
    let top = body_object(body)?;
    check_fields(top, CONFIG, "")?;
    if let Some(hc) = top.get_mut("HostConfig") {
        if let Some(hc) = as_object_mut(hc, "HostConfig")? {
            check_fields(hc, HOST_CONFIG, "HostConfig")?;
        }
    }
    if let Some(nc) = top.get_mut("NetworkingConfig") {
        if let Some(nc) = as_object_mut(nc, "NetworkingConfig")? {
            check_fields(nc, NETWORKING_CONFIG, "NetworkingConfig")?;
            if let Some(eps) = nc.get_mut("EndpointsConfig") {
                if let Some(eps) = as_object_mut(eps, "NetworkingConfig.EndpointsConfig")? {
                    for (name, ep) in eps.iter_mut() {
                        let path = format!("NetworkingConfig.EndpointsConfig.{name}");
                        if let Some(ep) = as_object_mut(ep, &path)? {
                            check_fields(ep, ENDPOINT, &path)?;
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

/// The containers a create body joins or copies from (`--pid/--ipc/--network container:X`,
/// `--volumes-from X`, `--link X` (which copies X's environment, also per network), a cgroup
/// shared with X). Run before `rewrite_create`; also checks the body's shape.
pub fn create_container_refs(body: &mut Value) -> Result<Vec<ContainerRef>, RuleError> {
    check_shape(body)?;
    let mut refs = Vec::new();
    let top = body_object(body)?;
    if let Some(Value::Object(hc)) = top.get("HostConfig") {
        for field in ["PidMode", "IpcMode", "NetworkMode", "Cgroup"] {
            if let Some(name) = str_of(hc, field, field)?.strip_prefix("container:") {
                refs.push(ContainerRef {
                    field,
                    name: name.to_string(),
                });
            }
        }
        // `--volumes-from X[:ro]` and `--link X[:alias]`.
        for field in ["VolumesFrom", "Links"] {
            for name in ref_list(hc, field)? {
                refs.push(ContainerRef { field, name });
            }
        }
    }
    let endpoints = top
        .get("NetworkingConfig")
        .and_then(|n| n.get("EndpointsConfig"))
        .and_then(Value::as_object);
    for ep in endpoints.into_iter().flat_map(|e| e.values()) {
        if let Some(ep) = ep.as_object() {
            for name in ref_list(ep, "Links")? {
                refs.push(ContainerRef {
                    field: "Links",
                    name,
                });
            }
        }
    }
    for r in &refs {
        if !valid_container_ref(&r.name) {
            return Err(RuleError::BadContainerRef(r.name.clone()));
        }
    }
    Ok(refs)
}

/// The container names of a `name[:suffix]` list (`VolumesFrom`, `Links`).
pub(in crate::proxy) fn ref_list(
    obj: &Map<String, Value>,
    field: &'static str,
) -> Result<Vec<String>, RuleError> {
    array_of(obj, field, field)?
        .iter()
        .map(|v| {
            let s = v.as_str().ok_or(RuleError::BadField {
                field: field.into(),
                expected: "a list of strings",
            })?;
            Ok(s.split_once(':').map_or(s, |(n, _)| n).to_string())
        })
        .collect()
}

/// Refuses a body with more than `max` bind mounts, volumes and tmpfs mounts (each costs
/// path resolution, and 100k of them are an attack on the proxy, not a container).
pub fn check_mount_count(body: &Value, max: usize) -> Result<(), RuleError> {
    let hc = body.get("HostConfig");
    let len = |k: &str| {
        hc.and_then(|h| h.get(k)).map_or(0, |v| match v {
            Value::Array(a) => a.len(),
            Value::Object(o) => o.len(),
            _ => 0,
        })
    };
    let n = len("Binds") + len("Mounts") + len("Tmpfs") + len("Devices");
    if n > max {
        return Err(RuleError::ValueRefused {
            field: "mounts and devices".into(),
            value: n.to_string(),
            reason: format!("at most {max} per container ([proxy] max_mounts)"),
        });
    }
    Ok(())
}

/// What the server looked up for a create: facts `rewrite_create` needs and cannot know.
#[derive(Debug, Default, Clone)]
pub struct Resolved {
    /// Every container the body names (`create_container_refs`), by the full id it resolved
    /// to; all are the caller's.
    pub containers: BTreeMap<String, String>,
    /// The administrator's volumes the caller may mount only read-only.
    pub read_only_volumes: BTreeSet<String>,
    /// The image's `VOLUME`s.
    pub image_volumes: Vec<String>,
}

/// The networks a create body joins by name (`--network NAME`, per-network settings);
/// Docker's own modes and `container:X` are not networks.
pub fn network_names(body: &Value) -> Vec<String> {
    let mut names = Vec::new();
    let mode = body
        .pointer("/HostConfig/NetworkMode")
        .and_then(Value::as_str)
        .unwrap_or("");
    if !matches!(mode, "" | "default" | "bridge" | "none" | "host")
        && !mode.starts_with("container:")
    {
        names.push(mode.to_string());
    }
    if let Some(eps) = body
        .pointer("/NetworkingConfig/EndpointsConfig")
        .and_then(Value::as_object)
    {
        names.extend(
            eps.keys()
                .filter(|k| !matches!(k.as_str(), "bridge" | "none" | "host"))
                .cloned(),
        );
    }
    names.sort();
    names.dedup();
    names
}

/// The named volumes a create body mounts (after `create_container_refs` checked its shape).
pub fn named_volumes(body: &Value) -> Result<Vec<storage::NamedVolume>, RuleError> {
    match body.get("HostConfig").and_then(Value::as_object) {
        Some(hc) => storage::named_volumes(hc),
        None => Ok(Vec::new()),
    }
}

/// Checks a `POST /containers/create` body against the caller's policy and rewrites it:
/// owner label stamped, runtime forced, references to other containers pinned to the ids
/// the server resolved, the administrator's volumes read-only, anonymous volumes owned.
/// `resolve` turns a host path into what the kernel would open (symlinks followed).
pub fn rewrite_create(
    body: &mut Value,
    ctx: &UserCtx,
    resolved: &Resolved,
    resolve: &dyn Fn(&Path) -> PathBuf,
) -> Result<(), RuleError> {
    let refs = create_container_refs(body)?;
    let top = body_object(body)?;
    stamp_owner(top, ctx)?;
    pin_endpoint_links(top, &resolved.containers)?;
    let hc = top
        .entry("HostConfig")
        .or_insert_with(|| Value::Object(Map::new()));
    if hc.is_null() {
        *hc = Value::Object(Map::new());
    }
    let hc = as_object_mut(hc, "HostConfig")?.expect("not null");
    // With a "HostConfig" present, dockerd ignores the deprecated host config fields at the
    // top level (all but the resource limits in CONFIG), so only this object needs checking.
    check_modes(hc, ctx)?;
    check_security_opts(hc, ctx)?;
    check_system_paths(hc, ctx)?;
    check_small_fields(hc)?;
    check_log_config(hc)?;
    fairshare::check_ports(hc, ctx)?;
    if let Some(cut) = fairshare::cap_shm(hc, ctx)? {
        tracing::info!(user = %ctx.name, "{cut}");
    }
    check_binds(hc, ctx, resolve)?;
    check_mounts(hc, ctx, resolve)?;
    check_devices(hc, ctx, resolve)?;
    pin_refs(hc, &refs, &resolved.containers)?;
    storage::make_read_only(hc, &resolved.read_only_volumes);
    hc.insert("Runtime".into(), Value::String(ctx.runtime.clone()));
    check_annotations(hc, ctx)?;
    storage::own_anonymous(top, &resolved.image_volumes, ctx)
}

/// The owner annotation and labgpu's own stamps are dropped (the runtime trusts the proxy's
/// record, and would refuse a conflicting annotation); annotations runc or crun act on are
/// refused, as the runtime would.
fn check_annotations(hc: &mut Map<String, Value>, ctx: &UserCtx) -> Result<(), RuleError> {
    let Some(Value::Object(ann)) = hc.get_mut("Annotations") else {
        return Ok(());
    };
    ann.retain(|k, _| *k != ctx.owner_label && !k.starts_with("io.labgpu."));
    if ctx.allow_unconfined {
        return Ok(());
    }
    match ann.keys().find(|k| annotations::controlled(k)) {
        Some(k) => Err(RuleError::Unconfined {
            opt: format!("annotation {k:?}, which the runtime acts on,"),
            user: ctx.name.clone(),
            section: ctx.section(),
        }),
        None => Ok(()),
    }
}

fn stamp_owner(top: &mut Map<String, Value>, ctx: &UserCtx) -> Result<(), RuleError> {
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
    if labels.contains_key(SESSION_LABEL) {
        return Err(RuleError::ValueRefused {
            field: "Labels".into(),
            value: SESSION_LABEL.into(),
            reason: "it marks the login container labgpu-shell makes, and only the proxy sets it"
                .into(),
        });
    }
    labels.insert(ctx.owner_label.clone(), Value::String(ctx.name.clone()));
    top.insert("Labels".into(), Value::Object(labels));
    Ok(())
}

/// Privileged mode and the host's namespaces.
fn check_modes(hc: &Map<String, Value>, ctx: &UserCtx) -> Result<(), RuleError> {
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
    let userns = str_of(hc, "UsernsMode", "UsernsMode")?;
    if !matches!(userns, "" | "host") {
        return Err(value_refused(
            "HostConfig.UsernsMode",
            userns,
            "only \"host\" or nothing exists",
        ));
    }
    Ok(())
}

fn value_refused(field: &str, value: &str, reason: &str) -> RuleError {
    RuleError::ValueRefused {
        field: field.to_string(),
        value: value.to_string(),
        reason: reason.to_string(),
    }
}

/// `--security-opt`: only what is understood passes. Unconfined profiles need
/// `allow_unconfined`; a custom seccomp profile is checked by the runtime against Docker's
/// default for the capabilities left.
fn check_security_opts(hc: &Map<String, Value>, ctx: &UserCtx) -> Result<(), RuleError> {
    for opt in array_of(hc, "SecurityOpt", "SecurityOpt")? {
        let s = opt.as_str().ok_or(RuleError::BadField {
            field: "SecurityOpt".into(),
            expected: "a list of strings",
        })?;
        // Docker splits on the first '=' (or ':' in the old form).
        let (k, v) = s.split_once(['=', ':']).unwrap_or((s, ""));
        let unconfined = || RuleError::Unconfined {
            opt: format!(
                "security option {:?}",
                s.chars().take(80).collect::<String>()
            ),
            user: ctx.name.clone(),
            section: ctx.section(),
        };
        match k {
            "no-new-privileges" => {}
            "seccomp" | "apparmor" | "systempaths" if v == "unconfined" => {
                if !ctx.allow_unconfined {
                    return Err(unconfined());
                }
            }
            "seccomp" => {}
            "apparmor" if v == "docker-default" => {}
            "apparmor" => {
                return Err(value_refused(
                    "SecurityOpt apparmor",
                    v,
                    "only docker-default is allowed (another loaded profile may confine less)",
                ))
            }
            "writable-cgroups" if v == "false" => {}
            "writable-cgroups" | "label" => {
                if !ctx.allow_unconfined {
                    return Err(unconfined());
                }
            }
            _ => {
                return Err(value_refused(
                    "SecurityOpt",
                    s,
                    "the labgpu proxy does not know this security option",
                ))
            }
        }
    }
    Ok(())
}

/// `MaskedPaths`/`ReadonlyPaths` replace Docker's defaults when set: only lists that keep
/// every default pass (the runtime puts missing ones back anyway).
fn check_system_paths(hc: &Map<String, Value>, ctx: &UserCtx) -> Result<(), RuleError> {
    if ctx.allow_unconfined {
        return Ok(());
    }
    let masked = system_paths::masked_paths(0);
    let defaults: [(&str, Vec<&str>); 2] = [
        ("MaskedPaths", masked.iter().map(String::as_str).collect()),
        ("ReadonlyPaths", system_paths::READONLY.to_vec()),
    ];
    for (field, defaults) in defaults {
        let Some(list) = hc.get(field).filter(|v| !v.is_null()) else {
            continue;
        };
        let list = list.as_array().ok_or(RuleError::BadField {
            field: field.into(),
            expected: "a list of strings",
        })?;
        if let Some(missing) = defaults
            .iter()
            .find(|d| !list.iter().any(|p| p.as_str() == Some(**d)))
        {
            return Err(RuleError::ValueRefused {
                field: format!("HostConfig.{field}"),
                value: format!("a list without {missing}"),
                reason: format!(
                    "it would unmask part of the host's /proc or /sys (allow_unconfined in {})",
                    ctx.section()
                ),
            });
        }
    }
    Ok(())
}

/// Fields whose value decides: volume driver, isolation, storage options, OOM score.
fn check_small_fields(hc: &Map<String, Value>) -> Result<(), RuleError> {
    let driver = str_of(hc, "VolumeDriver", "VolumeDriver")?;
    if !matches!(driver, "" | "local") {
        return Err(value_refused(
            "HostConfig.VolumeDriver",
            driver,
            "volume plugins run privileged on the host; only the local driver is allowed",
        ));
    }
    let isolation = str_of(hc, "Isolation", "Isolation")?;
    if !matches!(isolation, "" | "default") {
        return Err(value_refused(
            "HostConfig.Isolation",
            isolation,
            NOT_ON_LINUX,
        ));
    }
    if let Some(Value::Object(opts)) = hc.get("StorageOpt") {
        if let Some(k) = opts.keys().find(|k| *k != "size") {
            return Err(value_refused(
                "HostConfig.StorageOpt",
                k,
                "only size is allowed",
            ));
        }
    }
    if hc
        .get("OomScoreAdj")
        .and_then(Value::as_i64)
        .is_some_and(|n| n < 0)
    {
        return Err(RuleError::FieldRefused {
            field: "HostConfig.OomScoreAdj below 0".into(),
            reason: "it would make the kernel kill other users' processes first",
        });
    }
    Ok(())
}

/// Log drivers that stay on this host, with their known options.
fn check_log_config(hc: &mut Map<String, Value>) -> Result<(), RuleError> {
    let Some(lc) = hc.get_mut("LogConfig") else {
        return Ok(());
    };
    let Some(lc) = as_object_mut(lc, "HostConfig.LogConfig")? else {
        return Ok(());
    };
    check_fields(lc, LOG_CONFIG, "HostConfig.LogConfig")?;
    let kind = str_of(lc, "Type", "LogConfig.Type")?;
    if !kind.is_empty() && !LOG_DRIVERS.contains(&kind) {
        return Err(value_refused(
            "HostConfig.LogConfig.Type",
            kind,
            "log drivers that send logs off this host act with the daemon's network and credentials; use json-file, local, journald or none",
        ));
    }
    if let Some(Value::Object(cfg)) = lc.get("Config") {
        if let Some(k) = cfg.keys().find(|k| !LOG_OPTIONS.contains(&k.as_str())) {
            return Err(value_refused(
                "HostConfig.LogConfig.Config",
                k,
                "the labgpu proxy does not know this log option",
            ));
        }
    }
    Ok(())
}

/// Replaces every reference to another container by the full id the server checked, so a
/// rename between the check and dockerd's lookup cannot swap in someone else's container.
fn pin_refs(
    hc: &mut Map<String, Value>,
    refs: &[ContainerRef],
    owned: &BTreeMap<String, String>,
) -> Result<(), RuleError> {
    for r in refs {
        let id = id_of(owned, &r.name)?;
        if matches!(r.field, "PidMode" | "IpcMode" | "NetworkMode" | "Cgroup") {
            hc.insert(r.field.into(), Value::String(format!("container:{id}")));
        }
    }
    if let Some(Value::Array(list)) = hc.get_mut("VolumesFrom") {
        for v in list.iter_mut() {
            let s = v.as_str().unwrap_or_default();
            let (name, mode) = s.split_once(':').map_or((s, None), |(n, m)| (n, Some(m)));
            let id = id_of(owned, name)?;
            *v = Value::String(match mode {
                Some(m) => format!("{id}:{m}"),
                None => id.clone(),
            });
        }
    }
    if let Some(Value::Array(links)) = hc.get_mut("Links") {
        pin_links(links, owned)?;
    }
    Ok(())
}

fn id_of<'a>(owned: &'a BTreeMap<String, String>, name: &str) -> Result<&'a String, RuleError> {
    owned
        .get(name)
        .ok_or_else(|| RuleError::BadContainerRef(name.to_string()))
}

/// `name[:alias]` becomes `<full id>:<alias>` (the alias defaults to the name).
pub(in crate::proxy) fn pin_links(
    links: &mut [Value],
    owned: &BTreeMap<String, String>,
) -> Result<(), RuleError> {
    for v in links.iter_mut() {
        let s = v.as_str().unwrap_or_default();
        let (name, alias) = s.split_once(':').unwrap_or((s, s.trim_start_matches('/')));
        *v = Value::String(format!("{}:{alias}", id_of(owned, name)?));
    }
    Ok(())
}

/// The per-network links of `NetworkingConfig`, pinned like `HostConfig.Links`.
fn pin_endpoint_links(
    top: &mut Map<String, Value>,
    owned: &BTreeMap<String, String>,
) -> Result<(), RuleError> {
    let endpoints = top
        .get_mut("NetworkingConfig")
        .and_then(|n| n.get_mut("EndpointsConfig"))
        .and_then(Value::as_object_mut);
    for ep in endpoints.into_iter().flat_map(|e| e.values_mut()) {
        if let Some(Value::Array(links)) = ep.get_mut("Links") {
            pin_links(links, owned)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::paths::normalize;
    use crate::proxy::request::test_ctx as ctx;
    use serde_json::json;

    fn rewrite(mut body: Value) -> Result<Value, RuleError> {
        rewrite_with(&mut body, &BTreeMap::new())?;
        Ok(body)
    }

    fn rewrite_with(body: &mut Value, owned: &BTreeMap<String, String>) -> Result<(), RuleError> {
        let resolved = Resolved {
            containers: owned.clone(),
            ..Resolved::default()
        };
        rewrite_create(body, &ctx(), &resolved, &|p| normalize(p))
    }

    #[test]
    fn top_level_host_config_fields_are_refused_and_shadowed() {
        // Without "HostConfig" dockerd would read Privileged/Runtime from the top level.
        let err = rewrite(json!({"Image": "x", "Privileged": true})).unwrap_err();
        assert!(matches!(err, RuleError::UnknownField { .. }), "{err}");
        let body = rewrite(json!({"Image": "x", "Memory": 1000})).unwrap();
        assert_eq!(body["HostConfig"]["Runtime"], "labgpu");
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
    fn session_label_is_the_proxys() {
        for labels in [
            json!({"labgpu.session": "alice"}),
            json!({"labgpu.session": ""}),
        ] {
            let err = rewrite(json!({"Image": "x", "Labels": labels})).unwrap_err();
            assert!(err.to_string().contains("labgpu.session"), "{err}");
        }
        // Keys fold as Go's do: "labels" is Labels, and its keys are compared as sent.
        let err = rewrite(json!({"Image": "x", "labels": {"labgpu.session": "1"}})).unwrap_err();
        assert!(err.to_string().contains("only the proxy sets it"), "{err}");
        rewrite(json!({"Image": "x", "Labels": {"labgpu.sessions": "1"}})).unwrap();
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
        assert!(refused(json!({"CgroupParent": "/system.slice"}))
            .to_string()
            .contains("HostConfig.CgroupParent is not allowed"));
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
        assert!(refused(
            json!({"Mounts": [{"Type": "volume", "Target": "/v", "VolumeOptions":
            {"DriverConfig": {"Options": {"type": "none", "o": "bind", "device": "/etc"}}}}]})
        )
        .to_string()
        .contains("volume option type"));
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
            json!(["d:/web/db", "c:cache"])
        );

        let mut bad = json!({"HostConfig": {"IpcMode": "container:../x"}});
        assert!(matches!(
            create_container_refs(&mut bad),
            Err(RuleError::BadContainerRef(_))
        ));
    }

    #[test]
    fn unknown_fields_anywhere_are_refused() {
        for body in [
            json!({"Image": "x", "Bogus": 1}),
            json!({"HostConfig": {"Bogus": 1}}),
            json!({"HostConfig": {"Mounts": [{"Type": "tmpfs", "Target": "/t", "Bogus": 1}]}}),
            json!({"HostConfig": {"Devices": [{"PathOnHost": "/dev/fuse", "Bogus": 1}]}}),
            json!({"HostConfig": {"LogConfig": {"Type": "json-file", "Bogus": 1}}}),
            json!({"NetworkingConfig": {"EndpointsConfig": {"n": {"Bogus": 1}}}}),
            json!({"NetworkingConfig": {"Bogus": 1}}),
        ] {
            let err = rewrite(body.clone()).unwrap_err();
            assert!(
                matches!(err, RuleError::UnknownField { .. }),
                "{body}: {err}"
            );
            assert!(err.to_string().contains("Bogus"), "{err}");
        }
    }

    /// What the Docker CLI sends for a plain `docker run`, zero values included, passes.
    #[test]
    fn a_cli_body_with_zero_values_passes() {
        let body: Value = serde_json::from_str(
            r#"{"Hostname": "", "Domainname": "", "User": "", "AttachStdin": false,
            "AttachStdout": true, "AttachStderr": true, "Tty": false, "OpenStdin": false,
            "StdinOnce": false, "Env": null, "Cmd": ["true"], "Image": "x", "Volumes": {},
            "WorkingDir": "", "Entrypoint": null, "OnBuild": null, "Labels": {},
            "HostConfig": {"Binds": null, "ContainerIDFile": "", "LogConfig": {"Type": "", "Config": {}},
                "NetworkMode": "default", "PortBindings": {}, "RestartPolicy": {"Name": "no", "MaximumRetryCount": 0},
                "AutoRemove": true, "VolumeDriver": "", "VolumesFrom": null, "ConsoleSize": [0, 0],
                "CapAdd": null, "CapDrop": null, "CgroupnsMode": "", "Dns": [], "DnsOptions": [],
                "DnsSearch": [], "ExtraHosts": null, "GroupAdd": null, "IpcMode": "", "Cgroup": "",
                "Links": null, "OomScoreAdj": 0, "PidMode": "", "Privileged": false, "PublishAllPorts": false,
                "ReadonlyRootfs": false, "SecurityOpt": null, "UTSMode": "", "UsernsMode": "", "ShmSize": 0,
                "Isolation": "", "CpuShares": 0, "Memory": 0, "NanoCpus": 0, "CgroupParent": "",
                "BlkioWeight": 0, "BlkioWeightDevice": [], "BlkioDeviceReadBps": null, "BlkioDeviceWriteBps": null,
                "BlkioDeviceReadIOps": null, "BlkioDeviceWriteIOps": null, "CpuPeriod": 0, "CpuQuota": 0,
                "CpuRealtimePeriod": 0, "CpuRealtimeRuntime": 0, "CpusetCpus": "", "CpusetMems": "",
                "Devices": [], "DeviceCgroupRules": null, "DeviceRequests": null, "KernelMemory": 0,
                "KernelMemoryTCP": 0, "MemoryReservation": 0, "MemorySwap": 0, "MemorySwappiness": null,
                "OomKillDisable": false, "PidsLimit": null, "Ulimits": null, "CpuCount": 0, "CpuPercent": 0,
                "IOMaximumIOps": 0, "IOMaximumBandwidth": 0, "MaskedPaths": null, "ReadonlyPaths": null},
            "NetworkingConfig": {"EndpointsConfig": {}}}"#,
        )
        .unwrap();
        rewrite(body).unwrap();
    }

    #[test]
    fn system_paths_must_keep_the_defaults() {
        let refused = |hc: Value| rewrite(json!({"HostConfig": hc})).unwrap_err().to_string();
        let e = refused(json!({"MaskedPaths": ["/proc/kcore"]}));
        assert!(
            e.contains("HostConfig.MaskedPaths") && e.contains("allow_unconfined"),
            "{e}"
        );
        let e = refused(json!({"ReadonlyPaths": ["/dummy"]}));
        assert!(e.contains("without /proc/bus"), "{e}");
        let mut all: Vec<String> = system_paths::masked_paths(0);
        all.push("/srv/secret".into());
        rewrite(
            json!({"HostConfig": {"MaskedPaths": all, "ReadonlyPaths": system_paths::READONLY}}),
        )
        .unwrap();
    }

    #[test]
    fn options_that_reach_the_host_are_refused() {
        let refused = |hc: Value| rewrite(json!({"HostConfig": hc})).unwrap_err().to_string();
        for (hc, word) in [
            (
                json!({"LogConfig": {"Type": "syslog", "Config": {"syslog-address": "tcp://10.0.0.1:514"}}}),
                "syslog",
            ),
            (json!({"LogConfig": {"Type": "gelf"}}), "gelf"),
            (
                json!({"LogConfig": {"Type": "json-file", "Config": {"path": "/etc/x"}}}),
                "path",
            ),
            (json!({"VolumeDriver": "sshfs"}), "local driver"),
            (
                json!({"SecurityOpt": ["apparmor=lxc-container-default-with-nesting"]}),
                "docker-default",
            ),
            (
                json!({"SecurityOpt": ["writable-cgroups=true"]}),
                "allow_unconfined",
            ),
            (
                json!({"SecurityOpt": ["label=disable"]}),
                "allow_unconfined",
            ),
            (
                json!({"SecurityOpt": ["credentialspec=file://x"]}),
                "does not know",
            ),
            (json!({"OomKillDisable": true}), "OOM-kill"),
            (json!({"OomScoreAdj": -1000}), "OomScoreAdj"),
            (json!({"StorageOpt": {"dm.basesize": "1T"}}), "only size"),
            (json!({"Isolation": "hyperv"}), "Windows"),
            (json!({"UsernsMode": "private"}), "UsernsMode"),
            (
                json!({"Binds": ["/home/alice/x:/x:rshared"]}),
                "propagation",
            ),
            (
                json!({"Mounts": [{"Type": "bind", "Source": "/home/alice/x", "Target": "/x",
                "BindOptions": {"Propagation": "rshared"}}]}),
                "propagation",
            ),
            (
                json!({"Mounts": [{"Type": "bind", "Source": "/home/alice/new", "Target": "/x",
                "BindOptions": {"CreateMountpoint": true}}]}),
                "as root",
            ),
            (
                json!({"Mounts": [{"Type": "volume", "Source": "v", "Target": "/x",
                "VolumeOptions": {"DriverConfig": {"Options": {"type": "proc", "device": "proc"}}}}]}),
                "proc",
            ),
            (
                json!({"Mounts": [{"Type": "volume", "Source": "v", "Target": "/x",
                "VolumeOptions": {"DriverConfig": {"Options": {"o": "bind", "device": "rel/path"}}}}]}),
                "rel/path",
            ),
            (
                json!({"Mounts": [{"Type": "volume", "Source": "v", "Target": "/x",
                "VolumeOptions": {"Subpath": "../.."}}]}),
                "Subpath",
            ),
            (
                json!({"Mounts": [{"Type": "npipe", "Source": "x", "Target": "/x"}]}),
                "npipe",
            ),
            (
                json!({"Mounts": [{"Type": "tmpfs", "Source": "/etc", "Target": "/x"}]}),
                "tmpfs",
            ),
        ] {
            let e = refused(hc.clone());
            assert!(e.contains(word), "{hc}: {e}");
        }
        let e = rewrite(json!({"NetworkingConfig": {"EndpointsConfig": {"n":
            {"DriverOpts": {"com.docker.network.endpoint.sysctls": "x"}}}}}))
        .unwrap_err();
        assert!(e.to_string().contains("DriverOpts"), "{e}");
        rewrite(json!({"HostConfig": {
            "LogConfig": {"Type": "json-file", "Config": {"max-size": "10m"}},
            "SecurityOpt": ["no-new-privileges", "apparmor=docker-default", "seccomp=builtin"],
            "Binds": ["/home/alice/x:/x:ro,rslave", "vol:/v:nocopy"],
            "Mounts": [{"Type": "tmpfs", "Target": "/t", "TmpfsOptions": {"SizeBytes": 1000}},
                       {"Type": "volume", "Source": "v", "Target": "/v",
                        "VolumeOptions": {"DriverConfig": {"Name": "local", "Options": {"type": "tmpfs", "device": "tmpfs", "o": "size=1m"}}}}],
            "StorageOpt": {"size": "10G"}, "OomScoreAdj": 500}}))
        .unwrap();
    }

    #[test]
    fn annotations_the_runtime_acts_on_are_refused() {
        let e = rewrite(json!({"HostConfig": {"Annotations": {"org.systemd.property.DeviceAllow": "/dev/nvidia2 rw"}}}))
            .unwrap_err();
        assert!(
            e.to_string().contains("org.systemd.property.DeviceAllow"),
            "{e}"
        );
    }

    #[test]
    fn endpoint_links_are_container_references() {
        let mut body =
            json!({"NetworkingConfig": {"EndpointsConfig": {"n": {"Links": ["db:db"]}}}});
        let refs = create_container_refs(&mut body).unwrap();
        assert_eq!(refs[0].name, "db");
        assert!(rewrite_with(&mut body, &BTreeMap::new()).is_err());
    }
}
