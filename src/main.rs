use std::ffi::OsString;

use labgpu::argv::{dispatch, Face};

fn main() {
    let argv: Vec<OsString> = std::env::args_os().collect();
    let code = match dispatch(&argv) {
        Face::Runtime(inv) => labgpu::runtime::handle(&argv, &inv),
        Face::Version => labgpu::cli::version(),
        Face::Admin => labgpu::cli::main(argv),
    };
    std::process::exit(code);
}
