//! Docker's seccomp profile format and how dockerd resolves it into the runtime-spec object.
//!
//! A Docker profile is a runtime-spec seccomp object plus conditions: each rule may be
//! limited to capabilities in the container's bounding set, to the host's architecture, or
//! to a minimum kernel, and `archMap` lists sub-architectures per native one. dockerd
//! resolves it once, at container create, for the container's bounding capabilities (as
//! requested, before any runtime cuts them), its own architecture and the running kernel;
//! config.json holds only the result. Both the proxy (which sees the profile a user sends)
//! and `labgpu seccomp hash` need that result, so this is dockerd's resolution, rule for
//! rule, with Docker's two loaders (20.10's and 23.0's) told apart by [`Generation`].

use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompFilterFlag,
    LinuxSeccompOperator, LinuxSyscall,
};
use serde::Deserialize;

use super::oci::make_arg;
use super::{normalize, Generation, KernelVersion, NativeArch, SeccompError};

/// A Docker-format profile, parsed.
#[derive(Debug, Clone, Default)]
pub(crate) struct Profile {
    pub default_action: Option<LinuxSeccompAction>,
    pub default_errno_ret: Option<u32>,
    pub architectures: Vec<Arch>,
    /// (native architecture, its sub-architectures).
    pub arch_map: Vec<(Arch, Vec<Arch>)>,
    pub flags: Vec<LinuxSeccompFilterFlag>,
    pub listener_path: Option<String>,
    pub listener_metadata: Option<String>,
    pub rules: Vec<Rule>,
}

/// One entry of `syscalls`, with its conditions.
#[derive(Debug, Clone)]
pub(crate) struct Rule {
    pub names: Vec<String>,
    pub action: LinuxSeccompAction,
    pub errno_ret: Option<u32>,
    pub args: Vec<LinuxSeccompArg>,
    pub includes: Filter,
    pub excludes: Filter,
}

/// `includes` / `excludes`: an empty list or `None` is no condition.
#[derive(Debug, Clone, Default)]
pub(crate) struct Filter {
    /// Capability names as in the bounding set ("CAP_SYS_ADMIN"); includes needs all,
    /// excludes any.
    pub caps: Vec<String>,
    /// Go's architecture names as dockerd knows its own ("amd64", "arm64", "x32", ...).
    pub arches: Vec<String>,
    pub min_kernel: Option<KernelVersion>,
}

/// What dockerd resolves a profile for.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Target<'a> {
    pub caps: &'a [String],
    pub arch: NativeArch,
    pub kernel: KernelVersion,
}

/// dockerd's resolution of `profile` for `target`, as that generation's dockerd writes it
/// into config.json. `None`: a profile with neither defaultAction nor rules, which dockerd
/// treats as "no seccomp at all".
pub(crate) fn resolve(
    profile: &Profile,
    gen: Generation,
    target: &Target,
) -> Result<Option<LinuxSeccomp>, SeccompError> {
    let Some(default_action) = profile.default_action else {
        if profile.rules.is_empty() {
            return Ok(None);
        }
        return Err(SeccompError::DockerFormat(
            "the profile has rules but no defaultAction".into(),
        ));
    };
    if !profile.architectures.is_empty() && !profile.arch_map.is_empty() {
        return Err(SeccompError::DockerFormat(
            "the profile sets both architectures and archMap; dockerd refuses that".into(),
        ));
    }
    let mut out = LinuxSeccomp::default();
    out.set_default_action(default_action);
    out.set_architectures(Some(resolve_arches(profile, target.arch)));
    let mut syscalls = Vec::new();
    for rule in &profile.rules {
        if applies(rule, target) {
            syscalls.push(resolve_rule(rule, gen));
        }
    }
    out.set_syscalls(Some(syscalls));
    // 20.10's loader has no fields for these and drops them without a word.
    if !gen.is_20_10() {
        out.set_default_errno_ret(profile.default_errno_ret);
        out.set_flags(Some(profile.flags.clone()));
        out.set_listener_path(profile.listener_path.clone().map(Into::into));
        out.set_listener_metadata(profile.listener_metadata.clone());
    }
    Ok(Some(normalize(out)))
}

/// `architectures` as given, then the archMap entry of the native architecture (the first
/// one only), expanded to it and its sub-architectures.
fn resolve_arches(profile: &Profile, arch: NativeArch) -> Vec<Arch> {
    let mut arches = profile.architectures.clone();
    if let Some((main, subs)) = profile
        .arch_map
        .iter()
        .find(|(main, _)| *main == arch.seccomp_arch())
    {
        arches.push(*main);
        arches.extend(subs.iter().copied());
    }
    arches
}

/// dockerd's filter, in its order: any excluded arch, cap or kernel drops the rule; so
/// does a missing included arch, cap or kernel.
fn applies(rule: &Rule, t: &Target) -> bool {
    let has_cap = |c: &String| t.caps.contains(c);
    let arch = t.arch.docker_name();
    let ex = &rule.excludes;
    if ex.arches.iter().any(|a| a == arch)
        || ex.caps.iter().any(has_cap)
        || ex.min_kernel.is_some_and(|k| t.kernel >= k)
    {
        return false;
    }
    let inc = &rule.includes;
    if !inc.arches.is_empty() && !inc.arches.iter().any(|a| a == arch) {
        return false;
    }
    inc.caps.iter().all(has_cap) && inc.min_kernel.is_none_or(|k| t.kernel >= k)
}

fn resolve_rule(rule: &Rule, gen: Generation) -> LinuxSyscall {
    let mut s = LinuxSyscall::default();
    s.set_names(rule.names.clone());
    s.set_action(rule.action);
    s.set_errno_ret(rule.errno_ret.filter(|_| gen.keeps_rule_errno()));
    s.set_args(Some(rule.args.clone()));
    s
}

// ---------------------------------------------------------------------------------------
// Parsing. Go's decoder ignores unknown keys and matches keys case-insensitively; here
// every key must be one of Docker's, spelled as Docker spells it, and appear once.
// Refusing what dockerd would have accepted fails closed; the reverse cannot happen.

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawProfile {
    default_action: Option<LinuxSeccompAction>,
    default_errno_ret: Option<u32>,
    architectures: Option<Vec<Arch>>,
    arch_map: Option<Vec<RawArchMap>>,
    syscalls: Option<Vec<RawRule>>,
    flags: Option<Vec<LinuxSeccompFilterFlag>>,
    listener_path: Option<String>,
    listener_metadata: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawArchMap {
    architecture: Arch,
    sub_architectures: Option<Vec<Arch>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawRule {
    name: Option<String>,
    names: Option<Vec<String>>,
    action: LinuxSeccompAction,
    errno_ret: Option<u32>,
    args: Option<Vec<RawArg>>,
    #[allow(dead_code)] // accepted and ignored, as dockerd does
    comment: Option<String>,
    includes: Option<RawFilter>,
    excludes: Option<RawFilter>,
}

/// Go fills a missing index or value with 0; so does this.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawArg {
    #[serde(default)]
    index: usize,
    #[serde(default)]
    value: u64,
    value_two: Option<u64>,
    op: LinuxSeccompOperator,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawFilter {
    caps: Option<Vec<String>>,
    arches: Option<Vec<String>>,
    min_kernel: Option<String>,
}

/// Parses a Docker-format profile (the JSON after `seccomp=` in a SecurityOpt, or a file).
pub(crate) fn parse(json: &str) -> Result<Profile, SeccompError> {
    let raw: RawProfile = serde_json::from_str(json)
        .map_err(|e| SeccompError::DockerFormat(format!("not a Docker seccomp profile: {e}")))?;
    let mut rules = Vec::new();
    for (i, r) in raw.syscalls.unwrap_or_default().into_iter().enumerate() {
        rules.push(parse_rule(i, r)?);
    }
    Ok(Profile {
        default_action: raw.default_action,
        default_errno_ret: raw.default_errno_ret,
        architectures: raw.architectures.unwrap_or_default(),
        arch_map: raw
            .arch_map
            .unwrap_or_default()
            .into_iter()
            .map(|m| (m.architecture, m.sub_architectures.unwrap_or_default()))
            .collect(),
        flags: raw.flags.unwrap_or_default(),
        listener_path: raw.listener_path.filter(|p| !p.is_empty()),
        listener_metadata: raw.listener_metadata.filter(|m| !m.is_empty()),
        rules,
    })
}

fn parse_rule(i: usize, r: RawRule) -> Result<Rule, SeccompError> {
    let name = r.name.filter(|n| !n.is_empty());
    let names = match (name, r.names) {
        (Some(_), Some(names)) if !names.is_empty() => {
            return Err(SeccompError::DockerFormat(format!(
                "rule {i} sets both name and names; dockerd refuses that"
            )))
        }
        (Some(n), _) => vec![n],
        (None, Some(names)) if !names.is_empty() => names,
        // dockerd would pass `"names": null` on to runc; nothing good comes of that.
        (None, _) => {
            return Err(SeccompError::DockerFormat(format!(
                "rule {i} names no syscall"
            )))
        }
    };
    let args = r
        .args
        .unwrap_or_default()
        .into_iter()
        .map(|a| make_arg(a.index, a.op, a.value, a.value_two))
        .collect();
    Ok(Rule {
        names,
        action: r.action,
        errno_ret: r.errno_ret,
        args,
        includes: parse_filter(i, r.includes)?,
        excludes: parse_filter(i, r.excludes)?,
    })
}

fn parse_filter(i: usize, f: Option<RawFilter>) -> Result<Filter, SeccompError> {
    let Some(f) = f else {
        return Ok(Filter::default());
    };
    let min_kernel = match f.min_kernel {
        None => None,
        Some(v) => Some(KernelVersion::parse_min_kernel(&v).ok_or_else(|| {
            SeccompError::DockerFormat(format!(
                "rule {i}: minKernel {v:?} is not \"<kernel>.<major>\""
            ))
        })?),
    };
    Ok(Filter {
        caps: f.caps.unwrap_or_default(),
        arches: f.arches.unwrap_or_default(),
        min_kernel,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(caps: &[&str]) -> (Vec<String>, NativeArch, KernelVersion) {
        (
            caps.iter().map(|c| c.to_string()).collect(),
            NativeArch::X86_64,
            KernelVersion::new(6, 1),
        )
    }

    fn resolve_str(json: &str, gen: Generation, caps: &[&str]) -> serde_json::Value {
        let (caps, arch, kernel) = target(caps);
        let t = Target {
            caps: &caps,
            arch,
            kernel,
        };
        let p = resolve(&parse(json).unwrap(), gen, &t).unwrap().unwrap();
        super::super::to_value(&p)
    }

    const CUSTOM: &str = r#"{
        "defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 1,
        "archMap": [{"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": ["SCMP_ARCH_ARM"]},
                    {"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86"]}],
        "syscalls": [
            {"name": "read", "action": "SCMP_ACT_ALLOW", "comment": "c"},
            {"names": ["mount"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_ADMIN"]}},
            {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38,
             "excludes": {"caps": ["CAP_SYS_ADMIN"]}},
            {"names": ["arch_prctl"], "action": "SCMP_ACT_ALLOW", "includes": {"arches": ["arm64"]}},
            {"names": ["ptrace"], "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "7.0"}},
            {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 0, "value": 8, "valueTwo": 0, "op": "SCMP_CMP_EQ"}]}
        ]}"#;

    #[test]
    fn rules_are_kept_or_dropped_as_dockerd_does() {
        let v = resolve_str(CUSTOM, Generation::V25_0_3, &["CAP_CHOWN"]);
        assert_eq!(
            v,
            serde_json::json!({
                "defaultAction": "SCMP_ACT_ERRNO",
                "defaultErrnoRet": 1,
                "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"],
                "syscalls": [
                    {"names": ["read"], "action": "SCMP_ACT_ALLOW"},
                    {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38},
                    {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
                     "args": [{"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}]},
                ]
            })
        );
        let v = resolve_str(CUSTOM, Generation::V25_0_3, &["CAP_SYS_ADMIN"]);
        let names: Vec<&str> = v["syscalls"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["names"][0].as_str().unwrap())
            .collect();
        assert_eq!(names, ["read", "mount", "personality"]);
    }

    #[test]
    fn docker_20_10_drops_what_its_loader_does_not_know() {
        let v = resolve_str(CUSTOM, Generation::V20_10_18, &[]);
        assert!(v.get("defaultErrnoRet").is_none(), "{v}");
        assert_eq!(v["syscalls"][1]["errnoRet"], 38);
        let v = resolve_str(CUSTOM, Generation::V20_10_4, &[]);
        assert!(v["syscalls"][1].get("errnoRet").is_none(), "{v}");
    }

    #[test]
    fn flags_and_listener_survive_from_23_0() {
        let p = r#"{"defaultAction": "SCMP_ACT_ERRNO", "flags": ["SECCOMP_FILTER_FLAG_LOG"],
                    "listenerPath": "/run/agent.sock", "syscalls": []}"#;
        let v = resolve_str(p, Generation::V23_0_0, &[]);
        assert_eq!(v["flags"][0], "SECCOMP_FILTER_FLAG_LOG");
        assert_eq!(v["listenerPath"], "/run/agent.sock");
        let v = resolve_str(p, Generation::V20_10_26, &[]);
        assert!(
            v.get("flags").is_none() && v.get("listenerPath").is_none(),
            "{v}"
        );
    }

    #[test]
    fn an_empty_profile_is_unconfined() {
        let (caps, arch, kernel) = target(&[]);
        let t = Target {
            caps: &caps,
            arch,
            kernel,
        };
        for p in ["{}", r#"{"syscalls": null}"#] {
            assert!(resolve(&parse(p).unwrap(), Generation::V25_0_3, &t)
                .unwrap()
                .is_none());
        }
    }

    #[test]
    fn what_go_would_read_differently_is_refused() {
        for (p, why) in [
            (r#"{"DefaultAction": "SCMP_ACT_ALLOW"}"#, "unknown field"),
            (
                r#"{"defaultAction": "SCMP_ACT_ERRNO", "defaultAction": "SCMP_ACT_ALLOW"}"#,
                "duplicate field",
            ),
            (
                r#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"],
                    "action": "SCMP_ACT_ALLOW", "includes": {"Caps": []}}]}"#,
                "unknown field",
            ),
            (
                r#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"name": "read",
                    "names": ["write"], "action": "SCMP_ACT_ALLOW"}]}"#,
                "both name and names",
            ),
            (
                r#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"action": "SCMP_ACT_ALLOW"}]}"#,
                "names no syscall",
            ),
            (
                r#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"],
                    "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "4.8.1"}}]}"#,
                "minKernel",
            ),
        ] {
            let e = parse(p).unwrap_err().to_string();
            assert!(e.contains(why), "{p}: {e}");
        }
    }

    #[test]
    fn architectures_and_arch_map_together_are_refused() {
        let p = r#"{"defaultAction": "SCMP_ACT_ERRNO", "architectures": ["SCMP_ARCH_X86_64"],
                    "archMap": [{"architecture": "SCMP_ARCH_X86_64"}]}"#;
        let (caps, arch, kernel) = target(&[]);
        let t = Target {
            caps: &caps,
            arch,
            kernel,
        };
        let e = resolve(&parse(p).unwrap(), Generation::V25_0_3, &t).unwrap_err();
        assert!(
            e.to_string().contains("both architectures and archMap"),
            "{e}"
        );
    }
}
