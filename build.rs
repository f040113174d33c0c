//! Generates the man pages and shell completions from the clap definitions in
//! `src/cli_args.rs`, so the packaged docs always match the binary.
//!
//! Output, per cargo's convention, goes to `$OUT_DIR/labgpu-assets/`:
//!
//! ```text
//! man/labgpu.1.gz, man/labgpu-setup-docker.1.gz, …   (one page per command, gzipped)
//! completions/labgpu.bash, completions/_labgpu, completions/labgpu.fish
//! ```
//!
//! `$OUT_DIR` has a hash in its path, so the same tree is copied to
//! `target/<profile>/labgpu-assets/`, a stable path that `[package.metadata.deb] assets` can
//! name (cargo-deb maps `target/release/` to the real profile directory). The man pages are
//! gzipped here because cargo-deb only compresses assets it does not consider build products.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use clap::CommandFactory;
use clap_complete::Shell;

#[allow(dead_code)]
#[path = "src/cli_args.rs"]
mod cli_args;

const BIN: &str = "labgpu";

/// Appended to labgpu(1): what the clap definitions cannot say.
const EXTRA_ROFF: &str = r#".SH "RUNTIME USE"
Docker runs labgpu as an OCI runtime (\fBdocker run \-\-runtime labgpu\fR). Called with a runc
subcommand (create, exec, update and so on), labgpu rewrites the container's config.json so that the
container's owner (the \fBlabgpu.user\fR label) gets only the GPUs the policy gives them, then
runs runc with the same arguments. Every other runc command passes straight through.
.SH FILES
.TP
.I /etc/labgpu/policy.toml
The policy: users, their GPUs, mounts and allowances. Read on every create and exec.
.TP
.I /var/log/labgpu.log
The decision log: one line per create, exec and refusal.
.TP
.I /etc/docker/daemon.json
Where \fBlabgpu setup docker\fR registers the runtime.
.TP
.I /run/labgpu/docker.sock
Where \fBlabgpu proxy\fR (the labgpu\-proxy service) serves the Docker API to lab users.
.SH ENVIRONMENT
.TP
.B LABGPU_POLICY
Policy file to read instead of /etc/labgpu/policy.toml.
.SH "SEE ALSO"
.BR runc (8),
.BR dockerd (8)
"#;

fn main() -> io::Result<()> {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=src/cli_args.rs");

    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let assets = out_dir.join("labgpu-assets");
    if assets.exists() {
        fs::remove_dir_all(&assets)?;
    }
    let man_dir = assets.join("man");
    let completions_dir = assets.join("completions");
    fs::create_dir_all(&man_dir)?;
    fs::create_dir_all(&completions_dir)?;

    let mut cmd = cli_args::Cli::command().disable_help_subcommand(true);
    cmd.build();
    man_pages(&cmd, &man_dir, true)?;

    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, &mut cli_args::Cli::command(), BIN, &completions_dir)?;
    }

    // OUT_DIR is <target>/<profile>/build/labgpu-<hash>/out.
    if let Some(profile_dir) = out_dir.ancestors().nth(3) {
        let stable = profile_dir.join("labgpu-assets");
        if stable.exists() {
            fs::remove_dir_all(&stable)?;
        }
        copy_tree(&assets, &stable)?;
    }
    Ok(())
}

/// One gzipped page per visible command: labgpu.1.gz, labgpu-setup.1.gz, labgpu-setup-docker.1.gz…
fn man_pages(cmd: &clap::Command, dir: &Path, top: bool) -> io::Result<()> {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        man_pages(sub, dir, false)?;
    }
    let man = clap_mangen::Man::new(cmd.clone());
    let mut page = Vec::new();
    man.render(&mut page)?;
    if top {
        // Before the VERSION section that clap_mangen ends the page with.
        let text = String::from_utf8(page).expect("clap_mangen writes UTF-8");
        page = match text.rfind(".SH VERSION") {
            Some(at) => format!("{}{EXTRA_ROFF}{}", &text[..at], &text[at..]),
            None => format!("{text}{EXTRA_ROFF}"),
        }
        .into_bytes();
    }
    let file = fs::File::create(dir.join(format!("{}.gz", man.get_filename())))?;
    // No file name and mtime 0 in the gzip header: the same input gives the same bytes.
    let mut gz = flate2::GzBuilder::new()
        .mtime(0)
        .write(file, flate2::Compression::best());
    gz.write_all(&page)?;
    gz.finish()?.sync_all()
}

fn copy_tree(from: &Path, to: &Path) -> io::Result<()> {
    fs::create_dir_all(to)?;
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let dest = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_tree(&entry.path(), &dest)?;
        } else {
            fs::copy(entry.path(), dest)?;
        }
    }
    Ok(())
}
