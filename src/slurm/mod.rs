//! Many nodes through Slurm: a `gpus = "slurm"` user's container gets exactly the GPUs that
//! Slurm allocated, on this node, to the job the container was created from.
//!
//! The proxy learns the caller's job from the kernel (`cgroup`: the pid SO_PEERCRED names,
//! its cgroup, the job id in Slurm's layout), asks Slurm about it (`scontrol`: running, the
//! caller's), and records it with the container (`records`). The runtime asks again at every
//! create and maps Slurm's GPU indices to devices through gres.conf (`gres`), in `grant`.
//! `epilog` removes a job's containers when the job ends; `labgpu verify` flags containers
//! whose job is gone, someone else's, or holds other GPUs (`verify::slurm`).

pub mod cgroup;
pub mod epilog;
pub mod grant;
pub mod gres;
pub mod hostlist;
pub mod scontrol;

use std::path::PathBuf;

pub use cgroup::CgroupJob;
pub use grant::{Jobs, Scontrol};

/// A Slurm job id.
pub type JobId = u32;

/// The Docker label the proxy stamps with the job a container was created from. Users
/// cannot set it; labgpu itself believes the proxy's record, never the label.
pub const JOB_LABEL: &str = "labgpu.slurm.job";

#[derive(Debug, thiserror::Error)]
pub enum SlurmError {
    #[error("the container was not created from inside a Slurm job (run it as `srun --gres=gpu:N docker run …`) and {policy} [slurm] outside_job = \"deny\"")]
    OutsideJob { policy: PathBuf },
    #[error("cannot tell which Slurm job the caller runs in ({reason}), so no job's GPUs are given ([users.{user}] gpus = \"slurm\")")]
    CallerJob { user: String, reason: String },
    #[error("Slurm job {job} is not running (Slurm no longer knows it): containers of [users.{user}] gpus = \"slurm\" get GPUs only while their job runs")]
    UnknownJob { job: JobId, user: String },
    #[error("Slurm job {job} is {state}, not running: containers of [users.{user}] gpus = \"slurm\" get GPUs only while their job runs")]
    NotRunning {
        job: JobId,
        state: String,
        user: String,
    },
    #[error("Slurm job {job} belongs to uid {job_uid}, not to {user} (uid {uid})")]
    NotOwners {
        job: JobId,
        job_uid: u32,
        user: String,
        uid: u32,
    },
    #[error("[users.{user}] gpus = \"slurm\" but {user:?} has no uid in the policy and no host account, so its Slurm jobs cannot be told from others'")]
    NoUid { user: String },
    #[error("cannot run {path} ([slurm] scontrol): {reason}")]
    Run { path: PathBuf, reason: String },
    #[error("{path} ([slurm] scontrol) could not show Slurm job {job}: {reason}")]
    Scontrol {
        path: PathBuf,
        job: JobId,
        reason: String,
    },
    #[error("{path} ([slurm] scontrol) answered about Slurm job {job} with what labgpu cannot believe: {reason}")]
    Answer {
        path: PathBuf,
        job: JobId,
        reason: String,
    },
    #[error("Slurm job {job} on node {node} ([slurm] node_name): {reason}")]
    Allocation {
        job: JobId,
        node: String,
        reason: String,
    },
    #[error("gres.conf {path} (beside [slurm] slurm_conf): {reason}")]
    GresConf { path: PathBuf, reason: String },
    #[error("Slurm job {job} has GPU {index} on node {node}, but gres.conf {path} lists only {count} Name=gpu File= devices for it")]
    NoSuchIndex {
        job: JobId,
        index: u32,
        node: String,
        path: PathBuf,
        count: usize,
    },
    #[error("gres.conf {path} names GPU device {file}, which is not a character device: {reason}")]
    DeviceFile {
        path: PathBuf,
        file: PathBuf,
        reason: String,
    },
    #[error("cannot tell this node's name for Slurm: set [slurm] node_name ({reason})")]
    NodeName { reason: String },
}

/// What labgpu needs of a Slurm job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    pub id: JobId,
    pub uid: u32,
    /// `RUNNING`, `COMPLETED`, … (23.11+ JSON: the state and its flags, comma-separated).
    pub state: String,
    /// Per allocation entry: its nodes and their GPU indices (Slurm's, per node).
    allocations: Vec<(Vec<String>, Vec<u32>)>,
}

impl Job {
    pub fn new(
        id: JobId,
        uid: u32,
        state: String,
        allocations: Vec<(Vec<String>, Vec<u32>)>,
    ) -> Job {
        Job {
            id,
            uid,
            state,
            allocations,
        }
    }

    /// Running, and not on its way out (23.11 flags a job that ends as RUNNING,COMPLETING).
    pub fn running(&self) -> bool {
        let mut words = self.state.split(',');
        words.next() == Some("RUNNING") && words.all(|w| w != "COMPLETING")
    }

    /// Slurm's indices of the job's GPUs on `node` (none when the job has none there). A
    /// node named twice is a forged answer (see `scontrol`).
    pub fn gpus_on(&self, node: &str) -> Result<Vec<u32>, String> {
        let mut on = self
            .allocations
            .iter()
            .filter(|(nodes, _)| nodes.iter().any(|n| n == node));
        match (on.next(), on.next()) {
            (None, _) => Ok(Vec::new()),
            (Some((_, gpus)), None) => Ok(gpus.clone()),
            (Some(_), Some(_)) => Err(format!(
                "node {node} has more than one allocation line (a job name or comment written to look like Slurm's own fields?)"
            )),
        }
    }
}
