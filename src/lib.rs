//! labgpu: an OCI runtime shim that gives each lab user only their own GPUs.
//!
//! Flow: `argv` decides the face; the runtime face (`runtime`) loads the `policy`, finds the
//! `owner`, scans the `gpu` inventory, `decide`s, applies the `edits` to the `spec`, and execs
//! runc; refusals go out through `refusal`. The admin CLI lives in `cli`, and `users` edits
//! the policy's users for it (`labgpu user …`); `proxy` is the identity-aware Docker socket in
//! front of it all, and `shell` is a user's login shell (`labgpu-shell`): it asks the proxy
//! for the user's own container and enters it. `slurm` ties a
//! container to the Slurm job its creator runs in: the proxy records the job, the runtime
//! grants that job's GPUs on this node, and `labgpu slurm epilog` removes the containers
//! when the job ends. `fairshare` caps each user rather than each container: the runtime
//! puts a container under its owner's parent cgroup and cuts its limits to the owner's
//! ceilings, and the proxy keeps the parents on the policy and checks host ports. BuildKit
//! builds: the proxy checks each gRPC call of a build (`proxy::buildkit`), and their `RUN`
//! steps reach the runtime face as build steps (`runtime`, `edits::build_step`). `seccomp` models Docker's
//! default seccomp profiles, so that a default resolved for capabilities labgpu cuts is
//! replaced, and a custom profile allows no more than the default would. `top` shows who
//! uses which GPU (`labgpu top`, and the proxy's `/labgpu/top` for users) and writes the
//! Prometheus metrics the proxy serves on its `--metrics` listener. `groups` makes every
//! member of a `[groups.NAME]` table's host group a policy user, their own keys over the
//! group's; `accounts` reads who is in which group from /etc/passwd and /etc/group.

pub mod accounts;
pub mod argv;
pub mod cdi;
pub mod cli;
pub mod cli_args;
pub mod decide;
pub mod docker_api;
pub mod edits;
pub mod fairshare;
pub mod gpu;
pub mod groups;
pub mod log;
pub mod owner;
pub mod paths;
pub mod policy;
pub mod policy_cache;
pub mod pools;
pub mod proxy;
pub mod records;
pub mod refusal;
pub mod runtime;
pub mod seccomp;
pub mod setup;
pub mod shell;
pub mod slurm;
pub mod spec;
pub mod top;
pub mod userns;
pub mod users;
pub mod verify;
pub mod volumes;
