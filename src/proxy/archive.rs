//! `PUT /containers/{id}/archive` (`docker cp` into a container), rewritten on the way through.
//!
//! dockerd extracts the upload as host root and keeps what each entry says: its owner, its
//! mode bits, its `SCHILY.xattr.*` records, device numbers. Into a directory bind mounted from
//! the host, a root-owned 4755 entry becomes a setuid-root program in the user's home, and a
//! `c 1:1` entry a `/dev/mem` node they own. So every archive a policy user uploads is
//! re-serialised entry by entry into a fresh GNU tar: owned by the caller's uid and gid,
//! set-id bits cleared, no PAX records (so no xattrs, file capabilities included), device
//! nodes and unknown entry types refused. Whatever the destination: a symlink inside the
//! container can point it into a bind, and an entry `workspace/x` under `/` lands in one
//! anyway.
//!
//! The rewrite is synchronous (the `tar` crate reads `Read` and writes `Write`) and runs on the
//! blocking pool between two bounded channels, request-body chunks in and tar chunks out, so
//! a multi-gigabyte copy holds well under a MiB at a time. A refusal mid-stream ends the body
//! sent to dockerd with an error, which makes hyper abort that request: dockerd reads a
//! truncated archive and fails the copy, and the caller gets `Error response from daemon:
//! labgpu proxy: archive entry "x" …`. Entries before the refused one may already have been
//! extracted (rewritten like the rest): dockerd extracts as it reads.

use std::cell::{Cell, RefCell};
use std::collections::HashSet;
use std::ffi::OsStr;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::rc::Rc;

use sha2::{Digest, Sha256};

use super::body::Body;
use super::request::query_pairs;
use super::stream;
use crate::policy::Policy;
/// What one entry's headers (GNU long names, PAX records) may take; file data is not limited.
const MAX_META: u64 = 1 << 20;
/// The latest mtime written: 11 octal digits, which every tar reader takes (year 2242).
const MAX_MTIME: u64 = 0o777_7777_7777;

/// Whose the extracted files become: the caller's host uid and gid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("archive entry {entry:?} is a {kind}; device nodes cannot be copied into a container (dockerd would create them on the host, owned by you)")]
    Device { entry: String, kind: &'static str },
    #[error("archive entry {entry:?} is a sparse file, which the proxy does not accept; create the archive without --sparse")]
    Sparse { entry: String },
    #[error("archive entry {entry:?} has tar type {typeflag}, which the proxy does not accept (only files, directories, symlinks, hard links and FIFOs)")]
    UnsupportedType { entry: String, typeflag: String },
    #[error("archive entry {entry:?} {why}")]
    BadName { entry: String, why: &'static str },
    #[error("archive entry {entry:?} is a hard link to {target:?}, which is not a file earlier in the archive")]
    HardLinkTarget { entry: String, target: String },
    #[error("archive entry {entry:?} lies under {symlink:?}, a symlink earlier in the archive")]
    UnderSymlink { entry: String, symlink: String },
    #[error("the archive is malformed {at}: {why}")]
    Malformed { at: String, why: String },
    #[error("the archive is {0}-compressed; send it uncompressed (docker cp does)")]
    Compressed(&'static str),
    #[error("copyUIDGID (docker cp -a) is not allowed: dockerd would give the files to the container's user, root in most images; without -a they are yours")]
    CopyUidGid,
    #[error("query parameter {0:?} is not accepted on an archive upload")]
    UnknownParam(String),
    #[error("noOverwriteDirNonDir=false is not allowed: dockerd would remove whole directories the archive replaces by files (docker cp always sends true)")]
    OverwriteDirs,
    #[error("uid {0} has no primary group in the host's user database; set gid for this user in the policy")]
    NoGroup(u32),
}

impl ArchiveError {
    pub fn status(&self) -> u16 {
        match self {
            ArchiveError::Malformed { .. }
            | ArchiveError::Compressed(_)
            | ArchiveError::UnknownParam(_) => 400,
            ArchiveError::NoGroup(_) => 503,
            _ => 403,
        }
    }
}

/// Checks the query of `PUT /containers/{id}/archive`. docker/cli sends `path`,
/// `noOverwriteDirNonDir` and, for `docker cp -a`, `copyUIDGID`.
pub fn check_query(query: Option<&str>) -> Result<(), ArchiveError> {
    for (key, value) in query_pairs(query) {
        match key.as_str() {
            "path" => {}
            // false lets dockerd replace (RemoveAll) a directory the archive names with a
            // file, in a bind other users may share; the docker CLI always sends true.
            "noOverwriteDirNonDir" if go_bool(&value) => {}
            "noOverwriteDirNonDir" => return Err(ArchiveError::OverwriteDirs),
            // With copyUIDGID dockerd chowns every entry to the container's configured user
            // (moby daemon.tarCopyOptions: idtools.LookupUser(Config.User) as ChownOpts, root
            // for most images), undoing the rewrite. Refused rather than stripped: the caller
            // asked for that owner, and a copy that silently ignored -a would surprise them.
            "copyUIDGID" if !go_bool(&value) => {}
            "copyUIDGID" => return Err(ArchiveError::CopyUidGid),
            _ => return Err(ArchiveError::UnknownParam(key)),
        }
    }
    Ok(())
}

/// dockerd's `httputils.BoolValue`: anything but "", "0", "no", "false", "none" is true.
fn go_bool(v: &str) -> bool {
    !matches!(
        v.trim().to_ascii_lowercase().as_str(),
        "" | "0" | "no" | "false" | "none"
    )
}

/// The caller's uid with the policy user's `gid`, or else the uid's primary group.
pub async fn owner_of(policy: &Policy, name: &str, uid: u32) -> Result<Owner, ArchiveError> {
    let gid = match policy.user(name).and_then(|u| u.gid) {
        Some(gid) => Some(gid),
        // NSS may be LDAP: off the async workers.
        None => tokio::task::spawn_blocking(move || super::identity::primary_gid(uid))
            .await
            .ok()
            .flatten(),
    };
    gid.map(|gid| Owner { uid, gid })
        .ok_or(ArchiveError::NoGroup(uid))
}

// ---------------------------------------------------------------------------------------------
// The async side: request body in, rewritten body out (`stream` does the plumbing).

/// Where a refusal made mid-stream is left for the route to answer with.
pub type Refusal = stream::Refusal<ArchiveError>;

/// The upload `body` rewritten for dockerd (see the module comment), and the slot where a
/// refusal is left. Send the body upstream; if the slot holds a refusal afterwards, answer
/// with it: the upstream request was aborted because of it. Must be called on the runtime.
pub fn rewrite_archive(body: Body, owner: Owner) -> (Body, Refusal) {
    stream::transform(body, move |r, w| rewrite(r, w, owner).map(|_| ()))
}

// ---------------------------------------------------------------------------------------------
// The rewrite itself.

/// How a rewrite ended badly.
pub type Failure = stream::Failure<ArchiveError>;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Entries written.
    pub entries: u64,
    /// Entries left out: PAX global headers and the destination's own `./`.
    pub dropped: u64,
}

/// Copies the tar archive `input` to `output` entry by entry, as `owner`'s. Nothing of an
/// input header reaches the output unless it is listed here: the entry type (file,
/// directory, symlink, hard link, FIFO), the name, the link name, the permission and sticky
/// bits, the size and the mtime. On failure `output` may have received part of the archive,
/// never its end marker.
pub fn rewrite<R: Read, W: Write>(mut input: R, output: W, owner: Owner) -> Result<Stats, Failure> {
    let mut head = [0u8; 6];
    let n = read_up_to(&mut input, &mut head).map_err(Failure::Input)?;
    if let Some(format) = compression(&head[..n]) {
        return Err(Failure::Refused(ArchiveError::Compressed(format)));
    }
    let gauge = Rc::new(Gauge::default());
    let source = Source {
        inner: Read::chain(&head[..n], input),
        gauge: gauge.clone(),
    };
    let mut archive = tar::Archive::new(source);
    let mut builder = tar::Builder::new(Sink {
        inner: output,
        failed: None,
        poisoned: false,
    });
    let mut copier = Copier {
        owner,
        seen: Seen::default(),
        stats: Stats::default(),
        at: At::Start,
    };
    let result = copier
        .copy_all(&mut archive, &mut builder, &gauge)
        .and_then(|()| builder.finish().map_err(Step::Io));
    let sink_failed = builder.get_mut().failed.take();
    if let Err(step) = result {
        // Dropping a Builder writes the end marker: not after a failure.
        builder.get_mut().poisoned = true;
        return Err(match step {
            Step::Refused(e) => Failure::Refused(e),
            Step::Io(e) => match (sink_failed, gauge.failed.take()) {
                (Some(e), _) => Failure::Output(e),
                (None, Some(e)) => Failure::Input(e),
                (None, None) => Failure::Refused(ArchiveError::Malformed {
                    at: copier.at.to_string(),
                    why: if gauge.over.get() {
                        format!("an entry's headers take more than {MAX_META} bytes")
                    } else {
                        e.to_string()
                    },
                }),
            },
        });
    }
    let mut sink = builder.into_inner().map_err(Failure::Output)?;
    sink.inner.flush().map_err(Failure::Output)?;
    Ok(copier.stats)
}

pub(super) fn read_up_to(r: &mut (impl Read + ?Sized), buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// The magic numbers dockerd's DecompressStream recognises: it would decompress what we
/// cannot read as tar, so such an upload is refused with its name rather than as garbage.
pub(super) fn compression(head: &[u8]) -> Option<&'static str> {
    [
        (&b"\x1f\x8b\x08"[..], "gzip"),
        (b"BZh", "bzip2"),
        (b"\xfd7zXZ\x00", "xz"),
        (b"\x28\xb5\x2f\xfd", "zstd"),
    ]
    .into_iter()
    .find(|(magic, _)| head.starts_with(magic))
    .map(|(_, name)| name)
}

/// What the input side saw: the tar crate reads an entry's long names and PAX records into
/// memory, so while it looks for the next entry the input is cut off after `MAX_META` bytes.
#[derive(Default)]
struct Gauge {
    left: Cell<Option<u64>>,
    over: Cell<bool>,
    failed: RefCell<Option<io::Error>>,
}

struct Source<R> {
    inner: R,
    gauge: Rc<Gauge>,
}

impl<R: Read> Read for Source<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.gauge.left.get();
        let want = match left {
            Some(0) if !buf.is_empty() => {
                self.gauge.over.set(true);
                return Err(io::Error::other("entry headers too large"));
            }
            Some(l) => buf.len().min(usize::try_from(l).unwrap_or(usize::MAX)),
            None => buf.len(),
        };
        match self.inner.read(&mut buf[..want]) {
            Ok(n) => {
                if let Some(l) = left {
                    self.gauge.left.set(Some(l - n as u64));
                }
                Ok(n)
            }
            Err(e) => {
                let copy = io::Error::new(e.kind(), e.to_string());
                *self.gauge.failed.borrow_mut() = Some(e);
                Err(copy)
            }
        }
    }
}

/// The output side: remembers its first failure, and once poisoned drops everything.
struct Sink<W> {
    inner: W,
    failed: Option<io::Error>,
    poisoned: bool,
}

impl<W> Sink<W> {
    fn record(&mut self, e: io::Error) -> io::Error {
        let copy = io::Error::new(e.kind(), e.to_string());
        self.failed.get_or_insert(e);
        copy
    }
}

impl<W: Write> Write for Sink<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.poisoned {
            return Ok(buf.len());
        }
        self.inner.write(buf).map_err(|e| self.record(e))
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.poisoned {
            return Ok(());
        }
        self.inner.flush().map_err(|e| self.record(e))
    }
}

enum Step {
    Refused(ArchiveError),
    Io(io::Error),
}

impl From<io::Error> for Step {
    fn from(e: io::Error) -> Self {
        Step::Io(e)
    }
}

impl From<ArchiveError> for Step {
    fn from(e: ArchiveError) -> Self {
        Step::Refused(e)
    }
}

/// Where in the archive a malformation was found, for the sentence.
enum At {
    Start,
    In(String),
    After(String),
}

impl std::fmt::Display for At {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            At::Start => f.write_str("at its start"),
            At::In(e) => write!(f, "in entry {e:?}"),
            At::After(e) => write!(f, "after entry {e:?}"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    File,
    Dir,
    Symlink,
    HardLink,
    Fifo,
}

impl Kind {
    /// The kind of an entry, None for one to drop, or the refusal. Go's archive/tar (and so
    /// dockerd) reads a pre-POSIX regular entry (type NUL) whose name ends in `/` as a
    /// directory.
    fn of(typeflag: u8, raw_name: &[u8], entry: &str) -> Result<Option<Kind>, ArchiveError> {
        let owned = || entry.to_string();
        Ok(Some(match typeflag {
            b'0' => Kind::File,
            b'\0' if raw_name.ends_with(b"/") => Kind::Dir,
            b'\0' => Kind::File,
            b'1' => Kind::HardLink,
            b'2' => Kind::Symlink,
            b'5' => Kind::Dir,
            b'6' => Kind::Fifo,
            // Global PAX records: dockerd ignores them, and so does the output.
            b'g' => return Ok(None),
            b'3' => {
                return Err(ArchiveError::Device {
                    entry: owned(),
                    kind: "character device",
                })
            }
            b'4' => {
                return Err(ArchiveError::Device {
                    entry: owned(),
                    kind: "block device",
                })
            }
            b'S' => return Err(ArchiveError::Sparse { entry: owned() }),
            t => {
                return Err(ArchiveError::UnsupportedType {
                    entry: owned(),
                    typeflag: std::ascii::escape_default(t).to_string(),
                })
            }
        }))
    }

    fn noun(self) -> &'static str {
        match self {
            Kind::File => "file",
            Kind::Dir => "directory",
            Kind::Symlink => "symlink",
            Kind::HardLink => "hard link",
            Kind::Fifo => "FIFO",
        }
    }

    fn entry_type(self) -> tar::EntryType {
        match self {
            Kind::File => tar::EntryType::Regular,
            Kind::Dir => tar::EntryType::Directory,
            Kind::Symlink => tar::EntryType::Symlink,
            Kind::HardLink => tar::EntryType::Link,
            Kind::Fifo => tar::EntryType::Fifo,
        }
    }
}

struct Copier {
    owner: Owner,
    seen: Seen,
    stats: Stats,
    at: At,
}

impl Copier {
    fn copy_all<R: Read, W: Write>(
        &mut self,
        archive: &mut tar::Archive<R>,
        out: &mut tar::Builder<W>,
        gauge: &Gauge,
    ) -> Result<(), Step> {
        let mut entries = archive.entries()?;
        loop {
            gauge.left.set(Some(MAX_META));
            let next = entries.next();
            gauge.left.set(None);
            let Some(entry) = next else {
                return Ok(());
            };
            let mut entry = entry?;
            let name = show(&entry.path_bytes());
            self.at = At::In(name.clone());
            self.copy_entry(&mut entry, &name, out)?;
            self.at = At::After(name);
        }
    }

    fn copy_entry<R: Read, W: Write>(
        &mut self,
        entry: &mut tar::Entry<R>,
        name: &str,
        out: &mut tar::Builder<W>,
    ) -> Result<(), Step> {
        let raw_name = entry.path_bytes().into_owned();
        // The byte itself: the tar crate reports type NUL as '0'.
        let typeflag = entry.header().as_bytes()[156];
        let Some(kind) = Kind::of(typeflag, &raw_name, name)? else {
            self.stats.dropped += 1;
            return Ok(());
        };
        let pax_mtime = pax_mtime(entry, name)?;
        let bad_name = |why| ArchiveError::BadName {
            entry: name.to_string(),
            why,
        };
        // dockerd strips a leading `/` as well (moby Unpack): names are relative to the
        // destination either way.
        let path = normalize(strip_root(&raw_name)).map_err(bad_name)?;
        if path.is_empty() {
            if kind == Kind::Dir {
                // The destination itself, `./` in `tar -C dir -cf x.tar .`; dockerd skips it.
                self.stats.dropped += 1;
                return Ok(());
            }
            return Err(bad_name("names the destination itself").into());
        }
        self.seen.check_parents(&path, name)?;
        let size = entry.size();
        if kind != Kind::File && size != 0 {
            return Err(ArchiveError::Malformed {
                at: At::In(name.to_string()).to_string(),
                why: format!("a {} entry with {size} bytes of data", kind.noun()),
            }
            .into());
        }
        let mtime = match pax_mtime {
            Some(t) => t,
            None => entry.header().mtime()?,
        };
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind.entry_type());
        // Permission and sticky bits; setuid and setgid (04000, 02000) go.
        h.set_mode(entry.header().mode()? & 0o1777);
        h.set_uid(self.owner.uid.into());
        h.set_gid(self.owner.gid.into());
        h.set_mtime(mtime.min(MAX_MTIME));
        h.set_size(if kind == Kind::File { size } else { 0 });
        match kind {
            Kind::File => {
                let mut data = Counted { inner: entry, n: 0 };
                out.append_data(&mut h, as_path(&path), &mut data)?;
                if data.n != size {
                    return Err(ArchiveError::Malformed {
                        at: At::In(name.to_string()).to_string(),
                        why: format!("it ends after {} of {size} bytes", data.n),
                    }
                    .into());
                }
            }
            Kind::Dir => {
                let mut dir = path.clone();
                dir.push(b'/');
                out.append_data(&mut h, as_path(&dir), io::empty())?;
            }
            Kind::Fifo => out.append_data(&mut h, as_path(&path), io::empty())?,
            Kind::Symlink => {
                let target = link_name(entry, name)?;
                out.append_link(&mut h, as_path(&path), as_path(&target))?;
            }
            Kind::HardLink => {
                let raw_target = link_name(entry, name)?;
                let target =
                    normalize(strip_root(&raw_target)).map_err(|_| ArchiveError::BadName {
                        entry: name.to_string(),
                        why: "is a hard link to a name with a \"..\" component",
                    })?;
                self.seen.check_hard_link(&target, name)?;
                out.append_link(&mut h, as_path(&path), as_path(&target))?;
            }
        }
        self.seen.record(&path, kind);
        self.stats.entries += 1;
        Ok(())
    }
}

/// The entry's `mtime` PAX record, if any, after checking every record. Nothing of PAX is
/// copied: uid, gid, uname, gname, `SCHILY.xattr.*` (which Go's archive/tar turns into
/// `Xattrs` and dockerd sets with lsetxattr; file capabilities are the
/// `security.capability` xattr), `LIBARCHIVE.xattr.*` and the rest stay behind. path,
/// linkpath and size the tar crate has already applied to the entry. `GNU.sparse.*` would
/// change what the data means: refused, like GNU sparse entries.
fn pax_mtime<R: Read>(entry: &mut tar::Entry<R>, name: &str) -> Result<Option<u64>, Step> {
    let malformed = |why: &str| ArchiveError::Malformed {
        at: At::In(name.to_string()).to_string(),
        why: why.to_string(),
    };
    let Some(records) = entry.pax_extensions()? else {
        return Ok(None);
    };
    let mut mtime = None;
    for record in records {
        let record = record.map_err(|_| malformed("a PAX record is malformed"))?;
        let key = record.key_bytes();
        if key.starts_with(b"GNU.sparse.") {
            return Err(ArchiveError::Sparse {
                entry: name.to_string(),
            }
            .into());
        }
        if key == b"mtime" {
            mtime = Some(
                pax_seconds(record.value_bytes())
                    .ok_or_else(|| malformed("its PAX mtime is not a number"))?,
            );
        }
    }
    Ok(mtime)
}

/// Whole seconds of a PAX time (`1700000000.25`); times before 1970 become 0.
fn pax_seconds(v: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(v).ok()?;
    let (negative, s) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
    let digits = |d: &str| d.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() || !digits(whole) || !digits(frac) {
        return None;
    }
    if negative {
        return Some(0);
    }
    Some(whole.parse::<u64>().unwrap_or(u64::MAX))
}

fn link_name<R: Read>(entry: &tar::Entry<R>, name: &str) -> Result<Vec<u8>, ArchiveError> {
    let target = entry
        .link_name_bytes()
        .map(|t| t.into_owned())
        .unwrap_or_default();
    if target.is_empty() || target.contains(&0) {
        return Err(ArchiveError::Malformed {
            at: At::In(name.to_string()).to_string(),
            why: "its link name is empty or holds a NUL byte".into(),
        });
    }
    Ok(target)
}

fn strip_root(name: &[u8]) -> &[u8] {
    let start = name.iter().position(|b| *b != b'/').unwrap_or(name.len());
    &name[start..]
}

/// `a//./b/` → `a/b`. `..` is refused: dockerd would clean `a/../b` to `b`, but the checks
/// here compare names component by component, and no archive docker cp makes has one.
fn normalize(name: &[u8]) -> Result<Vec<u8>, &'static str> {
    if name.contains(&0) {
        return Err("has a NUL byte in its name");
    }
    let mut out = Vec::with_capacity(name.len());
    for part in name.split(|b| *b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => return Err("has a \"..\" component"),
            part => {
                if !out.is_empty() {
                    out.push(b'/');
                }
                out.extend_from_slice(part);
            }
        }
    }
    Ok(out)
}

fn as_path(bytes: &[u8]) -> &Path {
    Path::new(OsStr::from_bytes(bytes))
}

/// An entry name for a sentence: lossy UTF-8, cut at 200 characters.
fn show(name: &[u8]) -> String {
    let s = String::from_utf8_lossy(name);
    match s.char_indices().nth(200) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.into_owned(),
    }
}

struct Counted<R> {
    inner: R,
    n: u64,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.n += n as u64;
        Ok(n)
    }
}

/// What earlier entries of this archive created, by name (hashed: 16 bytes an entry
/// however long the names).
///
/// Checked against moby v20.10 pkg/archive (Debian's docker.io): dockerd refuses a hard link
/// whose target, joined to the destination, is lexically outside it, and a symlink whose
/// target joined to the symlink's directory is; an absolute symlink target is checked as if
/// rooted at the destination. But the extraction runs chrooted at the container's root
/// (chrootarchive), follows symlinks in an entry's parent directories, and Lchowns every
/// entry, hard links included, to the header's uid/gid. So a symlink `d -> /shared/bob`
/// followed by an entry `d/x` would be written through the symlink, and a hard link to a file
/// already in the destination would hand that file (someone else's, in a shared bind) to the
/// caller. The rules here close both within the archive: no entry under an earlier symlink
/// entry, and hard links only to files earlier in the archive (the only ones tar and docker
/// cp write). Symlinks that already exist in the container are out of the proxy's sight.
/// Current moby (go-archive on os.Root) confines resolution to the destination itself.
#[derive(Default)]
struct Seen {
    files: HashSet<[u8; 16]>,
    symlinks: HashSet<[u8; 16]>,
}

fn key(path: &[u8]) -> [u8; 16] {
    let digest = Sha256::digest(path);
    let mut k = [0u8; 16];
    k.copy_from_slice(&digest[..16]);
    k
}

impl Seen {
    fn check_parents(&self, path: &[u8], name: &str) -> Result<(), ArchiveError> {
        if self.symlinks.is_empty() {
            return Ok(());
        }
        let above = path
            .iter()
            .enumerate()
            .filter(|(_, b)| **b == b'/')
            .map(|(i, _)| &path[..i])
            .find(|p| self.symlinks.contains(&key(p)));
        match above {
            Some(symlink) => Err(ArchiveError::UnderSymlink {
                entry: name.to_string(),
                symlink: show(symlink),
            }),
            None => Ok(()),
        }
    }

    fn check_hard_link(&self, target: &[u8], name: &str) -> Result<(), ArchiveError> {
        self.check_parents(target, name)?;
        if self.files.contains(&key(target)) {
            return Ok(());
        }
        Err(ArchiveError::HardLinkTarget {
            entry: name.to_string(),
            target: show(target),
        })
    }

    fn record(&mut self, path: &[u8], kind: Kind) {
        let k = key(path);
        match kind {
            Kind::File | Kind::HardLink => {
                self.files.insert(k);
            }
            Kind::Symlink => {
                self.files.remove(&k);
                self.symlinks.insert(k);
            }
            Kind::Dir | Kind::Fifo => {
                self.files.remove(&k);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::body::BoxError;
    use crate::proxy::stream::{transform_metered, Meter};
    use bytes::Bytes;
    use http_body_util::BodyExt;
    use hyper::body::Frame;
    use std::pin::Pin;
    use std::sync::atomic::Ordering;
    use std::sync::Arc;
    use std::task::{Context, Poll};
    use tar::{EntryType, Header};

    const ME: Owner = Owner {
        uid: 1001,
        gid: 1002,
    };
    const MTIME: u64 = 1_600_000_000;

    /// A root-owned ustar header, as `tar --owner=0 --group=0` writes them.
    fn root_header(kind: EntryType, mode: u32, size: u64) -> Header {
        let mut h = Header::new_ustar();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_username("root").unwrap();
        h.set_groupname("root").unwrap();
        h.set_mtime(MTIME);
        h.set_size(size);
        h
    }

    fn tar_of(f: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        f(&mut b);
        b.into_inner().unwrap()
    }

    fn file(b: &mut tar::Builder<Vec<u8>>, name: &str, mode: u32, data: &[u8]) {
        let mut h = root_header(EntryType::Regular, mode, data.len() as u64);
        b.append_data(&mut h, name, data).unwrap();
    }

    fn dir(b: &mut tar::Builder<Vec<u8>>, name: &str, mode: u32) {
        let mut h = root_header(EntryType::Directory, mode, 0);
        b.append_data(&mut h, name, io::empty()).unwrap();
    }

    fn link(b: &mut tar::Builder<Vec<u8>>, kind: EntryType, name: &str, target: &str) {
        let mut h = root_header(kind, 0o777, 0);
        b.append_link(&mut h, name, target).unwrap();
    }

    /// An entry with `typeflag` written byte for byte, for what the Builder will not write.
    fn raw(b: &mut tar::Builder<Vec<u8>>, typeflag: u8, name: &str, data: &[u8]) {
        let mut h = root_header(EntryType::Regular, 0o644, data.len() as u64);
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.as_mut_bytes()[156] = typeflag;
        h.set_cksum();
        b.append(&h, data).unwrap();
    }

    fn run(input: &[u8]) -> Result<Vec<u8>, Failure> {
        let mut out = Vec::new();
        rewrite(input, &mut out, ME)?;
        Ok(out)
    }

    fn refusal(input: &[u8]) -> String {
        match run(input) {
            Err(Failure::Refused(e)) => e.to_string(),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[derive(Debug, PartialEq)]
    struct Out {
        path: String,
        kind: u8,
        uid: u64,
        gid: u64,
        mode: u32,
        mtime: u64,
        link: Option<String>,
        data: Vec<u8>,
        uname: Vec<u8>,
    }

    fn parse(tar: &[u8]) -> Vec<Out> {
        let mut archive = tar::Archive::new(tar);
        archive
            .entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let mut data = Vec::new();
                e.read_to_end(&mut data).unwrap();
                let h = e.header();
                Out {
                    path: String::from_utf8(e.path_bytes().into_owned()).unwrap(),
                    kind: h.entry_type().as_byte(),
                    uid: h.uid().unwrap(),
                    gid: h.gid().unwrap(),
                    mode: h.mode().unwrap(),
                    mtime: h.mtime().unwrap(),
                    link: e
                        .link_name_bytes()
                        .map(|l| String::from_utf8(l.into_owned()).unwrap()),
                    data,
                    uname: h.username_bytes().unwrap_or_default().to_vec(),
                }
            })
            .collect()
    }

    /// Every header's type flag, extension headers (L, K, x, g) included.
    fn raw_types(tar: &[u8]) -> Vec<u8> {
        let mut archive = tar::Archive::new(tar);
        let entries = archive.entries().unwrap().raw(true);
        entries
            .map(|e| e.unwrap().header().entry_type().as_byte())
            .collect()
    }

    fn find<'a>(out: &'a [Out], path: &str) -> &'a Out {
        out.iter()
            .find(|o| o.path == path)
            .unwrap_or_else(|| panic!("no {path} in {out:?}"))
    }

    #[test]
    fn setuid_root_file_becomes_the_callers_without_set_id_bits() {
        let input = tar_of(|b| {
            file(b, "sh", 0o4755, b"#!/bin/sh\nid\n");
            file(b, "both", 0o6711, b"x");
            dir(b, "shared", 0o2775);
            dir(b, "tmp", 0o1777);
        });
        let out = parse(&run(&input).unwrap());
        let sh = find(&out, "sh");
        assert_eq!(
            (sh.uid, sh.gid, sh.mode, sh.mtime, sh.kind),
            (1001, 1002, 0o755, MTIME, b'0')
        );
        assert_eq!(sh.data, b"#!/bin/sh\nid\n");
        assert_eq!(sh.uname, b"");
        assert_eq!(find(&out, "both").mode, 0o711);
        let shared = find(&out, "shared/");
        assert_eq!((shared.mode, shared.uid, shared.kind), (0o775, 1001, b'5'));
        assert_eq!(find(&out, "tmp/").mode, 0o1777);
        assert_eq!(out.len(), 4);
    }

    #[test]
    fn pax_owner_and_xattr_records_do_not_survive() {
        let cap =
            b"\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00";
        let input = tar_of(|b| {
            b.append_pax_extensions([
                ("uid", &b"0"[..]),
                ("gid", b"0"),
                ("uname", b"root"),
                ("SCHILY.xattr.security.capability", cap),
                (
                    "LIBARCHIVE.xattr.security.capability",
                    b"AQAAAgAgAAAAAAAAAAAAAAAAAAA",
                ),
                ("SCHILY.xattr.user.note", b"hello"),
                ("mtime", b"1700000000.75"),
            ])
            .unwrap();
            let mut h = root_header(EntryType::Regular, 0o755, 4);
            h.set_uid(4242);
            b.append_data(&mut h, "ping", &b"ELF!"[..]).unwrap();
        });
        // The input does carry them: the tar crate reads the uid record into the header.
        assert_eq!(parse(&input)[0].uid, 0);
        let out = run(&input).unwrap();
        assert_eq!(raw_types(&out), [b'0']);
        for needle in [&b"xattr"[..], b"capability", b"uname", b"root"] {
            assert!(
                !out.windows(needle.len()).any(|w| w == needle),
                "{} survived",
                String::from_utf8_lossy(needle)
            );
        }
        let ping = &parse(&out)[0];
        assert_eq!(
            (ping.uid, ping.gid, ping.mtime),
            (1001, 1002, 1_700_000_000)
        );
        assert_eq!(ping.data, b"ELF!");
    }

    #[test]
    fn links_keep_their_names_and_targets() {
        let input = tar_of(|b| {
            file(b, "f", 0o644, b"data");
            link(b, EntryType::Link, "hl", "f");
            link(b, EntryType::Link, "abs-hl", "/f");
            link(b, EntryType::Symlink, "abs", "/etc/shadow");
            link(b, EntryType::Symlink, "up", "../../../outside");
            link(b, EntryType::Symlink, "sub/dirlink", "../sub/");
        });
        let out = parse(&run(&input).unwrap());
        let names: Vec<_> = out
            .iter()
            .map(|o| (o.path.as_str(), o.kind, o.link.as_deref(), o.uid))
            .collect();
        assert_eq!(
            names,
            [
                ("f", b'0', None, 1001),
                ("hl", b'1', Some("f"), 1001),
                // dockerd reads an absolute hard link target from the destination too.
                ("abs-hl", b'1', Some("f"), 1001),
                ("abs", b'2', Some("/etc/shadow"), 1001),
                ("up", b'2', Some("../../../outside"), 1001),
                ("sub/dirlink", b'2', Some("../sub/"), 1001),
            ]
        );
    }

    #[test]
    fn hard_links_only_to_files_earlier_in_the_archive() {
        let outside = tar_of(|b| link(b, EntryType::Link, "mine", "/etc/passwd"));
        assert_eq!(
            refusal(&outside),
            "archive entry \"mine\" is a hard link to \"etc/passwd\", which is not a file earlier in the archive"
        );
        let up = tar_of(|b| link(b, EntryType::Link, "mine", "../../etc/passwd"));
        assert_eq!(
            refusal(&up),
            "archive entry \"mine\" is a hard link to a name with a \"..\" component"
        );
        let to_dir = tar_of(|b| {
            dir(b, "d", 0o755);
            link(b, EntryType::Link, "mine", "d");
        });
        assert!(refusal(&to_dir).contains("not a file earlier"));
        // Replaced by a symlink since: no longer a file.
        let replaced = tar_of(|b| {
            file(b, "a", 0o644, b"x");
            link(b, EntryType::Symlink, "a", "/shared/bob/file");
            link(b, EntryType::Link, "mine", "a");
        });
        assert!(refusal(&replaced).contains("not a file earlier"));
    }

    #[test]
    fn nothing_goes_through_a_symlink_the_archive_made() {
        let input = tar_of(|b| {
            link(b, EntryType::Symlink, "d", "/shared/bob");
            file(b, "d/x", 0o644, b"mine now");
        });
        assert_eq!(
            refusal(&input),
            "archive entry \"d/x\" lies under \"d\", a symlink earlier in the archive"
        );
        let via_hard_link = tar_of(|b| {
            file(b, "e/x", 0o644, b"x");
            link(b, EntryType::Symlink, "e", "/shared/bob");
            link(b, EntryType::Link, "y", "e/x");
        });
        assert!(refusal(&via_hard_link).contains("lies under \"e\""));
        let deeper = tar_of(|b| {
            link(b, EntryType::Symlink, "a/b", "/");
            dir(b, "a/b/c", 0o755);
        });
        assert!(refusal(&deeper).contains("lies under \"a/b\""));
    }

    #[test]
    fn devices_sparse_and_unknown_types_are_refused() {
        let mem = tar_of(|b| {
            file(b, "ok", 0o644, b"x");
            let mut h = root_header(EntryType::Char, 0o666, 0);
            h.set_device_major(1).unwrap();
            h.set_device_minor(1).unwrap();
            b.append_data(&mut h, "dev/mem", io::empty()).unwrap();
        });
        assert_eq!(
            refusal(&mem),
            "archive entry \"dev/mem\" is a character device; device nodes cannot be copied into a container (dockerd would create them on the host, owned by you)"
        );
        let sda = tar_of(|b| {
            let mut h = root_header(EntryType::Block, 0o660, 0);
            b.append_data(&mut h, "sda", io::empty()).unwrap();
        });
        assert!(refusal(&sda).contains("\"sda\" is a block device"));
        let volume = tar_of(|b| raw(b, b'V', "label", b""));
        assert!(refusal(&volume).contains("\"label\" has tar type V"));
        let contiguous = tar_of(|b| raw(b, b'7', "c", b"x"));
        assert!(refusal(&contiguous).contains("has tar type 7"));
        let pax_sparse = tar_of(|b| {
            b.append_pax_extensions([("GNU.sparse.major", &b"1"[..]), ("GNU.sparse.minor", b"0")])
                .unwrap();
            file(b, "holes", 0o644, b"map");
        });
        assert!(refusal(&pax_sparse).contains("\"holes\" is a sparse file"));
        let gnu_sparse = tar_of(|b| {
            let mut h = Header::new_gnu();
            h.set_entry_type(EntryType::GNUSparse);
            h.set_size(0);
            h.set_mode(0o644);
            h.as_gnu_mut().unwrap().realsize = *b"00000000000\0";
            b.append_data(&mut h, "holes", io::empty()).unwrap();
        });
        assert!(
            refusal(&gnu_sparse).contains("is a sparse file"),
            "{}",
            refusal(&gnu_sparse)
        );
        let fifo = tar_of(|b| {
            let mut h = root_header(EntryType::Fifo, 0o4644, 0);
            b.append_data(&mut h, "pipe", io::empty()).unwrap();
        });
        let out = parse(&run(&fifo).unwrap());
        assert_eq!((out[0].kind, out[0].mode, out[0].uid), (b'6', 0o644, 1001));
    }

    #[test]
    fn long_names_round_trip() {
        let deep = format!("{}/file", ["component"; 15].join("/"));
        let deeper = format!("{}/pax-file", ["segment"; 30].join("/"));
        let target = format!("/{}", ["t"; 150].join("/"));
        let input = tar_of(|b| {
            // GNU long name (an `L` entry), as GNU tar writes it.
            let mut h = Header::new_gnu();
            h.set_mode(0o644);
            h.set_size(2);
            b.append_data(&mut h, &deep, &b"hi"[..]).unwrap();
            // PAX path and linkpath, as Go's archive/tar (docker cp) writes them.
            b.append_pax_extensions([("path", deeper.as_bytes())])
                .unwrap();
            file(b, "truncated-name", 0o644, b"pax");
            b.append_pax_extensions([("linkpath", target.as_bytes())])
                .unwrap();
            link(b, EntryType::Symlink, "long-link", "short");
            link(b, EntryType::Link, "hl", &deep);
        });
        let out = run(&input).unwrap();
        let parsed = parse(&out);
        let got: Vec<_> = parsed
            .iter()
            .map(|o| (o.path.clone(), o.link.clone(), o.data.clone()))
            .collect();
        assert_eq!(
            got,
            [
                (deep.clone(), None, b"hi".to_vec()),
                (deeper, None, b"pax".to_vec()),
                ("long-link".into(), Some(target), vec![]),
                ("hl".into(), Some(deep), vec![]),
            ]
        );
        // GNU long names and links in the output, never PAX.
        assert_eq!(
            raw_types(&out),
            [b'L', b'0', b'L', b'0', b'K', b'2', b'K', b'1']
        );
    }

    #[test]
    fn names_are_cleaned_like_dockerd_cleans_them() {
        let input = tar_of(|b| {
            dir(b, "./", 0o755);
            raw(b, b'0', "/etc/cron.d/job", b"x");
            raw(b, b'0', "a//./b", b"y");
            raw(b, b'\0', "old-dir/", b"");
        });
        let out = parse(&run(&input).unwrap());
        let names: Vec<_> = out.iter().map(|o| (o.path.as_str(), o.kind)).collect();
        assert_eq!(
            names,
            [("etc/cron.d/job", b'0'), ("a/b", b'0'), ("old-dir/", b'5')]
        );
        let up = tar_of(|b| raw(b, b'0', "a/../../x", b""));
        assert_eq!(
            refusal(&up),
            "archive entry \"a/../../x\" has a \"..\" component"
        );
        let dot_file = tar_of(|b| raw(b, b'0', "./", b""));
        assert!(refusal(&dot_file).contains("names the destination itself"));
    }

    #[test]
    fn malformed_archives_are_refused_naming_where() {
        let mut bad_sum = tar_of(|b| {
            file(b, "a", 0o644, b"x");
            file(b, "b", 0o644, b"y");
        });
        bad_sum[1024 + 10] ^= 1;
        let e = refusal(&bad_sum);
        assert!(
            e.starts_with("the archive is malformed after entry \"a\": ") && e.contains("checksum"),
            "{e}"
        );
        let mut short = tar_of(|b| file(b, "big", 0o644, &[7u8; 1000]));
        short.truncate(512 + 100);
        assert_eq!(
            refusal(&short),
            "the archive is malformed in entry \"big\": it ends after 100 of 1000 bytes"
        );
        let garbage = vec![b'z'; 2048];
        assert!(refusal(&garbage).starts_with("the archive is malformed at its start: "));
        let dir_with_data = tar_of(|b| raw(b, b'5', "d", b"12345"));
        assert!(refusal(&dir_with_data).contains("a directory entry with 5 bytes of data"));
        let huge_name = tar_of(|b| {
            let mut h = Header::new_gnu();
            h.set_size(0);
            b.append_data(&mut h, "x".repeat(2 << 20), io::empty())
                .unwrap();
        });
        assert!(refusal(&huge_name).contains("headers take more than 1048576 bytes"));
        let bad_pax = tar_of(|b| {
            b.append(
                &{
                    let mut h = Header::new_ustar();
                    h.set_entry_type(EntryType::XHeader);
                    h.set_size(12);
                    h.set_cksum();
                    h
                },
                &b"99 path=x\nzz"[..],
            )
            .unwrap();
            file(b, "f", 0o644, b"");
        });
        assert!(refusal(&bad_pax).contains("a PAX record is malformed"));
        assert_eq!(
            refusal(b"\x1f\x8b\x08\x00rest"),
            "the archive is gzip-compressed; send it uncompressed (docker cp does)"
        );
        // Nothing at all is an empty archive, as for dockerd.
        assert_eq!(parse(&run(b"").unwrap()), []);
    }

    #[test]
    fn global_headers_are_dropped_and_trailing_data_ignored() {
        let mut input = tar_of(|b| {
            let mut h = Header::new_ustar();
            h.set_entry_type(EntryType::XGlobalHeader);
            let rec = b"16 uid=0\n18 uname=root\n";
            h.set_size(rec.len() as u64);
            h.set_cksum();
            b.append(&h, &rec[..]).unwrap();
            file(b, "f", 0o644, b"x");
        });
        input.extend_from_slice(b"trailing bytes after the end marker");
        let out = run(&input).unwrap();
        assert_eq!(raw_types(&out), [b'0']);
        assert_eq!(parse(&out)[0].uid, 1001);
    }

    #[test]
    fn gnu_tar_archives_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        let long = src.join(["long-directory-name"; 8].join("/"));
        std::fs::create_dir_all(&long).unwrap();
        std::fs::write(src.join("suid"), "#!/bin/sh\n").unwrap();
        std::fs::write(long.join("f"), "deep").unwrap();
        std::os::unix::fs::symlink("/etc/shadow", src.join("sym")).unwrap();
        std::fs::hard_link(src.join("suid"), src.join("hard")).unwrap();
        for format in ["gnu", "posix"] {
            let tar = dir.path().join(format!("{format}.tar"));
            let st = std::process::Command::new("tar")
                .args(["--owner=0", "--group=0", "--mode=4755", "--sort=name"])
                .arg(format!("--format={format}"))
                .arg("-C")
                .arg(&src)
                .arg("-cf")
                .arg(&tar)
                .arg(".")
                .status()
                .expect("GNU tar");
            assert!(st.success());
            let out = run(&std::fs::read(&tar).unwrap()).unwrap();
            let rewritten = dir.path().join(format!("{format}.out.tar"));
            std::fs::write(&rewritten, &out).unwrap();
            let list = std::process::Command::new("tar")
                .args(["--numeric-owner", "-tvf"])
                .arg(&rewritten)
                .output()
                .unwrap();
            assert!(list.status.success(), "{list:?}");
            let list = String::from_utf8(list.stdout).unwrap();
            let lines: Vec<_> = list.lines().collect();
            assert!(
                lines
                    .iter()
                    .all(|l| l.contains(" 1001/1002 ") && !l[..10].contains(['s', 'S'])),
                "{format}: {list}"
            );
            let has = |needle: &str| lines.iter().any(|l| l.contains(needle));
            let hard: Vec<_> = lines
                .iter()
                .find(|l| l.ends_with(" hard"))
                .map(|l| l.split_whitespace().take(3).collect())
                .unwrap_or_default();
            assert_eq!(hard, ["-rwxr-xr-x", "1001/1002", "10"], "{format}: {list}");
            assert!(has("suid link to hard"), "{format}: {list}");
            assert!(has("sym -> /etc/shadow"), "{format}: {list}");
            assert!(
                has(&format!("{}/f", ["long-directory-name"; 8].join("/"))),
                "{format}: {list}"
            );
        }
    }

    #[test]
    fn gnu_tar_sparse_archives_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let holes = std::fs::File::create(dir.path().join("holes")).unwrap();
        holes.set_len(4 << 20).unwrap();
        (&holes).write_all(b"data at the start").unwrap();
        for format in ["gnu", "posix"] {
            let out = std::process::Command::new("tar")
                .args(["--sparse", "-C"])
                .arg(dir.path())
                .arg(format!("--format={format}"))
                .args(["-cf", "-", "holes"])
                .output()
                .expect("GNU tar");
            assert!(out.status.success());
            let e = refusal(&out.stdout);
            assert!(e.contains("is a sparse file"), "{format}: {e}");
        }
    }

    #[test]
    fn copy_uid_gid_and_unknown_parameters_are_refused() {
        assert!(check_query(Some("path=%2Fworkspace&noOverwriteDirNonDir=true")).is_ok());
        assert!(matches!(
            check_query(Some("path=%2Fs&noOverwriteDirNonDir=false")),
            Err(ArchiveError::OverwriteDirs)
        ));
        assert!(check_query(None).is_ok());
        assert!(check_query(Some("path=/w&copyUIDGID=false")).is_ok());
        assert!(check_query(Some("path=/w&copyUIDGID=0")).is_ok());
        for q in [
            "copyUIDGID=true",
            "copyUIDGID=1",
            "copyUIDGID=0&copyUIDGID=1",
            "copyUIDGID=yes",
        ] {
            let e = check_query(Some(q)).unwrap_err();
            assert!(matches!(e, ArchiveError::CopyUidGid), "{q}");
            assert_eq!(e.status(), 403);
        }
        assert_eq!(
            check_query(Some("path=/w&chown=0"))
                .unwrap_err()
                .to_string(),
            "query parameter \"chown\" is not accepted on an archive upload"
        );
    }

    // -----------------------------------------------------------------------------------------
    // The async side

    /// A request body that makes a one-file tar of `size` zero bytes as it is read.
    struct Generated {
        header: Option<Bytes>,
        left: u64,
        end: Option<Bytes>,
    }

    const CHUNK: usize = 64 << 10;
    static ZEROS: [u8; CHUNK] = [0; CHUNK];

    impl Generated {
        fn new(size: u64) -> Self {
            let mut h = root_header(EntryType::Regular, 0o4755, size);
            h.set_path("big").unwrap();
            h.set_cksum();
            Generated {
                header: Some(Bytes::copy_from_slice(h.as_bytes())),
                left: size,
                end: Some(Bytes::from_static(&ZEROS[..1024])),
            }
        }
    }

    impl hyper::body::Body for Generated {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            let this = self.get_mut();
            let chunk = if let Some(h) = this.header.take() {
                h
            } else if this.left > 0 {
                let n = this.left.min(CHUNK as u64) as usize;
                this.left -= n as u64;
                Bytes::from_static(&ZEROS[..n])
            } else if let Some(end) = this.end.take() {
                end
            } else {
                return Poll::Ready(None);
            };
            Poll::Ready(Some(Ok(Frame::data(chunk))))
        }
    }

    /// A request body of these chunks, then the end (or the error, where there is one).
    struct Chunks(std::collections::VecDeque<Result<Bytes, &'static str>>);

    impl hyper::body::Body for Chunks {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            let next = self.get_mut().0.pop_front();
            Poll::Ready(next.map(|c| c.map(Frame::data).map_err(BoxError::from)))
        }
    }

    fn body_of(chunks: Vec<Result<Bytes, &'static str>>) -> Body {
        Chunks(chunks.into()).boxed()
    }

    /// Reads the body to its end or first error: the bytes, and the error.
    async fn collect(mut body: Body) -> (Vec<u8>, Option<String>) {
        let mut out = Vec::new();
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(f) => out.extend_from_slice(&f.into_data().unwrap()),
                Err(e) => return (out, Some(e.to_string())),
            }
        }
        (out, None)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_large_upload_streams_through_a_bounded_buffer() {
        let size: u64 = if cfg!(debug_assertions) {
            64 << 20
        } else {
            1 << 30
        };
        let meter = Arc::new(Meter::default());
        let (mut body, refusal) = transform_metered(
            Generated::new(size).boxed(),
            move |r, w| rewrite(r, w, ME).map(|_| ()),
            meter.clone(),
        );
        // dockerd slow to read: unbounded buffers would fill with the whole upload by now.
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let mut total = 0u64;
        let mut first = Vec::new();
        let mut last = Vec::new();
        while let Some(frame) = body.frame().await {
            let data = frame.unwrap().into_data().unwrap();
            total += data.len() as u64;
            if first.len() < 512 {
                first.extend_from_slice(&data[..512.min(data.len())]);
            }
            last = data.to_vec();
        }
        assert!(refusal.take().is_none());
        assert_eq!(total, 512 + size + 1024);
        assert!(last.ends_with(&[0u8; 1024]));
        let h = Header::from_byte_slice(&first[..512]);
        assert_eq!((h.uid().unwrap(), h.mode().unwrap()), (1001, 0o755));
        let peak = meter.peak.load(Ordering::SeqCst);
        assert!(peak > 0 && peak <= 1 << 20, "peak {peak} bytes buffered");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_refusal_mid_stream_ends_the_body_with_an_error() {
        let input = tar_of(|b| {
            file(b, "first", 0o644, &[1u8; 3000]);
            let mut h = root_header(EntryType::Char, 0o666, 0);
            b.append_data(&mut h, "dev/mem", io::empty()).unwrap();
            file(b, "never", 0o644, b"x");
        });
        let chunks = input
            .chunks(700)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        let (body, refusal) = rewrite_archive(body_of(chunks), ME);
        let (out, err) = collect(body).await;
        let err = err.expect("the body must end with an error");
        assert!(err.contains("\"dev/mem\" is a character device"), "{err}");
        assert!(matches!(refusal.take(), Some(ArchiveError::Device { .. })));
        // What had gone out is not a complete archive: no end marker after "first".
        assert!(
            out.len() < 512 + 3072 + 1024,
            "{} bytes went out",
            out.len()
        );
        assert!(!out.windows(5).any(|w| w == b"never"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_broken_upload_is_not_a_refusal() {
        let input = tar_of(|b| file(b, "f", 0o644, &[1u8; 3000]));
        let chunks = vec![
            Ok(Bytes::copy_from_slice(&input[..1000])),
            Err("client went away"),
        ];
        let (body, refusal) = rewrite_archive(body_of(chunks), ME);
        let (_, err) = collect(body).await;
        assert!(err
            .unwrap()
            .contains("reading the upload failed: client went away"));
        assert!(refusal.take().is_none());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_whole_archive_comes_out_complete() {
        let input = tar_of(|b| {
            file(b, "a", 0o4755, b"alpha");
            dir(b, "d", 0o2755);
        });
        let chunks = input
            .chunks(100)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        let (body, refusal) = rewrite_archive(body_of(chunks), ME);
        let (out, err) = collect(body).await;
        assert_eq!(err, None);
        assert!(refusal.take().is_none());
        let out = parse(&out);
        assert_eq!(
            out.iter()
                .map(|o| (o.path.as_str(), o.mode, o.uid))
                .collect::<Vec<_>>(),
            [("a", 0o755, 1001), ("d/", 0o755, 1001)]
        );
    }
}
