//! labgpu's own share of a container create, in-process (no fork, no exec of runc): argv
//! dispatch, policy load, owner lookup, GPU inventory, the spec edits and the atomic write of
//! config.json, i.e. `runtime::prepare` for `create`. Plus its parts: policy load at 10, 100
//! and 1000 users, and the atomic write alone.
//!
//!   cargo bench --bench rewrite                  (as root: it mknods fake GPUs)
//!   bash integration/bench.sh                    (this, then the runc/docker/verify timings)
//!
//! Temp files go under $LABGPU_BENCH_TMP (default: the system temp dir).

mod common;

use std::ffi::OsString;
use std::path::PathBuf;

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion};
use labgpu::argv::{dispatch, Face};
use labgpu::policy::Policy;

use common::*;

fn tempdir() -> tempfile::TempDir {
    match std::env::var_os("LABGPU_BENCH_TMP") {
        Some(d) => tempfile::tempdir_in(d),
        None => tempfile::tempdir(),
    }
    .unwrap()
}

fn create_prepare(c: &mut Criterion) {
    let Some(runc) = runc_path().filter(|_| is_root()) else {
        eprintln!("create_prepare: skipped (needs root for mknod, and runc installed)");
        return;
    };
    let dir = tempdir();
    let dev = fake_gpus(dir.path());
    let policy = write_policy(dir.path(), 8, &dev, Some(&runc));
    // The runtime reads the policy path from here, as under Docker's wrapper.
    std::env::set_var("LABGPU_POLICY", &policy);
    let bundle = dir.path().join("bundle");
    let original = bundle_spec(&bundle, &runc, &["true"]);
    let config = bundle.join("config.json");
    let s = |p: PathBuf| p.into_os_string();
    // go-runc's argv, as containerd-shim-runc-v2 passes it.
    let argv: Vec<OsString> = vec![
        "labgpu".into(),
        "--root".into(),
        s(dir.path().join("runc-root")),
        "--log".into(),
        s(bundle.join("log.json")),
        "--log-format".into(),
        "json".into(),
        "create".into(),
        "--bundle".into(),
        s(bundle.clone()),
        "--pid-file".into(),
        s(bundle.join("init.pid")),
        "bench-ctr".into(),
    ];
    c.bench_function("create_prepare/8_users", |b| {
        b.iter_batched(
            || std::fs::write(&config, &original).unwrap(),
            |()| {
                let Face::Runtime(inv) = dispatch(&argv) else {
                    panic!("not a runtime argv")
                };
                labgpu::runtime::prepare(&argv, &inv).expect("create refused")
            },
            BatchSize::PerIteration,
        )
    });
    let spec = labgpu::spec::load(&config).unwrap();
    c.bench_function("spec_write_atomic", |b| {
        b.iter(|| labgpu::spec::write_atomic(&config, &spec).unwrap())
    });
}

fn policy_load(c: &mut Criterion) {
    let dir = tempdir();
    let dev = dir.path().join("dev");
    let mut group = c.benchmark_group("policy_load");
    for users in [10, 100, 1000] {
        let path = write_policy(dir.path(), users, &dev, None);
        let loaded = Policy::load(&path).unwrap();
        assert_eq!(loaded.users.len(), users);
        group.bench_with_input(BenchmarkId::from_parameter(users), &path, |b, path| {
            b.iter(|| Policy::load(path).unwrap())
        });
    }
    group.finish();
}

criterion_group!(benches, create_prepare, policy_load);
criterion_main!(benches);
