//! `labgpu setup docker --buildkit`: a systemd drop-in for docker.service that makes
//! dockerd 26 and later run BuildKit's `RUN` steps with labgpu
//! (`DOCKER_BUILDKIT_RUNC_COMMAND`), which the proxy requires before it lets users' BuildKit
//! builds through. An environment variable is read when dockerd starts: the drop-in applies
//! at the next restart of Docker, which labgpu never does itself (it would stop running
//! containers). `--remove` deletes the drop-in; a dockerd started with it keeps the variable
//! until it restarts, and its BuildKit steps then fail (labgpu is gone) rather than run
//! outside labgpu.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::SetupError;

/// Where drop-ins for docker.service live (`--systemd-dir`).
pub const SYSTEMD_DIR: &str = "/etc/systemd/system";
const DROP_IN: &str = "docker.service.d/labgpu-buildkit.conf";

pub fn drop_in_path(systemd_dir: &Path) -> PathBuf {
    systemd_dir.join(DROP_IN)
}

/// The drop-in's text for labgpu at `runtime_path`.
pub fn render(runtime_path: &str) -> Result<String, SetupError> {
    // systemd splits Environment= on spaces and expands % and \: a path with any of them
    // would name another file.
    if runtime_path
        .chars()
        .any(|c| c.is_whitespace() || matches!(c, '"' | '\'' | '\\' | '%' | '$'))
    {
        return Err(SetupError::UnquotablePath {
            path: PathBuf::from(runtime_path),
        });
    }
    Ok(format!(
        "# Written by `labgpu setup docker --buildkit`; `labgpu setup docker --remove` deletes it.\n\
         # dockerd 26 and later run BuildKit's RUN steps with this program instead of the first\n\
         # runc on their PATH; labgpu confines them as build steps and then runs runc.\n\
         [Service]\n\
         Environment=DOCKER_BUILDKIT_RUNC_COMMAND={runtime_path}\n"
    ))
}

/// Writes the drop-in unless it already says the same; `true` when it changed.
pub fn install(systemd_dir: &Path, runtime_path: &str) -> Result<bool, SetupError> {
    let text = render(runtime_path)?;
    let path = drop_in_path(systemd_dir);
    if fs::read_to_string(&path).is_ok_and(|t| t == text) {
        return Ok(false);
    }
    let dir = path.parent().expect("the drop-in has a directory");
    fs::create_dir_all(dir).map_err(|cause| SetupError::CreateDir {
        path: dir.to_path_buf(),
        cause,
    })?;
    let tmp = dir.join(".labgpu-buildkit.conf.tmp");
    let write = || -> io::Result<()> {
        fs::write(&tmp, &text)?;
        fs::rename(&tmp, &path)
    };
    write().map_err(|cause| {
        let _ = fs::remove_file(&tmp);
        SetupError::Write {
            path: path.clone(),
            cause,
        }
    })?;
    Ok(true)
}

/// Deletes the drop-in; `true` when there was one.
pub fn remove(systemd_dir: &Path) -> Result<bool, SetupError> {
    let path = drop_in_path(systemd_dir);
    match fs::remove_file(&path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(cause) => Err(SetupError::Write { path, cause }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn install_is_idempotent_and_remove_deletes() {
        let d = tempfile::tempdir().unwrap();
        assert!(install(d.path(), "/usr/bin/labgpu").unwrap());
        let text = fs::read_to_string(drop_in_path(d.path())).unwrap();
        assert!(text
            .contains("\n[Service]\nEnvironment=DOCKER_BUILDKIT_RUNC_COMMAND=/usr/bin/labgpu\n"));
        assert!(!install(d.path(), "/usr/bin/labgpu").unwrap());
        assert!(install(d.path(), "/opt/labgpu/bin/labgpu").unwrap());
        assert!(remove(d.path()).unwrap());
        assert!(!remove(d.path()).unwrap());
        assert!(!drop_in_path(d.path()).exists());
    }

    #[test]
    fn paths_systemd_would_split_or_expand_are_refused() {
        for bad in ["/opt/lab gpu/labgpu", "/opt/%h/labgpu", "/opt/$X/labgpu"] {
            assert!(render(bad).is_err(), "{bad}");
        }
    }
}
