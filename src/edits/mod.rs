//! The spec edits, each a function of (spec, decision) that narrows the spec or refuses it.
//!
//! Order matters only for the messages: the privileged check runs first so `--privileged`
//! is refused as such rather than by whichever of its parts another edit meets first.

pub mod annotations;
pub mod build_step;
pub mod cdi;
pub mod devices;
pub mod fairshare;
pub mod mounts;
pub mod nvidia;
pub mod process;
pub mod seccomp;
pub mod security;
pub mod stamp;
pub mod system_paths;
pub mod userns;

use std::path::PathBuf;

use serde_json::Value;

use crate::decide::Decision;

#[derive(Debug, thiserror::Error)]
pub enum EditError {
    #[error("privileged containers are not allowed (allow_privileged in {section})")]
    Privileged { section: String },
    #[error("the host {ns} namespace is not allowed (allow_host_namespaces in {section})")]
    HostNamespace { ns: String, section: String },
    #[error("the host network is not allowed (allow_host_network in {section})")]
    HostNetwork { section: String },
    #[error("joining the {ns} namespace of container {container} ({owner}) is not allowed: only the owner's own containers can be joined")]
    ForeignNamespace {
        ns: String,
        container: String,
        owner: String,
    },
    #[error("{what} is not allowed (allow_unconfined in {section})")]
    Unconfined { what: String, section: String },
    #[error("bind mount of host path {source_path} (to {destination}) is not allowed: it is not under a bind_allow prefix or a mount source in {section}")]
    BindNotAllowed {
        source_path: PathBuf,
        destination: String,
        section: String,
    },
    #[error("host path {source_path} belongs to container {container} ({owner}): only the owner's own containers' files can be mounted")]
    ForeignContainerFile {
        source_path: PathBuf,
        container: String,
        owner: String,
    },
    #[error("volume {volume:?} is not a plain Docker volume: {backing} is mounted on it (mounted_volumes in {section})")]
    VolumeNotAllowed {
        volume: String,
        backing: String,
        section: String,
    },
    #[error("volume {0:?} was not inspected in the mount table before the check")]
    VolumeUnknown(String),
    #[error("{cause} (seccomp_profiles in {section})")]
    Seccomp {
        cause: crate::seccomp::SeccompError,
        section: String,
    },
    #[error(transparent)]
    Cap(#[from] crate::fairshare::cap::CapError),
    #[error("the spec already has a user namespace, so Docker's userns-remap is on: userns = \"owner\" in {section} needs dockerd without userns-remap")]
    UsernsRemap { section: String },
    #[error("joining the {ns} namespace {path} is not possible with userns = \"owner\" ({section}): {reason}")]
    UsernsJoin {
        ns: String,
        path: String,
        reason: String,
        section: String,
    },
    #[error("the host's {ns} namespace cannot be used with userns = \"owner\" ({section}): it belongs to no user namespace of the owner's (allow_host_namespaces)")]
    UsernsHostNamespace { ns: String, section: String },
    #[error("the spec's {field} is malformed: {reason}")]
    Malformed { field: &'static str, reason: String },
}

/// What the edits took away, for the decision log line.
#[derive(Debug, Default)]
pub struct Report {
    pub removed: Vec<String>,
    pub added: Vec<String>,
}

impl Report {
    pub fn removed(&mut self, what: impl Into<String>) {
        self.removed.push(what.into());
    }

    pub fn added(&mut self, what: impl Into<String>) {
        self.added.push(what.into());
    }
}

/// Every create-time edit, in order.
pub fn apply_all(spec: &mut Value, d: &Decision, report: &mut Report) -> Result<(), EditError> {
    security::check_privileged(spec, d)?;
    build_step::apply(spec, d, report)?;
    security::apply(spec, d, report)?;
    seccomp::apply(spec, d, report)?;
    system_paths::apply(spec, d, report)?;
    annotations::apply(spec, d, report)?;
    devices::apply(spec, d, report)?;
    cdi::strip_docker_applied(spec, d, report)?;
    mounts::apply(spec, d, report)?;
    nvidia::apply(spec, report);
    cdi::apply(spec, d, report)?;
    fairshare::apply(spec, d, report)?;
    userns::apply(spec, d, report)?;
    if let Some(process) = spec.get_mut("process") {
        process::sanitize(process, &d.process, report)?;
    }
    stamp::apply(spec, d);
    Ok(())
}

#[cfg(test)]
pub(crate) mod testing {
    use std::collections::BTreeSet;
    use std::path::PathBuf;

    use crate::decide::{Decision, ProcessRules};
    use crate::gpu::DevNode;

    fn node(name: &str, major: i64, minor: i64) -> DevNode {
        DevNode {
            container_path: format!("/dev/{name}"),
            host_path: PathBuf::from(format!("/fake/{name}")),
            major,
            minor,
        }
    }

    /// alice: GPU 0, control nodes nvidiactl (195:255) and nvidia-uvm (511:0), default caps.
    pub fn decision() -> Decision {
        Decision {
            owner: Some("alice".into()),
            gpu_ids: vec![0],
            nodes: vec![
                node("nvidia0", 195, 0),
                node("nvidiactl", 195, 255),
                node("nvidia-uvm", 511, 0),
            ],
            grants: Vec::new(),
            pool_gpus: Vec::new(),
            nvidia_majors: BTreeSet::from([195, 511]),
            extra_devices: Vec::new(),
            process: ProcessRules {
                capabilities: ["CAP_CHOWN", "CAP_KILL", "CAP_SETUID"]
                    .map(String::from)
                    .into(),
                no_new_privileges: true,
                user: None,
                allow_unconfined: false,
                userns: false,
                extra_gids: Vec::new(),
            },
            allow_privileged: false,
            allow_host_namespaces: false,
            allow_host_network: false,
            mounts: Vec::new(),
            bind_allow: vec![PathBuf::from("/srv/datasets")],
            docker_root: PathBuf::from("/var/lib/docker"),
            volume_backings: Default::default(),
            mounted_volumes: Default::default(),
            cpu_count: 0,
            host: crate::decide::Host::default(),
            seccomp_profiles: Vec::new(),
            runc_root: None,
            cdi: None,
            ceilings: Default::default(),
            user_cgroups: "labgpu".into(),
            cgroup_driver: crate::fairshare::cgroup::Driver::Cgroupfs,
            userns: None,
            docker_cdi: Default::default(),
            container_id: "cid".into(),
            build_step: false,
            policy_sha256: "00".repeat(32),
        }
    }
}
