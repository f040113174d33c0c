//! A request body passed through a synchronous transform on its way to dockerd: the `tar`
//! crate and friends read `Read` and write `Write`, so the work runs on the blocking pool
//! between two bounded channels, request-body chunks in and result chunks out, and a
//! multi-gigabyte upload holds well under a MiB at a time. A refusal mid-stream ends the body
//! sent to dockerd with an error, which makes hyper abort that request; the refusal is left
//! in a slot for the route to answer with.

use std::fmt::Display;
use std::io::{self, Read, Write};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use http_body_util::BodyExt;
use hyper::body::Frame;
use tokio::sync::mpsc;

use super::body::{Body, BoxError};

/// Request-body chunks queued for the transform (hyper hands over at most a few hundred KiB
/// at a time).
const IN_CHUNKS: usize = 4;
/// The result goes to dockerd in chunks of this size, at most `OUT_CHUNKS` queued.
const OUT_CHUNK: usize = 64 << 10;
const OUT_CHUNKS: usize = 4;

/// Where a refusal made mid-stream is left for the route to answer with.
#[derive(Debug)]
pub struct Refusal<E>(Arc<Mutex<Option<E>>>);

impl<E> Clone for Refusal<E> {
    fn clone(&self) -> Self {
        Refusal(self.0.clone())
    }
}

impl<E> Default for Refusal<E> {
    fn default() -> Self {
        Refusal(Arc::new(Mutex::new(None)))
    }
}

impl<E> Refusal<E> {
    pub fn take(&self) -> Option<E> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    fn set(&self, e: E) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
    }
}

/// How a transform ended badly.
#[derive(Debug)]
pub enum Failure<E> {
    /// The stream is refused; the sentence for the caller.
    Refused(E),
    /// Reading the upload failed (the caller went away).
    Input(io::Error),
    /// Writing the result failed (dockerd stopped reading).
    Output(io::Error),
}

/// `body` passed through `work` (a synchronous reader-to-writer transform run on the
/// blocking pool) for dockerd, and the slot where a refusal is left. Send the body upstream;
/// if the slot holds a refusal afterwards, answer with it: the upstream request was aborted
/// because of it. Must be called on the runtime.
pub fn transform<E, F>(body: Body, work: F) -> (Body, Refusal<E>)
where
    E: Display + Send + 'static,
    F: FnOnce(&mut dyn Read, &mut dyn Write) -> Result<(), Failure<E>> + Send + 'static,
{
    transform_metered(body, work, Arc::new(Meter::default()))
}

pub(crate) fn transform_metered<E, F>(body: Body, work: F, meter: Arc<Meter>) -> (Body, Refusal<E>)
where
    E: Display + Send + 'static,
    F: FnOnce(&mut dyn Read, &mut dyn Write) -> Result<(), Failure<E>> + Send + 'static,
{
    let (in_tx, in_rx) = mpsc::channel(IN_CHUNKS);
    let (out_tx, out_rx) = mpsc::channel(OUT_CHUNKS);
    let refusal = Refusal::default();
    tokio::spawn(pump(body, in_tx, meter.clone()));
    let slot = refusal.clone();
    let m = meter.clone();
    tokio::task::spawn_blocking(move || run(in_rx, out_tx, work, &slot, m));
    (OutBody { rx: out_rx, meter }.boxed(), refusal)
}

/// Bytes between the caller's body and dockerd's: queued in either channel, or held by the
/// reader or writer of the rewrite.
#[derive(Debug, Default)]
pub(crate) struct Meter {
    now: AtomicUsize,
    pub(crate) peak: AtomicUsize,
}

impl Meter {
    fn add(&self, n: usize) {
        let now = self.now.fetch_add(n, Ordering::SeqCst) + n;
        self.peak.fetch_max(now, Ordering::SeqCst);
    }

    fn sub(&self, n: usize) {
        self.now.fetch_sub(n, Ordering::SeqCst);
    }
}

/// Feeds the request body to the rewrite; stops as soon as the rewrite stops listening, so
/// what is left stays in the body for `server::handle` to drain after a refusal.
async fn pump(mut body: Body, tx: mpsc::Sender<io::Result<Bytes>>, meter: Arc<Meter>) {
    loop {
        let frame = tokio::select! {
            frame = body.frame() => frame,
            () = tx.closed() => return,
        };
        let item = match frame {
            None => return,
            Some(Err(e)) => Err(io::Error::other(e)),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) if !data.is_empty() => Ok(data),
                _ => continue,
            },
        };
        let (n, last) = match &item {
            Ok(data) => (data.len(), false),
            Err(_) => (0, true),
        };
        meter.add(n);
        if tx.send(item).await.is_err() {
            meter.sub(n);
            return;
        }
        if last {
            return;
        }
    }
}

/// The blocking half: transforms, then tells the body how it ended.
fn run<E, F>(
    in_rx: mpsc::Receiver<io::Result<Bytes>>,
    out_tx: mpsc::Sender<Result<Bytes, BoxError>>,
    work: F,
    slot: &Refusal<E>,
    meter: Arc<Meter>,
) where
    E: Display,
    F: FnOnce(&mut dyn Read, &mut dyn Write) -> Result<(), Failure<E>>,
{
    let mut reader = ChannelReader {
        rx: in_rx,
        chunk: Bytes::new(),
        meter: meter.clone(),
    };
    let mut writer = ChannelWriter {
        tx: out_tx.clone(),
        buf: Vec::with_capacity(OUT_CHUNK),
        meter,
    };
    let result =
        work(&mut reader, &mut writer).and_then(|()| writer.flush().map_err(Failure::Output));
    drop(writer);
    match result {
        Ok(()) => {
            // The last sender: dockerd sees the end of the body and can answer while
            // whatever trails the stream is read and dropped.
            drop(out_tx);
            let _ = io::copy(&mut reader, &mut io::sink());
        }
        Err(Failure::Refused(e)) => {
            let msg = e.to_string();
            slot.set(e);
            let _ = out_tx.blocking_send(Err(msg.into()));
        }
        Err(Failure::Input(e)) => {
            let _ = out_tx.blocking_send(Err(format!("reading the upload failed: {e}").into()));
        }
        // dockerd stopped reading (it answered early, or went away): its answer is the one.
        Err(Failure::Output(_)) => {}
    }
}

struct ChannelReader {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    chunk: Bytes,
    meter: Arc<Meter>,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        while self.chunk.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(chunk)) => self.chunk = chunk,
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk[..n]);
        self.chunk.advance(n);
        self.meter.sub(n);
        Ok(n)
    }
}

struct ChannelWriter {
    tx: mpsc::Sender<Result<Bytes, BoxError>>,
    buf: Vec<u8>,
    meter: Arc<Meter>,
}

impl ChannelWriter {
    fn send(&mut self) -> io::Result<()> {
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(OUT_CHUNK));
        self.tx
            .blocking_send(Ok(Bytes::from(chunk)))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "docker stopped reading"))
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(OUT_CHUNK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        self.meter.add(n);
        if self.buf.len() == OUT_CHUNK {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.send()
    }
}

struct OutBody {
    rx: mpsc::Receiver<Result<Bytes, BoxError>>,
    meter: Arc<Meter>,
}

impl hyper::body::Body for OutBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        this.rx.poll_recv(cx).map(|item| {
            item.map(|r| {
                r.map(|chunk| {
                    this.meter.sub(chunk.len());
                    Frame::data(chunk)
                })
            })
        })
    }
}
