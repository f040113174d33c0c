//! Whose build and whose session each BuildKit id is. BuildKit keys a build's status, its
//! frontend calls (LLBBridge) and its client session by ids the client chooses; the first
//! uid to use an id through the proxy keeps it, and no other uid's request may name it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a request naming a build or session waits for the request that claims it: a
/// client sends its session, its Solve, its Status and its frontend's calls at once.
/// (BuildKit's own wait for a build's frontend calls is 3 s.)
pub const CLAIM_WAIT: Duration = Duration::from_secs(3);
const POLL: Duration = Duration::from_millis(25);
/// Ids are forgotten after this long (a build of a week is possible, not likely).
const KEEP: Duration = Duration::from_secs(7 * 24 * 3600);
const MAX_IDS: usize = 1 << 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Build,
    Session,
}

#[derive(Debug, Default)]
pub struct Builds {
    ids: Mutex<HashMap<(Kind, String), (u32, Instant)>>,
}

impl Builds {
    /// Claims `id` for `uid`; `Err(other uid)` when another uid has it.
    pub fn claim(&self, kind: Kind, id: &str, uid: u32) -> Result<(), u32> {
        let mut ids = self.ids.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if ids.len() >= MAX_IDS {
            ids.retain(|_, (_, at)| now.duration_since(*at) < KEEP);
        }
        if ids.len() >= MAX_IDS {
            // Still full: the oldest half goes (their owners' later calls are refused).
            let mut ages: Vec<Instant> = ids.values().map(|(_, at)| *at).collect();
            ages.sort_unstable();
            let cut = ages[ages.len() / 2];
            ids.retain(|_, (_, at)| *at > cut);
        }
        match ids.get(&(kind, id.to_string())) {
            Some((other, _)) if *other != uid => Err(*other),
            _ => {
                ids.insert((kind, id.to_string()), (uid, now));
                Ok(())
            }
        }
    }

    fn owner(&self, kind: Kind, id: &str) -> Option<u32> {
        let ids = self.ids.lock().unwrap_or_else(|p| p.into_inner());
        ids.get(&(kind, id.to_string())).map(|(uid, _)| *uid)
    }

    /// Whether `id` is `uid`'s, waiting up to `wait` for its claim to arrive.
    pub async fn is_owned(&self, kind: Kind, id: &str, uid: u32, wait: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match self.owner(kind, id) {
                Some(owner) => return owner == uid,
                None if tokio::time::Instant::now() >= deadline => return false,
                None => tokio::time::sleep(POLL).await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_first_uid_keeps_an_id() {
        let b = Builds::default();
        b.claim(Kind::Build, "r1", 1001).unwrap();
        b.claim(Kind::Build, "r1", 1001).unwrap();
        assert_eq!(b.claim(Kind::Build, "r1", 1002), Err(1001));
        b.claim(Kind::Session, "r1", 1002).unwrap();
        assert!(b.is_owned(Kind::Build, "r1", 1001, CLAIM_WAIT).await);
        assert!(!b.is_owned(Kind::Build, "r1", 1002, CLAIM_WAIT).await);
        assert!(!b.is_owned(Kind::Build, "nobody", 1001, CLAIM_WAIT).await);
    }

    #[tokio::test(start_paused = true)]
    async fn a_claim_that_arrives_while_waiting_counts() {
        let b = std::sync::Arc::new(Builds::default());
        let b2 = b.clone();
        let waiter =
            tokio::spawn(async move { b2.is_owned(Kind::Build, "late", 1001, CLAIM_WAIT).await });
        tokio::time::sleep(Duration::from_millis(500)).await;
        b.claim(Kind::Build, "late", 1001).unwrap();
        assert!(waiter.await.unwrap());
    }
}
