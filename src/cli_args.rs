//! The admin CLI's clap definitions, and nothing else.
//!
//! This file is also compiled by `build.rs` (through `#[path]`) to generate the man pages and
//! shell completions, so it must not use anything from the crate: only `std` and `clap`.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Where `labgpu proxy` listens by default.
pub const DEFAULT_PROXY_SOCKET: &str = "/run/labgpu/docker.sock";
/// The Docker socket `labgpu proxy` forwards to by default.
pub const DEFAULT_DOCKER_SOCKET: &str = "/var/run/docker.sock";

/// Where `labgpu proxy --metrics` listens when no address is given: loopback only.
pub const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:9400";

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
        /// Free pool GPUs still allocated to containers that are gone.
        #[arg(long)]
        reclaim: bool,
    },
    /// Stop containers idle on a pool GPU (or holding one too long) and free dead allocations.
    ///
    /// Applies `[pools.NAME] idle_after` (no use per NVML for that long) and `max_runtime`,
    /// stopping each such container through Docker. Meant for a systemd timer; prints a line
    /// per container stopped. Exit status: 0, or 1 when a stop failed.
    Reclaim {
        /// Policy file (default: $LABGPU_POLICY or /etc/labgpu/policy.toml).
        #[arg(long, value_name = "FILE")]
        policy: Option<PathBuf>,
        /// Docker's socket, to stop containers through.
        #[arg(long, value_name = "SOCKET", default_value = DEFAULT_DOCKER_SOCKET)]
        docker_host: PathBuf,
        /// Say what would be stopped, stop nothing.
        #[arg(long)]
        dry_run: bool,
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
        /// Serve Prometheus metrics on ADDR (GET /metrics); without ADDR on 127.0.0.1:9400.
        /// Overrides [proxy] metrics.
        #[arg(long, value_name = "ADDR", num_args = 0..=1, default_missing_value = DEFAULT_METRICS_ADDR)]
        metrics: Option<String>,
        /// runc state root the metrics' verify audit scans; repeatable; replaces the defaults.
        #[arg(long = "root", value_name = "DIR")]
        roots: Vec<PathBuf>,
    },
    /// Show each GPU's load and processes with their owners, and each user's usage.
    ///
    /// Root sees the whole host; anyone else asks the proxy (DOCKER_HOST, else the proxy's
    /// default socket) and sees only their own containers and GPU processes. Redraws every
    /// --interval seconds until Ctrl-C.
    Top {
        /// Policy file (default: $LABGPU_POLICY or /etc/labgpu/policy.toml); root only.
        #[arg(long, value_name = "FILE")]
        policy: Option<PathBuf>,
        /// Ask the proxy on SOCKET (root too: then root sees what the proxy shows it).
        #[arg(long, value_name = "SOCKET")]
        socket: Option<PathBuf>,
        /// Print one screen and exit.
        #[arg(long)]
        once: bool,
        /// Print one view as JSON and exit.
        #[arg(long)]
        json: bool,
        /// Seconds between redraws.
        #[arg(long, value_name = "SECONDS", default_value_t = 2.0)]
        interval: f64,
    },
    /// Print the Prometheus metrics once (root), e.g. for node_exporter's textfile collector.
    ///
    /// The same series `labgpu proxy --metrics` serves, except the proxy's refusal counts.
    Metrics {
        /// Policy file (default: $LABGPU_POLICY or /etc/labgpu/policy.toml).
        #[arg(long, value_name = "FILE")]
        policy: Option<PathBuf>,
        /// runc state root verify scans; repeatable; replaces the defaults.
        #[arg(long = "root", value_name = "DIR")]
        roots: Vec<PathBuf>,
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
    /// Add, change, remove and list the policy's users.
    ///
    /// Edits /etc/labgpu/policy.toml (or --policy) in place and keeps every comment, key order
    /// and layout of the rest of the file. Each edit holds a lock next to the file, reads it
    /// again, checks the whole result as the runtime will load it (and the user's GPUs against
    /// this host), and only then replaces the file atomically, with its mode and owner. An
    /// edit that would not load changes nothing and says why.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// A lab user's login shell: enter their own container (installed as labgpu-shell).
    ///
    /// Asks the labgpu proxy for the caller's login container (made from the policy's
    /// `session` settings the first time), starts it if it is stopped, and runs an interactive
    /// shell in it, or COMMAND with -c. Exit status: COMMAND's; 1 when no login could be
    /// opened (one sentence on stderr; never a shell on the host).
    Shell {
        /// Run COMMAND in the container (as `sh -c COMMAND`) instead of a login shell.
        #[arg(short = 'c', value_name = "COMMAND", allow_hyphen_values = true)]
        command: Option<OsString>,
        /// Arguments for COMMAND: $0, $1, ...
        #[arg(
            requires = "command",
            allow_hyphen_values = true,
            trailing_var_arg = true
        )]
        args: Vec<OsString>,
        /// The labgpu proxy's socket (default: $LABGPU_PROXY_SOCKET, else /run/labgpu/docker.sock).
        #[arg(long, value_name = "SOCKET")]
        socket: Option<PathBuf>,
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

/// Where `labgpu user` reads and writes, and which Docker it asks about containers.
#[derive(Debug, clap::Args)]
pub struct UserTarget {
    /// Policy file (default: $LABGPU_POLICY or /etc/labgpu/policy.toml).
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,
    /// Docker's API socket (for the user's containers).
    #[arg(long, value_name = "SOCKET", default_value = DEFAULT_DOCKER_SOCKET)]
    pub docker: PathBuf,
}

/// What `user add` and `user set` may change.
#[derive(Debug, clap::Args)]
pub struct UserChanges {
    /// Host uid (with --gid); default: the host account's.
    #[arg(long, value_name = "N")]
    pub uid: Option<u32>,
    /// Host gid (with --uid); default: the host account's primary group.
    #[arg(long, value_name = "N")]
    pub gid: Option<u32>,
    /// The user's GPUs: minor numbers, GPU-/MIG- UUIDs or GPU:GI, comma-separated;
    /// "slurm" for the GPUs of the caller's Slurm job; "" or "none" for no GPU.
    #[arg(long, value_name = "LIST")]
    pub gpus: Option<String>,
    /// A host directory the user's containers get: SOURCE:DESTINATION[:ro] (repeatable).
    #[arg(long = "mount", value_name = "SRC:DST[:ro]")]
    pub mounts: Vec<String>,
    /// Create missing mount sources, owned by the user, mode 0700.
    #[arg(long)]
    pub make_dirs: bool,
    /// Make labgpu-shell the user's login shell (their logins land in their container).
    #[arg(long)]
    pub login: bool,
    /// The login shell --login sets (default: labgpu-shell next to this labgpu, else
    /// /usr/bin/labgpu-shell).
    #[arg(long, value_name = "PATH", requires = "login")]
    pub shell_path: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Add [users.NAME] to the policy.
    ///
    /// uid and gid default to the host account NAME's. A name or uid the policy already has
    /// is an error, and so is a GPU this host does not have or a mount source that does not
    /// exist (unless --make-dirs).
    Add {
        name: String,
        #[command(flatten)]
        changes: UserChanges,
        #[command(flatten)]
        target: UserTarget,
    },
    /// Change [users.NAME]: GPUs, mounts, any per-user key.
    ///
    /// --gpus replaces the list, --add-gpus and --remove-gpus edit it; --mount adds a mount,
    /// --unmount DST takes one out; --set KEY=VALUE sets any key of the user's table (VALUE
    /// is TOML: --set allow_host_network=true, --set 'capabilities=["CAP_SYS_PTRACE"]',
    /// --set 'session={ image = "lab/pytorch:2.3" }'; a bare word is a string), --unset KEY
    /// removes one. Running containers keep the GPUs they were created with until they are
    /// recreated; the command says which.
    Set {
        name: String,
        #[command(flatten)]
        changes: UserChanges,
        /// GPUs to add to the user's list (comma-separated).
        #[arg(long, value_name = "LIST", conflicts_with = "gpus")]
        add_gpus: Option<String>,
        /// GPUs to take out of the user's list (comma-separated).
        #[arg(long, value_name = "LIST", conflicts_with = "gpus")]
        remove_gpus: Option<String>,
        /// Take out the mount at container path DST (repeatable).
        #[arg(long, value_name = "DST")]
        unmount: Vec<PathBuf>,
        /// Set KEY (or KEY.SUBKEY) of the user's table to a TOML value (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// Remove KEY (or KEY.SUBKEY) from the user's table (repeatable).
        #[arg(long, value_name = "KEY")]
        unset: Vec<String>,
        #[command(flatten)]
        target: UserTarget,
    },
    /// Stop or remove the user's containers, then take [users.NAME] out of the policy.
    ///
    /// Containers are found through Docker's API by owner label. Data directories, volumes
    /// and images are never deleted. A login shell set with --login stays: the user's logins
    /// are then refused with a sentence (change it with usermod -s).
    Rm {
        name: String,
        /// What happens to the user's containers first.
        #[arg(long, value_enum, default_value = "stop")]
        containers: ContainersAction,
        #[command(flatten)]
        target: UserTarget,
    },
    /// List the policy's users: uid, GPUs, login shell, running containers and the GPU memory
    /// their processes use (from NVML, where it is available).
    List {
        /// Print JSON instead of the table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: UserTarget,
    },
}

/// `labgpu user rm --containers`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ContainersAction {
    /// Stop them (they stay, and can be looked at or removed later).
    Stop,
    /// Remove them (and their writable layers; volumes stay).
    Remove,
    /// Leave them as they are (for when Docker is down); they cannot start again.
    Keep,
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
