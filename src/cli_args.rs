//! The admin CLI's clap definitions, and nothing else.
//!
//! This file is also compiled by `build.rs` (through `#[path]`) to generate the man pages and
//! shell completions, so it must not use anything from the crate: only `std` and `clap`.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Where `labgpu proxy` listens by default.
pub const DEFAULT_PROXY_SOCKET: &str = "/run/labgpu/docker.sock";
/// The Docker socket `labgpu proxy` forwards to by default.
pub const DEFAULT_DOCKER_SOCKET: &str = "/var/run/docker.sock";

/// Where Docker reads its daemon configuration.
pub const DEFAULT_DOCKER_CONFIG: &str = "/etc/docker/daemon.json";

#[derive(Debug, Parser)]
#[command(
    name = "labgpu",
    version,
    about = "OCI runtime shim that gives each lab user only their own GPUs",
    long_about = "Docker runs labgpu as a runtime (docker run --runtime labgpu). runc subcommands \
                  are handled and passed to runc; the commands below are for the admin."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command_,
}

#[derive(Debug, Subcommand)]
pub enum Command_ {
    /// Audit running containers against the policy and live kernel state.
    ///
    /// Exit status: 0 all clean, 1 violations found, 2 something could not be audited.
    Verify {
        /// Policy file (default: $LABGPU_POLICY or /etc/labgpu/policy.toml).
        #[arg(long)]
        policy: Option<PathBuf>,
        /// runc state root to scan; repeatable; replaces the defaults (Docker's, containerd's, runc's).
        #[arg(long = "root", value_name = "DIR")]
        roots: Vec<PathBuf>,
        /// Print JSON instead of the table.
        #[arg(long)]
        json: bool,
        /// Only containers whose id starts with ID.
        #[arg(long, value_name = "ID")]
        container: Option<String>,
        /// Where /proc is (for tests on fixture trees).
        #[arg(long, hide = true, default_value = "/proc")]
        proc_root: PathBuf,
    },
    /// List this host's GPUs: index, minor, UUID, name, device nodes, and who owns each.
    Gpus {
        /// Policy file (default: $LABGPU_POLICY or /etc/labgpu/policy.toml).
        #[arg(long)]
        policy: Option<PathBuf>,
        /// Print JSON instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Check a policy file against the schema and this host.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Serve the Docker API to lab users on a socket that knows who is calling.
    ///
    /// Each connection's uid (SO_PEERCRED) is mapped to a policy user; their containers are
    /// created with their owner label and the labgpu runtime, and they see and touch only
    /// their own containers. Root in the host's pid namespace passes through unfiltered.
    /// Socket group and mode come from the policy's [proxy] section. Runs until SIGTERM.
    Proxy {
        /// Socket to listen on (created; a stale socket there is replaced).
        #[arg(long, value_name = "SOCKET", default_value = DEFAULT_PROXY_SOCKET)]
        listen: PathBuf,
        /// Docker's own socket.
        #[arg(long, value_name = "SOCKET", default_value = DEFAULT_DOCKER_SOCKET)]
        upstream: PathBuf,
        /// Policy file (default: $LABGPU_POLICY or /etc/labgpu/policy.toml), read per request.
        #[arg(long, value_name = "FILE")]
        policy: Option<PathBuf>,
    },
    /// Register labgpu as a runtime with a container engine.
    Setup {
        #[command(subcommand)]
        command: SetupCommand,
    },
    /// Docker's default seccomp profiles, and the hashes the policy lists profiles by.
    Seccomp {
        #[command(subcommand)]
        command: SeccompCommand,
    },
    /// Containers tied to Slurm jobs: the epilog that removes them, and a job's GPUs here.
    Slurm {
        #[command(subcommand)]
        command: SlurmCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum SlurmCommand {
    /// Stop and remove the containers made from inside a Slurm job, for slurm.conf's Epilog.
    ///
    /// Reads the job from SLURM_JOB_ID (slurmd sets it). Stops each of the job's containers
    /// ([slurm] stop_timeout seconds, then killed) and removes it, all in parallel, within
    /// 30 s, one log line per container. Exit 0 when none of them remain, 1 when one
    /// survives or the records cannot be read: slurmd then drains the node. Running it again
    /// is harmless. slurm.conf: Epilog=/usr/lib/labgpu/slurm-epilog
    Epilog {
        /// Policy file (default: $LABGPU_POLICY or /etc/labgpu/policy.toml).
        #[arg(long, value_name = "FILE")]
        policy: Option<PathBuf>,
        /// Docker's own socket.
        #[arg(long, value_name = "SOCKET", default_value = DEFAULT_DOCKER_SOCKET)]
        docker: PathBuf,
        /// The job (default: $SLURM_JOB_ID).
        #[arg(long, value_name = "ID")]
        job: Option<u32>,
    },
    /// Show what labgpu makes of a Slurm job on this node: its state, its owner and which
    /// GPU devices its GPUs are (gres.conf File= order).
    Job {
        /// The job id.
        job: u32,
        /// Policy file (default: $LABGPU_POLICY or /etc/labgpu/policy.toml).
        #[arg(long, value_name = "FILE")]
        policy: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Validate FILE (default: $LABGPU_POLICY or /etc/labgpu/policy.toml); exit 1 on errors.
    ///
    /// Also asks Docker (`GET /info` on --docker) for its data root and compares it with the
    /// docker_root the runtime will read owner labels and volumes from.
    Check {
        file: Option<PathBuf>,
        /// Docker's API socket.
        #[arg(long, value_name = "SOCKET", default_value = "/var/run/docker.sock")]
        docker: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum SetupCommand {
    /// Add the labgpu runtime to Docker's daemon.json (or take it out with --remove).
    ///
    /// Sets runtimes.labgpu.path and keeps every other key and value as it is. A missing
    /// file is created (mode 0644); a file that is not valid JSON is refused and left alone.
    /// The file is replaced atomically, and when it existed and changes, the old one is kept as
    /// FILE.labgpu-backup-YYYYmmddTHHMMSS (UTC). Running it again changes nothing. Docker
    /// reads the file when it starts or reloads: run `systemctl reload docker` afterwards.
    Docker {
        /// Docker's daemon configuration file.
        #[arg(long, value_name = "FILE", default_value = DEFAULT_DOCKER_CONFIG)]
        config: PathBuf,
        /// Also make labgpu Docker's default runtime (sets default-runtime).
        #[arg(long, conflicts_with = "remove")]
        default: bool,
        /// Print the resulting file on stdout and write nothing.
        #[arg(long)]
        dry_run: bool,
        /// Take runtimes.labgpu out (an emptied runtimes stays as {}), and set default-runtime
        /// to runc if it is labgpu: a reload only applies keys the file sets.
        #[arg(long)]
        remove: bool,
        /// Runtime path to register (default: the path of this labgpu binary).
        #[arg(long, value_name = "P", conflicts_with = "remove")]
        path: Option<PathBuf>,
        /// Also write the systemd drop-in docker.service.d/labgpu-buildkit.conf, which makes
        /// dockerd 26 and later run BuildKit's RUN steps through labgpu
        /// (DOCKER_BUILDKIT_RUNC_COMMAND); the proxy lets users' BuildKit builds through only
        /// then. Applies when Docker restarts. --remove deletes it.
        #[arg(long, conflicts_with = "remove")]
        buildkit: bool,
        /// Where systemd unit drop-ins live.
        #[arg(long, value_name = "DIR", default_value = "/etc/systemd/system")]
        systemd_dir: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum SeccompCommand {
    /// Print Docker's default seccomp profile as that dockerd writes it into config.json.
    Default {
        #[command(flatten)]
        target: SeccompTarget,
    },
    /// Print the sha256 the runtime sees for a container run with FILE as its profile.
    ///
    /// FILE is a Docker-format profile (what `--security-opt seccomp=FILE` reads), resolved
    /// as that Docker resolves it for the capabilities given; with --oci, a runtime-spec
    /// seccomp object or a whole config.json, hashed as it is.
    Hash {
        /// The profile file.
        file: PathBuf,
        /// FILE is a runtime-spec seccomp object or config.json.
        #[arg(long)]
        oci: bool,
        #[command(flatten)]
        target: SeccompTarget,
    },
}

/// The container a Docker-format profile is resolved for.
#[derive(Debug, clap::Args)]
pub struct SeccompTarget {
    /// Docker version as `docker version` prints it (20.10.24, 26.1.5), or a series (26)
    /// whose releases share one default profile.
    #[arg(long, value_name = "VERSION")]
    pub docker: Option<String>,
    /// Like `docker run --cap-add` (repeatable; ALL allowed).
    #[arg(long = "cap-add", value_name = "CAP")]
    pub cap_add: Vec<String>,
    /// Like `docker run --cap-drop` (repeatable; ALL allowed).
    #[arg(long = "cap-drop", value_name = "CAP")]
    pub cap_drop: Vec<String>,
    /// x86_64 or aarch64 (default: this machine's).
    #[arg(long, value_name = "ARCH")]
    pub arch: Option<String>,
    /// Kernel release, X.Y or as `uname -r` prints it (default: this machine's).
    #[arg(long, value_name = "RELEASE")]
    pub kernel: Option<String>,
}
