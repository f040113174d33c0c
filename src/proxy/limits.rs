//! What keeps one caller from taking the proxy from everyone else: connections counted per
//! uid and refused at accept beyond the limit (any local account can connect to a 0666
//! socket), request bodies that must keep moving, and the policy parsed once per change
//! rather than once per request.

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use crate::accounts::Accounts;
use crate::policy::{Policy, PolicyError};

/// How long a request's headers may take to arrive.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a request body may go without a byte (never a total limit: `docker load` and
/// build contexts are legitimate multi-minute uploads).
pub const BODY_IDLE: Duration = Duration::from_secs(60);
/// How long the checks of one request (path resolution included) may take.
pub const CHECK_DEADLINE: Duration = Duration::from_secs(5);

/// The policy, parsed again only when the file's bytes change, or, for a policy with
/// `[groups.*]` tables, when the host's account files do (membership is read per request).
#[derive(Default)]
pub struct PolicyCache {
    cached: Mutex<Option<Cached>>,
    /// Where membership is read (the host's files; tests point elsewhere).
    accounts: Option<(PathBuf, PathBuf)>,
}

struct Cached {
    bytes: Vec<u8>,
    /// The account files the group members were resolved from (groups only).
    accounts: Option<Accounts>,
    policy: Arc<Policy>,
}

impl PolicyCache {
    /// The policy at `path` as it is now: the file is read on every call (a changed policy
    /// applies to the very next request), parsed only when it differs from the last one.
    pub fn load(&self, path: &Path) -> Result<Arc<Policy>, PolicyError> {
        let bytes = std::fs::read(path).map_err(|cause| PolicyError::Read {
            path: path.to_path_buf(),
            cause,
        })?;
        let mut cached = self.cached.lock().unwrap_or_else(|p| p.into_inner());
        let accounts = match cached.as_ref() {
            Some(c) if c.bytes == bytes => match &c.accounts {
                None => return Ok(c.policy.clone()),
                Some(before) => {
                    let now = self.accounts();
                    if *before == now {
                        return Ok(c.policy.clone());
                    }
                    Some(now)
                }
            },
            _ => None,
        };
        let mut policy = Policy::parse(path, &bytes)?;
        let accounts = match (policy.groups.is_empty(), accounts) {
            (true, _) => None,
            (false, Some(a)) => Some(a),
            (false, None) => Some(self.accounts()),
        };
        if let Some(a) = &accounts {
            policy.apply_groups(a)?;
        }
        let policy = Arc::new(policy);
        *cached = Some(Cached {
            bytes,
            accounts,
            policy: policy.clone(),
        });
        Ok(policy)
    }

    fn accounts(&self) -> Accounts {
        match &self.accounts {
            Some((passwd, group)) => Accounts::read(passwd, group),
            None => Accounts::host(),
        }
    }
}

/// Open connections per uid.
#[derive(Default)]
pub struct Connections {
    open: Mutex<HashMap<u32, usize>>,
}

/// One open connection; counted until dropped.
pub struct Slot {
    conns: Arc<Connections>,
    uid: u32,
}

impl Connections {
    /// Counts a new connection of `uid`: `Err(open)` (not counted) when `uid` already has
    /// `limit` open.
    pub fn open(self: &Arc<Self>, uid: u32, limit: usize) -> Result<Slot, usize> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(uid).or_insert(0);
        if *n >= limit {
            return Err(*n);
        }
        *n += 1;
        Ok(Slot {
            conns: self.clone(),
            uid,
        })
    }

    pub fn count(&self, uid: u32) -> usize {
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.get(&uid).copied().unwrap_or(0)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.conns.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.uid) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.uid);
            }
        }
    }
}

/// The answer to a connection refused at accept, written before it is closed.
pub fn refusal_bytes(message: &str) -> Vec<u8> {
    let body = serde_json::json!({ "message": format!("labgpu proxy: {message}") }).to_string();
    format!(
        "HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// A request body that fails when no data has come for `idle`.
pub struct IdleTimeout<B> {
    inner: B,
    idle: Duration,
    sleep: Pin<Box<Sleep>>,
}

impl<B> IdleTimeout<B> {
    pub fn new(inner: B, idle: Duration) -> Self {
        IdleTimeout {
            inner,
            idle,
            sleep: Box::pin(tokio::time::sleep(idle)),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the request body sent nothing for {0:?}")]
pub struct Stalled(Duration);

impl<B> hyper::body::Body for IdleTimeout<B>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(item) => {
                let deadline = Instant::now() + this.idle;
                this.sleep.as_mut().reset(deadline);
                Poll::Ready(item.map(|r| r.map_err(Into::into)))
            }
            Poll::Pending => match this.sleep.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(Stalled(this.idle))))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A test's policy file.
#[cfg(test)]
fn write(dir: &Path, text: &str) -> std::path::PathBuf {
    let p = dir.join("policy.toml");
    std::fs::write(&p, text).unwrap();
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[test]
    fn policy_is_parsed_again_only_when_it_changes() {
        let d = tempfile::tempdir().unwrap();
        let cache = PolicyCache::default();
        let p = write(d.path(), "version = 1\n[users.a]\n");
        let one = cache.load(&p).unwrap();
        let two = cache.load(&p).unwrap();
        assert!(Arc::ptr_eq(&one, &two));
        write(d.path(), "version = 1\n[users.b]\n");
        let three = cache.load(&p).unwrap();
        assert!(three.user("b").is_some() && three.user("a").is_none());
        write(d.path(), "version = 1 [broken");
        assert!(cache.load(&p).is_err());
    }

    #[test]
    fn group_members_follow_the_account_files() {
        let d = tempfile::tempdir().unwrap();
        let (passwd, group) = (d.path().join("passwd"), d.path().join("group"));
        std::fs::write(&passwd, "dave:x:1004:1004::/home/dave:/bin/sh\n").unwrap();
        std::fs::write(&group, "ml:x:3000:dave\n").unwrap();
        let cache = PolicyCache {
            accounts: Some((passwd, group.clone())),
            ..PolicyCache::default()
        };
        let p = write(d.path(), "version = 1\n[groups.ml]\ngpus = [1]\n");
        let one = cache.load(&p).unwrap();
        assert_eq!(one.user_for_uid(1004, Some("dave")), Some("dave"));
        assert!(Arc::ptr_eq(&one, &cache.load(&p).unwrap()));
        // gpasswd -d dave ml: the next request sees it, with the policy file unchanged.
        std::fs::write(&group, "ml:x:3000:\n").unwrap();
        let two = cache.load(&p).unwrap();
        assert_eq!(two.user_for_uid(1004, Some("dave")), None);
    }

    #[test]
    fn connections_are_counted_and_released() {
        let c = Arc::new(Connections::default());
        let a = c.open(1000, 2).unwrap();
        let _b = c.open(1000, 2).unwrap();
        assert_eq!(c.open(1000, 2).err(), Some(2));
        let _other = c.open(1001, 2).unwrap();
        drop(a);
        assert_eq!(c.count(1000), 1);
        assert!(c.open(1000, 2).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_body_fails_a_moving_one_does_not() {
        let (mut tx, rx) = mpsc_body();
        let mut body = IdleTimeout::new(rx, Duration::from_secs(60));
        tx.send(Bytes::from_static(b"a")).await;
        assert!(body.frame().await.unwrap().is_ok());
        tokio::time::advance(Duration::from_secs(59)).await;
        tx.send(Bytes::from_static(b"b")).await;
        assert!(body.frame().await.unwrap().is_ok());
        let err = body.frame().await.unwrap().unwrap_err();
        assert!(err.to_string().contains("sent nothing"), "{err}");
    }

    /// A body fed by hand.
    struct ChanBody(tokio::sync::mpsc::Receiver<Bytes>);
    struct Sender(tokio::sync::mpsc::Sender<Bytes>);

    impl Sender {
        async fn send(&mut self, b: Bytes) {
            self.0.send(b).await.unwrap();
        }
    }

    fn mpsc_body() -> (Sender, ChanBody) {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        (Sender(tx), ChanBody(rx))
    }

    impl hyper::body::Body for ChanBody {
        type Data = Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            self.get_mut()
                .0
                .poll_recv(cx)
                .map(|b| b.map(|b| Ok(Frame::data(b))))
        }
    }
}
