//! Docker's default seccomp profile, every generation of it, in labgpu's own tables.
//!
//! The facts come from moby's history (profiles/seccomp, tag by tag from v20.10.0 to
//! v29.7.2) and are checked against a real dockerd by integration/seccomp-docker.sh. They
//! are laid out here as one merged profile: every rule and every syscall name carries the
//! set of generations ([`Gens`]) that have it, and rules and names are in Docker's order,
//! so that resolving the table for one generation gives, entry for entry, the object that
//! generation's dockerd writes into config.json (identity, not just equivalence, is what
//! lets the runtime recognise Docker's default in a spec).
//!
//! Shape of every generation: deny by default (EPERM); one long list of syscalls allowed
//! whatever the capabilities; a few rules filtered by argument (personality, socket since
//! 23.0, clone without CAP_SYS_ADMIN); per-architecture extras; per-capability additions
//! (CAP_SYS_ADMIN brings mount, unshare, setns, bpf, unfiltered clone, ...).

use oci_spec::runtime::{Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompOperator};

use super::docker_format::{resolve, Filter, Profile, Rule, Target};
use super::oci::make_arg;
use super::{Generation, KernelVersion, NativeArch};
use Generation::*;

/// A set of generations: bit `g as u16` for each [`Generation`] `g`.
type Gens = u16;

const fn one(g: Generation) -> Gens {
    1 << g as u16
}

/// Generations `from` to `to`, both included, in [`Generation::ALL`]'s order.
const fn span(from: Generation, to: Generation) -> Gens {
    let below_to = (1u32 << (to as u32 + 1)) - 1;
    let below_from = (1u32 << from as u32) - 1;
    (below_to & !below_from) as Gens
}

const LAST: Generation = V29_4_3;
const ALL: Gens = span(V20_10_0, LAST);
const SINCE_20_10_4: Gens = span(V20_10_4, LAST);
const SINCE_20_10_10: Gens = span(V20_10_10, LAST);
const SINCE_20_10_18: Gens = span(V20_10_18, LAST);
const SINCE_23_0_0: Gens = span(V23_0_0, LAST);
const SINCE_28_2_0: Gens = span(V28_2_0, LAST);
const SINCE_29_4_2: Gens = span(V29_4_2, LAST);
/// Linux 6.x calls, added in 23.0.10 and 25.0.3; 25.0.0-25.0.2 were cut before.
const LINUX_6_CALLS: Gens = one(V23_0_10) | span(V25_0_3, LAST);
/// io_uring_*: Docker 25.0 stopped allowing them.
const BEFORE_25: Gens = span(V20_10_0, V23_0_10);
/// name_to_handle_at moved out of the CAP_SYS_ADMIN rule twice (20.10.26, 23.0.7), and
/// 23.0.0 was cut from a branch without the first move.
const N2H_UNPRIVILEGED: Gens = one(V20_10_26) | span(V23_0_7, LAST);
const N2H_ADMIN: Gens = ALL & !N2H_UNPRIVILEGED;
/// `socket` with any address family.
const SOCKET_ANY: Gens = span(V20_10_0, V20_10_18) | one(V20_10_26);
/// `socket` unless the family is AF_VSOCK (20.10.22, then from 23.0 until 29.4.1).
const SOCKET_NO_VSOCK: Gens = one(V20_10_22) | span(V23_0_0, V28_2_0);
/// socketcall (the x86 multiplexer) was refused in 29.4.2 only.
const ONLY_29_4_2: Gens = one(V29_4_2);
const SOCKETCALL_ALLOWED: Gens = ALL & !ONLY_29_4_2;

const AF_ALG: u64 = 38;
const AF_VSOCK: u64 = 40;
/// CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER |
/// CLONE_NEWPID | CLONE_NEWNET: clone may create no namespace without CAP_SYS_ADMIN.
const CLONE_NAMESPACE_FLAGS: u64 = 0x7E02_0000;
/// What glibc falls back from clone3 to clone on.
const ENOSYS: u32 = 38;

/// What a rule does: allow, or fail with ENOSYS.
#[derive(Clone, Copy)]
enum Act {
    Allow,
    Enosys,
}

/// A rule's conditions (Docker's includes/excludes).
#[derive(Clone, Copy)]
struct When {
    /// All of these capabilities must be in the bounding set.
    caps: &'static [&'static str],
    /// None of these may be.
    without_caps: &'static [&'static str],
    /// The native architecture (Go's name) must be one of these, when any are given.
    arches: &'static [&'static str],
    without_arches: &'static [&'static str],
    min_kernel: Option<(u32, u32)>,
}

const ALWAYS: When = When {
    caps: &[],
    without_caps: &[],
    arches: &[],
    without_arches: &[],
    min_kernel: None,
};

const fn cap(c: &'static [&'static str]) -> When {
    When { caps: c, ..ALWAYS }
}

const fn arch(a: &'static [&'static str]) -> When {
    When {
        arches: a,
        ..ALWAYS
    }
}

/// One rule of the merged profile. `names` are runs of space-separated syscall names that
/// the same generations list; a rule exists in the generations of its names.
struct RuleDef {
    names: &'static [(Gens, &'static str)],
    act: Act,
    /// (argument index, operator, value); every condition must hold.
    args: &'static [(usize, LinuxSeccompOperator, u64)],
    when: When,
}

const fn allow(names: &'static [(Gens, &'static str)], when: When) -> RuleDef {
    RuleDef {
        names,
        act: Act::Allow,
        args: &[],
        when,
    }
}

/// Allowed when the argument condition holds.
const fn allow_if(
    names: &'static [(Gens, &'static str)],
    arg: &'static [(usize, LinuxSeccompOperator, u64)],
    when: When,
) -> RuleDef {
    RuleDef {
        names,
        act: Act::Allow,
        args: arg,
        when,
    }
}

use LinuxSeccompOperator::{
    ScmpCmpEq as EQ, ScmpCmpGt as GT, ScmpCmpLt as LT, ScmpCmpMaskedEq as MASKED_EQ,
    ScmpCmpNe as NE,
};

/// Allowed whatever the capabilities: Docker's first rule, in Docker's order.
#[rustfmt::skip]
const UNCONDITIONAL: &[(Gens, &str)] = &[
    (ALL, "accept accept4 access adjtimex alarm bind brk"),
    (LINUX_6_CALLS, "cachestat"),
    (
        ALL,
        "capget capset chdir chmod chown chown32 clock_adjtime clock_adjtime64 \
         clock_getres clock_getres_time64 clock_gettime clock_gettime64 clock_nanosleep \
         clock_nanosleep_time64 close",
    ),
    (SINCE_20_10_4, "close_range"),
    (
        ALL,
        "connect copy_file_range creat dup dup2 dup3 epoll_create epoll_create1 epoll_ctl \
         epoll_ctl_old epoll_pwait",
    ),
    (SINCE_20_10_4, "epoll_pwait2"),
    (
        ALL,
        "epoll_wait epoll_wait_old eventfd eventfd2 execve execveat exit exit_group \
         faccessat faccessat2 fadvise64 fadvise64_64 fallocate fanotify_mark fchdir fchmod \
         fchmodat",
    ),
    (LINUX_6_CALLS, "fchmodat2"),
    (
        ALL,
        "fchown fchown32 fchownat fcntl fcntl64 fdatasync fgetxattr flistxattr flock fork \
         fremovexattr fsetxattr fstat fstat64 fstatat64 fstatfs fstatfs64 fsync ftruncate \
         ftruncate64 futex",
    ),
    (LINUX_6_CALLS, "futex_requeue"),
    (ALL, "futex_time64"),
    (LINUX_6_CALLS, "futex_wait"),
    (SINCE_20_10_18, "futex_waitv"),
    (LINUX_6_CALLS, "futex_wake"),
    (
        ALL,
        "futimesat getcpu getcwd getdents getdents64 getegid getegid32 geteuid geteuid32 \
         getgid getgid32 getgroups getgroups32 getitimer getpeername getpgid getpgrp \
         getpid getppid getpriority getrandom getresgid getresgid32 getresuid getresuid32 \
         getrlimit get_robust_list getrusage getsid getsockname getsockopt get_thread_area \
         gettid gettimeofday getuid getuid32 getxattr",
    ),
    (SINCE_28_2_0, "getxattrat"),
    (
        ALL,
        "inotify_add_watch inotify_init inotify_init1 inotify_rm_watch io_cancel ioctl \
         io_destroy io_getevents io_pgetevents io_pgetevents_time64 ioprio_get ioprio_set \
         io_setup io_submit",
    ),
    (BEFORE_25, "io_uring_enter io_uring_register io_uring_setup"),
    (ALL, "ipc kill"),
    (SINCE_20_10_18, "landlock_add_rule landlock_create_ruleset landlock_restrict_self"),
    (ALL, "lchown lchown32 lgetxattr link linkat listen"),
    (SINCE_28_2_0, "listmount"),
    (ALL, "listxattr"),
    (SINCE_28_2_0, "listxattrat"),
    (ALL, "llistxattr _llseek lremovexattr lseek lsetxattr lstat lstat64 madvise"),
    (LINUX_6_CALLS, "map_shadow_stack"),
    (ALL, "membarrier memfd_create"),
    (SINCE_20_10_18, "memfd_secret"),
    (
        ALL,
        "mincore mkdir mkdirat mknod mknodat mlock mlock2 mlockall mmap mmap2 mprotect \
         mq_getsetattr mq_notify mq_open mq_timedreceive mq_timedreceive_time64 \
         mq_timedsend mq_timedsend_time64 mq_unlink mremap",
    ),
    (SINCE_28_2_0, "mseal"),
    (ALL, "msgctl msgget msgrcv msgsnd msync munlock munlockall munmap"),
    (N2H_UNPRIVILEGED, "name_to_handle_at"),
    (
        ALL,
        "nanosleep newfstatat _newselect open openat openat2 pause pidfd_open \
         pidfd_send_signal pipe pipe2",
    ),
    (SINCE_23_0_0, "pkey_alloc pkey_free pkey_mprotect"),
    (ALL, "poll ppoll ppoll_time64 prctl pread64 preadv preadv2 prlimit64"),
    (SINCE_20_10_18, "process_mrelease"),
    (
        ALL,
        "pselect6 pselect6_time64 pwrite64 pwritev pwritev2 read readahead readlink \
         readlinkat readv recv recvfrom recvmmsg recvmmsg_time64 recvmsg remap_file_pages \
         removexattr",
    ),
    (SINCE_28_2_0, "removexattrat"),
    (ALL, "rename renameat renameat2 restart_syscall"),
    (SINCE_28_2_0, "riscv_hwprobe"),
    (
        ALL,
        "rmdir rseq rt_sigaction rt_sigpending rt_sigprocmask rt_sigqueueinfo rt_sigreturn \
         rt_sigsuspend rt_sigtimedwait rt_sigtimedwait_time64 rt_tgsigqueueinfo \
         sched_getaffinity sched_getattr sched_getparam sched_get_priority_max \
         sched_get_priority_min sched_getscheduler sched_rr_get_interval \
         sched_rr_get_interval_time64 sched_setaffinity sched_setattr sched_setparam \
         sched_setscheduler sched_yield seccomp select semctl semget semop semtimedop \
         semtimedop_time64 send sendfile sendfile64 sendmmsg sendmsg sendto setfsgid \
         setfsgid32 setfsuid setfsuid32 setgid setgid32 setgroups setgroups32 setitimer \
         setpgid setpriority setregid setregid32 setresgid setresgid32 setresuid \
         setresuid32 setreuid setreuid32 setrlimit set_robust_list setsid setsockopt \
         set_thread_area set_tid_address setuid setuid32 setxattr",
    ),
    (SINCE_28_2_0, "setxattrat"),
    (
        ALL,
        "shmat shmctl shmdt shmget shutdown sigaltstack signalfd signalfd4 sigprocmask \
         sigreturn",
    ),
    (SOCKET_ANY, "socket"),
    (SOCKETCALL_ALLOWED, "socketcall"),
    (ALL, "socketpair splice stat stat64 statfs statfs64"),
    (SINCE_28_2_0, "statmount"),
    (
        ALL,
        "statx symlink symlinkat sync sync_file_range syncfs sysinfo tee tgkill time \
         timer_create timer_delete timer_getoverrun timer_gettime timer_gettime64 \
         timer_settime timer_settime64 timerfd_create timerfd_gettime timerfd_gettime64 \
         timerfd_settime timerfd_settime64 times tkill truncate truncate64 ugetrlimit \
         umask uname unlink unlinkat",
    ),
    (SINCE_28_2_0, "uretprobe"),
    (
        ALL,
        "utime utimensat utimensat_time64 utimes vfork vmsplice wait4 waitid waitpid write \
         writev",
    ),
];

/// Every rule after the unconditional one, in Docker's order.
#[rustfmt::skip]
const RULES: &[RuleDef] = &[
    // Before Linux 4.8 a tracer could change a syscall after seccomp had checked it.
    allow(
        &[(SINCE_23_0_0, "process_vm_readv process_vm_writev"), (ALL, "ptrace")],
        When { min_kernel: Some((4, 8)), ..ALWAYS },
    ),
    allow_if(&[(SOCKET_NO_VSOCK, "socket")], &[(0, NE, AF_VSOCK)], ALWAYS),
    RuleDef { names: &[(ONLY_29_4_2, "socketcall")], act: Act::Enosys, args: &[], when: ALWAYS },
    // Since 29.4.2: every address family but AF_ALG (38) and AF_VSOCK (40).
    allow_if(&[(SINCE_29_4_2, "socket")], &[(0, LT, AF_ALG)], ALWAYS),
    allow_if(&[(SINCE_29_4_2, "socket")], &[(0, EQ, AF_ALG + 1)], ALWAYS),
    allow_if(&[(SINCE_29_4_2, "socket")], &[(0, GT, AF_VSOCK)], ALWAYS),
    // personality: PER_LINUX, PER_LINUX32, UNAME26, UNAME26|PER_LINUX32, and the query.
    allow_if(&[(ALL, "personality")], &[(0, EQ, 0)], ALWAYS),
    allow_if(&[(ALL, "personality")], &[(0, EQ, 0x8)], ALWAYS),
    allow_if(&[(ALL, "personality")], &[(0, EQ, 0x2_0000)], ALWAYS),
    allow_if(&[(ALL, "personality")], &[(0, EQ, 0x2_0008)], ALWAYS),
    allow_if(&[(ALL, "personality")], &[(0, EQ, 0xFFFF_FFFF)], ALWAYS),
    // Architecture-specific calls.
    allow(&[(ALL, "sync_file_range2"), (SINCE_23_0_0, "swapcontext")], arch(&["ppc64le"])),
    allow(
        &[(ALL, "arm_fadvise64_64 arm_sync_file_range sync_file_range2 breakpoint cacheflush set_tls")],
        arch(&["arm", "arm64"]),
    ),
    allow(&[(ALL, "arch_prctl")], arch(&["amd64", "x32"])),
    allow(&[(ALL, "modify_ldt")], arch(&["amd64", "x32", "x86"])),
    allow(&[(ALL, "s390_pci_mmio_read s390_pci_mmio_write s390_runtime_instr")], arch(&["s390", "s390x"])),
    allow(&[(SINCE_23_0_0, "riscv_flush_icache")], arch(&["riscv64"])),
    // Per-capability additions.
    allow(&[(ALL, "open_by_handle_at")], cap(&["CAP_DAC_READ_SEARCH"])),
    allow(
        &[
            (ALL, "bpf clone"),
            (SINCE_20_10_10, "clone3"),
            (ALL, "fanotify_init"),
            (SINCE_20_10_4, "fsconfig fsmount fsopen fspick"),
            (ALL, "lookup_dcookie"),
            (SINCE_28_2_0, "lsm_get_self_attr lsm_list_modules lsm_set_self_attr"),
            (ALL, "mount"),
            (SINCE_20_10_18, "mount_setattr"),
            (SINCE_20_10_4, "move_mount"),
            (N2H_ADMIN, "name_to_handle_at"),
            (SINCE_20_10_4, "open_tree"),
            (ALL, "perf_event_open quotactl"),
            (SINCE_20_10_18, "quotactl_fd"),
            (ALL, "setdomainname sethostname setns syslog umount umount2 unshare"),
        ],
        cap(&["CAP_SYS_ADMIN"]),
    ),
    // Without CAP_SYS_ADMIN: clone without namespace flags (its flags are the second
    // argument on s390), and clone3, whose flags seccomp cannot see, fails with ENOSYS.
    allow_if(
        &[(ALL, "clone")],
        &[(0, MASKED_EQ, CLONE_NAMESPACE_FLAGS)],
        When { without_caps: &["CAP_SYS_ADMIN"], without_arches: &["s390", "s390x"], ..ALWAYS },
    ),
    allow_if(
        &[(ALL, "clone")],
        &[(1, MASKED_EQ, CLONE_NAMESPACE_FLAGS)],
        When { without_caps: &["CAP_SYS_ADMIN"], arches: &["s390", "s390x"], ..ALWAYS },
    ),
    RuleDef {
        names: &[(SINCE_20_10_10, "clone3")],
        act: Act::Enosys,
        args: &[],
        when: When { without_caps: &["CAP_SYS_ADMIN"], ..ALWAYS },
    },
    allow(&[(ALL, "reboot")], cap(&["CAP_SYS_BOOT"])),
    allow(&[(ALL, "chroot")], cap(&["CAP_SYS_CHROOT"])),
    allow(&[(ALL, "delete_module init_module finit_module")], cap(&["CAP_SYS_MODULE"])),
    allow(&[(ALL, "acct")], cap(&["CAP_SYS_PACCT"])),
    allow(
        &[
            (ALL, "kcmp pidfd_getfd"),
            (SINCE_20_10_4, "process_madvise"),
            (ALL, "process_vm_readv process_vm_writev ptrace"),
        ],
        cap(&["CAP_SYS_PTRACE"]),
    ),
    allow(&[(ALL, "iopl ioperm")], cap(&["CAP_SYS_RAWIO"])),
    allow(
        &[(ALL, "settimeofday stime clock_settime"), (SINCE_23_0_0, "clock_settime64")],
        cap(&["CAP_SYS_TIME"]),
    ),
    allow(&[(ALL, "vhangup")], cap(&["CAP_SYS_TTY_CONFIG"])),
    allow(
        &[(ALL, "get_mempolicy mbind set_mempolicy"), (LINUX_6_CALLS, "set_mempolicy_home_node")],
        cap(&["CAP_SYS_NICE"]),
    ),
    allow(&[(ALL, "syslog")], cap(&["CAP_SYSLOG"])),
    allow(&[(SINCE_23_0_0, "bpf")], cap(&["CAP_BPF"])),
    allow(&[(SINCE_23_0_0, "perf_event_open")], cap(&["CAP_PERFMON"])),
];

/// Docker's default profile as `gen`'s dockerd writes it into config.json for a container
/// with bounding capabilities `caps` on `arch` under `kernel`.
pub fn docker_default(
    gen: Generation,
    caps: &[String],
    arch: NativeArch,
    kernel: KernelVersion,
) -> LinuxSeccomp {
    let target = Target { caps, arch, kernel };
    resolve(&profile(gen), gen, &target)
        .expect("the built-in default profile resolves")
        .expect("the built-in default profile has a default action")
}

/// The generation's default profile in Docker's own format, before resolution.
pub(crate) fn profile(gen: Generation) -> Profile {
    let mut rules = vec![Rule {
        names: names_in(UNCONDITIONAL, gen),
        action: LinuxSeccompAction::ScmpActAllow,
        errno_ret: None,
        args: Vec::new(),
        includes: Filter::default(),
        excludes: Filter::default(),
    }];
    rules.extend(RULES.iter().filter_map(|r| rule_in(r, gen)));
    Profile {
        default_action: Some(LinuxSeccompAction::ScmpActErrno),
        // 20.10's profile type had no defaultErrnoRet; EPERM was runc's default then.
        default_errno_ret: (!gen.is_20_10()).then_some(1),
        // Only the two architectures labgpu resolves for (see NativeArch); Docker's map
        // has entries for the others too, which resolution would never pick here.
        arch_map: vec![
            (
                Arch::ScmpArchX86_64,
                vec![Arch::ScmpArchX86, Arch::ScmpArchX32],
            ),
            (Arch::ScmpArchAarch64, vec![Arch::ScmpArchArm]),
        ],
        rules,
        ..Profile::default()
    }
}

/// The names of Docker's first rule (allowed whatever the capabilities) in `gen`: every
/// resolved default starts with exactly these, which lets a caller rule most generations
/// out without resolving them.
pub(crate) fn unconditional_names(gen: Generation) -> impl Iterator<Item = &'static str> {
    names_of(UNCONDITIONAL, gen)
}

fn names_of(
    runs: &'static [(Gens, &'static str)],
    gen: Generation,
) -> impl Iterator<Item = &'static str> {
    runs.iter()
        .filter(move |(gens, _)| gens & one(gen) != 0)
        .flat_map(|(_, names)| names.split_whitespace())
}

fn names_in(runs: &'static [(Gens, &'static str)], gen: Generation) -> Vec<String> {
    names_of(runs, gen).map(str::to_string).collect()
}

fn rule_in(def: &RuleDef, gen: Generation) -> Option<Rule> {
    let names = names_in(def.names, gen);
    if names.is_empty() {
        return None;
    }
    let strings = |l: &[&str]| l.iter().map(|s| s.to_string()).collect();
    let (action, errno_ret) = match def.act {
        Act::Allow => (LinuxSeccompAction::ScmpActAllow, None),
        Act::Enosys => (LinuxSeccompAction::ScmpActErrno, Some(ENOSYS)),
    };
    Some(Rule {
        names,
        action,
        errno_ret,
        args: def
            .args
            .iter()
            .map(|&(i, op, v)| make_arg(i, op, v, None))
            .collect(),
        includes: Filter {
            caps: strings(def.when.caps),
            arches: strings(def.when.arches),
            min_kernel: def.when.min_kernel.map(|(k, m)| KernelVersion::new(k, m)),
        },
        excludes: Filter {
            caps: strings(def.when.without_caps),
            arches: strings(def.when.without_arches),
            min_kernel: None,
        },
    })
}
