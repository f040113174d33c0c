//! config.json as an untyped, order-preserving JSON value, and its atomic replacement.
//!
//! The spec is never round-tripped through a struct: fields labgpu does not model (new OCI
//! keys, vendor extensions) must reach runc exactly as Docker wrote them.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("cannot read {path}: {cause}")]
    Read {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{path} is not valid JSON: {cause}")]
    Parse {
        path: PathBuf,
        cause: serde_json::Error,
    },
    #[error("{path} is not a JSON object")]
    NotObject { path: PathBuf },
    #[error("cannot write {path}: {cause}")]
    Write {
        path: PathBuf,
        cause: std::io::Error,
    },
}

pub fn load(path: &Path) -> Result<Value, SpecError> {
    let bytes = std::fs::read(path).map_err(|cause| SpecError::Read {
        path: path.to_path_buf(),
        cause,
    })?;
    let value: Value = serde_json::from_slice(&bytes).map_err(|cause| SpecError::Parse {
        path: path.to_path_buf(),
        cause,
    })?;
    if !value.is_object() {
        return Err(SpecError::NotObject {
            path: path.to_path_buf(),
        });
    }
    Ok(value)
}

/// Replaces `path` with `value`: temp file in the same directory, fsync, rename, fsync dir.
/// The original file's mode is kept; a reader sees the old or the new file, never a mix.
pub fn write_atomic(path: &Path, value: &Value) -> Result<(), SpecError> {
    let err = |cause| SpecError::Write {
        path: path.to_path_buf(),
        cause,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let mode = std::fs::metadata(path)
        .map(|m| m.permissions().mode() & 0o7777)
        .unwrap_or(0o600);
    let file_name = path.file_name().and_then(|n| n.to_str()).unwrap_or("spec");
    let tmp = dir.join(format!(".{file_name}.labgpu-{}", std::process::id()));
    let bytes = serde_json::to_vec(value).map_err(|e| err(std::io::Error::other(e)))?;
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        // mode() is filtered by the umask; set it exactly.
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(err)
}

/// `value[key]`, made an object when absent or not an object. `value` must be an object.
pub fn object_mut<'a>(value: &'a mut Value, key: &str) -> &'a mut Value {
    let map = value.as_object_mut().expect("spec values are objects");
    let slot = map
        .entry(key.to_string())
        .or_insert_with(|| Value::Object(Map::new()));
    if !slot.is_object() {
        *slot = Value::Object(Map::new());
    }
    slot
}

/// `value[key]` as an array, made empty when absent or null; `None` when it holds something
/// else, which the caller reports as malformed rather than silently replacing.
pub fn array_mut<'a>(value: &'a mut Value, key: &str) -> Option<&'a mut Vec<Value>> {
    let map = value.as_object_mut().expect("spec values are objects");
    let slot = map.entry(key.to_string()).or_insert(Value::Null);
    if slot.is_null() {
        *slot = Value::Array(Vec::new());
    }
    slot.as_array_mut()
}

/// A JSON number as i64, treating null, absent and negative values as "any" (None).
pub fn wildcard_num(v: Option<&Value>) -> Option<i64> {
    v.and_then(Value::as_i64).filter(|n| *n >= 0)
}

pub fn str_field<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn atomic_write_keeps_mode_order_and_unknown_fields() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config.json");
        let text = r#"{"zeta":1,"ociVersion":"1.0.2","x-vendor":{"b":[1,2.50,{"c":null}],"a":18446744073709551615}}"#;
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
        let v = load(&p).unwrap();
        write_atomic(&p, &v).unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), text);
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o640);
        let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "temp file left behind");
    }

    #[test]
    fn malformed_json_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config.json");
        std::fs::write(&p, "{\"a\":").unwrap();
        let msg = load(&p).unwrap_err().to_string();
        assert!(msg.contains("config.json is not valid JSON"), "{msg}");
        std::fs::write(&p, "[]").unwrap();
        assert!(load(&p)
            .unwrap_err()
            .to_string()
            .contains("not a JSON object"));
    }
}
