//! The volumes a create body uses. Named ones must be the caller's (a missing one is created
//! for them by the server before the create, so dockerd never makes an unowned one), or the
//! administrator's, mounted read-only unless `writable_volumes` lists them. Anonymous ones
//! (`-v /dst`, `Config.Volumes`, the image's `VOLUME`s) are turned into `--mount`s of
//! anonymous volumes carrying the caller's owner label: still anonymous to Docker (`--rm`
//! removes them), but owned.

use std::collections::BTreeSet;

use serde_json::{json, Map, Value};

use crate::proxy::error::RuleError;
use crate::proxy::request::{array_of, str_of, UserCtx};

/// A named volume the body mounts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedVolume {
    pub name: String,
    pub read_only: bool,
    /// Driver and options an inline `--mount` gave (checked), used if the proxy creates it.
    pub driver: String,
    pub options: Map<String, Value>,
}

/// `Binds` entries split as Docker splits them: `src:dst[:opts]`, or a lone `dst`.
fn split_bind(s: &str) -> (Option<&str>, &str, Option<&str>) {
    let parts: Vec<&str> = s.splitn(3, ':').collect();
    match parts.as_slice() {
        [dst] => (None, dst, None),
        [src, dst] => (Some(src), dst, None),
        [src, dst, opts] => (Some(src), dst, Some(opts)),
        _ => (None, s, None),
    }
}

fn read_only_opts(opts: Option<&str>) -> bool {
    opts.is_some_and(|o| o.split(',').any(|x| x == "ro"))
}

/// Every named volume of `Binds` (`name:/dst`) and `Mounts` (`type=volume,src=name`).
pub fn named_volumes(hc: &Map<String, Value>) -> Result<Vec<NamedVolume>, RuleError> {
    let mut out = Vec::new();
    for b in array_of(hc, "Binds", "Binds")? {
        let s = b.as_str().unwrap_or_default();
        if let (Some(src), _, opts) = split_bind(s) {
            if !src.starts_with('/') {
                out.push(NamedVolume {
                    name: src.to_string(),
                    read_only: read_only_opts(opts),
                    driver: String::new(),
                    options: Map::new(),
                });
            }
        }
    }
    for m in array_of(hc, "Mounts", "Mounts")? {
        let Some(m) = m.as_object() else { continue };
        if str_of(m, "Type", "Mounts.Type")? != "volume" {
            continue;
        }
        let name = str_of(m, "Source", "Mounts.Source")?;
        if name.is_empty() {
            continue;
        }
        let dc = m
            .get("VolumeOptions")
            .and_then(|v| v.get("DriverConfig"))
            .and_then(Value::as_object);
        out.push(NamedVolume {
            name: name.to_string(),
            read_only: m.get("ReadOnly").and_then(Value::as_bool) == Some(true),
            driver: dc
                .and_then(|d| d.get("Name"))
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
            options: dc
                .and_then(|d| d.get("Options"))
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default(),
        });
    }
    Ok(out)
}

/// Mounts the administrator's volumes in `names` read-only.
pub fn make_read_only(hc: &mut Map<String, Value>, names: &BTreeSet<String>) {
    if let Some(Value::Array(binds)) = hc.get_mut("Binds") {
        for b in binds.iter_mut() {
            let Some(s) = b.as_str() else { continue };
            let (Some(src), dst, opts) = split_bind(s) else {
                continue;
            };
            if !names.contains(src) || read_only_opts(opts) {
                continue;
            }
            let opts: Vec<&str> = opts
                .unwrap_or_default()
                .split(',')
                .filter(|o| !o.is_empty() && *o != "rw")
                .chain(["ro"])
                .collect();
            *b = Value::String(format!("{src}:{dst}:{}", opts.join(",")));
        }
    }
    if let Some(Value::Array(mounts)) = hc.get_mut("Mounts") {
        for m in mounts.iter_mut().filter_map(Value::as_object_mut) {
            let named = m.get("Type").and_then(Value::as_str) == Some("volume")
                && m.get("Source")
                    .and_then(Value::as_str)
                    .is_some_and(|s| names.contains(s));
            if named {
                m.insert("ReadOnly".into(), Value::Bool(true));
            }
        }
    }
}

/// Destinations something is already mounted at (binds, mounts, tmpfs).
fn mounted_destinations(hc: &Map<String, Value>) -> BTreeSet<String> {
    let clean = |d: &str| d.trim_end_matches('/').to_string();
    let mut out = BTreeSet::new();
    if let Some(Value::Array(binds)) = hc.get("Binds") {
        for b in binds.iter().filter_map(Value::as_str) {
            if let (Some(_), dst, _) = split_bind(b) {
                out.insert(clean(dst));
            }
        }
    }
    if let Some(Value::Array(mounts)) = hc.get("Mounts") {
        for m in mounts {
            if let Some(t) = m.get("Target").and_then(Value::as_str) {
                out.insert(clean(t));
            }
        }
    }
    if let Some(Value::Object(tmpfs)) = hc.get("Tmpfs") {
        out.extend(tmpfs.keys().map(|k| clean(k)));
    }
    out
}

/// Turns every anonymous volume into an owned anonymous `--mount`: lone-destination
/// `Binds`, `Config.Volumes`, the image's `VOLUME`s not mounted otherwise, and `--mount`s of
/// volumes without a source.
pub fn own_anonymous(
    top: &mut Map<String, Value>,
    image_volumes: &[String],
    ctx: &UserCtx,
) -> Result<(), RuleError> {
    let mut wanted: Vec<String> = top
        .get("Volumes")
        .and_then(Value::as_object)
        .map(|v| v.keys().cloned().collect())
        .unwrap_or_default();
    wanted.extend(image_volumes.iter().cloned());
    let hc = top
        .get_mut("HostConfig")
        .and_then(Value::as_object_mut)
        .expect("rewrite_create made HostConfig an object");
    if let Some(Value::Array(binds)) = hc.get_mut("Binds") {
        binds.retain(|b| match b.as_str().map(split_bind) {
            Some((None, dst, _)) => {
                wanted.push(dst.to_string());
                false
            }
            _ => true,
        });
    }
    let owner_labels = json!({ctx.owner_label.clone(): ctx.name.clone()});
    let mounted = mounted_destinations(hc);
    let mounts = hc
        .entry("Mounts")
        .or_insert_with(|| Value::Array(Vec::new()));
    if mounts.is_null() {
        *mounts = Value::Array(Vec::new());
    }
    let mounts = mounts.as_array_mut().ok_or(RuleError::BadField {
        field: "Mounts".into(),
        expected: "a list",
    })?;
    for m in mounts.iter_mut().filter_map(Value::as_object_mut) {
        let anonymous = m.get("Type").and_then(Value::as_str) == Some("volume")
            && m.get("Source")
                .and_then(Value::as_str)
                .unwrap_or("")
                .is_empty();
        if anonymous {
            let vo = m
                .entry("VolumeOptions")
                .or_insert_with(|| Value::Object(Map::new()));
            if !vo.is_object() {
                *vo = Value::Object(Map::new());
            }
            let labels = vo
                .as_object_mut()
                .expect("made an object")
                .entry("Labels")
                .or_insert_with(|| Value::Object(Map::new()));
            if !labels.is_object() {
                *labels = Value::Object(Map::new());
            }
            labels
                .as_object_mut()
                .expect("made an object")
                .insert(ctx.owner_label.clone(), Value::String(ctx.name.clone()));
        }
    }
    let mut done = mounted;
    for dst in wanted {
        let key = dst.trim_end_matches('/').to_string();
        if !dst.starts_with('/') || !done.insert(key) {
            continue;
        }
        mounts.push(json!({"Type": "volume", "Target": dst,
            "VolumeOptions": {"Labels": owner_labels.clone()}}));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::request::test_ctx as ctx;

    #[test]
    fn named_volumes_from_binds_and_mounts() {
        let hc = json!({"Binds": ["data:/d:ro", "/home/alice:/h", "/anon", "logs:/l"],
            "Mounts": [{"Type": "volume", "Source": "m", "Target": "/m", "ReadOnly": true,
                        "VolumeOptions": {"DriverConfig": {"Name": "local", "Options": {"type": "tmpfs"}}}},
                       {"Type": "volume", "Target": "/a"}, {"Type": "tmpfs", "Target": "/t"}]});
        let v = named_volumes(hc.as_object().unwrap()).unwrap();
        let names: Vec<(&str, bool)> = v.iter().map(|n| (n.name.as_str(), n.read_only)).collect();
        assert_eq!(names, [("data", true), ("logs", false), ("m", true)]);
        assert_eq!(v[2].options["type"], "tmpfs");
    }

    #[test]
    fn shared_volumes_become_read_only() {
        let mut hc = json!({"Binds": ["ds:/d", "ds:/e:rw,nocopy", "own:/o"],
            "Mounts": [{"Type": "volume", "Source": "ds", "Target": "/m"}]});
        let names = BTreeSet::from(["ds".to_string()]);
        make_read_only(hc.as_object_mut().unwrap(), &names);
        assert_eq!(
            hc["Binds"],
            json!(["ds:/d:ro", "ds:/e:nocopy,ro", "own:/o"])
        );
        assert_eq!(hc["Mounts"][0]["ReadOnly"], true);
    }

    #[test]
    fn anonymous_volumes_get_the_owner() {
        let mut top = json!({"Volumes": {"/v1": {}, "/shared": {}},
            "HostConfig": {"Binds": ["/lone", "x:/shared"],
                "Mounts": [{"Type": "volume", "Target": "/m"}], "Tmpfs": {"/tmp": ""}}});
        own_anonymous(
            top.as_object_mut().unwrap(),
            &["/img".into(), "/tmp".into(), "/v1/".into()],
            &ctx(),
        )
        .unwrap();
        let hc = &top["HostConfig"];
        assert_eq!(hc["Binds"], json!(["x:/shared"]));
        let targets: Vec<&str> = hc["Mounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["Target"].as_str().unwrap())
            .collect();
        assert_eq!(targets, ["/m", "/v1", "/img", "/lone"]);
        for m in hc["Mounts"].as_array().unwrap() {
            assert_eq!(m["VolumeOptions"]["Labels"]["labgpu.user"], "alice", "{m}");
        }
    }
}
