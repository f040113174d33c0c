use std::ffi::OsString;

use labgpu::argv::{dispatch, Face};

fn main() {
    let argv: Vec<OsString> = std::env::args_os().collect();
    // Installed as a login shell, labgpu is only that: `-c` is a shell's, never runc's.
    if argv
        .first()
        .is_some_and(|a| labgpu::shell::is_login_shell_name(a))
    {
        std::process::exit(labgpu::shell::main(argv));
    }
    let code = match dispatch(&argv) {
        Face::Runtime(inv) => labgpu::runtime::handle(&argv, &inv),
        Face::Version => labgpu::cli::version(),
        Face::Admin => labgpu::cli::main(argv),
    };
    std::process::exit(code);
}
