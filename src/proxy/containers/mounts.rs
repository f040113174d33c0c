//! What a create body may mount and pass through: host paths under the caller's
//! `bind_allow`/mount sources, named volumes without dangerous driver options, tmpfs, and
//! the caller's allowed devices.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::paths::is_under;
use crate::proxy::error::RuleError;
use crate::proxy::request::{array_of, as_object_mut, check_fields, str_of, Field, UserCtx};
use crate::proxy::volumes::check_driver;

use Field::{Checked, Free, Refused};

/// `mount.Mount` (`--mount`).
const MOUNT: &[(&str, Field)] = &[
    ("Type", Checked),
    ("Source", Checked),
    ("Target", Free),
    ("ReadOnly", Free),
    ("Consistency", Free),
    ("BindOptions", Checked),
    ("VolumeOptions", Checked),
    (
        "ImageOptions",
        Refused("image mounts are not supported through the labgpu proxy"),
    ),
    ("TmpfsOptions", Free),
    ("ClusterOptions", Refused("cluster volumes are swarm's")),
];

const BIND_OPTIONS: &[(&str, Field)] = &[
    ("Propagation", Checked),
    ("NonRecursive", Free),
    (
        "CreateMountpoint",
        Refused("dockerd would create the host directory as root"),
    ),
    ("ReadOnlyNonRecursive", Free),
    ("ReadOnlyForceRecursive", Free),
];

const VOLUME_OPTIONS: &[(&str, Field)] = &[
    ("NoCopy", Free),
    ("Labels", Free),
    (
        "Subpath",
        Refused("volume subpaths are not supported through the labgpu proxy"),
    ),
    ("DriverConfig", Checked),
];

const DRIVER_CONFIG: &[(&str, Field)] = &[("Name", Checked), ("Options", Checked)];

/// Bind propagation a user may choose: none of it carries mounts back to the host.
const PROPAGATION: [&str; 4] = ["private", "rprivate", "slave", "rslave"];

/// `HostConfig.Binds`: `/src:/dst[:opts]` is a host path; `name:/dst` a named volume.
pub fn check_binds(
    hc: &Map<String, Value>,
    ctx: &UserCtx,
    resolve: &dyn Fn(&Path) -> PathBuf,
) -> Result<(), RuleError> {
    for b in array_of(hc, "Binds", "Binds")? {
        let s = b.as_str().ok_or(RuleError::BadField {
            field: "Binds".into(),
            expected: "a list of strings",
        })?;
        let mut parts = s.split(':');
        let source = parts.next().unwrap_or_default();
        if source.starts_with('/') {
            check_host_path(source, ctx, resolve)?;
        }
        // The third part is the options: ro/rw, z/Z, nocopy and the propagation modes.
        let options = parts.nth(1).unwrap_or_default();
        for o in options.split(',') {
            if o.contains("shared") {
                return Err(propagation_refused(o));
            }
        }
    }
    Ok(())
}

fn check_host_path(
    source: &str,
    ctx: &UserCtx,
    resolve: &dyn Fn(&Path) -> PathBuf,
) -> Result<(), RuleError> {
    let resolved = resolve(Path::new(source));
    if ctx.bind_allow.iter().any(|p| is_under(&resolved, p)) {
        return Ok(());
    }
    Err(RuleError::BindNotAllowed {
        path: resolved,
        user: ctx.name.clone(),
        section: ctx.section(),
    })
}

fn propagation_refused(value: &str) -> RuleError {
    RuleError::ValueRefused {
        field: "bind propagation".into(),
        value: value.to_string(),
        reason: "shared propagation carries mounts between the container and the host".into(),
    }
}

/// `HostConfig.Mounts` (`--mount`): binds as above, volumes with the volume rules, tmpfs;
/// named pipes (Windows) and cluster volumes (swarm) are refused.
pub fn check_mounts(
    hc: &mut Map<String, Value>,
    ctx: &UserCtx,
    resolve: &dyn Fn(&Path) -> PathBuf,
) -> Result<(), RuleError> {
    let Some(mounts) = hc.get_mut("Mounts") else {
        return Ok(());
    };
    let Some(mounts) = mounts.as_array_mut() else {
        if mounts.is_null() {
            return Ok(());
        }
        return Err(RuleError::BadField {
            field: "Mounts".into(),
            expected: "a list",
        });
    };
    for (i, m) in mounts.iter_mut().enumerate() {
        let path = format!("HostConfig.Mounts[{i}]");
        let Some(m) = as_object_mut(m, &path)? else {
            continue;
        };
        check_fields(m, MOUNT, &path)?;
        let kind = str_of(m, "Type", "Mounts.Type")?.to_string();
        let source = str_of(m, "Source", "Mounts.Source")?.to_string();
        match kind.as_str() {
            "bind" => {
                check_host_path(&source, ctx, resolve)?;
                check_bind_options(m, &path)?;
            }
            "volume" => check_volume_options(m, &path)?,
            "tmpfs" if source.is_empty() => {}
            _ => {
                return Err(RuleError::ValueRefused {
                    field: format!("{path}.Type"),
                    value: kind,
                    reason:
                        "only bind, volume and tmpfs mounts are allowed (a tmpfs takes no source)"
                            .into(),
                })
            }
        }
        if kind != "bind" && m.get("BindOptions").is_some_and(|v| !v.is_null()) {
            return Err(RuleError::FieldRefused {
                field: format!("{path}.BindOptions"),
                reason: "bind options are for bind mounts",
            });
        }
    }
    Ok(())
}

fn check_bind_options(m: &mut Map<String, Value>, path: &str) -> Result<(), RuleError> {
    let Some(bo) = m.get_mut("BindOptions") else {
        return Ok(());
    };
    let path = format!("{path}.BindOptions");
    let Some(bo) = as_object_mut(bo, &path)? else {
        return Ok(());
    };
    check_fields(bo, BIND_OPTIONS, &path)?;
    let propagation = str_of(bo, "Propagation", "Propagation")?;
    if !propagation.is_empty() && !PROPAGATION.contains(&propagation) {
        return Err(propagation_refused(propagation));
    }
    Ok(())
}

/// A volume mount's inline driver and options (`--mount type=volume,volume-opt=…`) obey
/// the same rule as `docker volume create`.
fn check_volume_options(m: &mut Map<String, Value>, path: &str) -> Result<(), RuleError> {
    let Some(vo) = m.get_mut("VolumeOptions") else {
        return Ok(());
    };
    let path = format!("{path}.VolumeOptions");
    let Some(vo) = as_object_mut(vo, &path)? else {
        return Ok(());
    };
    check_fields(vo, VOLUME_OPTIONS, &path)?;
    let Some(dc) = vo.get_mut("DriverConfig") else {
        return Ok(());
    };
    let path = format!("{path}.DriverConfig");
    let Some(dc) = as_object_mut(dc, &path)? else {
        return Ok(());
    };
    check_fields(dc, DRIVER_CONFIG, &path)?;
    let driver = str_of(dc, "Name", "DriverConfig.Name")?;
    let options = match dc.get("Options") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(o)) => o.clone(),
        Some(_) => {
            return Err(RuleError::BadField {
                field: format!("{path}.Options"),
                expected: "an object",
            })
        }
    };
    check_driver(driver, &options)
}

/// A fully qualified CDI device name: `vendor.com/class=name`.
fn is_cdi_name(s: &str) -> bool {
    let Some((kind, name)) = s.split_once('=') else {
        return false;
    };
    let Some((vendor, class)) = kind.split_once('/') else {
        return false;
    };
    let part = |p: &str, extra: &[char]| {
        p.starts_with(|c: char| c.is_ascii_alphanumeric())
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || extra.contains(&c))
    };
    part(vendor, &['.']) && part(class, &[]) && part(name, &['.', ':'])
}

/// `HostConfig.Devices`: GPU nodes are left to the runtime (it keeps the caller's own and
/// drops the rest); other host devices must be in the caller's `devices`.
pub fn check_devices(
    hc: &mut Map<String, Value>,
    ctx: &UserCtx,
    resolve: &dyn Fn(&Path) -> PathBuf,
) -> Result<(), RuleError> {
    let Some(Value::Array(devices)) = hc.get_mut("Devices") else {
        return Ok(());
    };
    for (i, d) in devices.iter_mut().enumerate() {
        let path = format!("HostConfig.Devices[{i}]");
        let Some(d) = as_object_mut(d, &path)? else {
            continue;
        };
        check_fields(
            d,
            &[
                ("PathOnHost", Checked),
                ("PathInContainer", Free),
                ("CgroupPermissions", Free),
            ],
            &path,
        )?;
        let host = str_of(d, "PathOnHost", "Devices.PathOnHost")?;
        // CDI names (nvidia.com/gpu=0) are the runtime's to sort out; any other relative
        // path dockerd would resolve against its working directory.
        if is_cdi_name(host) {
            continue;
        }
        if !host.starts_with('/') {
            return Err(RuleError::ValueRefused {
                field: format!("{path}.PathOnHost"),
                value: host.to_string(),
                reason: "a device is an absolute host path or a CDI name (vendor.com/class=name)"
                    .into(),
            });
        }
        let resolved = resolve(Path::new(host));
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
            path: host.to_string(),
            user: ctx.name.clone(),
            section: ctx.section(),
        });
    }
    Ok(())
}
