//! Safe wrappers for the syscalls idmapped layers need. glibc 2.36 has no wrappers for
//! `open_tree`, `move_mount` and `mount_setattr` (Linux 5.2/5.12), so they are raw syscalls
//! here, each wrapped in a function that owns its file descriptors and returns `io::Error`.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::mapping;
use super::IdMap;

const OPEN_TREE_CLONE: libc::c_uint = 1;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;

/// `struct mount_attr` (linux/mount.h), version 0.
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

fn cstr(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)
}

fn check(ret: libc::c_long) -> io::Result<libc::c_long> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// A detached copy of the mount at `path` (that directory or file as its root), as a bind
/// mount would make, not yet attached anywhere: `open_tree(OPEN_TREE_CLONE)`.
pub fn clone_tree(path: &Path) -> io::Result<OwnedFd> {
    let p = cstr(path)?;
    // SAFETY: a NUL-terminated path and integer flags; the result is a new fd we own.
    let fd = check(unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            p.as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint,
        )
    })?;
    // SAFETY: the kernel returned a fresh descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Makes the detached mount `tree` idmapped through the user namespace `userns` (on-disk id
/// `c` reads as that namespace's host id for container id `c`) and private, so unmounting it
/// never propagates to a peer (Docker's data root is often a shared mount).
pub fn set_idmap(tree: &OwnedFd, userns: &OwnedFd) -> io::Result<()> {
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_IDMAP,
        attr_clr: 0,
        propagation: libc::MS_PRIVATE,
        userns_fd: userns.as_raw_fd() as u64,
    };
    // SAFETY: the attr struct outlives the call and its size is passed; "" with
    // AT_EMPTY_PATH names the fd itself.
    check(unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    })?;
    Ok(())
}

/// Attaches the detached mount `tree` at `target` in the caller's mount namespace.
pub fn attach(tree: &OwnedFd, target: &Path) -> io::Result<()> {
    let t = cstr(target)?;
    // SAFETY: fd and NUL-terminated paths; no memory is retained by the kernel.
    check(unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            t.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    })?;
    Ok(())
}

/// A user namespace with `map`'s mappings and no process in it, for idmapping mounts: a
/// child is cloned into a new user namespace, its maps are written, the namespace is opened
/// by fd, and the child exits.
pub fn idmap_userns(map: &IdMap) -> io::Result<OwnedFd> {
    let (ready_rd, ready_wr) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    // SAFETY: clone without CLONE_VM behaves like fork; the child only calls the
    // async-signal-safe close, read and _exit before it ends.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone,
            libc::CLONE_NEWUSER | libc::SIGCHLD,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    if pid == 0 {
        // SAFETY: in the child: wait until the parent closes its end, then leave.
        unsafe {
            libc::close(ready_wr.as_raw_fd());
            let mut b = 0u8;
            libc::read(ready_rd.as_raw_fd(), (&mut b as *mut u8).cast(), 1);
            libc::_exit(0);
        }
    }
    let pid = check(pid)? as i32;
    drop(ready_rd);
    let child = Child {
        pid,
        release: Some(ready_wr),
    };
    let dir = format!("/proc/{pid}");
    std::fs::write(format!("{dir}/uid_map"), mapping::proc_text(&map.uid))?;
    std::fs::write(format!("{dir}/gid_map"), mapping::proc_text(&map.gid))?;
    let ns = std::fs::File::open(format!("{dir}/ns/user"))?;
    drop(child);
    Ok(OwnedFd::from(ns))
}

/// Closes `fds` in a detached grandchild after this process has closed its copies: the last
/// reference to an unmounted overlay syncs its upper filesystem when dropped, which must not
/// hold up a create. The grandchild closes every other descriptor at once (it must not keep
/// the shim's pipes open), waits for this process to let go (end of file on a pipe), and is
/// reparented to the nearest subreaper (containerd's shim) or init, which reaps it.
pub fn release_in_background(fds: Vec<OwnedFd>) -> io::Result<()> {
    if fds.is_empty() {
        return Ok(());
    }
    let (go_rd, go_wr) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let rd = go_rd.as_raw_fd();
    let mut keep: Vec<libc::c_uint> = fds.iter().map(|f| f.as_raw_fd() as libc::c_uint).collect();
    keep.push(rd as libc::c_uint);
    keep.sort_unstable();
    // SAFETY: the process has one thread (checked by the caller); the child and grandchild
    // call only fork, close_range, read, close and _exit, which are async-signal-safe, and
    // touch only memory allocated before the fork.
    let child = unsafe { libc::fork() };
    if child == 0 {
        unsafe {
            if libc::fork() == 0 {
                let mut from = 0;
                for &fd in &keep {
                    if fd > from {
                        libc::syscall(libc::SYS_close_range, from, fd - 1, 0);
                    }
                    from = fd + 1;
                }
                libc::syscall(libc::SYS_close_range, from, libc::c_uint::MAX, 0);
                let mut b = 0u8;
                while libc::read(rd, (&mut b as *mut u8).cast(), 1) < 0
                    && *libc::__errno_location() == libc::EINTR
                {}
                for &fd in &keep {
                    libc::close(fd as libc::c_int);
                }
            }
            libc::_exit(0);
        }
    }
    let child = check(child.into())? as i32;
    nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(child), None)?;
    drop(fds);
    drop(go_wr);
    Ok(())
}

/// The user-namespace child: released and reaped when dropped, on every path.
struct Child {
    pid: i32,
    release: Option<OwnedFd>,
}

impl Drop for Child {
    fn drop(&mut self) {
        self.release.take();
        let pid = nix::unistd::Pid::from_raw(self.pid);
        let _ = nix::sys::wait::waitpid(pid, None);
    }
}

/// Threads of this process: a mount namespace can be entered or left only by a process with
/// one.
pub fn thread_count() -> usize {
    std::fs::read_dir("/proc/self/task").map_or(0, |d| d.count())
}

/// Runs `f` with the filesystem ids `uid`/`gid` (and the effective capabilities that a
/// change of fsuid from 0 drops restored), then goes back to root's.
pub fn with_fs_ids<T>(uid: u32, gid: u32, f: impl FnOnce() -> T) -> io::Result<T> {
    use caps::CapSet;
    let permitted = caps::read(None, CapSet::Permitted).map_err(io::Error::other)?;
    let old_gid = nix::unistd::setfsgid(nix::unistd::Gid::from_raw(gid));
    let old_uid = nix::unistd::setfsuid(nix::unistd::Uid::from_raw(uid));
    let raised = caps::set(None, CapSet::Effective, &permitted).map_err(io::Error::other);
    let out = raised.map(|_| f());
    nix::unistd::setfsuid(old_uid);
    nix::unistd::setfsgid(old_gid);
    caps::set(None, CapSet::Effective, &permitted).map_err(io::Error::other)?;
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// The handed-off descriptor is closed by the grandchild, not leaked by anyone: the
    /// pipe's reader sees end of file once every copy of its writer is gone.
    #[test]
    fn a_released_descriptor_is_closed_in_the_background() {
        let (rd, wr) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(wr.try_clone().unwrap());
        }
        drop(wr);
        release_in_background(held).unwrap();
        let mut reader = std::fs::File::from(rd);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            tx.send(reader.read_to_end(&mut buf).map(|_| buf)).unwrap();
        });
        let got = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("the writer was still open after 10 s");
        assert_eq!(got.unwrap(), b"");
        release_in_background(Vec::new()).unwrap();
    }
}
