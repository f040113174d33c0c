//! Who owns a container: Docker's label (in config.v2.json, never in the spec) and/or the
//! spec annotation of the same name (containerd, `docker run --annotation`).

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::spec::str_field;

#[derive(Debug, thiserror::Error)]
pub enum OwnerError {
    #[error("container id {0:?} is not a valid runc container id")]
    BadId(String),
    #[error("cannot read container labels from {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot parse container labels in {path}: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("label {key}={label:?} and annotation {key}={annotation:?} name different owners")]
    Conflict {
        key: String,
        label: String,
        annotation: String,
    },
}

/// Docker's data root, from the policy or from the spec's `/etc/hostname` bind, whose source
/// Docker writes as `<data-root>/containers/<id>/hostname`.
///
/// A user can put their own file at /etc/hostname (`-v /tmp/x/containers/y/hostname:/etc/hostname`),
/// so a derived root is believed only if it and its `containers` dir are root's and writable
/// by no one else: then no user can have planted the labels read from it.
pub fn docker_root(spec: &Value, configured: Option<&Path>) -> Option<PathBuf> {
    if let Some(root) = configured {
        return Some(root.to_path_buf());
    }
    let mounts = spec.get("mounts")?.as_array()?;
    let hostname = mounts
        .iter()
        .find(|m| str_field(m, "destination") == Some("/etc/hostname"))?;
    let source = Path::new(str_field(hostname, "source")?);
    let container_dir = source.parent()?;
    let containers = container_dir.parent()?;
    if containers.file_name()? != "containers" {
        return None;
    }
    let root = containers.parent()?;
    (root_owned(root) && root_owned(containers)).then(|| root.to_path_buf())
}

/// Owned by uid 0 and not writable by group or others (symlinks followed, as a reader would).
pub fn root_owned(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).is_ok_and(|m| m.uid() == 0 && m.mode() & 0o022 == 0)
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

/// The owner named by the label and/or annotation `key`; `None` when neither is set.
/// An empty value counts as unset.
pub fn find_owner(
    spec: &Value,
    id: &str,
    key: &str,
    docker_root: Option<&Path>,
) -> Result<Option<String>, OwnerError> {
    if !valid_container_id(id) {
        return Err(OwnerError::BadId(id.to_string()));
    }
    let label = match docker_root {
        Some(root) => docker_label(
            &root.join("containers").join(id).join("config.v2.json"),
            key,
        )?,
        None => None,
    };
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

/// `Config.Labels[key]` of a Docker config.v2.json; a missing file means "not a Docker
/// container" and yields no label, an unreadable or malformed one is an error.
fn docker_label(path: &Path, key: &str) -> Result<Option<String>, OwnerError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(OwnerError::Read {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    let v: Value = serde_json::from_slice(&bytes).map_err(|source| OwnerError::Parse {
        path: path.to_path_buf(),
        source,
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

    fn spec_with_hostname(root: &Path, id: &str) -> Value {
        json!({"mounts": [{"destination": "/etc/hostname", "type": "bind",
            "source": root.join("containers").join(id).join("hostname"), "options": ["rbind"]}]})
    }

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
    fn label_is_read_from_the_id_not_the_hostname_mount() {
        let d = tempfile::tempdir().unwrap();
        write_labels(d.path(), "abc", json!({"labgpu.user": "alice"}));
        write_labels(d.path(), "other", json!({"labgpu.user": "bob"}));
        // --network container:other makes the hostname mount point at the other container.
        let spec = spec_with_hostname(d.path(), "other");
        let root = docker_root(&spec, None).unwrap();
        assert_eq!(root, d.path());
        let owner = find_owner(&spec, "abc", "labgpu.user", Some(&root)).unwrap();
        assert_eq!(owner.as_deref(), Some("alice"));
    }

    #[test]
    fn annotation_alone_and_agreement_and_conflict() {
        let d = tempfile::tempdir().unwrap();
        let mut spec = spec_with_hostname(d.path(), "c1");
        spec["annotations"] = json!({"labgpu.user": "bob"});
        assert_eq!(
            find_owner(&spec, "c1", "labgpu.user", Some(d.path()))
                .unwrap()
                .as_deref(),
            Some("bob")
        );
        write_labels(d.path(), "c1", json!({"labgpu.user": "bob"}));
        assert_eq!(
            find_owner(&spec, "c1", "labgpu.user", Some(d.path()))
                .unwrap()
                .as_deref(),
            Some("bob")
        );
        write_labels(d.path(), "c1", json!({"labgpu.user": "alice"}));
        let err = find_owner(&spec, "c1", "labgpu.user", Some(d.path())).unwrap_err();
        assert!(err.to_string().contains("\"alice\""), "{err}");
    }

    #[test]
    fn no_label_anywhere_is_none_and_bad_files_are_errors() {
        let d = tempfile::tempdir().unwrap();
        let spec = spec_with_hostname(d.path(), "c2");
        assert_eq!(
            find_owner(&spec, "c2", "labgpu.user", Some(d.path())).unwrap(),
            None
        );
        write_labels(d.path(), "c2", Value::Null);
        assert_eq!(
            find_owner(&spec, "c2", "labgpu.user", Some(d.path())).unwrap(),
            None
        );
        std::fs::write(d.path().join("containers/c2/config.v2.json"), "{").unwrap();
        assert!(find_owner(&spec, "c2", "labgpu.user", Some(d.path())).is_err());
        assert!(matches!(
            find_owner(&spec, "../c2", "labgpu.user", Some(d.path())),
            Err(OwnerError::BadId(_))
        ));
    }

    #[test]
    fn a_derived_root_writable_by_users_is_not_believed() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        write_labels(d.path(), "c1", json!({"labgpu.user": "bob"}));
        let spec = spec_with_hostname(d.path(), "c1");
        if !nix::unistd::geteuid().is_root() {
            // Not root: the tempdir is not root's, so nothing derived is believed.
            assert_eq!(docker_root(&spec, None), None);
            return;
        }
        assert!(docker_root(&spec, None).is_some());
        std::fs::set_permissions(
            d.path().join("containers"),
            std::fs::Permissions::from_mode(0o777),
        )
        .unwrap();
        assert_eq!(docker_root(&spec, None), None);
        nix::unistd::chown(
            &d.path().join("containers"),
            Some(nix::unistd::Uid::from_raw(1000)),
            None,
        )
        .unwrap();
        std::fs::set_permissions(
            d.path().join("containers"),
            std::fs::Permissions::from_mode(0o700),
        )
        .unwrap();
        assert_eq!(docker_root(&spec, None), None);
    }

    #[test]
    fn docker_root_needs_the_docker_layout() {
        let spec = json!({"mounts": [{"destination": "/etc/hostname", "source": "/etc/hostname"}]});
        assert_eq!(docker_root(&spec, None), None);
        assert_eq!(
            docker_root(&spec, Some(Path::new("/srv/docker"))),
            Some(PathBuf::from("/srv/docker"))
        );
    }
}
