//! Who owns a container. Without the proxy: Docker's label (in config.v2.json, never in the
//! spec) and/or the spec annotation of the same name. With the proxy (`[proxy]` in the
//! policy): only the proxy's record of the containers it created (`records`); a label on any
//! other container is just text someone typed.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::paths::open_beneath;
use crate::policy::Policy;
use crate::records::{self, RecordError};

/// Where Docker keeps its configuration when `labgpu setup docker` is not told otherwise.
pub const DAEMON_JSON: &str = "/etc/docker/daemon.json";
/// Docker's data root when daemon.json does not set one.
pub const DEFAULT_DOCKER_ROOT: &str = "/var/lib/docker";

#[derive(Debug, thiserror::Error)]
pub enum OwnerError {
    #[error("container id {0:?} is not a valid runc container id")]
    BadId(String),
    #[error("cannot read container labels from {path}: {cause}")]
    Read {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("cannot parse container labels in {path}: {cause}")]
    Parse {
        path: PathBuf,
        cause: serde_json::Error,
    },
    #[error("label {key}={label:?} and annotation {key}={annotation:?} name different owners")]
    Conflict {
        key: String,
        label: String,
        annotation: String,
    },
    #[error(transparent)]
    Record(#[from] RecordError),
    #[error("the labgpu proxy recorded container {id} for {recorded:?}, but its {key} label says {label:?}")]
    RecordConflict {
        id: String,
        key: String,
        recorded: String,
        label: String,
    },
}

/// Whose a container is, and where that came from (for the decision log and refusals).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ownership {
    pub owner: Option<String>,
    /// A label or annotation that was not believed (the proxy did not create the container).
    pub ignored_label: Option<String>,
    /// The Slurm job the proxy recorded the container as created from.
    pub slurm_job: Option<u32>,
}

/// Docker's data root: `[runtime] docker_root`, else `data-root` in /etc/docker/daemon.json,
/// else /var/lib/docker. Pinned by root-owned configuration, never taken from a spec: mount
/// sources are the user's choice.
pub fn docker_root(configured: Option<&Path>) -> PathBuf {
    if let Some(root) = configured {
        return root.to_path_buf();
    }
    daemon_json_root(Path::new(DAEMON_JSON)).unwrap_or_else(|| PathBuf::from(DEFAULT_DOCKER_ROOT))
}

/// `data-root` (or the older `graph`) of a daemon.json; `None` when unset or unreadable.
pub fn daemon_json_root(path: &Path) -> Option<PathBuf> {
    let bytes = std::fs::read(path).ok()?;
    let v: Value = serde_json::from_slice(&bytes).ok()?;
    ["data-root", "graph"]
        .iter()
        .find_map(|k| v.get(*k).and_then(Value::as_str))
        .filter(|r| r.starts_with('/'))
        .map(PathBuf::from)
}

/// runc's own id rule (`^[\w+-\.]+$`); anything else could walk out of the containers dir.
pub fn valid_container_id(id: &str) -> bool {
    !id.is_empty()
        && id != "."
        && id != ".."
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '+' | '-' | '.'))
}

/// The owner of container `id` under `policy`: the proxy's record when `[proxy]` is set,
/// else the label and/or annotation named by `[runtime] owner_label`.
pub fn resolve(
    policy: &Policy,
    spec: &Value,
    id: &str,
    docker_root: &Path,
) -> Result<Ownership, OwnerError> {
    let key = &policy.runtime.owner_label;
    let claimed = find_owner(spec, id, key, docker_root)?;
    let Some(proxy) = &policy.proxy else {
        return Ok(Ownership {
            owner: claimed,
            ignored_label: None,
            slurm_job: None,
        });
    };
    match records::recorded(proxy.state_dir.as_path(), id)? {
        Some(record) => match claimed {
            Some(label) if label != record.owner => Err(OwnerError::RecordConflict {
                id: id.to_string(),
                key: key.clone(),
                recorded: record.owner,
                label,
            }),
            _ => Ok(Ownership {
                owner: Some(record.owner),
                ignored_label: None,
                slurm_job: record.slurm_job,
            }),
        },
        None => Ok(Ownership {
            owner: None,
            ignored_label: claimed,
            slurm_job: None,
        }),
    }
}

/// The owner named by the label and/or annotation `key`; `None` when neither is set.
/// An empty value counts as unset.
pub fn find_owner(
    spec: &Value,
    id: &str,
    key: &str,
    docker_root: &Path,
) -> Result<Option<String>, OwnerError> {
    if !valid_container_id(id) {
        return Err(OwnerError::BadId(id.to_string()));
    }
    let label = docker_label(docker_root, id, key)?;
    let annotation = spec
        .get("annotations")
        .and_then(|a| a.get(key))
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_string);
    match (label, annotation) {
        (Some(l), Some(a)) if l != a => Err(OwnerError::Conflict {
            key: key.to_string(),
            label: l,
            annotation: a,
        }),
        (l, a) => Ok(l.or(a)),
    }
}

/// `Config.Labels[key]` of `<root>/containers/<id>/config.v2.json`, opened without following
/// a symlink below the root. A missing file means "not a Docker container" and yields no
/// label; an unreadable or malformed one is an error.
fn docker_label(root: &Path, id: &str, key: &str) -> Result<Option<String>, OwnerError> {
    let rel = Path::new("containers").join(id).join("config.v2.json");
    let path = root.join(&rel);
    let read_err = |cause| OwnerError::Read {
        path: path.clone(),
        cause,
    };
    let mut file = match open_beneath(root, &rel) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(read_err(e)),
    };
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).map_err(read_err)?;
    let v: Value = serde_json::from_slice(&bytes).map_err(|cause| OwnerError::Parse {
        path: path.clone(),
        cause,
    })?;
    Ok(v.get("Config")
        .and_then(|c| c.get("Labels"))
        .and_then(|l| l.get(key))
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_string))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn write_labels(root: &Path, id: &str, labels: Value) {
        let dir = root.join("containers").join(id);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("config.v2.json"),
            json!({"ID": id, "Config": {"Labels": labels}}).to_string(),
        )
        .unwrap();
    }

    #[test]
    fn label_is_read_from_the_argv_id_under_the_pinned_root() {
        let d = tempfile::tempdir().unwrap();
        write_labels(d.path(), "abc", json!({"labgpu.user": "alice"}));
        write_labels(d.path(), "other", json!({"labgpu.user": "bob"}));
        // A spec whose /etc/hostname comes from somewhere else changes nothing.
        let spec = json!({"mounts": [{"destination": "/etc/hostname", "type": "bind",
            "source": "/home/alice/fake/containers/abc/hostname"}]});
        let owner = find_owner(&spec, "abc", "labgpu.user", d.path()).unwrap();
        assert_eq!(owner.as_deref(), Some("alice"));
    }

    #[test]
    fn a_symlinked_container_dir_or_file_is_not_followed() {
        let d = tempfile::tempdir().unwrap();
        let elsewhere = d.path().join("elsewhere");
        write_labels(&elsewhere, "abc", json!({"labgpu.user": "bob"}));
        std::fs::create_dir_all(d.path().join("containers")).unwrap();
        std::os::unix::fs::symlink(
            elsewhere.join("containers/abc"),
            d.path().join("containers/abc"),
        )
        .unwrap();
        let err = find_owner(&json!({}), "abc", "labgpu.user", d.path()).unwrap_err();
        assert!(matches!(err, OwnerError::Read { .. }), "{err}");
        std::fs::create_dir_all(d.path().join("containers/def")).unwrap();
        std::os::unix::fs::symlink(
            elsewhere.join("containers/abc/config.v2.json"),
            d.path().join("containers/def/config.v2.json"),
        )
        .unwrap();
        assert!(find_owner(&json!({}), "def", "labgpu.user", d.path()).is_err());
    }

    #[test]
    fn annotation_alone_and_agreement_and_conflict() {
        let d = tempfile::tempdir().unwrap();
        let spec = json!({"annotations": {"labgpu.user": "bob"}});
        let owner = |spec: &Value| find_owner(spec, "c1", "labgpu.user", d.path());
        assert_eq!(owner(&spec).unwrap().as_deref(), Some("bob"));
        write_labels(d.path(), "c1", json!({"labgpu.user": "bob"}));
        assert_eq!(owner(&spec).unwrap().as_deref(), Some("bob"));
        write_labels(d.path(), "c1", json!({"labgpu.user": "alice"}));
        let err = owner(&spec).unwrap_err();
        assert!(err.to_string().contains("\"alice\""), "{err}");
    }

    #[test]
    fn no_label_anywhere_is_none_and_bad_files_are_errors() {
        let d = tempfile::tempdir().unwrap();
        let spec = json!({});
        assert_eq!(
            find_owner(&spec, "c2", "labgpu.user", d.path()).unwrap(),
            None
        );
        write_labels(d.path(), "c2", Value::Null);
        assert_eq!(
            find_owner(&spec, "c2", "labgpu.user", d.path()).unwrap(),
            None
        );
        std::fs::write(d.path().join("containers/c2/config.v2.json"), "{").unwrap();
        assert!(find_owner(&spec, "c2", "labgpu.user", d.path()).is_err());
        assert!(matches!(
            find_owner(&spec, "../c2", "labgpu.user", d.path()),
            Err(OwnerError::BadId(_))
        ));
    }

    #[test]
    fn with_the_proxy_only_recorded_containers_have_owners() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("docker");
        let state = d.path().join("state");
        let policy = Policy::parse(
            Path::new("/p.toml"),
            format!(
                "version = 1\n[proxy]\nstate_dir = \"{}\"\n[users.alice]\n[users.bob]\n",
                state.display()
            )
            .as_bytes(),
        )
        .unwrap();
        write_labels(&root, "forged", json!({"labgpu.user": "bob"}));
        let o = resolve(&policy, &json!({}), "forged", &root).unwrap();
        assert_eq!(o.owner, None);
        assert_eq!(o.ignored_label.as_deref(), Some("bob"));

        records::record(&state, "made", "alice").unwrap();
        write_labels(&root, "made", json!({"labgpu.user": "alice"}));
        let o = resolve(&policy, &json!({}), "made", &root).unwrap();
        assert_eq!(o.owner.as_deref(), Some("alice"));
        let spec = json!({"annotations": {"labgpu.user": "bob"}});
        assert!(matches!(
            resolve(&policy, &spec, "made", &root),
            Err(OwnerError::Conflict { .. })
        ));
        write_labels(&root, "made", json!({"labgpu.user": "bob"}));
        assert!(matches!(
            resolve(&policy, &json!({}), "made", &root),
            Err(OwnerError::RecordConflict { .. })
        ));
    }

    #[test]
    fn docker_root_comes_from_the_policy_then_daemon_json() {
        assert_eq!(
            docker_root(Some(Path::new("/srv/docker"))),
            PathBuf::from("/srv/docker")
        );
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("daemon.json");
        std::fs::write(&f, r#"{"data-root": "/data/docker", "runtimes": {}}"#).unwrap();
        assert_eq!(daemon_json_root(&f), Some(PathBuf::from("/data/docker")));
        std::fs::write(&f, r#"{"data-root": "relative"}"#).unwrap();
        assert_eq!(daemon_json_root(&f), None);
        std::fs::write(&f, "not json").unwrap();
        assert_eq!(daemon_json_root(&f), None);
    }
}
