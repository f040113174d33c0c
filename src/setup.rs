//! `labgpu setup docker`: register labgpu as a runtime in Docker's daemon.json.
//!
//! daemon.json belongs to the admin. Every key labgpu does not own is kept as written (serde_json
//! is built with `preserve_order` and `arbitrary_precision`, so key order and number text
//! survive), a file that does not parse is refused and left alone, and the file is rewritten only
//! when its content changes: atomically, after a timestamped backup of the old file.
//!
//! labgpu owns exactly two things in the file: `runtimes.labgpu` and, when it says `"labgpu"`,
//! `default-runtime`.
//!
//! dockerd applies `runtimes` and `default-runtime` on a reload only when the file sets them: a
//! key taken out leaves the running daemon with its old value (and a reload whose default runtime
//! is no longer among the runtimes fails whole). So `--remove` leaves an emptied `runtimes` as
//! `{}` and turns a `default-runtime` of labgpu into Docker's stock `runc`.

pub mod buildkit;
use std::fs::{self, File, Metadata, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};

pub use crate::cli_args::DEFAULT_DOCKER_CONFIG;

/// The runtime name Docker knows labgpu by (`docker run --runtime labgpu`).
pub const RUNTIME_NAME: &str = "labgpu";

/// Mode of a daemon.json that labgpu creates; an existing file keeps its own.
pub const NEW_FILE_MODE: u32 = 0o644;

/// Errors of `labgpu setup`. Each message names the file or value and carries its cause in the
/// text (fields are `cause`, not `source`, so anyhow's `{:#}` does not print the cause twice).
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("cannot read {path}: {cause}")]
    Read { path: PathBuf, cause: io::Error },
    #[error("{path} is not valid JSON ({cause}); nothing was changed")]
    Parse {
        path: PathBuf,
        cause: serde_json::Error,
    },
    #[error("{path} holds {found}, not a JSON object; nothing was changed")]
    NotObject { path: PathBuf, found: &'static str },
    #[error("{path}: \"runtimes\" is {found}, not a JSON object; nothing was changed")]
    RuntimesNotObject { path: PathBuf, found: &'static str },
    #[error("{path}: \"runtimes\".\"labgpu\" is {found}, not a JSON object; nothing was changed")]
    EntryNotObject { path: PathBuf, found: &'static str },
    #[error("runtime path {path} is not absolute")]
    RelativeRuntimePath { path: PathBuf },
    #[error("runtime path {path} is not valid UTF-8")]
    NonUtf8RuntimePath { path: PathBuf },
    #[error("cannot find the path of the running labgpu binary: {cause}")]
    CurrentExe { cause: io::Error },
    #[error("cannot create directory {path}: {cause}")]
    CreateDir { path: PathBuf, cause: io::Error },
    #[error("cannot write backup {path}: {cause}; {config} was not changed")]
    Backup {
        path: PathBuf,
        config: PathBuf,
        cause: io::Error,
    },
    #[error("cannot write {path}: {cause}")]
    Write { path: PathBuf, cause: io::Error },
    #[error("runtime path {path} has a character systemd's Environment= would split or expand")]
    UnquotablePath { path: PathBuf },
}

/// What to do to daemon.json.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Set `runtimes.labgpu.path`; with `make_default`, also `default-runtime`.
    Add {
        runtime_path: String,
        make_default: bool,
    },
    /// Take `runtimes.labgpu` out, and make `default-runtime` `"runc"` if it is `"labgpu"`.
    Remove,
}

/// The result of merging an action into a file's content, before anything is written.
#[derive(Debug, Clone, PartialEq)]
pub struct Merged {
    /// The new content; `None` when the file is missing and stays missing.
    pub value: Option<Value>,
    /// Whether the content differs from the file's (a missing file that is created changes).
    pub changed: bool,
    /// Things the admin should know, one sentence each.
    pub notes: Vec<String>,
}

/// Applies `action` to `current`, the bytes of the file at `path` (`None`: no such file).
/// Pure: `path` is only used in messages.
pub fn merge(path: &Path, current: Option<&[u8]>, action: &Action) -> Result<Merged, SetupError> {
    let original = current.map(|bytes| parse(path, bytes)).transpose()?;
    let mut notes = Vec::new();
    let value = match (action, &original) {
        (Action::Remove, None) => None,
        (Action::Remove, Some(orig)) => {
            let mut v = orig.clone();
            remove(as_object(&mut v));
            Some(v)
        }
        (
            Action::Add {
                runtime_path,
                make_default,
            },
            orig,
        ) => {
            let mut v = orig.clone().unwrap_or_else(|| Value::Object(Map::new()));
            add(
                path,
                as_object(&mut v),
                runtime_path,
                *make_default,
                &mut notes,
            )?;
            Some(v)
        }
    };
    let changed = value != original;
    Ok(Merged {
        value,
        changed,
        notes,
    })
}

fn parse(path: &Path, bytes: &[u8]) -> Result<Value, SetupError> {
    // An empty file is what `touch daemon.json` leaves; Docker reads it as no settings.
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Object(Map::new()));
    }
    let value: Value = serde_json::from_slice(bytes).map_err(|cause| SetupError::Parse {
        path: path.to_path_buf(),
        cause,
    })?;
    if !value.is_object() {
        return Err(SetupError::NotObject {
            path: path.to_path_buf(),
            found: kind(&value),
        });
    }
    Ok(value)
}

fn as_object(v: &mut Value) -> &mut Map<String, Value> {
    match v {
        Value::Object(map) => map,
        // parse() only returns objects, and a missing file starts as one.
        _ => unreachable!("daemon.json content is checked to be an object"),
    }
}

fn add(
    path: &Path,
    obj: &mut Map<String, Value>,
    runtime_path: &str,
    make_default: bool,
    notes: &mut Vec<String>,
) -> Result<(), SetupError> {
    let runtimes = obj
        .entry("runtimes")
        .or_insert_with(|| Value::Object(Map::new()));
    let Value::Object(runtimes) = runtimes else {
        return Err(SetupError::RuntimesNotObject {
            path: path.to_path_buf(),
            found: kind(runtimes),
        });
    };
    match runtimes.get_mut(RUNTIME_NAME) {
        // Keep whatever else the admin put in the entry (runtimeArgs, ...) and its place.
        Some(Value::Object(entry)) => {
            entry.insert("path".into(), Value::String(runtime_path.into()));
        }
        Some(other) => {
            return Err(SetupError::EntryNotObject {
                path: path.to_path_buf(),
                found: kind(other),
            })
        }
        None => {
            let mut entry = Map::new();
            entry.insert("path".into(), Value::String(runtime_path.into()));
            runtimes.insert(RUNTIME_NAME.into(), Value::Object(entry));
        }
    }
    if make_default {
        match obj.get("default-runtime") {
            Some(Value::String(s)) if s == RUNTIME_NAME => {}
            Some(old) => {
                notes.push(format!(
                    "default-runtime was {old}; it is now \"{RUNTIME_NAME}\", and --remove will \
                     not put {old} back"
                ));
                obj.insert("default-runtime".into(), RUNTIME_NAME.into());
            }
            None => {
                obj.insert("default-runtime".into(), RUNTIME_NAME.into());
            }
        }
    }
    Ok(())
}

/// Docker's own runtime, the default when daemon.json names none.
const STOCK_RUNTIME: &str = "runc";

/// Keys stay in the file (see the module doc): a reload must see them to forget labgpu.
fn remove(obj: &mut Map<String, Value>) {
    // A "runtimes" that is not an object is not labgpu's to judge on the way out.
    if let Some(Value::Object(runtimes)) = obj.get_mut("runtimes") {
        runtimes.shift_remove(RUNTIME_NAME);
    }
    if obj.get("default-runtime").and_then(Value::as_str) == Some(RUNTIME_NAME) {
        obj.insert("default-runtime".into(), STOCK_RUNTIME.into());
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The file as labgpu writes it: two-space indented, with a final newline.
pub fn render(value: &Value) -> String {
    let mut s = serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string());
    s.push('\n');
    s
}

/// One run of `labgpu setup docker`.
#[derive(Debug, Clone)]
pub struct Request {
    pub config: PathBuf,
    pub action: Action,
    pub dry_run: bool,
}

#[derive(Debug, Clone)]
pub struct Outcome {
    /// The file read and written: `config`, or its target when it is a symlink.
    pub path: PathBuf,
    /// The resulting file; `None` when there is no file (removing from a missing one).
    pub rendered: Option<String>,
    pub changed: bool,
    /// Whether the file was written (changed and not a dry run).
    pub written: bool,
    /// Whether the file did not exist before.
    pub created: bool,
    pub backup: Option<PathBuf>,
    pub notes: Vec<String>,
}

/// Reads `config`, merges, and (unless a dry run or nothing changes) backs up and replaces it.
pub fn docker(req: &Request) -> Result<Outcome, SetupError> {
    let path = resolve_symlink(&req.config)?;
    let current = match fs::read(&path) {
        Ok(bytes) => Some(bytes),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(cause) => return Err(SetupError::Read { path, cause }),
    };
    let merged = merge(&path, current.as_deref(), &req.action)?;
    let rendered = merged.value.as_ref().map(render);
    let mut backup = None;
    let mut written = false;
    if let (Some(text), true, false) = (&rendered, merged.changed, req.dry_run) {
        let meta = match &current {
            Some(bytes) => {
                let meta = fs::metadata(&path).map_err(|cause| SetupError::Read {
                    path: path.clone(),
                    cause,
                })?;
                backup = Some(write_backup(&path, bytes, &meta, SystemTime::now())?);
                Some(meta)
            }
            None => None,
        };
        write_atomic(&path, text.as_bytes(), meta.as_ref())?;
        written = true;
    }
    Ok(Outcome {
        created: current.is_none() && merged.value.is_some(),
        path,
        rendered,
        changed: merged.changed,
        written,
        backup,
        notes: merged.notes,
    })
}

/// A symlinked daemon.json is edited where it points, not replaced by a regular file.
fn resolve_symlink(path: &Path) -> Result<PathBuf, SetupError> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => {
            fs::canonicalize(path).map_err(|cause| SetupError::Read {
                path: path.to_path_buf(),
                cause,
            })
        }
        _ => Ok(path.to_path_buf()),
    }
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "daemon.json".into())
}

/// `FILE.labgpu-backup-YYYYmmddTHHMMSS` (UTC) next to the file, with the file's mode and
/// owner; `.1`, `.2`, … appended when a backup of the same second exists.
fn write_backup(
    path: &Path,
    bytes: &[u8],
    meta: &Metadata,
    now: SystemTime,
) -> Result<PathBuf, SetupError> {
    let base = format!("{}.labgpu-backup-{}", file_name(path), utc_stamp(now));
    let dir = parent_dir(path);
    let mut n = 0u32;
    loop {
        let name = if n == 0 {
            base.clone()
        } else {
            format!("{base}.{n}")
        };
        let backup = dir.join(name);
        let err = |cause| SetupError::Backup {
            path: backup.clone(),
            config: path.to_path_buf(),
            cause,
        };
        let mut f = match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&backup)
        {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && n < 1000 => {
                n += 1;
                continue;
            }
            Err(e) => return Err(err(e)),
        };
        let result = (|| {
            let _ = std::os::unix::fs::fchown(&f, Some(meta.uid()), Some(meta.gid()));
            f.set_permissions(fs::Permissions::from_mode(meta.mode() & 0o7777))?;
            f.write_all(bytes)?;
            f.sync_all()
        })();
        if let Err(e) = result {
            let _ = fs::remove_file(&backup);
            return Err(err(e));
        }
        return Ok(backup);
    }
}

/// Replaces `path` with `bytes`: a temp file in the same directory (created exclusively, so a
/// planted symlink is not followed), the old file's mode and owner (or 0644 for a new file),
/// fsync, rename, fsync the directory. A reader sees the old file or the new, never a mix.
fn write_atomic(path: &Path, bytes: &[u8], old: Option<&Metadata>) -> Result<(), SetupError> {
    let dir = parent_dir(path);
    if !dir.exists() {
        fs::create_dir_all(dir).map_err(|cause| SetupError::CreateDir {
            path: dir.to_path_buf(),
            cause,
        })?;
    }
    let mode = old.map_or(NEW_FILE_MODE, |m| m.mode() & 0o7777);
    let tmp = dir.join(format!(
        ".{}.labgpu-tmp-{}",
        file_name(path),
        std::process::id()
    ));
    let result = (|| {
        // A leftover of a crashed run with the same pid; remove_file does not follow symlinks.
        match fs::remove_file(&tmp) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        if let Some(m) = old {
            let _ = std::os::unix::fs::fchown(&f, Some(m.uid()), Some(m.gid()));
        }
        // mode() is filtered by the umask; set it exactly.
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if let Err(cause) = result {
        let _ = fs::remove_file(&tmp);
        return Err(SetupError::Write {
            path: path.to_path_buf(),
            cause,
        });
    }
    Ok(())
}

/// `YYYYmmddTHHMMSS` in UTC.
fn utc_stamp(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    let s = secs % 86_400;
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}",
        s / 3600,
        s % 3600 / 60,
        s % 60
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// The `path` value for daemon.json: `--path`, else the running binary.
pub fn runtime_path(explicit: Option<PathBuf>) -> Result<String, SetupError> {
    let path = match explicit {
        Some(p) => p,
        None => std::env::current_exe().map_err(|cause| SetupError::CurrentExe { cause })?,
    };
    if !path.is_absolute() {
        return Err(SetupError::RelativeRuntimePath { path });
    }
    match path.to_str() {
        Some(s) => Ok(s.to_owned()),
        None => Err(SetupError::NonUtf8RuntimePath { path }),
    }
}

/// `labgpu setup docker …`: messages on stderr (one line, plus notes), the file on stdout for
/// `--dry-run`.
pub fn docker_cli(
    config: &Path,
    make_default: bool,
    dry_run: bool,
    remove: bool,
    path: Option<PathBuf>,
    with_buildkit: bool,
    systemd_dir: &Path,
) -> anyhow::Result<i32> {
    let code = daemon_json_cli(config, make_default, dry_run, remove, path.clone())?;
    if dry_run {
        if with_buildkit {
            print!("{}", buildkit::render(&runtime_path(path)?)?);
            eprintln!(
                "labgpu: dry run: {} would hold the content above; nothing was written",
                buildkit::drop_in_path(systemd_dir).display()
            );
        }
        return Ok(code);
    }
    let drop_in = buildkit::drop_in_path(systemd_dir);
    let restart = "restart Docker to apply it: systemctl daemon-reload && systemctl restart docker";
    if remove {
        if buildkit::remove(systemd_dir)? {
            eprintln!("labgpu: removed {}; {restart}", drop_in.display());
        }
    } else if with_buildkit {
        let runtime_path = runtime_path(path)?;
        if buildkit::install(systemd_dir, &runtime_path)? {
            eprintln!(
                "labgpu: wrote {} (BuildKit's RUN steps run through {runtime_path} on Docker 26 and later); {restart}",
                drop_in.display()
            );
        } else {
            eprintln!("labgpu: {} is up to date", drop_in.display());
        }
    }
    Ok(code)
}

fn daemon_json_cli(
    config: &Path,
    make_default: bool,
    dry_run: bool,
    remove: bool,
    path: Option<PathBuf>,
) -> anyhow::Result<i32> {
    let action = if remove {
        Action::Remove
    } else {
        let runtime_path = runtime_path(path)?;
        if !Path::new(&runtime_path).exists() {
            eprintln!("labgpu: note: runtime path {runtime_path} does not exist");
        }
        Action::Add {
            runtime_path,
            make_default,
        }
    };
    let out = docker(&Request {
        config: config.to_path_buf(),
        action: action.clone(),
        dry_run,
    })?;
    for note in &out.notes {
        eprintln!("labgpu: note: {note}");
    }
    let file = out.path.display();
    if dry_run {
        if let Some(r) = &out.rendered {
            print!("{r}");
        }
        let what = match (&out.rendered, out.changed) {
            (None, _) => "does not exist and would not be created",
            (Some(_), false) => "would not change",
            (Some(_), true) if out.created => "would be created with the content above",
            (Some(_), true) => "would be replaced by the content above",
        };
        eprintln!("labgpu: dry run: {file} {what}; nothing was written");
        return Ok(0);
    }
    let kept = match &out.backup {
        Some(b) => format!(" (old file kept as {})", b.display()),
        None => String::new(),
    };
    let apply = "reload Docker to apply it: systemctl reload docker";
    match (&action, out.changed) {
        (
            Action::Add {
                runtime_path,
                make_default,
            },
            true,
        ) => eprintln!(
            "labgpu: registered runtime {RUNTIME_NAME} = {runtime_path}{} in {file}{kept}; {apply}",
            if *make_default {
                " as Docker's default runtime"
            } else {
                ""
            }
        ),
        (Action::Add { runtime_path, .. }, false) => eprintln!(
            "labgpu: {file} already has runtime {RUNTIME_NAME} = {runtime_path}; nothing changed"
        ),
        (Action::Remove, true) => {
            eprintln!("labgpu: removed runtime {RUNTIME_NAME} from {file}{kept}; {apply}")
        }
        (Action::Remove, false) if out.rendered.is_none() => {
            eprintln!("labgpu: {file} does not exist; nothing to remove")
        }
        (Action::Remove, false) => {
            eprintln!("labgpu: {file} has no runtime {RUNTIME_NAME}; nothing changed")
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const P: &str = "/usr/bin/labgpu";

    fn add(make_default: bool) -> Action {
        Action::Add {
            runtime_path: P.into(),
            make_default,
        }
    }

    fn run(current: Option<&str>, action: &Action) -> Result<Merged, SetupError> {
        merge(
            Path::new("/etc/docker/daemon.json"),
            current.map(str::as_bytes),
            action,
        )
    }

    fn text(m: &Merged) -> String {
        render(m.value.as_ref().expect("a file"))
    }

    #[test]
    fn missing_file_is_created_with_only_the_runtime() {
        let m = run(None, &add(false)).unwrap();
        assert!(m.changed);
        assert_eq!(
            m.value,
            Some(json!({"runtimes": {"labgpu": {"path": "/usr/bin/labgpu"}}}))
        );
        assert_eq!(
            text(&m),
            "{\n  \"runtimes\": {\n    \"labgpu\": {\n      \"path\": \"/usr/bin/labgpu\"\n    }\n  }\n}\n"
        );
    }

    #[test]
    fn empty_file_is_an_empty_object() {
        for empty in ["", "\n", "  \n\t"] {
            let m = run(Some(empty), &add(false)).unwrap();
            assert!(m.changed);
            assert_eq!(m.value, Some(json!({"runtimes": {"labgpu": {"path": P}}})));
        }
        let m = run(Some("{}"), &add(false)).unwrap();
        assert_eq!(m.value, Some(json!({"runtimes": {"labgpu": {"path": P}}})));
        // Removing from an empty file changes nothing, so it is not rewritten.
        let m = run(Some(""), &Action::Remove).unwrap();
        assert!(!m.changed);
    }

    #[test]
    fn nvidia_runtime_and_every_other_key_are_kept_in_order() {
        let before = r#"{
    "log-level": "warn",
    "default-runtime": "nvidia",
    "runtimes": {
        "nvidia": {"args": [], "path": "nvidia-container-runtime"}
    },
    "max-concurrent-downloads": 3,
    "ratio": 1.50,
    "big": 123456789012345678901234567890
}"#;
        let m = run(Some(before), &add(false)).unwrap();
        assert!(m.changed);
        assert!(m.notes.is_empty());
        let out = text(&m);
        assert_eq!(
            out,
            r#"{
  "log-level": "warn",
  "default-runtime": "nvidia",
  "runtimes": {
    "nvidia": {
      "args": [],
      "path": "nvidia-container-runtime"
    },
    "labgpu": {
      "path": "/usr/bin/labgpu"
    }
  },
  "max-concurrent-downloads": 3,
  "ratio": 1.50,
  "big": 123456789012345678901234567890
}
"#
        );
        // And --remove gives back the same content (formatting aside).
        let back = run(Some(&out), &Action::Remove).unwrap();
        assert_eq!(back.value, Some(serde_json::from_str(before).unwrap()));
        assert_eq!(text(&back), render(&serde_json::from_str(before).unwrap()));
    }

    #[test]
    fn features_are_kept() {
        let before = r#"{"features": {"buildkit": true, "containerd-snapshotter": false}, "experimental": true}"#;
        let m = run(Some(before), &add(true)).unwrap();
        assert_eq!(
            m.value,
            Some(json!({
                "features": {"buildkit": true, "containerd-snapshotter": false},
                "experimental": true,
                "runtimes": {"labgpu": {"path": P}},
                "default-runtime": "labgpu"
            }))
        );
        let keys: Vec<_> = m
            .value
            .as_ref()
            .unwrap()
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        assert_eq!(
            keys,
            ["features", "experimental", "runtimes", "default-runtime"]
        );
    }

    #[test]
    fn comments_are_refused() {
        let before = "{\n  // registered by hand\n  \"runtimes\": {}\n}\n";
        let e = run(Some(before), &add(false)).unwrap_err();
        assert!(matches!(e, SetupError::Parse { .. }), "{e:?}");
        let msg = e.to_string();
        assert!(
            msg.starts_with("/etc/docker/daemon.json is not valid JSON"),
            "{msg}"
        );
        assert!(msg.contains("line 2 column"), "{msg}");
        assert!(msg.ends_with("nothing was changed"), "{msg}");
        assert!(run(Some(before), &Action::Remove).is_err());
    }

    #[test]
    fn malformed_files_are_refused() {
        for bad in ["{\"runtimes\": {", "{\"a\": 1,}", "not json", "{} {}"] {
            let e = run(Some(bad), &add(false)).unwrap_err();
            assert!(matches!(e, SetupError::Parse { .. }), "{bad}: {e:?}");
        }
        let e = run(Some("[1, 2]"), &add(false)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "/etc/docker/daemon.json holds an array, not a JSON object; nothing was changed"
        );
        let e = run(Some(r#"{"runtimes": ["runc"]}"#), &add(false)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "/etc/docker/daemon.json: \"runtimes\" is an array, not a JSON object; nothing was changed"
        );
        let e = run(
            Some(r#"{"runtimes": {"labgpu": "/usr/bin/labgpu"}}"#),
            &add(false),
        )
        .unwrap_err();
        assert!(matches!(
            e,
            SetupError::EntryNotObject {
                found: "a string",
                ..
            }
        ));
    }

    #[test]
    fn idempotent() {
        let m1 = run(Some(r#"{"debug": true}"#), &add(true)).unwrap();
        assert!(m1.changed);
        let once = text(&m1);
        let m2 = run(Some(&once), &add(true)).unwrap();
        assert!(!m2.changed);
        assert_eq!(text(&m2), once);
        // Without --default, a default-runtime that is already labgpu stays.
        let m3 = run(Some(&once), &add(false)).unwrap();
        assert!(!m3.changed);
        // Compact formatting of an up-to-date file is not a change either.
        let compact = r#"{"runtimes":{"labgpu":{"path":"/usr/bin/labgpu"}}}"#;
        assert!(!run(Some(compact), &add(false)).unwrap().changed);
        // Removing twice: the second changes nothing.
        let r1 = run(Some(&once), &Action::Remove).unwrap();
        assert!(r1.changed);
        assert_eq!(
            r1.value,
            Some(json!({"debug": true, "runtimes": {}, "default-runtime": "runc"}))
        );
        assert!(!run(Some(&text(&r1)), &Action::Remove).unwrap().changed);
        // Removing from a missing file creates nothing.
        let r = run(None, &Action::Remove).unwrap();
        assert_eq!((r.value, r.changed), (None, false));
    }

    #[test]
    fn a_new_path_updates_the_entry_and_keeps_its_other_keys() {
        let before = r#"{"runtimes": {"labgpu": {"runtimeArgs": ["--debug"], "path": "/usr/local/bin/labgpu"}}}"#;
        let m = run(Some(before), &add(false)).unwrap();
        assert!(m.changed);
        assert_eq!(
            m.value,
            Some(json!({"runtimes": {"labgpu": {"runtimeArgs": ["--debug"], "path": P}}}))
        );
    }

    #[test]
    fn default_replaces_another_default_with_a_note() {
        let m = run(Some(r#"{"default-runtime": "nvidia"}"#), &add(true)).unwrap();
        assert_eq!(
            m.value.as_ref().unwrap()["default-runtime"],
            json!("labgpu")
        );
        assert_eq!(m.notes.len(), 1);
        assert!(
            m.notes[0].starts_with("default-runtime was \"nvidia\""),
            "{:?}",
            m.notes
        );
    }

    #[test]
    fn remove_resets_default_runtime_only_when_ours() {
        let theirs = r#"{"default-runtime": "nvidia", "runtimes": {"nvidia": {"path": "/usr/bin/nvidia-container-runtime"}, "labgpu": {"path": "/usr/bin/labgpu"}}}"#;
        let m = run(Some(theirs), &Action::Remove).unwrap();
        assert_eq!(
            m.value,
            Some(
                json!({"default-runtime": "nvidia", "runtimes": {"nvidia": {"path": "/usr/bin/nvidia-container-runtime"}}})
            )
        );
        // Ours becomes runc, in its place, and the emptied runtimes stays: dockerd's reload
        // ignores keys that are not in the file.
        let ours = r#"{"default-runtime": "labgpu", "runtimes": {"labgpu": {"path": "/usr/bin/labgpu"}}, "features": {"cdi": true}}"#;
        let m = run(Some(ours), &Action::Remove).unwrap();
        assert_eq!(
            text(&m),
            "{\n  \"default-runtime\": \"runc\",\n  \"runtimes\": {},\n  \"features\": {\n    \"cdi\": true\n  }\n}\n"
        );
        // A default-runtime of labgpu without the entry is still ours to reset.
        let m = run(Some(r#"{"default-runtime": "labgpu"}"#), &Action::Remove).unwrap();
        assert_eq!(m.value, Some(json!({"default-runtime": "runc"})));
        // A runtimes that is not ours to judge is left alone on the way out.
        let m = run(Some(r#"{"runtimes": 3}"#), &Action::Remove).unwrap();
        assert!(!m.changed);
    }

    #[test]
    fn stamp_is_utc() {
        let at = |s| utc_stamp(UNIX_EPOCH + std::time::Duration::from_secs(s));
        assert_eq!(at(0), "19700101T000000");
        assert_eq!(at(951_782_400), "20000229T000000");
        assert_eq!(at(1_700_000_000), "20231114T221320");
        assert_eq!(at(4_102_444_799), "20991231T235959");
        assert_eq!(at(4_107_542_399), "21000228T235959");
    }

    #[test]
    fn runtime_path_must_be_absolute_utf8() {
        assert_eq!(runtime_path(Some(P.into())).unwrap(), P);
        assert!(matches!(
            runtime_path(Some("labgpu".into())),
            Err(SetupError::RelativeRuntimePath { .. })
        ));
        let exe = runtime_path(None).unwrap();
        assert!(Path::new(&exe).is_absolute());
    }

    fn req(config: &Path, action: Action, dry_run: bool) -> Request {
        Request {
            config: config.to_path_buf(),
            action,
            dry_run,
        }
    }

    fn backups(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".labgpu-backup-"))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn missing_file_and_directory_are_created_0644_without_backup() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("etc-docker").join("daemon.json");
        let out = docker(&req(&cfg, add(false), false)).unwrap();
        assert!(out.written && out.created && out.backup.is_none());
        let mode = fs::metadata(&cfg).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o644);
        assert_eq!(fs::read_to_string(&cfg).unwrap(), out.rendered.unwrap());
        assert!(backups(cfg.parent().unwrap()).is_empty());
        // Nothing but daemon.json is left in the directory (no temp file).
        assert_eq!(fs::read_dir(cfg.parent().unwrap()).unwrap().count(), 1);
    }

    #[test]
    fn existing_file_keeps_mode_gets_one_backup_and_second_run_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("daemon.json");
        let before = "{ \"debug\": true }\n";
        fs::write(&cfg, before).unwrap();
        fs::set_permissions(&cfg, fs::Permissions::from_mode(0o640)).unwrap();
        let out = docker(&req(&cfg, add(false), false)).unwrap();
        assert!(out.written && !out.created);
        let backup = out.backup.unwrap();
        assert_eq!(fs::read_to_string(&backup).unwrap(), before);
        assert_eq!(
            fs::metadata(&backup).unwrap().permissions().mode() & 0o7777,
            0o640
        );
        assert_eq!(
            fs::metadata(&cfg).unwrap().permissions().mode() & 0o7777,
            0o640
        );
        let name = backup.file_name().unwrap().to_string_lossy().into_owned();
        let stamp = name.strip_prefix("daemon.json.labgpu-backup-").unwrap();
        assert_eq!(stamp.len(), 15, "{name}");
        assert_eq!(&stamp[8..9], "T");
        assert!(stamp
            .chars()
            .filter(|c| *c != 'T')
            .all(|c| c.is_ascii_digit()));

        let after = fs::read_to_string(&cfg).unwrap();
        let again = docker(&req(&cfg, add(false), false)).unwrap();
        assert!(!again.changed && !again.written && again.backup.is_none());
        assert_eq!(fs::read_to_string(&cfg).unwrap(), after);
        assert_eq!(backups(dir.path()).len(), 1);

        // Remove in the same second: a second backup, with a suffix.
        let removed = docker(&req(&cfg, Action::Remove, false)).unwrap();
        assert!(removed.written);
        assert_eq!(backups(dir.path()).len(), 2);
        assert_eq!(
            serde_json::from_str::<Value>(&fs::read_to_string(&cfg).unwrap()).unwrap(),
            json!({"debug": true, "runtimes": {}})
        );
    }

    #[test]
    fn dry_run_and_malformed_write_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("daemon.json");
        let out = docker(&req(&cfg, add(true), true)).unwrap();
        assert!(out.changed && !out.written);
        assert!(out
            .rendered
            .unwrap()
            .contains("\"default-runtime\": \"labgpu\""));
        assert!(!cfg.exists());

        let bad = "{\"runtimes\": {\"nvidia\": {\"path\": \"x\"}},\n";
        fs::write(&cfg, bad).unwrap();
        let e = docker(&req(&cfg, add(false), false)).unwrap_err();
        assert!(e.to_string().contains("is not valid JSON"), "{e}");
        assert_eq!(fs::read_to_string(&cfg).unwrap(), bad);
        assert!(backups(dir.path()).is_empty());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_symlinked_file_is_edited_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real.json");
        fs::write(&real, "{}").unwrap();
        let link = dir.path().join("daemon.json");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let out = docker(&req(&link, add(false), false)).unwrap();
        assert!(out.written);
        assert!(fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        assert!(fs::read_to_string(&real).unwrap().contains("labgpu"));
    }
}
