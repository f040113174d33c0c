//! Upload bodies: `docker cp` archives through the rewrite (`proxy::archive::rewrite`, the
//! synchronous core of the streaming transform) and `docker load` archives through the name
//! inspection (`proxy::images::load::inspect`). What the rewrite lets through must be a tar
//! whose every entry is the caller's, without set-id bits, device nodes or PAX records, and
//! rewriting it again must change nothing; what the load inspection passes must reach dockerd
//! byte for byte.
#![no_main]

use std::io::Read;

use labgpu::proxy::archive::{rewrite, Owner};
use labgpu::proxy::images::load::inspect;
use labgpu_fuzz::user_ctx;
use libfuzzer_sys::fuzz_target;

const OWNER: Owner = Owner {
    uid: 1001,
    gid: 1002,
};

fuzz_target!(|data: &[u8]| {
    copy(data);
    load(data);
});

fn copy(data: &[u8]) {
    let mut out = Vec::new();
    if rewrite(data, &mut out, OWNER).is_err() {
        return;
    }
    check_rewritten(&out);
    let mut again = Vec::new();
    rewrite(&out[..], &mut again, OWNER).expect("a rewritten archive is accepted again");
    assert!(again == out, "rewriting a rewritten archive changed it");
}

fn check_rewritten(out: &[u8]) {
    let mut archive = tar::Archive::new(out);
    for entry in archive.entries().expect("the rewrite writes a tar") {
        let mut entry = entry.expect("every rewritten entry reads back");
        let h = entry.header();
        let kind = h.entry_type();
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        assert!(
            kind.is_file()
                || kind.is_dir()
                || kind.is_symlink()
                || kind.is_hard_link()
                || kind.is_fifo(),
            "entry {name:?} has type {kind:?}"
        );
        assert_eq!(h.uid().ok(), Some(u64::from(OWNER.uid)), "{name:?} uid");
        assert_eq!(h.gid().ok(), Some(u64::from(OWNER.gid)), "{name:?} gid");
        let mode = h.mode().expect("mode");
        assert_eq!(mode & 0o6000, 0, "{name:?} keeps set-id bits: {mode:o}");
        assert!(
            entry.pax_extensions().ok().flatten().is_none(),
            "{name:?} carries PAX records"
        );
        let mut sink = Vec::new();
        entry.read_to_end(&mut sink).expect("entry data reads back");
    }
}

fn load(data: &[u8]) {
    let mut out = Vec::new();
    let mut input = data;
    if inspect(&mut input, &mut out, &user_ctx().image_prefixes).is_err() {
        return;
    }
    // A gzip upload reaches dockerd decompressed; anything else exactly as sent.
    if !data.starts_with(b"\x1f\x8b\x08") {
        assert!(out == data, "docker load passed on different bytes");
    }
}
