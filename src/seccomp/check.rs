//! Whether a profile allows more than a baseline, and the baseline for profiles that are no
//! Docker default.

use std::collections::HashSet;

use oci_spec::runtime::{
    LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompOperator, LinuxSyscall,
};

use super::{docker_default, normalize, Generation, KernelVersion, NativeArch, SeccompError};

/// Actions that let the syscall run. LOG runs it and logs; TRACE hands it to a tracer that
/// may run it; NOTIFY to a listener that may.
fn lets_through(a: LinuxSeccompAction) -> bool {
    matches!(
        a,
        LinuxSeccompAction::ScmpActAllow
            | LinuxSeccompAction::ScmpActLog
            | LinuxSeccompAction::ScmpActTrace
            | LinuxSeccompAction::ScmpActNotify
    )
}

/// Refuses `profile` at the first thing it allows beyond `baseline`:
/// - a default action that lets syscalls through, flags, a listener;
/// - an architecture the baseline does not cover;
/// - then, rule by rule in order (deny rules always pass): a rule without argument
///   conditions passes if the baseline allows each of its names unconditionally; a rule
///   with conditions passes if, for each name, the baseline has a rule with exactly these
///   conditions, or allows the name unconditionally.
///
/// Exact equality for conditions (and not "implies") keeps the check one that a reader can
/// verify at a glance; Docker's own argument rules are few and a profile derived from
/// Docker's keeps them verbatim.
pub fn check_within(profile: &LinuxSeccomp, baseline: &LinuxSeccomp) -> Result<(), SeccompError> {
    let profile = normalize(profile.clone());
    let baseline = normalize(baseline.clone());
    check_top_level(&profile)?;
    check_architectures(&profile, &baseline)?;
    let allowed = Allowed::of(&baseline);
    for (index, rule) in profile.syscalls().iter().flatten().enumerate() {
        if !lets_through(rule.action()) {
            continue;
        }
        let args = rule.args().as_deref().unwrap_or_default();
        let beyond: Vec<&str> = rule
            .names()
            .iter()
            .filter(|n| !allowed.covers(n, args))
            .map(String::as_str)
            .collect();
        if beyond.is_empty() {
            continue;
        }
        let names = beyond.join(", ");
        return Err(if args.is_empty() {
            SeccompError::Exceeds { index, names }
        } else {
            SeccompError::ArgsExceed { index, names }
        });
    }
    Ok(())
}

fn check_top_level(p: &LinuxSeccomp) -> Result<(), SeccompError> {
    if lets_through(p.default_action()) {
        return Err(SeccompError::DefaultAllows(p.default_action().to_string()));
    }
    if let Some(flags) = p.flags() {
        let list: Vec<String> = flags.iter().map(ToString::to_string).collect();
        return Err(SeccompError::Flags(list.join(", ")));
    }
    if let Some(path) = p.listener_path() {
        return Err(SeccompError::Listener(path.display().to_string()));
    }
    if let Some(meta) = p.listener_metadata() {
        return Err(SeccompError::Listener(format!("metadata {meta:?}")));
    }
    Ok(())
}

/// No architectures means the native one only, which every baseline covers.
fn check_architectures(p: &LinuxSeccomp, baseline: &LinuxSeccomp) -> Result<(), SeccompError> {
    let covered = baseline.architectures().as_deref().unwrap_or_default();
    match p
        .architectures()
        .iter()
        .flatten()
        .find(|a| !covered.contains(a))
    {
        Some(a) => Err(SeccompError::Architecture(a.to_string())),
        None => Ok(()),
    }
}

/// What a baseline lets through, by syscall name.
struct Allowed<'a> {
    unconditional: HashSet<&'a str>,
    /// (name, conditions) of every rule with argument conditions.
    conditional: Vec<(&'a str, &'a [LinuxSeccompArg])>,
}

impl<'a> Allowed<'a> {
    fn of(baseline: &'a LinuxSeccomp) -> Self {
        let mut me = Self {
            unconditional: HashSet::new(),
            conditional: Vec::new(),
        };
        for rule in baseline.syscalls().iter().flatten() {
            if !lets_through(rule.action()) {
                continue;
            }
            let args = rule.args().as_deref().unwrap_or_default();
            for name in rule.names() {
                if args.is_empty() {
                    me.unconditional.insert(name);
                } else {
                    me.conditional.push((name, args));
                }
            }
        }
        me
    }

    fn covers(&self, name: &str, args: &[LinuxSeccompArg]) -> bool {
        self.unconditional.contains(name)
            || (!args.is_empty()
                && self
                    .conditional
                    .iter()
                    .any(|&(n, a)| n == name && a == args))
    }
}

/// The baseline for a profile that is no Docker default: what every known Docker
/// generation's default allows for `caps`.
///
/// Why all of them: the runtime cannot tell which dockerd wrote a spec (nothing in it says),
/// and a custom profile names no Docker version. Taking the intersection means a profile
/// accepted here allows nothing that any Docker labgpu knows would have refused by default,
/// so no user gains a syscall by writing their own profile instead of taking the default.
/// The price: syscalls a newer Docker dropped (io_uring_* since 25.0, socket(AF_ALG) since
/// 29.4.2) are refused in custom profiles even on an older Docker; the admin can list such
/// a profile by sha256.
///
/// Names every generation allows unconditionally are allowed unconditionally. An argument
/// rule of any generation is kept when every generation lets through at least what it does;
/// "at least" is decided with [`implies`], used only here, on Docker's own rules.
pub fn strictest_default(caps: &[String], arch: NativeArch, kernel: KernelVersion) -> LinuxSeccomp {
    let defaults: Vec<LinuxSeccomp> = Generation::ALL
        .iter()
        .map(|&g| docker_default(g, caps, arch, kernel))
        .collect();
    let allowed: Vec<Allowed> = defaults.iter().map(Allowed::of).collect();
    let newest = defaults.last().expect("at least one generation");

    let everywhere = |name: &str| allowed.iter().all(|a| a.unconditional.contains(name));
    let mut names: Vec<String> = Vec::new();
    for rule in allow_rules(newest).filter(|r| r.args().is_none()) {
        for n in rule.names() {
            if everywhere(n) && !names.contains(n) {
                names.push(n.clone());
            }
        }
    }
    let mut rules = vec![allow_rule(names, None)];
    for d in defaults.iter().rev() {
        for rule in allow_rules(d) {
            let Some(args) = rule.args() else { continue };
            for n in rule.names() {
                let kept = allowed.iter().all(|a| a.lets_through_at_least(n, args));
                let candidate = allow_rule(vec![n.clone()], Some(args.clone()));
                if kept && !rules.contains(&candidate) {
                    rules.push(candidate);
                }
            }
        }
    }
    let mut out = newest.clone();
    out.set_syscalls(Some(rules));
    normalize(out)
}

fn allow_rules(p: &LinuxSeccomp) -> impl Iterator<Item = &LinuxSyscall> {
    p.syscalls()
        .iter()
        .flatten()
        .filter(|r| lets_through(r.action()))
}

fn allow_rule(names: Vec<String>, args: Option<Vec<LinuxSeccompArg>>) -> LinuxSyscall {
    let mut r = LinuxSyscall::default();
    r.set_names(names);
    r.set_action(LinuxSeccompAction::ScmpActAllow);
    r.set_args(args);
    r
}

impl Allowed<'_> {
    /// Whether every call `name` with `args` would make is let through here.
    fn lets_through_at_least(&self, name: &str, args: &[LinuxSeccompArg]) -> bool {
        self.unconditional.contains(name)
            || self
                .conditional
                .iter()
                .any(|&(n, b)| n == name && implies(args, b))
    }
}

/// Whether every call satisfying all of `rule` also satisfies all of `baseline`: each
/// baseline condition is implied by a rule condition on the same argument. Sufficient, not
/// necessary; conditions it cannot reason about (masked compares, values of 2^32 and up,
/// which 32-bit sub-architectures would compare truncated) imply only themselves.
pub(crate) fn implies(rule: &[LinuxSeccompArg], baseline: &[LinuxSeccompArg]) -> bool {
    baseline.iter().all(|b| {
        rule.iter()
            .any(|r| r == b || (r.index() == b.index() && accepted_within(r, b)))
    })
}

/// The values of one argument a condition accepts.
#[derive(Debug, PartialEq)]
enum Accepts {
    /// lo..=hi; empty when lo > hi.
    Range(u64, u64),
    AllBut(u64),
}

fn accepts(c: &LinuxSeccompArg) -> Option<Accepts> {
    use LinuxSeccompOperator::*;
    let v = c.value();
    if v > u64::from(u32::MAX) || c.value_two().unwrap_or(0) != 0 {
        return None;
    }
    Some(match c.op() {
        ScmpCmpEq => Accepts::Range(v, v),
        ScmpCmpNe => Accepts::AllBut(v),
        ScmpCmpLt if v == 0 => Accepts::Range(1, 0),
        ScmpCmpLt => Accepts::Range(0, v - 1),
        ScmpCmpLe => Accepts::Range(0, v),
        ScmpCmpGt => Accepts::Range(v + 1, u64::MAX),
        ScmpCmpGe => Accepts::Range(v, u64::MAX),
        ScmpCmpMaskedEq => return None,
    })
}

fn accepted_within(r: &LinuxSeccompArg, b: &LinuxSeccompArg) -> bool {
    let (Some(r), Some(b)) = (accepts(r), accepts(b)) else {
        return false;
    };
    match (r, b) {
        (Accepts::Range(lo, hi), _) if lo > hi => true,
        (Accepts::Range(lo, hi), Accepts::Range(blo, bhi)) => blo <= lo && hi <= bhi,
        (Accepts::Range(lo, hi), Accepts::AllBut(x)) => !(lo..=hi).contains(&x),
        (Accepts::AllBut(x), Accepts::AllBut(y)) => x == y,
        (Accepts::AllBut(_), Accepts::Range(blo, bhi)) => blo == 0 && bhi == u64::MAX,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use LinuxSeccompOperator::*;

    fn cond(index: usize, op: LinuxSeccompOperator, value: u64) -> LinuxSeccompArg {
        crate::seccomp::oci::make_arg(index, op, value, None)
    }

    #[test]
    fn implication_on_one_argument() {
        let ne40 = [cond(0, ScmpCmpNe, 40)];
        assert!(implies(&[cond(0, ScmpCmpLt, 38)], &ne40));
        assert!(implies(&[cond(0, ScmpCmpEq, 39)], &ne40));
        assert!(implies(&[cond(0, ScmpCmpGt, 40)], &ne40));
        assert!(!implies(&[cond(0, ScmpCmpGe, 40)], &ne40));
        assert!(!implies(&[cond(0, ScmpCmpLe, 40)], &ne40));
        assert!(!implies(&ne40, &[cond(0, ScmpCmpLt, 38)]));
        // Another argument implies nothing about this one.
        assert!(!implies(&[cond(1, ScmpCmpEq, 39)], &ne40));
        // Masked compares only imply themselves.
        let masked = [cond(0, ScmpCmpMaskedEq, 0x7E02_0000)];
        assert!(implies(&masked, &masked));
        assert!(!implies(&[cond(0, ScmpCmpEq, 0)], &masked));
        // Beyond 32 bits, no reasoning.
        assert!(!implies(
            &[cond(0, ScmpCmpEq, 1 << 33)],
            &[cond(0, ScmpCmpNe, 40)]
        ));
    }
}
