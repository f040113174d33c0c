//! The proxy's record of the containers it created, and for whom: one root-only file per
//! container under `<[proxy] state_dir>/containers/`. With the proxy in use the runtime
//! believes these records, not labels: a label is text anyone with the Docker socket (or a
//! Dockerfile `LABEL` in a build) can write, a file in a root-only directory is not.

use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::owner::valid_container_id;
use crate::paths::open_beneath;

const DIR: &str = "containers";

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("container id {0:?} is not a valid container id")]
    BadId(String),
    #[error("proxy record directory {path} must be root's and writable by no one else (it is uid {uid}, mode {mode:o})")]
    Untrusted { path: PathBuf, uid: u32, mode: u32 },
    #[error("cannot read proxy record {path}: {cause}")]
    Read {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("proxy record {path} is malformed: {reason}")]
    Malformed { path: PathBuf, reason: String },
    #[error("cannot write proxy record {path}: {cause}")]
    Write {
        path: PathBuf,
        cause: std::io::Error,
    },
}

/// What the proxy knew when it created the container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    pub owner: String,
    /// The owner's login container (`labgpu shell`): made by the proxy from the policy's
    /// `session` settings, never at a user's request.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub session: bool,
    /// The Slurm job the caller ran in (`slurm::cgroup`); absent in records from before
    /// Slurm support, and for containers made outside a job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slurm_job: Option<u32>,
}

fn records_dir(state_dir: &Path) -> PathBuf {
    state_dir.join(DIR)
}

/// Records that the proxy created container `id` for `owner` (atomically; the directory is
/// created root-only).
pub fn record(state_dir: &Path, id: &str, owner: &str) -> Result<(), RecordError> {
    record_full(
        state_dir,
        id,
        &Record {
            owner: owner.to_string(),
            session: false,
            slurm_job: None,
        },
    )
}

/// Records container `id` as `record` says.
pub fn record_full(state_dir: &Path, id: &str, record: &Record) -> Result<(), RecordError> {
    if !valid_container_id(id) {
        return Err(RecordError::BadId(id.to_string()));
    }
    let dir = records_dir(state_dir);
    let path = dir.join(id);
    let write_err = |cause| RecordError::Write {
        path: path.clone(),
        cause,
    };
    std::fs::create_dir_all(&dir).map_err(write_err)?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).map_err(write_err)?;
    let bytes = serde_json::to_vec(record).map_err(|e| write_err(std::io::Error::other(e)))?;
    let tmp = dir.join(format!(".{id}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(write_err)
}

/// The owner the proxy recorded for `id`; `None` when it did not create it (or there are no
/// records yet).
pub fn recorded_owner(state_dir: &Path, id: &str) -> Result<Option<String>, RecordError> {
    Ok(recorded(state_dir, id)?.map(|r| r.owner))
}

/// The proxy's record of `id`; `None` when it did not create it (or there are no records).
pub fn recorded(state_dir: &Path, id: &str) -> Result<Option<Record>, RecordError> {
    if !valid_container_id(id) {
        return Err(RecordError::BadId(id.to_string()));
    }
    if !trusted_dir(state_dir)? {
        return Ok(None);
    }
    let dir = records_dir(state_dir);
    let path = dir.join(id);
    let read_err = |cause| RecordError::Read {
        path: path.clone(),
        cause,
    };
    let mut file = match open_beneath(state_dir, &Path::new(DIR).join(id)) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(read_err(e)),
    };
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).map_err(read_err)?;
    let record: Record = serde_json::from_slice(&bytes).map_err(|e| RecordError::Malformed {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    Ok(Some(record))
}

/// Whether the records directory is there and only root can change it; `false` when it does
/// not exist yet, an error when it is not to be believed.
fn trusted_dir(state_dir: &Path) -> Result<bool, RecordError> {
    let dir = records_dir(state_dir);
    match std::fs::symlink_metadata(&dir) {
        Ok(m) if m.is_dir() && m.uid() == 0 && m.mode() & 0o022 == 0 => Ok(true),
        Ok(m) => Err(RecordError::Untrusted {
            path: dir,
            uid: m.uid(),
            mode: m.mode() & 0o7777,
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(cause) => Err(RecordError::Read { path: dir, cause }),
    }
}

/// The ids of the records in the directory, with their entries; none when it does not exist
/// yet. Temporary files and names that are not container ids are left out.
fn record_ids(state_dir: &Path) -> Result<Vec<(String, std::fs::DirEntry)>, RecordError> {
    if !trusted_dir(state_dir)? {
        return Ok(Vec::new());
    }
    let dir = records_dir(state_dir);
    let entries = std::fs::read_dir(&dir).map_err(|cause| RecordError::Read {
        path: dir.clone(),
        cause,
    })?;
    let mut ids = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|cause| RecordError::Read {
            path: dir.clone(),
            cause,
        })?;
        let Ok(id) = entry.file_name().into_string() else {
            continue;
        };
        // Temporary files of a record being written start with '.'.
        if id.starts_with('.') || !valid_container_id(&id) {
            continue;
        }
        ids.push((id, entry));
    }
    Ok(ids)
}

/// The containers the proxy recorded as created from inside Slurm job `job`, sorted.
pub fn for_job(state_dir: &Path, job: u32) -> Result<Vec<String>, RecordError> {
    let mut ids = Vec::new();
    for (id, _) in record_ids(state_dir)? {
        // A record removed meanwhile (the container went) is simply not there.
        if let Some(r) = recorded(state_dir, &id)? {
            if r.slurm_job == Some(job) {
                ids.push(id);
            }
        }
    }
    ids.sort();
    Ok(ids)
}

/// The login containers the proxy recorded for `owner`, newest record first. Normally one;
/// more only if one was removed behind the proxy's back and its record not yet pruned.
pub fn sessions_of(state_dir: &Path, owner: &str) -> Result<Vec<String>, RecordError> {
    let mut found = Vec::new();
    for (id, entry) in record_ids(state_dir)? {
        // `recorded` refuses symlinks; a record removed meanwhile (its container went) is
        // simply not there, and one that cannot be read is nobody's session.
        match recorded(state_dir, &id) {
            Ok(Some(r)) if r.session && r.owner == owner => {
                let mtime = entry.metadata().and_then(|m| m.modified()).ok();
                found.push((mtime, id));
            }
            Err(e @ RecordError::Untrusted { .. }) => return Err(e),
            _ => {}
        }
    }
    found.sort_by(|a, b| b.cmp(a));
    Ok(found.into_iter().map(|(_, id)| id).collect())
}

/// Forgets container `id` (removed through the proxy); a missing record is not an error.
pub fn forget(state_dir: &Path, id: &str) -> Result<(), RecordError> {
    if !valid_container_id(id) {
        return Err(RecordError::BadId(id.to_string()));
    }
    let path = records_dir(state_dir).join(id);
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(RecordError::Write { path, cause: e })
        }
        _ => Ok(()),
    }
}

/// Removes the records of containers Docker no longer has (`<docker_root>/containers/<id>`
/// gone: removed straight through Docker, or by `--rm`). A record is written only after its
/// container exists, so a live container's record is never pruned. Returns how many went.
pub fn prune(state_dir: &Path, docker_root: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(records_dir(state_dir)) else {
        return 0;
    };
    let containers = docker_root.join("containers");
    if !containers.is_dir() {
        return 0;
    }
    entries
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|id| valid_container_id(id) && !id.starts_with('.'))
        .filter(|id| !containers.join(id).exists())
        .filter(|id| forget(state_dir, id).is_ok())
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_read_forget() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(recorded_owner(d.path(), "c1").unwrap(), None);
        record(d.path(), "c1", "alice").unwrap();
        assert_eq!(
            recorded_owner(d.path(), "c1").unwrap().as_deref(),
            Some("alice")
        );
        let mode = std::fs::metadata(d.path().join(DIR)).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o700);
        assert_eq!(recorded_owner(d.path(), "c2").unwrap(), None);
        forget(d.path(), "c1").unwrap();
        forget(d.path(), "c1").unwrap();
        assert_eq!(recorded_owner(d.path(), "c1").unwrap(), None);
        assert!(record(d.path(), "../x", "alice").is_err());
        assert!(recorded_owner(d.path(), "..").is_err());
    }

    #[test]
    fn a_writable_directory_or_a_symlinked_record_is_not_believed() {
        let d = tempfile::tempdir().unwrap();
        record(d.path(), "c1", "alice").unwrap();
        let dir = d.path().join(DIR);
        std::fs::write(d.path().join("planted"), r#"{"owner":"bob"}"#).unwrap();
        std::os::unix::fs::symlink(d.path().join("planted"), dir.join("c2")).unwrap();
        assert!(recorded_owner(d.path(), "c2").is_err());
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        if nix::unistd::geteuid().is_root() {
            assert!(matches!(
                recorded_owner(d.path(), "c1"),
                Err(RecordError::Untrusted { .. })
            ));
        }
    }

    #[test]
    fn session_records_are_found_by_owner() {
        let d = tempfile::tempdir().unwrap();
        assert!(sessions_of(d.path(), "alice").unwrap().is_empty());
        let rec = |owner: &str, session| Record {
            owner: owner.into(),
            session,
            slurm_job: None,
        };
        record_full(d.path(), "s1", &rec("alice", true)).unwrap();
        record_full(d.path(), "c1", &rec("alice", false)).unwrap();
        record_full(d.path(), "s2", &rec("bob", true)).unwrap();
        assert_eq!(sessions_of(d.path(), "alice").unwrap(), ["s1"]);
        assert_eq!(sessions_of(d.path(), "bob").unwrap(), ["s2"]);
        assert!(sessions_of(d.path(), "carol").unwrap().is_empty());
        // An ordinary record is written as before (older proxies read it), and old records
        // read as not sessions.
        let plain = std::fs::read_to_string(d.path().join(DIR).join("c1")).unwrap();
        assert_eq!(plain, r#"{"owner":"alice"}"#);
        assert!(!recorded(d.path(), "c1").unwrap().unwrap().session);
        assert!(recorded(d.path(), "s1").unwrap().unwrap().session);
        // A planted symlink named like a record is not believed.
        std::fs::write(
            d.path().join("planted"),
            r#"{"owner":"bob","session":true}"#,
        )
        .unwrap();
        std::os::unix::fs::symlink(d.path().join("planted"), d.path().join(DIR).join("s3"))
            .unwrap();
        assert_eq!(sessions_of(d.path(), "bob").unwrap(), ["s2"]);
    }

    #[test]
    fn job_records_and_old_records() {
        let d = tempfile::tempdir().unwrap();
        let job = |owner: &str, j| Record {
            owner: owner.into(),
            session: false,
            slurm_job: j,
        };
        record_full(d.path(), "c1", &job("alice", Some(17))).unwrap();
        record_full(d.path(), "c2", &job("alice", Some(18))).unwrap();
        record_full(d.path(), "c3", &job("bob", Some(17))).unwrap();
        record(d.path(), "c4", "alice").unwrap();
        assert_eq!(for_job(d.path(), 17).unwrap(), ["c1", "c3"]);
        assert!(for_job(d.path(), 99).unwrap().is_empty());
        assert_eq!(
            recorded(d.path(), "c2").unwrap(),
            Some(job("alice", Some(18)))
        );
        // A record without a job reads as one, and is written without the key.
        let c4 = std::fs::read_to_string(d.path().join(DIR).join("c4")).unwrap();
        assert_eq!(c4, r#"{"owner":"alice"}"#);
        assert_eq!(recorded(d.path(), "c4").unwrap(), Some(job("alice", None)));
        assert!(for_job(&d.path().join("none"), 17).unwrap().is_empty());
    }

    #[test]
    fn prune_keeps_records_of_existing_containers() {
        let d = tempfile::tempdir().unwrap();
        let state = d.path().join("state");
        let root = d.path().join("docker");
        std::fs::create_dir_all(root.join("containers/live")).unwrap();
        record(&state, "live", "alice").unwrap();
        record(&state, "gone", "bob").unwrap();
        assert_eq!(prune(&state, &root), 1);
        assert!(recorded_owner(&state, "live").unwrap().is_some());
        assert!(recorded_owner(&state, "gone").unwrap().is_none());
    }
}
