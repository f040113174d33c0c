//! The proxy's refusals: `RuleError` for what the rules decide from the request alone,
//! `ProxyError` for everything a request can end in, with the HTTP status each maps to.

use std::path::PathBuf;

use hyper::StatusCode;

use super::identity::IdentityError;
use crate::policy::PolicyError;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RuleError {
    #[error("request path {0:?} is not a Docker API path this proxy accepts")]
    BadPath(String),
    #[error("API version {0} is too old for the labgpu proxy (1.24 or newer)")]
    OldApi(String),
    #[error(
        "Content-Type {0:?} is not accepted: dockerd would read query parameters from the body"
    )]
    FormBody(String),
    #[error("{method} {path} is not allowed through the labgpu proxy")]
    NotAllowed { method: String, path: String },
    #[error("{what}: only the administrator (root on the host) may use this; {why}")]
    AdminOnly { what: String, why: &'static str },
    #[error("request body is not valid JSON: {0}")]
    BadJson(String),
    #[error("{field} must be {expected}")]
    BadField {
        field: String,
        expected: &'static str,
    },
    #[error("key {key:?} appears twice (Docker reads keys case-insensitively)")]
    DuplicateKey { key: String },
    #[error("query parameter filters is not valid: {0}")]
    BadFilters(String),
    #[error("the query string has {0}")]
    BadQuery(String),
    #[error("checking the request took longer than {0:?}")]
    Deadline(std::time::Duration),
    #[error("privileged containers are not allowed for {user} (allow_privileged in {section})")]
    Privileged { user: String, section: String },
    #[error(
        "{field} = {value:?} (a host namespace) is not allowed for {user} ({key} in {section})"
    )]
    HostNamespace {
        field: &'static str,
        value: String,
        user: String,
        key: &'static str,
        section: String,
    },
    #[error(
        "{field} = {value:?} is not allowed: only the administrator places containers in cgroups"
    )]
    CgroupParent { field: &'static str, value: String },
    #[error("{opt} is not allowed for {user} (allow_unconfined in {section})")]
    Unconfined {
        opt: String,
        user: String,
        section: String,
    },
    #[error("bind mount of host path {path} is not allowed for {user} (bind_allow or mounts in {section})")]
    BindNotAllowed {
        path: PathBuf,
        user: String,
        section: String,
    },
    #[error("device {path} is not allowed for {user} (devices in {section})")]
    DeviceNotAllowed {
        path: String,
        user: String,
        section: String,
    },
    #[error("{field} cannot be changed on a running container through the labgpu proxy")]
    UpdateRefused { field: String },
    #[error("build context {0:?} would be fetched by the Docker daemon as root, with root's credentials and the host's network; clone or download it yourself and build from the directory")]
    BuildRemote(String),
    #[error("container name {0:?} is not a valid container name or id")]
    BadContainerRef(String),
    #[error("BuildKit builds through POST /build (version=2, what Docker CLIs before 23 send) are not allowed through the labgpu proxy, which checks BuildKit builds on /grpc (docker buildx, with Docker 26 or later); build with the classic builder: DOCKER_BUILDKIT=0 docker build …")]
    BuildKit,
    #[error("{field} is not a field the labgpu proxy knows; it refuses what it cannot check")]
    UnknownField { field: String },
    #[error("{field} is not allowed through the labgpu proxy: {reason}")]
    FieldRefused { field: String, reason: &'static str },
    #[error("{field} = {value:?} is not allowed through the labgpu proxy: {reason}")]
    ValueRefused {
        field: String,
        value: String,
        reason: String,
    },
}

impl RuleError {
    /// Malformed requests are 400; everything the policy refuses is 403.
    pub fn status(&self) -> u16 {
        match self {
            RuleError::BadPath(_)
            | RuleError::OldApi(_)
            | RuleError::FormBody(_)
            | RuleError::BadJson(_)
            | RuleError::BadField { .. }
            | RuleError::DuplicateKey { .. }
            | RuleError::BadFilters(_)
            | RuleError::BadQuery(_)
            | RuleError::BadContainerRef(_)
            | RuleError::UnknownField { .. } => 400,
            _ => 403,
        }
    }
}

impl RuleError {
    /// A short stable name for the metrics' `reason` label.
    pub fn reason(&self) -> &'static str {
        match self {
            RuleError::BadPath(_) => "bad_path",
            RuleError::OldApi(_) => "old_api",
            RuleError::FormBody(_) => "form_body",
            RuleError::NotAllowed { .. } => "endpoint_not_allowed",
            RuleError::AdminOnly { .. } => "admin_only",
            RuleError::BadJson(_) | RuleError::BadField { .. } | RuleError::DuplicateKey { .. } => {
                "malformed_body"
            }
            RuleError::BadFilters(_) | RuleError::BadQuery(_) => "malformed_query",
            RuleError::Deadline(_) => "deadline",
            RuleError::Privileged { .. } => "privileged",
            RuleError::HostNamespace { .. } => "host_namespace",
            RuleError::CgroupParent { .. } => "cgroup_parent",
            RuleError::Unconfined { .. } => "unconfined",
            RuleError::BindNotAllowed { .. } => "bind_not_allowed",
            RuleError::DeviceNotAllowed { .. } => "device_not_allowed",
            RuleError::UpdateRefused { .. } => "update_refused",
            RuleError::BuildRemote(_) => "build_remote",
            RuleError::BadContainerRef(_) => "bad_container_ref",
            RuleError::BuildKit => "buildkit",
            RuleError::UnknownField { .. } => "unknown_field",
            RuleError::FieldRefused { .. } => "field_refused",
            RuleError::ValueRefused { .. } => "value_refused",
        }
    }
}

/// What the server must do with a request from a policy user.

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error(transparent)]
    Rule(#[from] RuleError),
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error(transparent)]
    Archive(#[from] super::archive::ArchiveError),
    #[error("the proxy cannot use its policy: {0}")]
    Policy(PolicyError),
    #[error("cannot reach docker at {path}: {cause}")]
    UpstreamConnect {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("docker connection failed: {0}")]
    Upstream(hyper::Error),
    #[error("no such container: {0}")]
    NoSuchContainer(String),
    #[error("no such exec instance: {0}")]
    NoSuchExec(String),
    #[error("container {0:?} belongs to another user")]
    NotYours(String),
    #[error("{what} {name:?} belongs to another user")]
    NotYoursObject { what: &'static str, name: String },
    #[error("{what} {name:?} was made by the administrator; {why}")]
    Shared {
        what: &'static str,
        name: String,
        why: &'static str,
    },
    #[error(transparent)]
    Load(#[from] super::images::LoadError),
    #[error("docker answered {status} to {what}: {message}")]
    UpstreamStatus {
        status: StatusCode,
        what: String,
        message: String,
    },
    #[error("cannot read the request body: {0}")]
    Body(String),
    #[error("query parameter {0} is missing")]
    MissingParam(&'static str),
    #[error("the container was created but could not be recorded, so it was removed again: {0}")]
    Record(crate::records::RecordError),
    #[error(transparent)]
    Session(#[from] super::session::SessionError),
    #[error(transparent)]
    Slurm(#[from] crate::slurm::SlurmError),
    #[error("builds are not allowed: their steps are containers nobody owns, and {policy} [runtime] unlabeled = \"deny\" refuses them; the administrator sets unlabeled = \"no-gpu\" to allow builds")]
    BuildsNeedNoGpu { policy: PathBuf },
    #[error("builds are not allowed: dockerd's default runtime is {default:?}, so build steps would run without labgpu; the administrator runs `labgpu setup docker --default` (runtime {runtime:?})")]
    BuildsNeedDefaultRuntime { default: String, runtime: String },
    #[error("BuildKit builds are not allowed: dockerd {version} runs BuildKit's build steps with plain runc, outside labgpu (Docker 26 or later lets labgpu run them); build with the classic builder: DOCKER_BUILDKIT=0 docker build …")]
    BuildKitOldDocker { version: String },
    #[error("BuildKit builds are not allowed: dockerd's DOCKER_BUILDKIT_RUNC_COMMAND is {found}, not labgpu ({}), so build steps would run outside labgpu; the administrator runs `labgpu setup docker` and restarts Docker", labgpu.display())]
    BuildKitRunc { found: String, labgpu: PathBuf },
    #[error("BuildKit session refused: {0}")]
    BuildKitSession(String),
}

// These three say their cause in their own sentence, so they do not also hand it out as
// `source()`: a printer that walks the chain would say it twice. Hence `From` by hand
// rather than `#[from]` (which implies `#[source]`).
impl From<PolicyError> for ProxyError {
    fn from(e: PolicyError) -> Self {
        ProxyError::Policy(e)
    }
}

impl From<hyper::Error> for ProxyError {
    fn from(e: hyper::Error) -> Self {
        ProxyError::Upstream(e)
    }
}

impl From<crate::records::RecordError> for ProxyError {
    fn from(e: crate::records::RecordError) -> Self {
        ProxyError::Record(e)
    }
}

impl ProxyError {
    /// A short stable name for the metrics' `reason` label (the refusals by reason).
    pub fn reason(&self) -> &'static str {
        match self {
            ProxyError::Rule(e) => e.reason(),
            ProxyError::Identity(_) => "unknown_user",
            ProxyError::Archive(_) => "archive",
            ProxyError::Policy(_) => "policy_unreadable",
            ProxyError::UpstreamConnect { .. } | ProxyError::Upstream(_) => "docker_unreachable",
            ProxyError::NoSuchContainer(_) | ProxyError::NoSuchExec(_) => "no_such_object",
            ProxyError::NotYours(_) | ProxyError::NotYoursObject { .. } => "not_yours",
            ProxyError::Shared { .. } => "shared_object",
            ProxyError::Load(_) => "image_load",
            ProxyError::UpstreamStatus { .. } => "docker_refused",
            ProxyError::Body(_) | ProxyError::MissingParam(_) => "malformed_request",
            ProxyError::Record(_) => "record_failed",
            ProxyError::Slurm(_) => "slurm",
            ProxyError::Session(_) => "session",
            ProxyError::BuildKitOldDocker { .. } | ProxyError::BuildKitRunc { .. } => {
                "buildkit_disabled"
            }
            ProxyError::BuildKitSession(_) => "buildkit_session",
            ProxyError::BuildsNeedNoGpu { .. } | ProxyError::BuildsNeedDefaultRuntime { .. } => {
                "builds_disabled"
            }
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::Rule(e) => {
                StatusCode::from_u16(e.status()).unwrap_or(StatusCode::FORBIDDEN)
            }
            ProxyError::Identity(_)
            | ProxyError::NotYours(_)
            | ProxyError::NotYoursObject { .. }
            | ProxyError::Shared { .. }
            | ProxyError::Load(_) => StatusCode::FORBIDDEN,
            ProxyError::Archive(e) => {
                StatusCode::from_u16(e.status()).unwrap_or(StatusCode::FORBIDDEN)
            }
            ProxyError::Policy(_) => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::UpstreamConnect { .. } | ProxyError::Upstream(_) => StatusCode::BAD_GATEWAY,
            ProxyError::NoSuchContainer(_) | ProxyError::NoSuchExec(_) => StatusCode::NOT_FOUND,
            ProxyError::UpstreamStatus { status, .. } => *status,
            ProxyError::Body(_) | ProxyError::MissingParam(_) => StatusCode::BAD_REQUEST,
            ProxyError::Record(_) => StatusCode::INTERNAL_SERVER_ERROR,
            // The administrator's configuration, not the request, is what is missing.
            ProxyError::Session(_) => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Slurm(crate::slurm::SlurmError::Run { .. }) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ProxyError::Slurm(_) => StatusCode::FORBIDDEN,
            ProxyError::BuildsNeedNoGpu { .. }
            | ProxyError::BuildsNeedDefaultRuntime { .. }
            | ProxyError::BuildKitOldDocker { .. }
            | ProxyError::BuildKitRunc { .. }
            | ProxyError::BuildKitSession(_) => StatusCode::FORBIDDEN,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The metrics' `reason` label: one per kind of refusal, the policy's refusals by name.
    #[test]
    fn refusals_have_stable_reasons() {
        let privileged = RuleError::Privileged {
            user: "bob".into(),
            section: "[users.bob]".into(),
        };
        assert_eq!(ProxyError::from(privileged).reason(), "privileged");
        assert_eq!(ProxyError::NotYours("c1".into()).reason(), "not_yours");
        let bind = RuleError::BindNotAllowed {
            path: "/etc".into(),
            user: "bob".into(),
            section: "[users.bob]".into(),
        };
        assert_eq!(ProxyError::from(bind).reason(), "bind_not_allowed");
        for r in ["privileged", "not_yours", "bind_not_allowed"] {
            assert!(
                r.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{r}"
            );
        }
    }
}
