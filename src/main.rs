//! The entry point. labgpu defines the C `main` itself instead of Rust's `fn main`: std's
//! start-up reads /proc/self/maps (through pthread_getattr_np, to place the main thread's
//! stack guard) and sets up a signal stack, about a fifth of the instructions a passthrough
//! (`start`, `kill`, `delete`, …) executes before it execs runc. The runtime face does
//! without; every face gets what else std's start-up does that matters here: standard fds
//! that are closed opened on /dev/null, SIGPIPE ignored for the admin faces (`labgpu
//! proxy` writes to sockets whose peers go away), a panic turned into exit code 101.
// The test harness (`cargo test` builds this file with `--test`) brings its own main.
#![cfg_attr(not(test), no_main)]

#[cfg(not(test))]
mod start {
    use std::ffi::OsString;
    use std::panic::AssertUnwindSafe;

    use labgpu::argv::{dispatch, Face};

    #[no_mangle]
    pub extern "C" fn main(_argc: libc::c_int, _argv: *const *const libc::c_char) -> libc::c_int {
        open_closed_stdio();
        // On glibc, std captured argc/argv before main (an .init_array entry), so args_os works.
        let argv: Vec<OsString> = std::env::args_os().collect();
        let code = std::panic::catch_unwind(AssertUnwindSafe(|| {
            // Installed as a login shell, labgpu is only that: `-c` is a shell's, never runc's.
            if argv
                .first()
                .is_some_and(|a| labgpu::shell::is_login_shell_name(a))
            {
                ignore_sigpipe();
                return labgpu::shell::main(argv);
            }
            match dispatch(&argv) {
                Face::Runtime(inv) => labgpu::runtime::handle(&argv, &inv),
                Face::Version => labgpu::cli::version(),
                Face::Admin => {
                    ignore_sigpipe();
                    labgpu::cli::main(argv)
                }
            }
        }));
        // A panic's message was printed by the panic hook; 101 is what Rust's main returns.
        std::process::exit(code.unwrap_or(101));
    }

    /// Opens /dev/null on whichever of fds 0, 1 and 2 is closed, as std's start-up does, so
    /// that no file labgpu opens (a policy, a config.json) lands where stdout is expected.
    fn open_closed_stdio() {
        for fd in 0..=2 {
            // SAFETY: fcntl(F_GETFD) on a plain integer fd only queries it.
            if unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1 {
                let flags = if fd == 0 {
                    libc::O_RDONLY
                } else {
                    libc::O_RDWR
                };
                // SAFETY: a NUL-terminated path; the lowest free fd is the closed one.
                if unsafe { libc::open(c"/dev/null".as_ptr(), flags) } == -1 {
                    // std aborts here too: without fds 0-2 every later open is ambiguous.
                    std::process::abort();
                }
            }
        }
    }

    /// SIGPIPE ignored, as under std's start-up: a write to a closed pipe or socket is an
    /// error to handle, not the end of the proxy.
    fn ignore_sigpipe() {
        // SAFETY: setting a signal's disposition to SIG_IGN has no preconditions.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    }
}
