//! `labgpu seccomp default|hash`: the admin's view of this module, and the only part of it
//! that reads files or the host (the kernel release, the capabilities it supports).

use std::str::FromStr;

use anyhow::{bail, Context};
use serde_json::Value;

use super::{
    docker_default, from_docker_format, profile_sha256, to_value, Generation, KernelVersion,
    NativeArch,
};
use crate::cli_args::{SeccompCommand, SeccompTarget};

pub fn run(command: SeccompCommand) -> anyhow::Result<i32> {
    match command {
        SeccompCommand::Default { target } => {
            let t = Target::from_args(&target)?;
            let p = docker_default(t.gen, &t.caps, t.arch, t.kernel);
            println!("{}", serde_json::to_string_pretty(&to_value(&p))?);
        }
        SeccompCommand::Hash { file, oci, target } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let value = if oci {
                let v: Value = serde_json::from_str(&text)
                    .with_context(|| format!("{} is not JSON", file.display()))?;
                // A whole config.json, or the seccomp object alone.
                v.pointer("/linux/seccomp").cloned().unwrap_or(v)
            } else {
                let t = Target::from_args(&target)?;
                let p = from_docker_format(&text, t.gen, &t.caps, t.arch, t.kernel)
                    .with_context(|| format!("resolving {}", file.display()))?;
                to_value(&p)
            };
            println!("{}", profile_sha256(&value));
        }
    }
    Ok(0)
}

/// What a dockerd would resolve for, from the command line and this host.
struct Target {
    gen: Generation,
    caps: Vec<String>,
    arch: NativeArch,
    kernel: KernelVersion,
}

impl Target {
    fn from_args(a: &SeccompTarget) -> anyhow::Result<Self> {
        let Some(version) = &a.docker else {
            bail!("--docker VERSION is needed (docker version --format '{{{{.Server.Version}}}}')");
        };
        let gen = Generation::for_docker_version(version)?;
        let arch = match &a.arch {
            Some(name) => NativeArch::from_name(name)?,
            None => NativeArch::native()?,
        };
        let kernel = match &a.kernel {
            Some(k) => KernelVersion::parse_release(k)?,
            None => {
                let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
                    .context("reading /proc/sys/kernel/osrelease (or pass --kernel X.Y)")?;
                KernelVersion::parse_release(&release)?
            }
        };
        let supported: Vec<String> = caps::runtime::thread_all_supported()
            .into_iter()
            .map(|c| c.to_string())
            .collect();
        let caps = docker_caps(gen, &a.cap_add, &a.cap_drop, &supported)?;
        Ok(Self {
            gen,
            caps,
            arch,
            kernel,
        })
    }
}

/// Docker's default capability set (the same 14 in every Docker since 20.10).
const DOCKER_DEFAULT_CAPS: [&str; 14] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// The bounding set dockerd gives a container run with these --cap-add / --cap-drop, as
/// its TweakCapabilities does: ALL in the adds means every capability less the drops; ALL
/// in the drops means only the adds; otherwise the defaults less the drops plus the adds.
/// "Every capability" is what the kernel supports (`supported`), and for Docker 20.10 no
/// further than CAP_AUDIT_READ (its capability library stopped there).
fn docker_caps(
    gen: Generation,
    adds: &[String],
    drops: &[String],
    supported: &[String],
) -> anyhow::Result<Vec<String>> {
    let adds = normalize_caps(adds)?;
    let drops = normalize_caps(drops)?;
    let all = || -> Vec<String> {
        let mut v: Vec<caps::Capability> = supported
            .iter()
            .filter_map(|c| caps::Capability::from_str(c).ok())
            .filter(|c| !gen.is_20_10() || c.index() <= caps::Capability::CAP_AUDIT_READ.index())
            .collect();
        v.sort_by_key(caps::Capability::index);
        v.into_iter().map(|c| c.to_string()).collect()
    };
    let is_all = |l: &[String]| l.iter().any(|c| c == "ALL");
    let mut out: Vec<String> = if is_all(&adds) {
        all().into_iter().filter(|c| !drops.contains(c)).collect()
    } else if is_all(&drops) {
        Vec::new()
    } else {
        DOCKER_DEFAULT_CAPS
            .iter()
            .map(|c| c.to_string())
            .filter(|c| !drops.contains(c))
            .collect()
    };
    for c in adds.into_iter().filter(|c| c != "ALL") {
        if !out.contains(&c) {
            out.push(c);
        }
    }
    Ok(out)
}

/// "sys_admin" → "CAP_SYS_ADMIN", as dockerd normalises; "ALL" stays.
fn normalize_caps(list: &[String]) -> anyhow::Result<Vec<String>> {
    list.iter()
        .map(|c| {
            let up = c.to_ascii_uppercase();
            if up == "ALL" {
                return Ok(up);
            }
            let full = if up.starts_with("CAP_") {
                up
            } else {
                format!("CAP_{up}")
            };
            caps::Capability::from_str(&full)
                .map(|_| full.clone())
                .map_err(|_| anyhow::anyhow!("unknown capability {c:?}"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(l: &[&str]) -> Vec<String> {
        l.iter().map(|c| c.to_string()).collect()
    }

    fn supported() -> Vec<String> {
        caps::all().into_iter().map(|c| c.to_string()).collect()
    }

    #[test]
    fn cap_flags_read_like_docker_run() {
        let g = Generation::V25_0_3;
        let plain = docker_caps(g, &[], &[], &supported()).unwrap();
        assert_eq!(plain, s(&DOCKER_DEFAULT_CAPS));
        let admin = docker_caps(g, &s(&["sys_admin"]), &s(&["CAP_MKNOD"]), &supported()).unwrap();
        assert!(admin.contains(&"CAP_SYS_ADMIN".to_string()));
        assert!(!admin.contains(&"CAP_MKNOD".to_string()));
        let none = docker_caps(g, &s(&["SYS_PTRACE"]), &s(&["ALL"]), &supported()).unwrap();
        assert_eq!(none, s(&["CAP_SYS_PTRACE"]));
        assert!(docker_caps(g, &s(&["SYS_WIZARD"]), &[], &supported()).is_err());
    }

    #[test]
    fn all_stops_at_audit_read_on_20_10() {
        let modern = docker_caps(Generation::V25_0_3, &s(&["ALL"]), &[], &supported()).unwrap();
        assert!(modern.contains(&"CAP_BPF".to_string()));
        let old = docker_caps(Generation::V20_10_18, &s(&["ALL"]), &[], &supported()).unwrap();
        assert!(old.contains(&"CAP_AUDIT_READ".to_string()));
        assert!(!old.contains(&"CAP_BPF".to_string()));
        assert!(!old.contains(&"CAP_PERFMON".to_string()));
    }
}
