//! The admin's policy file: schema v1, loading with line/column errors, and per-user resolution.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Deserializer};
use sha2::{Digest, Sha256};

use crate::accounts::Accounts;
use crate::fairshare::{ByteSize, Cpus, PortRange};
use crate::groups::{GroupTables, Origin};
pub use crate::pools::span::Span;

pub const DEFAULT_POLICY_PATH: &str = "/etc/labgpu/policy.toml";
pub const POLICY_ENV: &str = "LABGPU_POLICY";

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read policy file {path}: {cause}")]
    Read {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("policy file {path} line {line} column {column}: {message}")]
    Parse {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("policy file {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// Where the policy lives: `LABGPU_POLICY`, else `/etc/labgpu/policy.toml`.
pub fn policy_path() -> PathBuf {
    match std::env::var_os(POLICY_ENV) {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(DEFAULT_POLICY_PATH),
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    pub version: u32,
    #[serde(default)]
    pub runtime: RuntimeSection,
    #[serde(default)]
    pub gpus: GpusSection,
    #[serde(default)]
    pub defaults: Defaults,
    /// Present when users go through `labgpu proxy`: the runtime then trusts an owner only on
    /// containers the proxy recorded creating (see `records`).
    pub proxy: Option<ProxySection>,
    /// How `gpus = "slurm"` users' containers get their Slurm job's GPUs (`slurm`).
    pub slurm: Option<SlurmSection>,
    /// Each policy user's table. After [`Policy::apply_groups`] (done by [`Policy::load`]),
    /// it holds every member of a `[groups.NAME]` table too, each one's own keys over their
    /// groups' (see `groups`).
    /// GPUs handed out on demand (`[pools.NAME]`), at most `[users.NAME] pools` per user.
    #[serde(default)]
    pub pools: BTreeMap<String, PoolSection>,
    #[serde(default)]
    pub users: BTreeMap<String, UserPolicy>,
    /// `[groups.NAME]` tables keyed by host group, in file order.
    #[serde(default)]
    pub groups: GroupTables,
    /// For each user a group contributed to: which keys came from which group.
    #[serde(skip)]
    pub origins: BTreeMap<String, Origin>,
    /// The `[users]` tables as written, kept (when the file has group tables) for merging.
    #[serde(skip)]
    pub(crate) own_tables: Option<BTreeMap<String, toml::Table>>,
    /// sha256 of the file's bytes, stamped on every container so drift can be detected.
    #[serde(skip)]
    pub sha256: String,
    #[serde(skip)]
    pub path: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeSection {
    pub runc: Option<AbsPath>,
    #[serde(default = "default_owner_label")]
    pub owner_label: String,
    #[serde(default)]
    pub unlabeled: Unlabeled,
    /// Docker's data root, where `containers/<id>/config.v2.json` holds the owner label and
    /// `volumes/` the local volumes. Never derived from a spec (a user chooses mount sources);
    /// default: `data-root` of /etc/docker/daemon.json, else /var/lib/docker.
    pub docker_root: Option<AbsPath>,
    pub log: Option<AbsPath>,
    /// The name under which each user's parent cgroup lives (fair share): `/<name>/<user>`
    /// under the cgroupfs driver, `<name>-<user>.slice` (in `<name>.slice`) under systemd's.
    #[serde(default = "default_user_cgroups")]
    pub user_cgroups: CgroupName,
}

impl Default for RuntimeSection {
    fn default() -> Self {
        RuntimeSection {
            runc: None,
            owner_label: default_owner_label(),
            unlabeled: Unlabeled::default(),
            docker_root: None,
            log: None,
            user_cgroups: default_user_cgroups(),
        }
    }
}

fn default_user_cgroups() -> CgroupName {
    CgroupName("labgpu".into())
}

/// A cgroup directory and slice name part: lower-case letters, digits and `_` (no `-`,
/// which systemd reads as a level of slices).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupName(pub String);

impl<'de> Deserialize<'de> for CgroupName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let ok = !s.is_empty()
            && s.len() <= 32
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !ok {
            return Err(serde::de::Error::custom(format!(
                "user_cgroups {s:?} must be lower-case letters, digits and _ (at most 32)"
            )));
        }
        Ok(CgroupName(s))
    }
}

fn default_owner_label() -> String {
    "labgpu.user".to_string()
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Unlabeled {
    #[default]
    Deny,
    NoGpu,
}

/// `labgpu proxy`'s socket. Identity comes from SO_PEERCRED, not from who may open the
/// socket, so world-connectable (0666) is the default; a group narrows who can even try.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxySection {
    /// Group owning the socket (name or number); the socket stays root's group when unset.
    pub socket_group: Option<String>,
    /// Permission bits of the socket, an octal string such as "0660".
    pub socket_mode: Option<SocketMode>,
    /// The runtime forced on every container users create (Docker's name for labgpu).
    #[serde(default = "default_proxy_runtime")]
    pub runtime: String,
    /// Root-only directory where the proxy records the containers it created and for whom.
    #[serde(default = "default_state_dir")]
    pub state_dir: AbsPath,
    /// Where a user's image names must lie (`{user}` is their name): `tag`, `build -t`,
    /// `commit`, `import` and `load` may name images only under it.
    #[serde(default = "default_image_prefix")]
    pub image_prefix: String,
    /// Connections one policy user may hold open at once (the administrator: unlimited).
    #[serde(default = "default_max_connections")]
    pub max_connections_per_user: usize,
    /// Connections a uid that is not in the policy may hold open (it is refused anyway).
    #[serde(default = "default_max_connections_unknown")]
    pub max_connections_unknown: usize,
    /// The largest JSON request body the proxy reads (create, update, connect, …).
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// Bind mounts, volumes and tmpfs one container create may ask for.
    #[serde(default = "default_max_mounts")]
    pub max_mounts: usize,
    /// Where the proxy serves Prometheus metrics (`host:port`); none unless set (or
    /// `labgpu proxy --metrics`). The metrics name users and their usage: keep it on loopback
    /// unless the network to the scraper is trusted.
    pub metrics: Option<String>,
}

impl Default for ProxySection {
    fn default() -> Self {
        ProxySection {
            socket_group: None,
            socket_mode: None,
            runtime: default_proxy_runtime(),
            state_dir: default_state_dir(),
            image_prefix: default_image_prefix(),
            max_connections_per_user: default_max_connections(),
            max_connections_unknown: default_max_connections_unknown(),
            max_body_bytes: default_max_body_bytes(),
            max_mounts: default_max_mounts(),
            metrics: None,
        }
    }
}

fn default_max_connections() -> usize {
    64
}

fn default_max_connections_unknown() -> usize {
    4
}

fn default_max_body_bytes() -> usize {
    1 << 20
}

fn default_max_mounts() -> usize {
    128
}

fn default_image_prefix() -> String {
    "{user}/".to_string()
}

fn default_proxy_runtime() -> String {
    "labgpu".to_string()
}

fn default_state_dir() -> AbsPath {
    AbsPath(PathBuf::from("/var/lib/labgpu"))
}

impl ProxySection {
    /// The configured mode, else 0660 with a group and 0666 without.
    pub fn mode(&self) -> u32 {
        match (&self.socket_mode, &self.socket_group) {
            (Some(m), _) => m.0,
            (None, Some(_)) => 0o660,
            (None, None) => 0o666,
        }
    }
}

/// Socket permission bits; setuid/setgid/sticky bits are meaningless on a socket and refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketMode(pub u32);

impl<'de> Deserialize<'de> for SocketMode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let digits = s.strip_prefix("0o").unwrap_or(&s);
        match u32::from_str_radix(digits, 8) {
            Ok(m) if m <= 0o777 && !digits.is_empty() => Ok(SocketMode(m)),
            _ => Err(serde::de::Error::custom(format!(
                "socket_mode {s:?} must be octal permission bits such as \"0660\""
            ))),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpusSection {
    #[serde(default = "default_dev_root")]
    pub dev_root: AbsPath,
    #[serde(default)]
    pub discovery: Discovery,
    /// libnvidia-ml.so.1 to load instead of the linker's choice.
    pub nvml_lib: Option<AbsPath>,
    /// Where /proc is: `driver/nvidia/gpus`, `driver/nvidia-caps/mig-minors`, `devices`.
    #[serde(default = "default_proc_root")]
    pub proc_root: AbsPath,
    /// NVIDIA's CDI spec for driver libraries: "auto", "off", or a file.
    #[serde(default)]
    pub cdi_spec: CdiSetting,
}

impl Default for GpusSection {
    fn default() -> Self {
        GpusSection {
            dev_root: default_dev_root(),
            discovery: Discovery::default(),
            nvml_lib: None,
            proc_root: default_proc_root(),
            cdi_spec: CdiSetting::default(),
        }
    }
}

fn default_dev_root() -> AbsPath {
    AbsPath(PathBuf::from("/dev"))
}

fn default_proc_root() -> AbsPath {
    AbsPath(PathBuf::from("/proc"))
}

/// Where GPU facts come from. Integers in `gpus` are NVML indices under "nvml" and device
/// minor numbers otherwise, so their meaning never depends on whether NVML happened to load.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Discovery {
    #[default]
    Auto,
    Nvml,
    Proc,
    Devfs,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum CdiSetting {
    #[default]
    Auto,
    Off,
    File(PathBuf),
}

impl<'de> Deserialize<'de> for CdiSetting {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        match s.as_str() {
            "auto" => Ok(CdiSetting::Auto),
            "off" => Ok(CdiSetting::Off),
            p if p.starts_with('/') => Ok(CdiSetting::File(PathBuf::from(p))),
            _ => Err(serde::de::Error::custom(format!(
                "cdi_spec {s:?} must be \"auto\", \"off\" or an absolute path"
            ))),
        }
    }
}

/// How a policy names a GPU: `0` (minor, or NVML index under discovery = "nvml"),
/// `"GPU-<uuid>"`, `"MIG-<uuid>"`, or `"<gpu>:<gi>"` (a MIG GPU instance on GPU minor `gpu`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum GpuRef {
    Number(u32),
    Uuid(String),
    MigUuid(String),
    MigSlice { gpu: u32, gi: u32 },
}

impl fmt::Display for GpuRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GpuRef::Number(n) => write!(f, "{n}"),
            GpuRef::Uuid(u) | GpuRef::MigUuid(u) => f.write_str(u),
            GpuRef::MigSlice { gpu, gi } => write!(f, "{gpu}:{gi}"),
        }
    }
}

impl FromStr for GpuRef {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!("GPU {s:?} must be a number, \"GPU-<uuid>\", \"MIG-<uuid>\" or \"<gpu>:<gi>\"")
        };
        let uuid_ok = |u: &str| {
            !u.is_empty()
                && u.chars()
                    .all(|c| c.is_ascii_hexdigit() || c == '-' || c == '/')
        };
        if let Some(u) = s.strip_prefix("GPU-") {
            return uuid_ok(u)
                .then(|| GpuRef::Uuid(s.to_string()))
                .ok_or_else(bad);
        }
        if let Some(u) = s.strip_prefix("MIG-") {
            return uuid_ok(u)
                .then(|| GpuRef::MigUuid(s.to_string()))
                .ok_or_else(bad);
        }
        if let Some((g, i)) = s.split_once(':') {
            return match (g.parse(), i.parse()) {
                (Ok(gpu), Ok(gi)) => Ok(GpuRef::MigSlice { gpu, gi }),
                _ => Err(bad()),
            };
        }
        s.parse().map(GpuRef::Number).map_err(|_| bad())
    }
}

impl<'de> Deserialize<'de> for GpuRef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Num(i64),
            Str(String),
        }
        match Raw::deserialize(d)? {
            Raw::Num(n) => u32::try_from(n)
                .map(GpuRef::Number)
                .map_err(|_| serde::de::Error::custom(format!("GPU {n} is not a valid number"))),
            Raw::Str(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// A user's `gpus`: a list of GPU references, or `"slurm"` (the GPUs of the Slurm job the
/// container's creator runs in, on this node).
///
/// It derefs to the static list, which is empty under `"slurm"`: code that knows only static
/// lists grants a Slurm user nothing, and only `Policy::gpu_source` says "slurm".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GpuList {
    refs: Vec<GpuRef>,
    slurm: bool,
    /// The key was written (so `gpus = []` overrides `[defaults] gpus = "slurm"`).
    set: bool,
}

impl GpuList {
    pub fn slurm() -> Self {
        GpuList {
            refs: Vec::new(),
            slurm: true,
            set: true,
        }
    }

    pub fn is_slurm(&self) -> bool {
        self.slurm
    }

    pub fn is_set(&self) -> bool {
        self.set
    }
}

impl From<Vec<GpuRef>> for GpuList {
    fn from(refs: Vec<GpuRef>) -> Self {
        GpuList {
            refs,
            slurm: false,
            set: true,
        }
    }
}

impl std::ops::Deref for GpuList {
    type Target = Vec<GpuRef>;
    fn deref(&self) -> &Vec<GpuRef> {
        &self.refs
    }
}

impl<'a> IntoIterator for &'a GpuList {
    type Item = &'a GpuRef;
    type IntoIter = std::slice::Iter<'a, GpuRef>;
    fn into_iter(self) -> Self::IntoIter {
        self.refs.iter()
    }
}

impl<'de> Deserialize<'de> for GpuList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Word(String),
            List(Vec<toml::Value>),
        }
        match Raw::deserialize(d)? {
            Raw::Word(w) if w == "slurm" => Ok(GpuList::slurm()),
            Raw::Word(w) => Err(serde::de::Error::custom(format!(
                "gpus = {w:?} must be a list of GPUs or \"slurm\""
            ))),
            Raw::List(items) => items
                .into_iter()
                .map(|v| GpuRef::deserialize(v).map_err(serde::de::Error::custom))
                .collect::<Result<Vec<_>, _>>()
                .map(GpuList::from),
        }
    }
}

/// Where a user's GPUs come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GpuSource<'a> {
    /// The policy's own list (possibly empty).
    List(&'a [GpuRef]),
    /// The GPUs Slurm allocated, on this node, to the job the container was created from.
    Slurm,
}

/// `[slurm]`: how labgpu asks Slurm about a job, and what happens outside one.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlurmSection {
    /// The scontrol binary labgpu asks about jobs.
    #[serde(default = "default_scontrol")]
    pub scontrol: AbsPath,
    /// Slurm's configuration (scontrol runs with SLURM_CONF set to it); gres.conf is read
    /// from the same directory, as Slurm reads it.
    #[serde(default = "default_slurm_conf")]
    pub slurm_conf: AbsPath,
    /// This node's name in Slurm; default: the host name up to its first dot, as slurmd's.
    pub node_name: Option<String>,
    /// A `gpus = "slurm"` user's container made outside any job.
    #[serde(default)]
    pub outside_job: OutsideJob,
    /// Seconds `labgpu slurm epilog` gives a job's container to stop before it is killed.
    #[serde(default = "default_stop_timeout")]
    pub stop_timeout: u64,
}

impl Default for SlurmSection {
    fn default() -> Self {
        SlurmSection {
            scontrol: default_scontrol(),
            slurm_conf: default_slurm_conf(),
            node_name: None,
            outside_job: OutsideJob::default(),
            stop_timeout: default_stop_timeout(),
        }
    }
}

/// The longest `stop_timeout`: the epilog must finish within 30 s (stop, remove, re-check).
pub const MAX_STOP_TIMEOUT: u64 = 20;

fn default_scontrol() -> AbsPath {
    AbsPath(PathBuf::from("/usr/bin/scontrol"))
}

fn default_slurm_conf() -> AbsPath {
    AbsPath(PathBuf::from("/etc/slurm/slurm.conf"))
}

fn default_stop_timeout() -> u64 {
    10
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OutsideJob {
    /// The container runs, with no GPU.
    #[default]
    NoGpu,
    /// The container is refused.
    Deny,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunAs {
    #[default]
    Image,
    Owner,
}

/// Whether containers get a user namespace of their own (`userns`): "owner" maps container
/// root to the owner and uids 1-65535 to the owner's /etc/subuid range (see `crate::userns`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Userns {
    #[default]
    Off,
    Owner,
}

/// A host group in `[users.NAME] groups`: a gid, or a name looked up in the host's group
/// database when a container is created.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum GroupRef {
    Gid(u32),
    Name(String),
}

impl fmt::Display for GroupRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GroupRef::Gid(g) => write!(f, "{g}"),
            GroupRef::Name(n) => write!(f, "{n:?}"),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Defaults {
    /// Only `"slurm"` (or unset): the GPUs of the caller's Slurm job for every user without
    /// a `gpus` of their own. A static list is per user.
    #[serde(default)]
    pub gpus: GpuList,
    #[serde(default = "default_capabilities")]
    pub capabilities: Vec<CapName>,
    #[serde(default = "yes")]
    pub no_new_privileges: bool,
    #[serde(default)]
    pub allow_privileged: bool,
    #[serde(default)]
    pub allow_host_namespaces: bool,
    #[serde(default)]
    pub allow_host_network: bool,
    #[serde(default)]
    pub allow_unconfined: bool,
    #[serde(default)]
    pub run_as: RunAs,
    #[serde(default)]
    pub userns: Userns,
    #[serde(default)]
    pub bind_allow: Vec<AbsPath>,
    #[serde(default)]
    pub devices: Vec<AbsPath>,
    /// Named volumes backed by a mount of the admin's (NFS, a bind) that containers may use.
    #[serde(default)]
    pub mounted_volumes: Vec<VolumeName>,
    /// Seccomp profiles allowed as they are (`labgpu seccomp hash FILE` prints the sha256).
    #[serde(default)]
    pub seccomp_profiles: Vec<ProfileHash>,
    /// The administrator's volumes (no owner) users may mount read-write through the proxy;
    /// others are read-only to them.
    #[serde(default)]
    pub writable_volumes: Vec<VolumeName>,
    /// The login container `labgpu shell` keeps for each user.
    #[serde(default)]
    pub session: SessionSettings,
    /// Fair share (`fairshare`): ceilings on the sum of each user's containers.
    pub cpus: Option<Cpus>,
    pub memory: Option<ByteSize>,
    pub pids: Option<u64>,
    /// The largest /dev/shm of one container.
    pub shm_size: Option<ByteSize>,
    /// Host ports every user may publish through the proxy (a user's own `ports` add to it).
    #[serde(default)]
    pub ports: Vec<PortRange>,
}

impl Default for Defaults {
    fn default() -> Self {
        Defaults {
            gpus: GpuList::default(),
            capabilities: default_capabilities(),
            no_new_privileges: true,
            allow_privileged: false,
            allow_host_namespaces: false,
            allow_host_network: false,
            allow_unconfined: false,
            run_as: RunAs::Image,
            userns: Userns::Off,
            bind_allow: Vec::new(),
            devices: Vec::new(),
            mounted_volumes: Vec::new(),
            seccomp_profiles: Vec::new(),
            writable_volumes: Vec::new(),
            session: SessionSettings::default(),
            cpus: None,
            memory: None,
            pids: None,
            shm_size: None,
            ports: Vec::new(),
        }
    }
}

fn yes() -> bool {
    true
}

/// Docker's default set minus CAP_MKNOD (creating device nodes), CAP_NET_RAW (spoofing and
/// sniffing on shared networks) and CAP_SETFCAP (granting file capabilities).
fn default_capabilities() -> Vec<CapName> {
    [
        "CAP_CHOWN",
        "CAP_DAC_OVERRIDE",
        "CAP_FOWNER",
        "CAP_FSETID",
        "CAP_KILL",
        "CAP_SETGID",
        "CAP_SETUID",
        "CAP_SETPCAP",
        "CAP_NET_BIND_SERVICE",
        "CAP_SYS_CHROOT",
        "CAP_AUDIT_WRITE",
    ]
    .iter()
    .map(|c| CapName(c.to_string()))
    .collect()
}

/// Per-user settings; every `Option` falls back to `[defaults]`, every list adds to it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserPolicy {
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    #[serde(default)]
    pub gpus: GpuList,
    #[serde(default)]
    pub capabilities: Vec<CapName>,
    pub no_new_privileges: Option<bool>,
    pub allow_privileged: Option<bool>,
    pub allow_host_namespaces: Option<bool>,
    pub allow_host_network: Option<bool>,
    pub allow_unconfined: Option<bool>,
    pub run_as: Option<RunAs>,
    pub userns: Option<Userns>,
    /// Host groups mapped 1:1 into the owner's user namespace besides their host groups.
    #[serde(default)]
    pub groups: Vec<GroupRef>,
    #[serde(default)]
    pub bind_allow: Vec<AbsPath>,
    #[serde(default)]
    pub devices: Vec<AbsPath>,
    #[serde(default)]
    pub mounts: Vec<UserMount>,
    #[serde(default)]
    pub mounted_volumes: Vec<VolumeName>,
    #[serde(default)]
    pub seccomp_profiles: Vec<ProfileHash>,
    #[serde(default)]
    pub writable_volumes: Vec<VolumeName>,
    /// Overrides `[defaults] session`, key by key.
    #[serde(default)]
    pub session: SessionSettings,
    pub cpus: Option<Cpus>,
    pub memory: Option<ByteSize>,
    pub pids: Option<u64>,
    pub shm_size: Option<ByteSize>,
    /// Host ports only this user may publish (overlaps with others' are policy errors).
    #[serde(default)]
    pub ports: Vec<PortRange>,
    /// Pools this user may take GPUs from, with the most they may hold of each at once
    /// (over all their containers): `pools = { shared = 2 }`.
    #[serde(default)]
    pub pools: BTreeMap<String, u32>,
}

/// `[pools.NAME]`: GPUs no one owns, allocated to a container at create when it asks
/// (`--gpus N`, `--gpus device=…`, or the `labgpu.gpus` label) and freed when it is gone
/// (see `crate::pools`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolSection {
    pub gpus: Vec<GpuRef>,
    /// Several containers may hold one GPU at once (default: one container per GPU).
    #[serde(default)]
    pub shared: bool,
    /// `labgpu reclaim` stops a container whose pool GPUs were idle this long.
    pub idle_after: Option<Span>,
    /// `labgpu reclaim` stops a container that has held a pool GPU this long.
    pub max_runtime: Option<Span>,
}

/// `session = { image = "…", stop_on_exit = false, shell = "/bin/bash" }`: the container a
/// user's login (`labgpu shell`) lands in. Every key is optional; a user's keys override
/// `[defaults]`'s.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SessionSettings {
    /// The image a user's login container is created from.
    pub image: Option<SessionImage>,
    /// Stop the container when the last login leaves it (default: keep it running, so
    /// background jobs go on).
    pub stop_on_exit: Option<bool>,
    /// The program a login runs in the container (default: /bin/bash if the image has it,
    /// else /bin/sh).
    pub shell: Option<AbsPath>,
}

/// A user's resolved session settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub image: Option<String>,
    pub stop_on_exit: bool,
    pub shell: Option<PathBuf>,
}

/// An image reference as `docker run` takes it: no spaces, control characters or leading `-`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionImage(pub String);

impl<'de> Deserialize<'de> for SessionImage {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let ok = !s.is_empty()
            && !s.starts_with(['-', '/'])
            && s.len() <= 512
            && s.chars().all(|c| {
                c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/' | ':' | '@')
            });
        if !ok {
            return Err(serde::de::Error::custom(format!(
                "session image {s:?} is not an image reference (such as \"ubuntu:24.04\")"
            )));
        }
        Ok(SessionImage(s))
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct UserMount {
    pub source: AbsPath,
    pub destination: AbsPath,
    #[serde(default)]
    pub readonly: bool,
}

/// An absolute path; relative paths are rejected at parse time so they carry a line number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AbsPath(pub PathBuf);

impl AbsPath {
    pub fn as_path(&self) -> &Path {
        &self.0
    }
}

impl<'de> Deserialize<'de> for AbsPath {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if !s.starts_with('/') {
            return Err(serde::de::Error::custom(format!(
                "path {s:?} must be absolute"
            )));
        }
        Ok(AbsPath(PathBuf::from(s)))
    }
}

/// A sha256 in hex (64 digits, lower-cased on reading).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfileHash(pub String);

impl<'de> Deserialize<'de> for ProfileHash {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let hex = s.strip_prefix("sha256:").unwrap_or(&s);
        if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(serde::de::Error::custom(format!(
                "{s:?} is not a sha256 (64 hex digits, as `labgpu seccomp hash` prints)"
            )));
        }
        Ok(ProfileHash(hex.to_ascii_lowercase()))
    }
}

/// A Docker volume name (`[a-zA-Z0-9][a-zA-Z0-9_.-]+`, Docker's own rule).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct VolumeName(pub String);

impl<'de> Deserialize<'de> for VolumeName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let ok = s.len() >= 2
            && s.starts_with(|c: char| c.is_ascii_alphanumeric())
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
        if !ok {
            return Err(serde::de::Error::custom(format!(
                "volume name {s:?} is not a valid Docker volume name"
            )));
        }
        Ok(VolumeName(s))
    }
}

/// A Linux capability name as the OCI spec writes it (`CAP_SYS_PTRACE`); typos are parse errors.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct CapName(pub String);

impl fmt::Display for CapName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for CapName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let upper = s.to_ascii_uppercase();
        let full = if upper.starts_with("CAP_") {
            upper
        } else {
            format!("CAP_{upper}")
        };
        caps::Capability::from_str(&full)
            .map_err(|_| serde::de::Error::custom(format!("unknown capability {s:?}")))?;
        Ok(CapName(full))
    }
}

impl Policy {
    /// Reads and validates the policy at `path`, with every member of its group tables as
    /// the host's account files say now.
    pub fn load(path: &Path) -> Result<Policy, PolicyError> {
        let bytes = std::fs::read(path).map_err(|cause| PolicyError::Read {
            path: path.to_path_buf(),
            cause,
        })?;
        let mut policy = Self::parse(path, &bytes)?;
        if !policy.groups.is_empty() {
            policy.apply_groups(&Accounts::host())?;
        }
        Ok(policy)
    }

    /// Reads and validates the file's bytes alone: `[users]` holds the users' own tables
    /// (no group member is added: that needs the host's accounts, see `apply_groups`).
    pub fn parse(path: &Path, bytes: &[u8]) -> Result<Policy, PolicyError> {
        let text = std::str::from_utf8(bytes).map_err(|e| PolicyError::Invalid {
            path: path.to_path_buf(),
            message: format!("not valid UTF-8: {e}"),
        })?;
        let mut policy: Policy = toml::from_str(text).map_err(|e| {
            let (line, column) = e.span().map(|s| line_col(text, s.start)).unwrap_or((1, 1));
            PolicyError::Parse {
                path: path.to_path_buf(),
                line,
                column,
                message: e.message().trim().to_string(),
            }
        })?;
        let invalid = |message: String| PolicyError::Invalid {
            path: path.to_path_buf(),
            message,
        };
        if policy.version != 1 {
            return Err(invalid(format!(
                "version = {} is not supported (this labgpu reads version = 1)",
                policy.version
            )));
        }
        if policy.runtime.owner_label.is_empty() {
            return Err(invalid("[runtime] owner_label must not be empty".into()));
        }
        if let Some(proxy) = &policy.proxy {
            if let Some(g) = &proxy.socket_group {
                if !valid_user_name(g) {
                    return Err(invalid(format!(
                        "[proxy] socket_group {g:?} is not a valid group name"
                    )));
                }
            }
            if !proxy.image_prefix.contains("{user}") {
                return Err(invalid(format!(
                    "[proxy] image_prefix = {:?} must contain {{user}}: each user needs names of their own",
                    proxy.image_prefix
                )));
            }
            if let Some(m) = &proxy.metrics {
                if m.parse::<std::net::SocketAddr>().is_err() {
                    return Err(invalid(format!(
                        "[proxy] metrics = {m:?} must be an address and port such as \"127.0.0.1:9400\""
                    )));
                }
            }
            if proxy.runtime.is_empty() || proxy.runtime == "runc" {
                return Err(invalid(format!(
                    "[proxy] runtime = {:?} must name the labgpu runtime as registered with Docker",
                    proxy.runtime
                )));
            }
        }
        policy.check_slurm().map_err(invalid)?;
        crate::pools::check_policy(&policy).map_err(invalid)?;
        crate::fairshare::check_ports(&policy).map_err(invalid)?;
        let pids = std::iter::once(("[defaults]".to_string(), policy.defaults.pids))
            .chain(
                policy
                    .users
                    .iter()
                    .map(|(n, u)| (format!("[users.{n}]"), u.pids)),
            )
            .chain(
                policy
                    .groups
                    .iter()
                    .map(|g| (format!("[groups.{}]", g.name), g.settings.pids)),
            );
        for (section, pids) in pids {
            if pids == Some(0) {
                return Err(invalid(format!(
                    "{section} pids = 0 would stop every container from starting"
                )));
            }
        }
        for (name, user) in &policy.users {
            // The name is a directory of the user's cgroup.
            if !valid_user_name(name) || name == "." || name == ".." {
                return Err(invalid(format!("[users.{name}] is not a valid user name")));
            }
            if user.uid.is_some() != user.gid.is_some() {
                return Err(invalid(format!(
                    "[users.{name}] sets only one of uid and gid; set both or neither"
                )));
            }
        }
        if !policy.groups.is_empty() {
            policy.own_tables = Some(own_tables(text).map_err(invalid)?);
        }
        policy.sha256 = hex(&Sha256::digest(bytes));
        policy.path = path.to_path_buf();
        Ok(policy)
    }

    /// The runc path configured by the policy, read leniently: passthrough commands
    /// (`kill`, `delete`, …) must keep working while an admin is mid-edit on a broken file.
    pub fn runc_hint(path: &Path) -> Option<PathBuf> {
        let text = std::fs::read_to_string(path).ok()?;
        let value: toml::Table = toml::from_str(&text).ok()?;
        let runc = value.get("runtime")?.get("runc")?.as_str()?;
        runc.starts_with('/').then(|| PathBuf::from(runc))
    }

    /// `[proxy]`, or its defaults when the table is absent (for messages and tests; the
    /// proxy itself refuses to start without the table).
    pub fn proxy_or_default(&self) -> ProxySection {
        self.proxy.clone().unwrap_or_default()
    }

    pub fn user(&self, name: &str) -> Option<&UserPolicy> {
        self.users.get(name)
    }

    /// The `userns` setting for a policy user (`None`: `[defaults]` only).
    pub fn userns_for(&self, user: Option<&UserPolicy>) -> Userns {
        user.and_then(|u| u.userns).unwrap_or(self.defaults.userns)
    }

    /// The login container settings of policy user `name`: theirs over `[defaults]`'s.
    pub fn session_for(&self, name: &str) -> Session {
        let d = &self.defaults.session;
        let u = self.user(name).map(|u| &u.session);
        Session {
            image: u
                .and_then(|u| u.image.as_ref())
                .or(d.image.as_ref())
                .map(|i| i.0.clone()),
            stop_on_exit: u
                .and_then(|u| u.stop_on_exit)
                .or(d.stop_on_exit)
                .unwrap_or(false),
            shell: u
                .and_then(|u| u.shell.as_ref())
                .or(d.shell.as_ref())
                .map(|p| p.0.clone()),
        }
    }

    /// `[slurm]`, or its defaults when the table is absent.
    pub fn slurm_or_default(&self) -> SlurmSection {
        self.slurm.clone().unwrap_or_default()
    }

    /// Where `user`'s GPUs come from: their own `gpus`, else `[defaults] gpus`.
    pub fn gpu_source<'a>(&'a self, user: &'a UserPolicy) -> GpuSource<'a> {
        let list = if user.gpus.is_set() {
            &user.gpus
        } else {
            &self.defaults.gpus
        };
        if list.is_slurm() {
            GpuSource::Slurm
        } else {
            GpuSource::List(list)
        }
    }

    /// `gpus = "slurm"` needs the proxy (the job is learned from whoever calls its socket);
    /// `[defaults] gpus` may only say "slurm"; the epilog's stop must fit its 30 s.
    fn check_slurm(&self) -> Result<(), String> {
        let d = &self.defaults.gpus;
        if d.is_set() && !d.is_slurm() {
            return Err(
                "[defaults] gpus may only be \"slurm\"; GPU lists belong to [users.<name>] gpus"
                    .into(),
            );
        }
        let slurm_table = self
            .users
            .iter()
            .find(|(_, u)| self.gpu_source(u) == GpuSource::Slurm)
            .map(|(name, _)| format!("[users.{name}]"))
            .or_else(|| {
                self.groups
                    .iter()
                    .find(|g| self.gpu_source(&g.settings) == GpuSource::Slurm)
                    .map(|g| format!("[groups.{}]", g.name))
            });
        if let (Some(table), None) = (slurm_table, &self.proxy) {
            return Err(format!(
                "{table} gpus = \"slurm\" needs a [proxy] table: labgpu learns the Slurm job from the process that calls the proxy's socket"
            ));
        }
        let Some(slurm) = &self.slurm else {
            return Ok(());
        };
        if slurm.stop_timeout > MAX_STOP_TIMEOUT {
            return Err(format!(
                "[slurm] stop_timeout = {} is too long: the epilog must end within 30 s, so at most {MAX_STOP_TIMEOUT}",
                slurm.stop_timeout
            ));
        }
        match &slurm.node_name {
            Some(n) if !valid_user_name(n) => Err(format!(
                "[slurm] node_name = {n:?} is not a valid Slurm node name"
            )),
            _ => Ok(()),
        }
    }

    /// The policy user for a host uid: the user whose `uid` is set to it, else the user named
    /// like the uid's passwd entry, unless that user pins a different `uid`.
    pub fn user_for_uid(&self, uid: u32, passwd_name: Option<&str>) -> Option<&str> {
        if let Some((name, _)) = self.users.iter().find(|(_, u)| u.uid == Some(uid)) {
            return Some(name);
        }
        let name = passwd_name?;
        let (name, user) = self.users.get_key_value(name)?;
        user.uid.is_none().then_some(name.as_str())
    }
}

/// The `[users]` tables as written (for merging with group tables; see `groups`).
fn own_tables(text: &str) -> Result<BTreeMap<String, toml::Table>, String> {
    let mut doc: toml::Table = toml::from_str(text).map_err(|e| e.message().trim().to_string())?;
    match doc.remove("users") {
        None => Ok(BTreeMap::new()),
        Some(toml::Value::Table(users)) => users
            .into_iter()
            .map(|(name, t)| match t {
                toml::Value::Table(t) => Ok((name, t)),
                _ => Err(format!("[users.{name}] must be a table")),
            })
            .collect(),
        Some(_) => Err("[users] must be a table".into()),
    }
}

pub(crate) fn valid_user_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Policy, PolicyError> {
        Policy::parse(Path::new("/etc/labgpu/policy.toml"), text.as_bytes())
    }

    #[test]
    fn proxy_metrics_is_an_address_and_port() {
        let p = parse("version = 1\n[proxy]\nmetrics = \"127.0.0.1:9400\"\n").unwrap();
        assert_eq!(p.proxy.unwrap().metrics.as_deref(), Some("127.0.0.1:9400"));
        assert_eq!(
            parse("version = 1\n[proxy]\n")
                .unwrap()
                .proxy
                .unwrap()
                .metrics,
            None
        );
        let err = parse("version = 1\n[proxy]\nmetrics = \"localhost\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("[proxy] metrics = \"localhost\" must be an address and port"),
            "{err}"
        );
    }

    #[test]
    fn minimal_policy_gets_safe_defaults() {
        let p = parse("version = 1\n").unwrap();
        assert_eq!(p.runtime.unlabeled, Unlabeled::Deny);
        assert_eq!(p.runtime.owner_label, "labgpu.user");
        assert!(p.defaults.no_new_privileges);
        assert!(!p.defaults.allow_privileged);
        assert_eq!(p.gpus.dev_root.as_path(), Path::new("/dev"));
        assert_eq!(p.sha256.len(), 64);
    }

    #[test]
    fn unknown_key_is_an_error_with_line_and_column() {
        let err = parse("version = 1\n[users.alice]\ngpuz = [0]\n").unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("/etc/labgpu/policy.toml line 3 column 1"),
            "{msg}"
        );
        assert!(msg.contains("gpuz"), "{msg}");
    }

    #[test]
    fn unknown_capability_is_an_error() {
        let err =
            parse("version = 1\n[defaults]\ncapabilities = [\"CAP_SYS_ADMN\"]\n").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("line 3"), "{msg}");
        assert!(msg.contains("CAP_SYS_ADMN"), "{msg}");
    }

    #[test]
    fn capability_names_are_normalised() {
        let p = parse("version = 1\n[users.a]\ncapabilities = [\"sys_ptrace\"]\n").unwrap();
        assert_eq!(p.users["a"].capabilities[0].0, "CAP_SYS_PTRACE");
    }

    #[test]
    fn relative_paths_and_bad_enums_are_errors() {
        assert!(parse("version = 1\n[gpus]\ndev_root = \"dev\"\n").is_err());
        assert!(parse("version = 1\n[runtime]\nunlabeled = \"allow\"\n").is_err());
        assert!(parse("version = 1\n[defaults]\nrun_as = \"root\"\n").is_err());
    }

    #[test]
    fn gpu_references_in_every_form() {
        let p = parse(
            "version = 1\n[users.a]\ngpus = [0, \"GPU-8f6e2b1c-aaaa\", \"MIG-1a2b-3c\", \"1:2\"]\n",
        )
        .unwrap();
        assert_eq!(
            p.users["a"].gpus.as_slice(),
            [
                GpuRef::Number(0),
                GpuRef::Uuid("GPU-8f6e2b1c-aaaa".into()),
                GpuRef::MigUuid("MIG-1a2b-3c".into()),
                GpuRef::MigSlice { gpu: 1, gi: 2 }
            ]
        );
        for bad in ["-1", "\"gpu0\"", "\"GPU-\"", "\"1:x\"", "1.5"] {
            let err = parse(&format!("version = 1\n[users.a]\ngpus = [{bad}]\n")).unwrap_err();
            assert!(err.to_string().contains("line 3"), "{bad}: {err}");
        }
        let p =
            parse("version = 1\n[gpus]\ndiscovery = \"nvml\"\ncdi_spec = \"/etc/cdi/x.yaml\"\n")
                .unwrap();
        assert_eq!(p.gpus.discovery, Discovery::Nvml);
        assert_eq!(p.gpus.cdi_spec, CdiSetting::File("/etc/cdi/x.yaml".into()));
        assert!(parse("version = 1\n[gpus]\ncdi_spec = \"on\"\n").is_err());
    }

    #[test]
    fn version_and_uid_gid_pairing_are_checked() {
        assert!(parse("version = 2\n")
            .unwrap_err()
            .to_string()
            .contains("version = 2"));
        assert!(parse("version = 1\n[users.a]\nuid = 5\n").is_err());
    }

    #[test]
    fn userns_and_groups() {
        let p = parse(
            "version = 1\n[users.a]\nuserns = \"owner\"\ngroups = [27, \"lab\"]\n[users.b]\n",
        )
        .unwrap();
        assert_eq!(p.defaults.userns, Userns::Off);
        assert_eq!(p.userns_for(p.user("a")), Userns::Owner);
        assert_eq!(p.userns_for(p.user("b")), Userns::Off);
        assert_eq!(
            p.users["a"].groups,
            [GroupRef::Gid(27), GroupRef::Name("lab".into())]
        );
        let p = parse("version = 1\n[defaults]\nuserns = \"owner\"\n[users.b]\nuserns = \"off\"\n")
            .unwrap();
        assert_eq!(p.userns_for(None), Userns::Owner);
        assert_eq!(p.userns_for(p.user("b")), Userns::Off);
        assert!(parse("version = 1\n[defaults]\nuserns = \"remap\"\n").is_err());
    }

    #[test]
    fn full_example_parses() {
        let text =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/policy.toml"))
                .unwrap();
        parse(&text).unwrap();
    }

    #[test]
    fn proxy_section_modes_and_groups() {
        let p = parse("version = 1\n").unwrap();
        assert!(p.proxy.is_none());
        let p = parse("version = 1\n[proxy]\n").unwrap();
        let proxy = p.proxy.unwrap();
        assert_eq!(proxy.mode(), 0o666);
        assert_eq!(proxy.runtime, "labgpu");
        assert_eq!(proxy.state_dir.as_path(), Path::new("/var/lib/labgpu"));
        assert!(parse("version = 1\n[proxy]\nruntime = \"runc\"\n").is_err());
        assert!(proxy.socket_group.is_none());
        let p = parse("version = 1\n[proxy]\nsocket_group = \"docker-users\"\n").unwrap();
        assert_eq!(p.proxy.unwrap().mode(), 0o660);
        let p = parse("version = 1\n[proxy]\nsocket_group = \"lab\"\nsocket_mode = \"0600\"\n")
            .unwrap();
        assert_eq!(p.proxy.unwrap().mode(), 0o600);
        assert!(parse("version = 1\n[proxy]\nstate_dir = \"var/lib\"\n").is_err());
        for bad in ["\"0999\"", "\"4777\"", "\"\"", "660"] {
            let err = parse(&format!("version = 1\n[proxy]\nsocket_mode = {bad}\n")).unwrap_err();
            assert!(err.to_string().contains("line 3"), "{bad}: {err}");
        }
        assert!(parse("version = 1\n[proxy]\nsocket_group = \"a b\"\n").is_err());
        assert!(parse("version = 1\n[proxy]\nlisten = \"/x\"\n").is_err());
    }

    #[test]
    fn uid_maps_to_policy_user() {
        let p = parse(
            "version = 1\n[users.alice]\n[users.bob]\nuid = 2000\ngid = 2000\n[users.carol]\n",
        )
        .unwrap();
        assert_eq!(p.user_for_uid(1001, Some("alice")), Some("alice"));
        assert_eq!(p.user_for_uid(2000, Some("whoever")), Some("bob"));
        assert_eq!(p.user_for_uid(2000, None), Some("bob"));
        // bob pins uid 2000: the host account named bob with another uid is not him.
        assert_eq!(p.user_for_uid(1002, Some("bob")), None);
        assert_eq!(p.user_for_uid(1003, Some("mallory")), None);
        assert_eq!(p.user_for_uid(1004, None), None);
    }

    #[test]
    fn session_settings_merge_user_over_defaults() {
        let p = parse(
            "version = 1\n[defaults]\nsession = { image = \"lab/base:1\", shell = \"/bin/zsh\" }\n[users.a]\nsession = { image = \"a/own\", stop_on_exit = true }\n[users.b]\n",
        )
        .unwrap();
        let a = p.session_for("a");
        assert_eq!(a.image.as_deref(), Some("a/own"));
        assert!(a.stop_on_exit);
        assert_eq!(a.shell.as_deref(), Some(Path::new("/bin/zsh")));
        let b = p.session_for("b");
        assert_eq!(b.image.as_deref(), Some("lab/base:1"));
        assert!(!b.stop_on_exit);
        assert_eq!(parse("version = 1\n").unwrap().session_for("x").image, None);
        for bad in [
            "session = { image = \"\" }",
            "session = { image = \"-v /:/host\" }",
            "session = { image = \"a b\" }",
            "session = { imag = \"x\" }",
            "session = { shell = \"bash\" }",
        ] {
            let err = parse(&format!("version = 1\n[defaults]\n{bad}\n")).unwrap_err();
            assert!(err.to_string().contains("line 3"), "{bad}: {err}");
        }
    }

    #[test]
    fn gpus_from_slurm_per_user_or_by_default() {
        let p = parse(
            "version = 1\n[proxy]\n[slurm]\noutside_job = \"deny\"\n[defaults]\ngpus = \"slurm\"\n\
             [users.a]\n[users.b]\ngpus = [1]\n[users.c]\ngpus = []\n[users.d]\ngpus = \"slurm\"\n",
        )
        .unwrap();
        let source = |u: &str| p.gpu_source(&p.users[u]);
        assert_eq!(source("a"), GpuSource::Slurm);
        assert_eq!(source("b"), GpuSource::List(&[GpuRef::Number(1)]));
        assert_eq!(source("c"), GpuSource::List(&[]));
        assert_eq!(source("d"), GpuSource::Slurm);
        // Code that reads the list alone grants a Slurm user nothing.
        assert!(p.users["d"].gpus.is_empty());
        let s = p.slurm_or_default();
        assert_eq!(s.outside_job, OutsideJob::Deny);
        assert_eq!(s.stop_timeout, 10);
        assert_eq!(s.scontrol.as_path(), Path::new("/usr/bin/scontrol"));
        assert_eq!(s.slurm_conf.as_path(), Path::new("/etc/slurm/slurm.conf"));
        let p = parse("version = 1\n[users.a]\ngpus = [0]\n").unwrap();
        assert_eq!(p.slurm_or_default().outside_job, OutsideJob::NoGpu);
    }

    #[test]
    fn slurm_settings_that_cannot_work_are_errors() {
        for (text, want) in [
            ("[users.a]\ngpus = \"slurm\"\n", "needs a [proxy] table"),
            (
                "[defaults]\ngpus = \"slurm\"\n[users.a]\n",
                "needs a [proxy] table",
            ),
            (
                "[proxy]\n[defaults]\ngpus = [0]\n",
                "[defaults] gpus may only be",
            ),
            (
                "[proxy]\n[users.a]\ngpus = \"all\"\n",
                "must be a list of GPUs or \"slurm\"",
            ),
            ("[slurm]\nstop_timeout = 25\n", "at most 20"),
            ("[slurm]\noutside_job = \"allow\"\n", "line 3"),
            (
                "[slurm]\nnode_name = \"a b\"\n",
                "not a valid Slurm node name",
            ),
            ("[slurm]\nscontrol = \"scontrol\"\n", "must be absolute"),
            ("[slurm]\npartition = \"x\"\n", "partition"),
        ] {
            let err = parse(&format!("version = 1\n{text}"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{text}: {err}");
        }
        // A user with a list of their own needs no proxy, whatever [defaults] would say.
        parse("version = 1\n[users.a]\ngpus = [0]\n[slurm]\n").unwrap();
    }

    #[test]
    fn runc_hint_survives_a_broken_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("policy.toml");
        std::fs::write(
            &p,
            "version = 1\n[runtime]\nrunc = \"/opt/runc\"\n[users.a]\nbogus = 1\n",
        )
        .unwrap();
        assert_eq!(Policy::runc_hint(&p), Some(PathBuf::from("/opt/runc")));
        std::fs::write(&p, "not toml [").unwrap();
        assert_eq!(Policy::runc_hint(&p), None);
    }
}
