//! Turns (policy, owner, inventory) into one `Decision`: everything the edits need, resolved
//! once, so each edit is a pure function of the spec and the decision.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::cdi::{self, CdiError};
use crate::fairshare::cgroup::{Driver, Placement};
use crate::fairshare::Ceilings;
use crate::gpu::{DevNode, GpuError, Grant, Inventory};
use crate::paths::normalize;
use crate::policy::{Policy, RunAs, Unlabeled, UserMount, UserPolicy};
use crate::seccomp::{KernelVersion, NativeArch};
use crate::userns::{self, Plan, SubidFiles, UsernsError};
use crate::volumes::Backing;

#[derive(Debug, thiserror::Error)]
pub enum DecideError {
    #[error(
        "container has no {label} label or annotation and {policy} [runtime] unlabeled = \"deny\""
    )]
    Unlabeled { label: String, policy: PathBuf },
    #[error("owner {owner:?} is not a user in {policy} [users]")]
    UnknownOwner { owner: String, policy: PathBuf },
    /// `table`: where the owner's `gpus` are written (`[users.NAME]` or `[groups.G]`).
    #[error("GPU for {table} gpus: {cause}")]
    Gpu { table: String, cause: GpuError },
    #[error("[users.{owner}] run_as = \"owner\" but {owner:?} has no uid/gid in the policy and no host passwd entry")]
    NoUid { owner: String },
    #[error(transparent)]
    Cdi(#[from] CdiError),
    #[error("mount source {source_path} of {table} mounts does not exist")]
    MountSourceMissing { table: String, source_path: PathBuf },
    #[error(transparent)]
    Userns(#[from] UsernsError),
}

/// A device the container may keep, as the device cgroup names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct DevKey {
    pub kind: char,
    pub major: i64,
    pub minor: i64,
}

#[derive(Debug, Clone)]
pub struct Decision {
    /// Owner's policy user name; `None` for an unlabeled container under `unlabeled = "no-gpu"`.
    pub owner: Option<String>,
    /// Minors of the GPUs granted (MIG slices count as their parent GPU).
    pub gpu_ids: Vec<u32>,
    /// Owned GPU nodes plus control nodes; empty for a user with no GPUs.
    pub nodes: Vec<DevNode>,
    /// What each granted GPU brings (`gpu_ids` and `nodes` are made from these).
    pub grants: Vec<Grant>,
    /// The pool GPUs among them, as `pool:gpu` (`crate::pools`), for the stamp.
    pub pool_gpus: Vec<String>,
    pub nvidia_majors: BTreeSet<i64>,
    /// Host devices the policy lets containers keep beyond Docker's standard set.
    pub extra_devices: Vec<DevKey>,
    pub process: ProcessRules,
    pub allow_privileged: bool,
    pub allow_host_namespaces: bool,
    pub allow_host_network: bool,
    pub mounts: Vec<UserMount>,
    /// Normalized host path prefixes bind mounts may come from.
    pub bind_allow: Vec<PathBuf>,
    pub docker_root: PathBuf,
    /// What the kernel has mounted at each local volume the spec binds (`volumes`).
    pub volume_backings: BTreeMap<String, Vec<Backing>>,
    /// Volumes backed by an admin's mount (NFS, a bind) that containers may use anyway.
    pub mounted_volumes: BTreeSet<String>,
    /// Possible CPUs (for Docker's per-CPU masked paths).
    pub cpu_count: u32,
    /// The host as Docker's default seccomp profile depends on it.
    pub host: Host,
    /// sha256 of the seccomp profiles the policy lets run as they are.
    pub seccomp_profiles: Vec<String>,
    /// runc's state root, to find the containers whose namespaces a new one joins.
    pub runc_root: Option<PathBuf>,
    /// Driver files for the owned GPUs from NVIDIA's CDI spec.
    pub cdi: Option<cdi::Edits>,
    /// The owner's fair-share ceilings (none without an owner).
    pub ceilings: Ceilings,
    /// `[runtime] user_cgroups`.
    pub user_cgroups: String,
    /// How runc was told to make cgroups (`--systemd-cgroup`); set by the runtime.
    pub cgroup_driver: Driver,
    /// The owner's user namespace (`userns = "owner"`).
    pub userns: Option<Plan>,
    /// Edits dockerd may have applied from CDI specs itself (`--device nvidia.com/gpu=N`
    /// with Docker's `features.cdi`), read from its spec directories at the runtime's edge.
    pub docker_cdi: cdi::DockerApplied,
    pub container_id: String,
    pub policy_sha256: String,
    /// A `RUN` step of dockerd's BuildKit (`crate::buildkit_step`): `[defaults]`, no GPU,
    /// no-new-privileges, and BuildKit's own directories as bind sources.
    pub build_step: bool,
}

/// Architecture and kernel, which Docker's default seccomp profile depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Host {
    /// `None` on an architecture labgpu has no Docker profile model for.
    pub arch: Option<NativeArch>,
    pub kernel: KernelVersion,
}

impl Default for Host {
    /// x86_64 with a recent kernel (tests).
    fn default() -> Self {
        Host {
            arch: Some(NativeArch::X86_64),
            kernel: KernelVersion::new(6, 1),
        }
    }
}

impl Host {
    /// This machine; an unreadable kernel release counts as 0.0 (no kernel-gated rules).
    pub fn current() -> Self {
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .ok()
            .and_then(|r| KernelVersion::parse_release(&r).ok())
            .unwrap_or(KernelVersion::new(0, 0));
        Host {
            arch: NativeArch::native().ok(),
            kernel,
        }
    }
}

/// What every process of the container (init and exec) is cut to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessRules {
    pub capabilities: BTreeSet<String>,
    pub no_new_privileges: bool,
    /// uid/gid forced by `run_as = "owner"` (container ids: 0 in the owner's user namespace).
    pub user: Option<(u32, u32)>,
    pub allow_unconfined: bool,
    /// The process runs in the owner's user namespace, where every id is the owner's.
    pub userns: bool,
    /// Gids added to every process (the owner's groups, mapped 1:1 in its user namespace).
    pub extra_gids: Vec<u32>,
}

impl ProcessRules {
    /// The rules inside the owner's user namespace: container root is the owner, so
    /// `run_as = "owner"` means uid 0, and the owner's groups come along.
    pub fn in_userns(mut self, extra_gids: &[u32]) -> Self {
        self.user = self.user.map(|_| (0, 0));
        self.userns = true;
        self.extra_gids = extra_gids.to_vec();
        self
    }
}

impl Decision {
    /// The owner's parent cgroup, when their ceilings need one.
    pub fn placement(&self) -> Option<Placement> {
        let owner = self.owner.as_ref()?;
        self.ceilings.needs_parent().then(|| Placement {
            driver: self.cgroup_driver,
            name: self.user_cgroups.clone(),
            user: owner.clone(),
        })
    }

    /// The policy section a refusal should point the admin to.
    pub fn section(&self) -> String {
        match &self.owner {
            Some(o) => format!("[defaults] or [users.{o}]"),
            None => "[defaults]".to_string(),
        }
    }
}

/// Resolves the policy user for `owner`, applying `unlabeled` when there is none.
pub fn policy_user<'p>(
    policy: &'p Policy,
    owner: Option<&str>,
) -> Result<Option<&'p UserPolicy>, DecideError> {
    match owner {
        Some(o) => policy
            .user(o)
            .map(Some)
            .ok_or_else(|| DecideError::UnknownOwner {
                owner: o.to_string(),
                policy: policy.path.clone(),
            }),
        None if policy.runtime.unlabeled == Unlabeled::NoGpu => Ok(None),
        None => Err(DecideError::Unlabeled {
            label: policy.runtime.owner_label.clone(),
            policy: policy.path.clone(),
        }),
    }
}

/// The process rules alone (what `exec` needs): no inventory, no mounts.
pub fn process_rules(
    policy: &Policy,
    owner: Option<&str>,
    user: Option<&UserPolicy>,
) -> Result<ProcessRules, DecideError> {
    let d = &policy.defaults;
    let mut capabilities: BTreeSet<String> = d.capabilities.iter().map(|c| c.0.clone()).collect();
    let run_as = user.and_then(|u| u.run_as).unwrap_or(d.run_as);
    let forced_user = match (owner, user, run_as) {
        (Some(o), Some(u), RunAs::Owner) => Some(owner_ids(o, u)?),
        _ => None,
    };
    if let Some(u) = user {
        capabilities.extend(u.capabilities.iter().map(|c| c.0.clone()));
    }
    Ok(ProcessRules {
        capabilities,
        no_new_privileges: user
            .and_then(|u| u.no_new_privileges)
            .unwrap_or(d.no_new_privileges),
        user: forced_user,
        allow_unconfined: user
            .and_then(|u| u.allow_unconfined)
            .unwrap_or(d.allow_unconfined),
        userns: false,
        extra_gids: Vec::new(),
    })
}

pub fn decide(
    policy: &Policy,
    owner: Option<&str>,
    inventory: &dyn Inventory,
    docker_root: PathBuf,
    container_id: &str,
) -> Result<Decision, DecideError> {
    let user = policy_user(policy, owner)?;
    // An unlabeled container has no one to map its root to: never silently without.
    if user.is_none() && policy.userns_for(None) == crate::policy::Userns::Owner {
        return Err(UsernsError::NoOwner {
            policy: policy.path.clone(),
        }
        .into());
    }
    decide_for_user(policy, owner, user, inventory, docker_root, container_id)
}

/// `decide` for an already resolved policy user (`None`: `[defaults]` only, no GPU).
pub fn decide_for_user(
    policy: &Policy,
    owner: Option<&str>,
    user: Option<&UserPolicy>,
    inventory: &dyn Inventory,
    docker_root: PathBuf,
    container_id: &str,
) -> Result<Decision, DecideError> {
    let owner = owner.filter(|_| user.is_some());
    let d = &policy.defaults;
    let flag =
        |f: fn(&UserPolicy) -> Option<bool>, default: bool| user.and_then(f).unwrap_or(default);

    let grants = user
        .map(|u| u.gpus.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|r| inventory.resolve(r))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|cause| DecideError::Gpu {
            table: policy.table_of(owner.unwrap_or_default(), "gpus"),
            cause,
        })?;
    let (gpu_ids, nodes, cdi) = gpu_part(policy, inventory, grants.clone())?;

    let device_paths = d
        .devices
        .iter()
        .chain(user.map(|u| &u.devices).into_iter().flatten());
    let extra_devices = device_paths.filter_map(|p| dev_key(p.as_path())).collect();

    let mounts = user.map(|u| u.mounts.clone()).unwrap_or_default();
    for m in &mounts {
        if !m.source.as_path().exists() {
            return Err(DecideError::MountSourceMissing {
                table: policy.table_of(owner.unwrap_or_default(), "mounts"),
                source_path: m.source.0.clone(),
            });
        }
    }
    let bind_allow = d
        .bind_allow
        .iter()
        .chain(user.map(|u| &u.bind_allow).into_iter().flatten())
        .map(|p| p.as_path())
        .chain(mounts.iter().map(|m| m.source.as_path()))
        .map(resolve_host)
        .collect();

    let plan = userns_plan(policy, owner, user)?;
    let mut process = process_rules(policy, owner, user)?;
    if let Some(p) = &plan {
        process = process.in_userns(&p.extra_gids);
    }

    Ok(Decision {
        owner: owner.map(str::to_string),
        gpu_ids,
        nodes,
        grants,
        pool_gpus: Vec::new(),
        nvidia_majors: inventory.nvidia_majors().clone(),
        extra_devices,
        process,
        allow_privileged: flag(|u| u.allow_privileged, d.allow_privileged),
        allow_host_namespaces: flag(|u| u.allow_host_namespaces, d.allow_host_namespaces),
        allow_host_network: flag(|u| u.allow_host_network, d.allow_host_network),
        mounts,
        bind_allow,
        docker_root: resolve_host(&docker_root),
        volume_backings: BTreeMap::new(),
        cpu_count: possible_cpus(),
        host: Host::current(),
        seccomp_profiles: d
            .seccomp_profiles
            .iter()
            .chain(user.map(|u| &u.seccomp_profiles).into_iter().flatten())
            .map(|h| h.0.clone())
            .collect(),
        mounted_volumes: d
            .mounted_volumes
            .iter()
            .chain(user.map(|u| &u.mounted_volumes).into_iter().flatten())
            .map(|v| v.0.clone())
            .collect(),
        runc_root: None,
        cdi,
        ceilings: match (owner, user) {
            (Some(o), Some(u)) => Ceilings::for_user(policy, o, u),
            _ => Ceilings::default(),
        },
        user_cgroups: policy.runtime.user_cgroups.0.clone(),
        cgroup_driver: Driver::Cgroupfs,
        userns: plan,
        docker_cdi: cdi::DockerApplied::default(),
        container_id: container_id.to_string(),
        policy_sha256: policy.sha256.clone(),
        build_step: false,
    })
}

/// The owner's user namespace when the policy gives them `userns = "owner"` (host ids,
/// subordinate ranges, groups, all checked); `None` otherwise.
pub fn userns_plan(
    policy: &Policy,
    owner: Option<&str>,
    user: Option<&UserPolicy>,
) -> Result<Option<Plan>, DecideError> {
    let ids = match (owner, user) {
        (Some(o), Some(u)) if policy.userns_for(Some(u)) == crate::policy::Userns::Owner => {
            Some(owner_ids(o, u)?)
        }
        _ => None,
    };
    Ok(userns::resolve(
        policy,
        owner,
        user,
        ids,
        &SubidFiles::default(),
    )?)
}

type GpuPart = (Vec<u32>, Vec<DevNode>, Option<cdi::Edits>);

/// The granted GPUs' minors, their nodes plus the control nodes, and their CDI edits.
fn gpu_part(
    policy: &Policy,
    inventory: &dyn Inventory,
    grants: Vec<Grant>,
) -> Result<GpuPart, DecideError> {
    let mut gpu_ids = Vec::new();
    let mut nodes: Vec<DevNode> = Vec::new();
    for grant in grants {
        gpu_ids.push(grant.minor);
        for n in grant.nodes {
            if !nodes.contains(&n) {
                nodes.push(n);
            }
        }
    }
    gpu_ids.sort_unstable();
    gpu_ids.dedup();
    if !nodes.is_empty() {
        nodes.extend(inventory.control_nodes().iter().cloned());
    }
    let owned: Vec<_> = inventory
        .gpus()
        .iter()
        .filter(|g| gpu_ids.contains(&g.minor))
        .collect();
    let cdi = cdi::edits_for(&policy.gpus.cdi_spec, &owned)?;
    Ok((gpu_ids, nodes, cdi))
}

impl Decision {
    /// Grants exactly the whole GPUs with these minors (a Slurm job's on this node, from
    /// `slurm::grant`) in place of the policy's list.
    pub fn grant_minors(
        &mut self,
        policy: &Policy,
        inventory: &dyn Inventory,
        minors: &[u32],
    ) -> Result<(), DecideError> {
        let grants = minors
            .iter()
            .map(|m| {
                inventory
                    .gpus()
                    .iter()
                    .find(|g| g.minor == *m)
                    .map(|g| Grant {
                        minor: g.minor,
                        nodes: g.nodes.clone(),
                    })
                    .ok_or_else(|| DecideError::Gpu {
                        table: policy.table_of(self.owner.as_deref().unwrap_or_default(), "gpus"),
                        cause: GpuError::Missing {
                            id: format!("minor {m} (of the Slurm job)"),
                            source_name: inventory.source_name().to_string(),
                        },
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        (self.gpu_ids, self.nodes, self.cdi) = gpu_part(policy, inventory, grants.clone())?;
        self.grants = grants;
        Ok(())
    }

    /// Adds the pool GPUs allocated to this container to what its owner gets anyway.
    pub fn add_pool_gpus(
        &mut self,
        policy: &Policy,
        inventory: &dyn Inventory,
        allocation: crate::pools::Allocation,
    ) -> Result<(), DecideError> {
        if allocation.grants.is_empty() {
            return Ok(());
        }
        self.grants.extend(allocation.grants);
        (self.gpu_ids, self.nodes, self.cdi) = gpu_part(policy, inventory, self.grants.clone())?;
        self.pool_gpus = allocation
            .entries
            .iter()
            .map(|e| format!("{}:{}", e.pool, e.gpu))
            .collect();
        Ok(())
    }
}

/// A host path with `..`/`//` folded and symlinks resolved where it exists, so prefixes and
/// sources compare as the kernel will see them.
pub fn resolve_host(p: &Path) -> PathBuf {
    let n = normalize(p);
    std::fs::canonicalize(&n).unwrap_or(n)
}

/// How many CPUs the kernel may ever bring online (`/sys/devices/system/cpu/possible`,
/// "0-63"); 0 when unreadable.
fn possible_cpus() -> u32 {
    std::fs::read_to_string("/sys/devices/system/cpu/possible")
        .ok()
        .and_then(|s| {
            s.trim()
                .split(',')
                .filter_map(|r| r.rsplit('-').next()?.parse::<u32>().ok())
                .max()
        })
        .map_or(0, |max| max + 1)
}

fn owner_ids(owner: &str, user: &UserPolicy) -> Result<(u32, u32), DecideError> {
    if let (Some(uid), Some(gid)) = (user.uid, user.gid) {
        return Ok((uid, gid));
    }
    match nix::unistd::User::from_name(owner) {
        Ok(Some(u)) => Ok((u.uid.as_raw(), u.gid.as_raw())),
        _ => Err(DecideError::NoUid {
            owner: owner.to_string(),
        }),
    }
}

fn dev_key(path: &Path) -> Option<DevKey> {
    let meta = std::fs::metadata(path).ok()?;
    let ft = meta.file_type();
    let kind = if ft.is_char_device() {
        'c'
    } else if ft.is_block_device() {
        'b'
    } else {
        return None;
    };
    Some(DevKey {
        kind,
        major: i64::from(libc::major(meta.rdev())),
        minor: i64::from(libc::minor(meta.rdev())),
    })
}
