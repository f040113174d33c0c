//! The per-user ceilings `labgpu top` and the metrics set usage against.
//!
//! The policy has no per-user CPU, memory or task ceilings yet (they come with the
//! resource-ceiling edits). When it has, `for_user` is the one place to read them; until
//! then every user's usage is shown without a ceiling, and the metrics export no
//! `*_limit` series.

use serde::{Deserialize, Serialize};

use crate::policy::Policy;

/// A user's ceilings; a field is `None` where the policy sets none.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Ceilings {
    /// CPUs (1.5 = one and a half cores) all of the user's containers may use together.
    pub cpus: Option<f64>,
    pub memory_bytes: Option<u64>,
    pub pids: Option<u64>,
}

/// The ceilings `policy` sets for `user`: `None` while the policy has no such keys.
pub fn for_user(_policy: &Policy, _user: &str) -> Option<Ceilings> {
    None
}
