//! Seccomp: Docker's default profile as labgpu's own model, and the rule the runtime and the
//! proxy enforce with it.
//!
//! dockerd resolves its default profile for the capabilities a user *asked* for: with
//! `--cap-add SYS_ADMIN` the profile allows mount, unshare, setns, bpf and unfiltered clone.
//! labgpu then cuts the capabilities, so a kept profile would still let those syscalls
//! through. The rule ([`enforce`]):
//!
//! 1. A profile equal to Docker's default for the capabilities the container asked for
//!    ([`identify_default`]) is replaced by that same Docker generation's default for the
//!    capabilities labgpu keeps ([`docker_default`]): never refused, always narrowed.
//! 2. Any other profile is kept if the policy lists its sha256 ([`profile_sha256`]).
//! 3. Otherwise it must allow nothing beyond the strictest default of every known Docker
//!    for the kept capabilities ([`strictest_default`], [`check_within`]), and is refused at
//!    its first rule that does.
//!
//! Docker's profile format (with per-capability, per-architecture and per-kernel rules) is
//! resolved exactly as each dockerd generation does ([`from_docker_format`]), so that
//! `labgpu seccomp hash` prints the hash the runtime will see. Everything here is pure
//! (the architecture and kernel release are the caller's to find out) except [`memo`],
//! where the runtime remembers recognised defaults between creates.

mod check;
pub mod cmd;
mod docker_default;
mod docker_format;
mod generation;
pub mod memo;
mod oci;

use oci_spec::runtime::{Arch, LinuxSeccomp};
use serde_json::Value;

pub use check::{check_within, strictest_default};
pub use docker_default::docker_default;
pub use generation::Generation;
pub use oci::{from_value, normalize, profile_sha256, to_value};

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("docker version {version:?}: {why}")]
    DockerVersion { version: String, why: String },
    #[error("seccomp profile: {0}")]
    DockerFormat(String),
    #[error("linux.seccomp is not a runtime-spec seccomp object: {0}")]
    Oci(String),
    #[error(
        "architecture {0:?} is not one labgpu knows Docker's default seccomp profile for \
         (x86_64, aarch64); only profiles the policy lists by sha256 can run here"
    )]
    UnknownArch(String),
    #[error("kernel release {0:?} does not start with <kernel>.<major>")]
    KernelRelease(String),
    #[error("the seccomp profile allows every syscall it does not list (defaultAction {0})")]
    DefaultAllows(String),
    #[error("the seccomp profile sets flags ({0}), which labgpu does not allow")]
    Flags(String),
    #[error("the seccomp profile hands syscalls to a listener ({0}), which labgpu does not allow")]
    Listener(String),
    #[error(
        "the seccomp profile covers architecture {0}, which Docker's default profile for this \
         host does not"
    )]
    Architecture(String),
    #[error(
        "seccomp rule syscalls[{index}] allows {names}, which Docker's default profile does \
         not allow for the container's capabilities"
    )]
    Exceeds { index: usize, names: String },
    #[error(
        "seccomp rule syscalls[{index}] allows {names} under argument conditions that are not \
         one of Docker's default rules"
    )]
    ArgsExceed { index: usize, names: String },
    #[error("{cause}; the policy does not list this profile (sha256 {sha256})")]
    NotListed {
        cause: Box<SeccompError>,
        sha256: String,
    },
}

/// The host architectures labgpu models Docker's default for. Others have their own
/// per-architecture rules (s390 clone, ppc64le, riscv64 ...) that nobody here has checked
/// against a real dockerd; profiles there must be listed by sha256.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NativeArch {
    X86_64,
    Aarch64,
}

impl NativeArch {
    /// The architecture this labgpu binary was built for (= the host's, for a runtime).
    pub fn native() -> Result<Self, SeccompError> {
        Self::from_name(std::env::consts::ARCH)
    }

    /// From a kernel/Rust name (`x86_64`, `aarch64`) or Go's (`amd64`, `arm64`).
    pub fn from_name(name: &str) -> Result<Self, SeccompError> {
        match name {
            "x86_64" | "amd64" => Ok(Self::X86_64),
            "aarch64" | "arm64" => Ok(Self::Aarch64),
            other => Err(SeccompError::UnknownArch(other.to_string())),
        }
    }

    /// The name dockerd matches a rule's `arches` against (Go's GOARCH).
    pub(crate) fn docker_name(self) -> &'static str {
        match self {
            Self::X86_64 => "amd64",
            Self::Aarch64 => "arm64",
        }
    }

    /// The archMap entry dockerd picks for this host.
    pub(crate) fn seccomp_arch(self) -> Arch {
        match self {
            Self::X86_64 => Arch::ScmpArchX86_64,
            Self::Aarch64 => Arch::ScmpArchAarch64,
        }
    }
}

/// A kernel version as Docker compares them: "<kernel>.<major>", the rest ignored
/// ("6.1.0-18-amd64" is 6.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct KernelVersion {
    pub kernel: u32,
    pub major: u32,
}

impl KernelVersion {
    pub const fn new(kernel: u32, major: u32) -> Self {
        Self { kernel, major }
    }

    /// From a release string as uname(2) gives it (dockerd reads it the same way).
    pub fn parse_release(release: &str) -> Result<Self, SeccompError> {
        let bad = || SeccompError::KernelRelease(release.to_string());
        let (k, rest) = release.trim().split_once('.').ok_or_else(bad)?;
        let leading = |s: &str| -> Option<u32> {
            let d: String = s.chars().take_while(char::is_ascii_digit).collect();
            d.parse().ok()
        };
        Ok(Self::new(
            leading(k).ok_or_else(bad)?,
            leading(rest).ok_or_else(bad)?,
        ))
    }

    /// A profile's `minKernel`, as Docker's decoder takes it: exactly "<k>.<m>", each a
    /// number below 256, not "0.0"; "" counts as 0.0 (so an excludes rule with it is never
    /// applied, and an includes rule always).
    pub(crate) fn parse_min_kernel(s: &str) -> Option<Self> {
        if s.is_empty() {
            return Some(Self::new(0, 0));
        }
        let (k, m) = s.split_once('.')?;
        let small = |p: &str| -> Option<u32> {
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            p.parse::<u8>().ok().map(u32::from)
        };
        let v = Self::new(small(k)?, small(m)?);
        (v != Self::new(0, 0)).then_some(v)
    }
}

impl std::fmt::Display for KernelVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.kernel, self.major)
    }
}

/// The generation whose default profile, resolved for `caps` (the bounding set dockerd saw,
/// before labgpu cut it), is `profile`. Equality is exact, entry for entry and in order,
/// after the runtime-spec's empty-field normalisation: dockerd's resolution is
/// deterministic, so its default always compares equal, and anything looser would have to
/// prove itself harmless. No two generations resolve alike (a test checks), so at most one
/// answers.
pub fn identify_default(
    profile: &LinuxSeccomp,
    caps: &[String],
    arch: NativeArch,
    kernel: KernelVersion,
) -> Option<Generation> {
    let wanted = normalize(profile.clone());
    let first = wanted.syscalls().as_ref().and_then(|s| s.first())?;
    // Resolving all fourteen costs a millisecond or two on every create; the first rule
    // alone already tells most generations apart.
    Generation::ALL
        .into_iter()
        .rev()
        .filter(|&g| {
            first
                .names()
                .iter()
                .map(String::as_str)
                .eq(docker_default::unconditional_names(g))
        })
        .find(|&g| docker_default(g, caps, arch, kernel) == wanted)
}

/// Converts a Docker-format profile (as `--security-opt seccomp=FILE` sends it) the way
/// `gen`'s dockerd does for a container with bounding capabilities `caps`.
pub fn from_docker_format(
    json: &str,
    gen: Generation,
    caps: &[String],
    arch: NativeArch,
    kernel: KernelVersion,
) -> Result<LinuxSeccomp, SeccompError> {
    let profile = docker_format::parse(json)?;
    let target = docker_format::Target { caps, arch, kernel };
    docker_format::resolve(&profile, gen, &target)?.ok_or_else(|| {
        SeccompError::DockerFormat(
            "the profile has neither defaultAction nor syscalls, which dockerd reads as \
             seccomp=unconfined"
                .into(),
        )
    })
}

/// What the runtime knows when it meets a spec's `linux.seccomp`.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    /// `process.capabilities.bounding` as dockerd wrote it (before labgpu's cut).
    pub requested_caps: &'a [String],
    /// The bounding set labgpu leaves the container.
    pub kept_caps: &'a [String],
    /// `None` on an architecture labgpu has no model for: only listed profiles pass.
    pub arch: Option<NativeArch>,
    pub kernel: KernelVersion,
    /// sha256 ([`profile_sha256`]) of the profiles the admin allows as they are.
    pub allowed_sha256: &'a [String],
}

/// What [`enforce`] decided.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Docker's default for the requested capabilities: write `profile` (the same
    /// generation's default for the kept ones) in its place.
    ReplaceDefault {
        generation: Generation,
        profile: Value,
    },
    /// Listed in the policy by this sha256: keep it as it is.
    Listed { sha256: String },
    /// Allows nothing beyond every known Docker's default for the kept capabilities: keep it.
    Within,
}

/// The seccomp rule for one container (see the module documentation). `profile` is the
/// spec's `linux.seccomp`; a spec without one runs unconfined, which is the caller's to
/// refuse (edits::security does) before asking this.
///
/// A recognised default is replaced before the policy's list is consulted: listing a
/// Docker default by hash must not undo the capability cut.
pub fn enforce(profile: &Value, ctx: &Context) -> Result<Outcome, SeccompError> {
    let parsed = from_value(profile);
    if let (Ok(p), Some(arch)) = (&parsed, ctx.arch) {
        if let Some(generation) = identify_default(p, ctx.requested_caps, arch, ctx.kernel) {
            let narrowed = docker_default(generation, ctx.kept_caps, arch, ctx.kernel);
            return Ok(Outcome::ReplaceDefault {
                generation,
                profile: to_value(&narrowed),
            });
        }
    }
    let sha256 = profile_sha256(profile);
    if ctx
        .allowed_sha256
        .iter()
        .any(|s| s.eq_ignore_ascii_case(&sha256))
    {
        return Ok(Outcome::Listed { sha256 });
    }
    let not_listed = |cause| SeccompError::NotListed {
        cause: Box::new(cause),
        sha256: sha256.clone(),
    };
    let p = parsed.map_err(not_listed)?;
    let arch = ctx
        .arch
        .ok_or_else(|| not_listed(SeccompError::UnknownArch(std::env::consts::ARCH.into())))?;
    check_within(&p, &strictest_default(ctx.kept_caps, arch, ctx.kernel)).map_err(not_listed)?;
    Ok(Outcome::Within)
}

#[cfg(test)]
mod tests;
