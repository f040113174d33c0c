//! Recognised defaults remembered between creates, in labgpu's root-only cache
//! (`policy_cache`'s directory).
//!
//! Recognising Docker's default profile means resolving Docker's default for the requested
//! capabilities, comparing it rule by rule, then resolving it again for the kept ones: about
//! 45% of a create's instructions, and the same answer for every container with the same
//! profile and capabilities. The answer is a pure function of the profile, both capability
//! sets, the architecture, the kernel release and the defaults compiled into this binary, so
//! an entry is keyed by all of them: a hash of the profile, the capabilities as written, and
//! the identity of the running executable (an upgraded or rebuilt labgpu has another inode
//! or ctime, and never reads an older binary's answers).
//!
//! The profile's hash is a fast one (SipHash over the JSON tree), not sha256: hashing the
//! profile in canonical form with sha256 cost a fifth of a create. A collision is harmless:
//! every other part of the key is compared exactly, and every remembered answer is a Docker
//! default resolved for exactly the kept capabilities, which a user can ask for outright by
//! sending that Docker's default profile.
//!
//! Only replaced defaults are remembered (a listed or checked custom profile depends on the
//! policy and is decided anew). Entries live in a fixed number of slots chosen by the key's
//! hash, so users who vary `--cap-add` cannot fill /run: a collision overwrites, and the
//! full key is compared on every read. Trust is the cache directory's: root's alone, opened
//! without following symlinks; anything unexpected in an entry is a miss.

use std::hash::{DefaultHasher, Hasher};
use std::io::Read;
use std::os::unix::fs::MetadataExt;

use serde_json::Value;
use sha2::{Digest, Sha256};

use super::{Context, Generation, Outcome};
use crate::policy_cache::{open_named, write_named};

const MAGIC: &str = "labgpu-seccomp-cache 1";
/// How many answers are kept at once: distinct (profile, capabilities) pairs on one host
/// are few (Docker's default with the policy's capability sets).
const SLOTS: u64 = 32;

/// Everything the answer depends on, as one line.
pub struct Key {
    line: String,
    slot: String,
}

impl Key {
    /// `None` where nothing can be remembered (no model for this architecture, no
    /// executable identity).
    pub fn new(profile: &Value, ctx: &Context) -> Option<Key> {
        let arch = ctx.arch?;
        let exe = std::fs::metadata("/proc/self/exe").ok()?;
        let line = format!(
            "{} {} {} {} {}|{}|{:?}|{}|{}|{}",
            exe.dev(),
            exe.ino(),
            exe.size(),
            exe.ctime(),
            exe.ctime_nsec(),
            tree_hash(profile),
            arch,
            ctx.kernel,
            // JSON, so that no capability name can shift the line's fields.
            serde_json::to_string(ctx.requested_caps).ok()?,
            serde_json::to_string(ctx.kept_caps).ok()?,
        );
        if line.contains('\n') {
            return None;
        }
        let digest = Sha256::digest(line.as_bytes());
        let n = u64::from_be_bytes(digest[..8].try_into().ok()?);
        let slot = format!("seccomp-{}.cache", n % SLOTS);
        Some(Key { line, slot })
    }
}

/// A 64-bit hash of the JSON tree, in the order it was written; no two shapes feed the
/// hasher the same bytes (each node is tagged, strings and containers are delimited).
fn tree_hash(v: &Value) -> String {
    fn feed(v: &Value, h: &mut DefaultHasher) {
        match v {
            Value::Null => h.write_u8(0),
            Value::Bool(b) => h.write_u8(1 + u8::from(*b)),
            Value::Number(n) => {
                h.write_u8(3);
                h.write(n.as_str().as_bytes());
                h.write_u8(0xff);
            }
            Value::String(s) => {
                h.write_u8(4);
                h.write_usize(s.len());
                h.write(s.as_bytes());
            }
            Value::Array(a) => {
                h.write_u8(5);
                h.write_usize(a.len());
                a.iter().for_each(|x| feed(x, h));
            }
            Value::Object(m) => {
                h.write_u8(6);
                h.write_usize(m.len());
                for (k, x) in m {
                    h.write_usize(k.len());
                    h.write(k.as_bytes());
                    feed(x, h);
                }
            }
        }
    }
    let mut h = DefaultHasher::new();
    feed(v, &mut h);
    format!("{:016x}", h.finish())
}

/// The remembered answer for `key`, if any.
pub fn get(key: &Key) -> Option<Outcome> {
    let mut bytes = Vec::new();
    open_named(&key.slot)?.read_to_end(&mut bytes).ok()?;
    let text = std::str::from_utf8(&bytes).ok()?;
    let mut lines = text.splitn(4, '\n');
    if lines.next()? != MAGIC || lines.next()? != key.line {
        return None;
    }
    let index: usize = lines.next()?.parse().ok()?;
    let generation = *Generation::ALL.get(index)?;
    let profile: Value = serde_json::from_str(lines.next()?).ok()?;
    profile.is_object().then_some(Outcome::ReplaceDefault {
        generation,
        profile,
    })
}

/// Remembers a replaced default; best effort (a cache that cannot be written costs speed).
pub fn put(key: &Key, outcome: &Outcome) {
    let Outcome::ReplaceDefault {
        generation,
        profile,
    } = outcome
    else {
        return;
    };
    let Some(index) = Generation::ALL.iter().position(|g| g == generation) else {
        return;
    };
    let entry = format!("{MAGIC}\n{}\n{index}\n{profile}", key.line);
    let _ = write_named(&key.slot, entry.as_bytes());
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::seccomp::{KernelVersion, NativeArch};

    fn ctx<'a>(requested: &'a [String], kept: &'a [String]) -> Context<'a> {
        Context {
            requested_caps: requested,
            kept_caps: kept,
            arch: Some(NativeArch::X86_64),
            kernel: KernelVersion::new(6, 1),
            allowed_sha256: &[],
        }
    }

    #[test]
    fn the_key_names_every_input() {
        let (a, b) = (vec!["CAP_CHOWN".to_string()], vec![]);
        let p = json!({"defaultAction": "SCMP_ACT_ERRNO"});
        let base = Key::new(&p, &ctx(&a, &b)).unwrap().line;
        let other_profile = json!({"defaultAction": "SCMP_ACT_KILL"});
        assert_ne!(Key::new(&other_profile, &ctx(&a, &b)).unwrap().line, base);
        assert_ne!(Key::new(&p, &ctx(&b, &b)).unwrap().line, base);
        assert_ne!(Key::new(&p, &ctx(&a, &a)).unwrap().line, base);
        let mut k = ctx(&a, &b);
        k.kernel = KernelVersion::new(5, 15);
        assert_ne!(Key::new(&p, &k).unwrap().line, base);
        k.arch = None;
        assert!(Key::new(&p, &k).is_none(), "no model, nothing remembered");
    }

    #[test]
    fn a_replaced_default_is_read_back_and_nothing_else_is_kept() {
        if !nix::unistd::Uid::effective().is_root() {
            return; // the cache is root's alone
        }
        // A key no real create makes: a profile with a unique marker.
        let marker = format!("memo-test-{}", std::process::id());
        let (a, b) = (vec![marker.clone()], vec![]);
        let p = json!({"defaultAction": "SCMP_ACT_ERRNO", "marker": marker});
        let key = Key::new(&p, &ctx(&a, &b)).unwrap();
        let replaced = Outcome::ReplaceDefault {
            generation: Generation::V25_0_3,
            profile: json!({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": []}),
        };
        put(&key, &replaced);
        assert_eq!(get(&key), Some(replaced));
        let other = Key::new(&p, &ctx(&a, &a)).unwrap();
        assert_eq!(
            get(&other),
            None,
            "another key is a miss even in the same slot"
        );
        // Listed and Within depend on the policy: never remembered.
        let key2 = Key::new(&json!({"m": marker, "n": 2}), &ctx(&a, &b)).unwrap();
        put(&key2, &Outcome::Within);
        assert_eq!(get(&key2), None);
    }
}
