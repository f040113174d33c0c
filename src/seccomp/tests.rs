//! The rule as an attacker meets it: what Docker's default allows with and without the
//! capabilities they asked for, and the profiles they might write instead.

use oci_spec::runtime::LinuxSeccomp;
use serde_json::{json, Value};

use super::*;
use Generation::*;

const K6: KernelVersion = KernelVersion::new(6, 1);
const X86: NativeArch = NativeArch::X86_64;

fn caps(extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = [
        "CAP_CHOWN",
        "CAP_DAC_OVERRIDE",
        "CAP_FSETID",
        "CAP_FOWNER",
        "CAP_MKNOD",
        "CAP_NET_RAW",
        "CAP_SETGID",
        "CAP_SETUID",
        "CAP_SETFCAP",
        "CAP_SETPCAP",
        "CAP_NET_BIND_SERVICE",
        "CAP_SYS_CHROOT",
        "CAP_KILL",
        "CAP_AUDIT_WRITE",
    ]
    .iter()
    .map(|c| c.to_string())
    .collect();
    v.extend(extra.iter().map(|c| c.to_string()));
    v
}

/// Names allowed without argument conditions.
fn unconditional(p: &LinuxSeccomp) -> Vec<&str> {
    p.syscalls()
        .iter()
        .flatten()
        .filter(|r| r.action() == LinuxSeccompAction::ScmpActAllow && r.args().is_none())
        .flat_map(|r| r.names().iter().map(String::as_str))
        .collect()
}

/// The argument-filtered allow rules for `name`, as JSON.
fn filtered(p: &LinuxSeccomp, name: &str) -> Vec<Value> {
    p.syscalls()
        .iter()
        .flatten()
        .filter(|r| r.args().is_some() && r.names().iter().any(|n| n == name))
        .map(|r| serde_json::to_value(r.args()).unwrap())
        .collect()
}

use oci_spec::runtime::LinuxSeccompAction;

const ADMIN_ONLY: [&str; 5] = ["clone", "unshare", "mount", "setns", "bpf"];

#[test]
fn sys_admin_brings_namespaces_mount_and_bpf_in_every_generation() {
    for g in Generation::ALL {
        let plain = docker_default(g, &caps(&[]), X86, K6);
        let admin = docker_default(g, &caps(&["CAP_SYS_ADMIN"]), X86, K6);
        for name in ADMIN_ONLY {
            assert!(
                !unconditional(&plain).contains(&name),
                "{g}: {name} without CAP_SYS_ADMIN"
            );
            assert!(
                unconditional(&admin).contains(&name),
                "{g}: {name} missing with CAP_SYS_ADMIN"
            );
        }
        // Without it, clone is allowed only without namespace flags.
        assert_eq!(
            filtered(&plain, "clone"),
            [json!([{"index": 0, "value": 0x7E02_0000u64, "op": "SCMP_CMP_MASKED_EQ"}])],
            "{g}"
        );
        assert!(filtered(&admin, "clone").is_empty(), "{g}");
    }
}

#[test]
fn clone3_fails_with_enosys_without_sys_admin_from_20_10_10() {
    let rule = |g| {
        docker_default(g, &caps(&[]), X86, K6)
            .syscalls()
            .clone()
            .unwrap()
            .into_iter()
            .find(|r| r.names() == &["clone3"])
    };
    assert!(rule(V20_10_4).is_none());
    let r = rule(V25_0_3).unwrap();
    assert_eq!(r.action(), LinuxSeccompAction::ScmpActErrno);
    assert_eq!(r.errno_ret(), Some(38));
}

#[test]
fn io_uring_is_allowed_by_20_10_and_24_but_not_by_25_on() {
    let has =
        |g| unconditional(&docker_default(g, &caps(&[]), X86, K6)).contains(&"io_uring_setup");
    assert!(has(V20_10_18));
    assert!(has(V23_0_10));
    assert!(!has(V25_0_0));
    assert!(!has(V25_0_3));
    assert!(!has(V29_4_3));
}

#[test]
fn socket_is_filtered_by_address_family_from_23() {
    let p = |g| docker_default(g, &caps(&[]), X86, K6);
    assert!(unconditional(&p(V20_10_18)).contains(&"socket"));
    assert!(filtered(&p(V20_10_18), "socket").is_empty());
    for g in [V20_10_22, V23_0_0, V25_0_3, V28_2_0] {
        assert!(!unconditional(&p(g)).contains(&"socket"), "{g}");
        assert_eq!(
            filtered(&p(g), "socket"),
            [json!([{"index": 0, "value": 40, "op": "SCMP_CMP_NE"}])],
            "{g}"
        );
    }
    assert_eq!(
        filtered(&p(V29_4_3), "socket"),
        [
            json!([{"index": 0, "value": 38, "op": "SCMP_CMP_LT"}]),
            json!([{"index": 0, "value": 39, "op": "SCMP_CMP_EQ"}]),
            json!([{"index": 0, "value": 40, "op": "SCMP_CMP_GT"}]),
        ]
    );
}

#[test]
fn ptrace_needs_kernel_4_8_and_process_vm_calls_join_it_in_23() {
    let p = |g, k| unconditional(&docker_default(g, &caps(&[]), X86, k)).contains(&"ptrace");
    assert!(p(V20_10_18, KernelVersion::new(4, 8)));
    assert!(!p(V20_10_18, KernelVersion::new(4, 7)));
    let vm =
        |g| unconditional(&docker_default(g, &caps(&[]), X86, K6)).contains(&"process_vm_readv");
    assert!(!vm(V20_10_26));
    assert!(vm(V23_0_0));
}

#[test]
fn architecture_rules_and_arch_list() {
    let x = docker_default(V25_0_3, &caps(&[]), X86, K6);
    let a = docker_default(V25_0_3, &caps(&[]), NativeArch::Aarch64, K6);
    assert_eq!(
        to_value(&x)["architectures"],
        json!(["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"])
    );
    assert_eq!(
        to_value(&a)["architectures"],
        json!(["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"])
    );
    assert!(unconditional(&x).contains(&"arch_prctl"));
    assert!(!unconditional(&a).contains(&"arch_prctl"));
    assert!(unconditional(&a).contains(&"set_tls"));
    assert!(!unconditional(&x).contains(&"set_tls"));
}

#[test]
fn default_errno_ret_appears_with_23() {
    let v = |g| to_value(&docker_default(g, &caps(&[]), X86, K6));
    assert!(v(V20_10_26).get("defaultErrnoRet").is_none());
    assert_eq!(v(V23_0_0)["defaultErrnoRet"], 1);
}

/// Counts from Docker's own profile of each generation (rules before resolution, names in
/// the first rule): the merged tables must give back each one whole.
#[test]
fn each_generation_has_dockers_rule_and_name_counts() {
    let expected = [
        (V20_10_0, 26, 338),
        (V20_10_4, 26, 340),
        (V20_10_10, 27, 340),
        (V20_10_18, 27, 346),
        (V20_10_22, 28, 345),
        (V20_10_26, 27, 347),
        (V23_0_0, 31, 348),
        (V23_0_7, 31, 349),
        (V23_0_10, 31, 355),
        (V25_0_0, 31, 346),
        (V25_0_3, 31, 352),
        (V28_2_0, 31, 361),
        (V29_4_2, 34, 360),
        (V29_4_3, 33, 361),
    ];
    for (g, rules, names) in expected {
        let p = docker_default::profile(g);
        assert_eq!(
            (p.rules.len(), p.rules[0].names.len()),
            (rules, names),
            "{g}"
        );
    }
}

#[test]
fn no_two_generations_resolve_alike() {
    for arch in [X86, NativeArch::Aarch64] {
        for extra in [&[][..], &["CAP_SYS_ADMIN"], &["CAP_SYS_PTRACE", "CAP_BPF"]] {
            let all: Vec<LinuxSeccomp> = Generation::ALL
                .iter()
                .map(|&g| docker_default(g, &caps(extra), arch, K6))
                .collect();
            for i in 0..all.len() {
                for j in i + 1..all.len() {
                    assert_ne!(
                        all[i],
                        all[j],
                        "{} and {}",
                        Generation::ALL[i],
                        Generation::ALL[j]
                    );
                }
            }
        }
    }
}

#[test]
fn identify_default_finds_the_generation_for_the_requested_caps_only() {
    let requested = caps(&["CAP_SYS_ADMIN"]);
    for g in Generation::ALL {
        let spec = to_value(&docker_default(g, &requested, X86, K6));
        let p = from_value(&spec).unwrap();
        assert_eq!(identify_default(&p, &requested, X86, K6), Some(g));
        assert_eq!(identify_default(&p, &caps(&[]), X86, K6), None, "{g}");
    }
}

#[test]
fn a_default_with_one_rule_changed_is_not_a_default() {
    let mut v = to_value(&docker_default(V25_0_3, &caps(&[]), X86, K6));
    v["syscalls"][0]["names"]
        .as_array_mut()
        .unwrap()
        .push(json!("unshare"));
    let p = from_value(&v).unwrap();
    assert_eq!(identify_default(&p, &caps(&[]), X86, K6), None);
}

// ---------------------------------------------------------------------------------------
// check_within

fn profile(v: Value) -> LinuxSeccomp {
    from_value(&v).unwrap()
}

fn baseline() -> LinuxSeccomp {
    strictest_default(&caps(&[]), X86, K6)
}

fn refusal(v: Value) -> String {
    check_within(&profile(v), &baseline())
        .unwrap_err()
        .to_string()
}

#[test]
fn every_known_default_is_within_itself() {
    for g in Generation::ALL {
        let d = docker_default(g, &caps(&["CAP_SYS_ADMIN"]), X86, K6);
        check_within(&d, &d).unwrap();
    }
}

#[test]
fn deny_by_default_allowing_every_name_is_refused_at_the_first_extra_name() {
    let mut names: Vec<String> = Generation::ALL
        .iter()
        .flat_map(|&g| {
            docker_default(g, &caps(&["CAP_SYS_ADMIN"]), X86, K6)
                .syscalls()
                .clone()
        })
        .flatten()
        .flat_map(|r| r.names().clone())
        .collect();
    names.sort();
    names.dedup();
    let e = refusal(json!({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
        {"names": ["read", "write"], "action": "SCMP_ACT_ALLOW"},
        {"names": names, "action": "SCMP_ACT_ALLOW"},
    ]}));
    assert!(e.starts_with("seccomp rule syscalls[1] allows "), "{e}");
    for name in [
        "bpf",
        "clone",
        "io_uring_setup",
        "mount",
        "setns",
        "socket",
        "unshare",
    ] {
        assert!(e.contains(name), "{name} not named: {e}");
    }
    assert!(!e.contains(" read,"), "{e}");
}

#[test]
fn log_trace_and_notify_count_as_allow() {
    for action in ["SCMP_ACT_LOG", "SCMP_ACT_TRACE", "SCMP_ACT_NOTIFY"] {
        let e = refusal(json!({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
            {"names": ["unshare"], "action": action},
        ]}));
        assert_eq!(
            e,
            "seccomp rule syscalls[0] allows unshare, which Docker's default profile does \
             not allow for the container's capabilities"
        );
        let e = refusal(json!({"defaultAction": action}));
        assert!(e.contains("allows every syscall it does not list"), "{e}");
    }
}

#[test]
fn deny_rules_always_pass() {
    for action in [
        "SCMP_ACT_ERRNO",
        "SCMP_ACT_KILL",
        "SCMP_ACT_KILL_PROCESS",
        "SCMP_ACT_KILL_THREAD",
        "SCMP_ACT_TRAP",
    ] {
        check_within(
            &profile(
                json!({"defaultAction": "SCMP_ACT_KILL_PROCESS", "syscalls": [
                    {"names": ["unshare", "mount", "bpf"], "action": action},
                    {"names": ["read"], "action": "SCMP_ACT_LOG"},
                ]}),
            ),
            &baseline(),
        )
        .unwrap();
    }
}

#[test]
fn argument_rules_must_be_dockers_own() {
    // Docker's own clone rule passes; a wider mask does not.
    check_within(
        &profile(json!({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
            {"names": ["clone"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 0, "value": 0x7E02_0000u64, "op": "SCMP_CMP_MASKED_EQ"}]},
            {"names": ["socket"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 0, "value": 38, "op": "SCMP_CMP_LT"}]},
        ]})),
        &baseline(),
    )
    .unwrap();
    let e = refusal(json!({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
        {"names": ["clone"], "action": "SCMP_ACT_ALLOW",
         "args": [{"index": 0, "value": 0x0002_0000u64, "op": "SCMP_CMP_MASKED_EQ"}]},
    ]}));
    assert_eq!(
        e,
        "seccomp rule syscalls[0] allows clone under argument conditions that are not one of \
         Docker's default rules"
    );
    // A condition on a name allowed anyway narrows it: fine.
    check_within(
        &profile(json!({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
            {"names": ["ioctl"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 1, "value": 21505, "op": "SCMP_CMP_EQ"}]},
        ]})),
        &baseline(),
    )
    .unwrap();
}

#[test]
fn flags_listener_and_extra_architectures_are_refused() {
    let e = refusal(
        json!({"defaultAction": "SCMP_ACT_ERRNO", "flags": ["SECCOMP_FILTER_FLAG_SPEC_ALLOW"]}),
    );
    assert!(
        e.contains("sets flags (SECCOMP_FILTER_FLAG_SPEC_ALLOW)"),
        "{e}"
    );
    let e = refusal(json!({"defaultAction": "SCMP_ACT_ERRNO", "listenerPath": "/run/a.sock"}));
    assert!(e.contains("listener (/run/a.sock)"), "{e}");
    let e = refusal(
        json!({"defaultAction": "SCMP_ACT_ERRNO", "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_ARM"]}),
    );
    assert!(e.contains("architecture SCMP_ARCH_ARM"), "{e}");
    check_within(
        &profile(json!({"defaultAction": "SCMP_ACT_ERRNO", "architectures": ["SCMP_ARCH_X86_64"]})),
        &baseline(),
    )
    .unwrap();
}

#[test]
fn strictest_default_is_within_every_generation() {
    for extra in [&[][..], &["CAP_SYS_ADMIN"]] {
        let s = strictest_default(&caps(extra), X86, K6);
        let names = unconditional(&s);
        for g in Generation::ALL {
            let d = docker_default(g, &caps(extra), X86, K6);
            let theirs = unconditional(&d);
            assert!(names.iter().all(|n| theirs.contains(n)), "{g}");
        }
        assert!(!names.contains(&"io_uring_setup"));
        assert!(!names.contains(&"socket") && !names.contains(&"socketcall"));
        // Only 29.4.2's socket rules are within every generation's.
        assert_eq!(filtered(&s, "socket").len(), 3);
        // And the newest Docker's default passes against it.
        check_within(&docker_default(V29_4_3, &caps(extra), X86, K6), &s)
            .expect_err("socketcall is refused by 29.4.2 alone, so not by the intersection");
    }
}

// ---------------------------------------------------------------------------------------
// enforce: the whole rule

fn ctx<'a>(requested: &'a [String], kept: &'a [String], listed: &'a [String]) -> Context<'a> {
    Context {
        requested_caps: requested,
        kept_caps: kept,
        arch: Some(X86),
        kernel: K6,
        allowed_sha256: listed,
    }
}

#[test]
fn a_sys_admin_default_is_narrowed_to_the_kept_caps() {
    let requested = caps(&["CAP_SYS_ADMIN"]);
    let kept = caps(&[]);
    let spec = to_value(&docker_default(V20_10_18, &requested, X86, K6));
    match enforce(&spec, &ctx(&requested, &kept, &[])).unwrap() {
        Outcome::ReplaceDefault {
            generation,
            profile,
        } => {
            assert_eq!(generation, V20_10_18);
            assert_eq!(
                profile,
                to_value(&docker_default(V20_10_18, &kept, X86, K6))
            );
            let p = from_value(&profile).unwrap();
            for name in ADMIN_ONLY {
                assert!(!unconditional(&p).contains(&name), "{name}");
            }
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_custom_profile_is_refused_unless_listed() {
    let requested = caps(&[]);
    let spec = json!({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
        {"names": ["read"], "action": "SCMP_ACT_ALLOW"},
        {"names": ["io_uring_setup"], "action": "SCMP_ACT_ALLOW"},
    ]});
    let e = enforce(&spec, &ctx(&requested, &requested, &[]))
        .unwrap_err()
        .to_string();
    let sha = profile_sha256(&spec);
    assert_eq!(
        e,
        format!(
            "seccomp rule syscalls[1] allows io_uring_setup, which Docker's default profile \
             does not allow for the container's capabilities; the policy does not list this \
             profile (sha256 {sha})"
        )
    );
    let listed = [sha.to_uppercase()];
    assert_eq!(
        enforce(&spec, &ctx(&requested, &requested, &listed)).unwrap(),
        Outcome::Listed { sha256: sha }
    );
}

#[test]
fn a_narrow_custom_profile_is_kept() {
    let requested = caps(&[]);
    let spec = json!({"defaultAction": "SCMP_ACT_KILL_PROCESS", "syscalls": [
        {"names": ["read", "write", "exit_group"], "action": "SCMP_ACT_ALLOW"},
    ]});
    assert_eq!(
        enforce(&spec, &ctx(&requested, &requested, &[])).unwrap(),
        Outcome::Within
    );
}

#[test]
fn an_unknown_arch_keeps_only_listed_profiles() {
    let requested = caps(&[]);
    let spec = to_value(&docker_default(V25_0_3, &requested, X86, K6));
    let mut c = ctx(&requested, &requested, &[]);
    c.arch = None;
    let e = enforce(&spec, &c).unwrap_err().to_string();
    assert!(
        e.contains("only profiles the policy lists by sha256"),
        "{e}"
    );
    let listed = [profile_sha256(&spec)];
    c.allowed_sha256 = &listed;
    assert!(matches!(
        enforce(&spec, &c).unwrap(),
        Outcome::Listed { .. }
    ));
}

#[test]
fn docker_format_round_trip_matches_the_default() {
    // The default written out in Docker's format and read back resolves to the same object:
    // the resolver shared by both paths is checked once more from the other side.
    let requested = caps(&["CAP_SYS_PTRACE"]);
    let v = to_value(&docker_default(V25_0_3, &requested, X86, K6));
    let p = from_docker_format(&v.to_string(), V25_0_3, &requested, X86, K6).unwrap();
    assert_eq!(to_value(&p), v);
}

#[test]
fn kernel_releases_as_docker_reads_them() {
    assert_eq!(
        KernelVersion::parse_release("6.1.0-18-amd64").unwrap(),
        KernelVersion::new(6, 1)
    );
    assert_eq!(
        KernelVersion::parse_release("3.12-1-amd64\n").unwrap(),
        KernelVersion::new(3, 12)
    );
    assert!(KernelVersion::parse_release("linux").is_err());
    assert_eq!(
        KernelVersion::parse_min_kernel("4.8"),
        Some(KernelVersion::new(4, 8))
    );
    assert_eq!(KernelVersion::parse_min_kernel("4.300"), None);
    assert_eq!(KernelVersion::parse_min_kernel("+4.8"), None);
    assert_eq!(KernelVersion::parse_min_kernel("0.0"), None);
    assert_eq!(
        KernelVersion::parse_min_kernel(""),
        Some(KernelVersion::new(0, 0))
    );
}
