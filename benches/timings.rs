//! Wall-clock timings against the real runc and Docker. labgpu and bare runc alternate run by
//! run (ABBA order), so load from other processes on the machine hits both sides alike; the
//! comparisons are medians and ratios from the same run. integration/bench.sh drives it;
//! `cargo bench` alone does nothing here (a subcommand is needed).
//!
//!   timings policy  --users 8 --dev DIR --out FILE
//!   timings create  --labgpu BIN --tmp DIR --runs 100 --results FILE
//!   timings verify  --labgpu BIN --tmp DIR --counts 10,50,200 --results FILE
//!   timings userns  --labgpu BIN --tmp DIR --runs 100 --layers 1,10 --owner-uid UID --results FILE
//!   timings docker  --runs 100 --image IMG --results FILE      (DOCKER_HOST: the private dockerd)
//!   timings summary --results FILE --criterion target/criterion
//!
//! `--results` collects `key value` lines that `summary` turns into the table of targets.

mod common;
mod proxy;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use common::*;

struct Opts(BTreeMap<String, String>);

impl Opts {
    fn get(&self, key: &str) -> &str {
        self.0.get(key).unwrap_or_else(|| panic!("missing --{key}"))
    }
    fn path(&self, key: &str) -> PathBuf {
        PathBuf::from(self.get(key))
    }
    fn num(&self, key: &str, default: usize) -> usize {
        self.0.get(key).map_or(default, |v| v.parse().unwrap())
    }
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    // `cargo bench` passes `--bench`, `cargo test --all-targets` may pass libtest flags.
    let Some((sub, rest)) = args.split_first().filter(|(s, _)| !s.starts_with('-')) else {
        eprintln!("timings: nothing to do without a subcommand; run integration/bench.sh");
        return;
    };
    let mut opts = BTreeMap::new();
    for pair in rest.chunks(2) {
        let key = pair[0].strip_prefix("--").expect("--key value pairs");
        opts.insert(key.to_string(), pair.get(1).cloned().unwrap_or_default());
    }
    let o = Opts(opts);
    match sub.as_str() {
        "policy" => {
            let text = policy_text(
                o.num("users", 8),
                &o.path("dev"),
                &o.path("log"),
                runc_path().as_deref(),
            );
            std::fs::write(o.path("out"), text).unwrap();
        }
        "create" => create(&o),
        "verify" => verify(&o),
        "userns" => userns(&o),
        "docker" => docker(&o),
        "callgrind" => callgrind(&o),
        "proxy" => proxy::run(&o),
        "proxy-worker" => proxy::worker(&o),
        "summary" => summary(&o),
        other => {
            eprintln!("timings: unknown subcommand {other:?}");
            std::process::exit(2);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Statistics

fn ms(d: &Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Median and nearest-rank p95 of `xs`, in ms.
fn stats(xs: &[Duration]) -> (f64, f64) {
    let mut v: Vec<f64> = xs.iter().map(ms).collect();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    let p95 = v[((0.95 * n as f64).ceil() as usize).clamp(1, n) - 1];
    (median, p95)
}

fn median_f(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

struct Results(File);

impl Results {
    fn open(o: &Opts) -> Results {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(o.path("results"))
            .unwrap();
        Results(f)
    }
    fn put(&mut self, key: &str, value: f64) {
        writeln!(self.0, "{key} {value}").unwrap();
    }
}

/// Prints and records the comparison of `base` (runc) and `ours` (labgpu) under `key`.
fn compare(res: &mut Results, key: &str, what: &str, base: &[Duration], ours: &[Duration]) {
    compare_named(res, key, what, ["runc", "labgpu"], base, ours)
}

/// `compare` with other names for the two sides (`ours` minus `base` is reported).
fn compare_named(
    res: &mut Results,
    key: &str,
    what: &str,
    names: [&str; 2],
    base: &[Duration],
    ours: &[Duration],
) {
    let [bn, on] = names;
    let (b50, b95) = stats(base);
    let (o50, o95) = stats(ours);
    let paired = median_f(base.iter().zip(ours).map(|(b, o)| ms(o) - ms(b)).collect());
    println!(
        "{what:<28} {bn:<9} median {b50:9.2} ms  p95 {b95:9.2} ms   (n={})",
        base.len()
    );
    println!(
        "{what:<28} {on:<9} median {o50:9.2} ms  p95 {o95:9.2} ms   (n={})",
        ours.len()
    );
    println!(
        "{what:<28} {on} - {bn}: median {:+.2} ms, p95 {:+.2} ms, median of paired differences {paired:+.2} ms; ratio of medians {:.3}",
        o50 - b50,
        o95 - b95,
        o50 / b50
    );
    for (k, v) in [
        ("runc.p50_ms", b50),
        ("runc.p95_ms", b95),
        ("labgpu.p50_ms", o50),
        ("labgpu.p95_ms", o95),
        ("diff_p50_ms", o50 - b50),
        ("diff_p95_ms", o95 - b95),
        ("paired_diff_ms", paired),
        ("ratio_p50", o50 / b50),
    ] {
        res.put(&format!("{key}.{k}"), v);
    }
}

// ---------------------------------------------------------------------------------------------
// runc create + delete -f, bare and through labgpu

/// Deletes every container it started, whatever happens (panics included).
struct Containers {
    runc: PathBuf,
    root: PathBuf,
    ids: Vec<String>,
}

impl Drop for Containers {
    fn drop(&mut self) {
        for id in &self.ids {
            let _ = Command::new(&self.runc)
                .arg("--root")
                .arg(&self.root)
                .args(["delete", "-f", id])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Runs `prog <args>` with null stdio (the container's init inherits it) and stderr to a
/// file; returns the wall time. Panics, with runc's/labgpu's message, if it fails.
fn timed(prog: &Path, policy: &Path, args: &[&std::ffi::OsStr], errfile: &Path) -> Duration {
    let err = File::create(errfile).unwrap();
    let mut cmd = Command::new(prog);
    cmd.args(args)
        .env("LABGPU_POLICY", policy)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(err);
    let t = Instant::now();
    let status = cmd.status().unwrap();
    let elapsed = t.elapsed();
    if !status.success() {
        panic!(
            "{} {:?} failed: {}",
            prog.display(),
            args,
            std::fs::read_to_string(errfile).unwrap_or_default()
        );
    }
    elapsed
}

fn create(o: &Opts) {
    let runc = runc_path().expect("runc is not installed");
    let labgpu = o.path("labgpu");
    let runs = o.num("runs", 100);
    let dir = o.path("tmp").join("create");
    let dev = fake_gpus(&dir);
    let policy = write_policy(&dir, 8, &dev, Some(&runc));
    let bundle = dir.join("bundle");
    busybox_rootfs(&bundle);
    let original = bundle_spec(&bundle, &runc, &["true"]);
    let config = bundle.join("config.json");
    let root = dir.join("runc-root");
    let errfile = dir.join("stderr");
    let mut live = Containers {
        runc: runc.clone(),
        root: root.clone(),
        ids: Vec::new(),
    };
    // One create + delete -f through `prog`, starting from `spec` as config.json.
    let mut once = |prog: &Path, spec: &[u8], id: &str| -> (Duration, Duration) {
        std::fs::write(&config, spec).unwrap();
        let r = root.as_os_str();
        let c = timed(
            prog,
            &policy,
            &[
                "--root".as_ref(),
                r,
                "create".as_ref(),
                "--bundle".as_ref(),
                bundle.as_os_str(),
                id.as_ref(),
            ],
            &errfile,
        );
        live.ids.push(id.to_string());
        let d = timed(
            prog,
            &policy,
            &[
                "--root".as_ref(),
                r,
                "delete".as_ref(),
                "-f".as_ref(),
                id.as_ref(),
            ],
            &errfile,
        );
        live.ids.pop();
        (c, d)
    };
    // The spec labgpu hands runc. A third arm runs bare runc on it, which splits labgpu's
    // overhead into its own process and what runc does more for the policy's spec (the
    // owner's GPU and control nodes to mknod, device cgroup rules).
    once(&labgpu, &original, "bench-rewrite");
    let rewritten = std::fs::read(&config).unwrap();
    for i in 0..3 {
        once(&runc, &original, &format!("bench-warm-r{i}"));
        once(&labgpu, &original, &format!("bench-warm-l{i}"));
        once(&runc, &rewritten, &format!("bench-warm-w{i}"));
    }
    // [bare runc, labgpu, bare runc on the rewritten spec]: (create, create + delete).
    let mut arms: [(Vec<Duration>, Vec<Duration>); 3] = Default::default();
    const ORDERS: [[usize; 3]; 6] = [
        [0, 1, 2],
        [1, 2, 0],
        [2, 0, 1],
        [2, 1, 0],
        [0, 2, 1],
        [1, 0, 2],
    ];
    for i in 0..runs {
        for arm in ORDERS[i % 6] {
            let (c, d) = match arm {
                0 => once(&runc, &original, &format!("bench-r{i}")),
                1 => once(&labgpu, &original, &format!("bench-l{i}")),
                _ => once(&runc, &rewritten, &format!("bench-w{i}")),
            };
            arms[arm].0.push(c);
            arms[arm].1.push(c + d);
        }
    }
    drop(live);
    let [(rc, rt), (lc, lt), (wc, wt)] = arms;
    let mut res = Results::open(o);
    println!(
        "\n== create overhead: same busybox bundle, policy of 8 users, {runs} interleaved runs each"
    );
    compare(&mut res, "create", "create + delete -f", &rt, &lt);
    compare(&mut res, "create_only", "create alone", &rc, &lc);
    println!("-- split: bare runc on the spec labgpu wrote (\"rewritten\") vs the original, and vs labgpu");
    let names = ["original", "rewritten"];
    compare_named(&mut res, "rewritten_spec", "bare runc", names, &rt, &wt);
    let names = ["runc", "labgpu"];
    let what = "same spec for runc";
    compare_named(&mut res, "labgpu_process", what, names, &wt, &lt);
    let what = "same spec, create alone";
    compare_named(&mut res, "labgpu_process_create", what, names, &wc, &lc);
    null_runc(o, &dir, &dev, &bundle, &original, &mut res);
}

/// The null-runc fixture: `[runtime] runc = /bin/true`, policies of 10 and 1000 users with a
/// CDI spec, and the argv of one create and one passthrough (`delete -f`).
struct NullFixture {
    policies: [PathBuf; 2],
    create: Vec<std::ffi::OsString>,
    delete: Vec<std::ffi::OsString>,
}

fn null_fixture(dir: &Path, dev: &Path, bundle: &Path) -> NullFixture {
    let truth = PathBuf::from("/bin/true");
    let cdi = cdi_fixture(dir);
    let policies = [10, 1000].map(|users| write_policy_cdi(dir, users, dev, Some(&truth), &cdi));
    // labgpu caches a policy only once its ctime is SETTLE old (src/policy_cache.rs): let the
    // fresh files settle, as an admin's policy has, so the steady state is what is timed.
    std::thread::sleep(labgpu::policy_cache::SETTLE + Duration::from_millis(100));
    let root = dir.join("null-root");
    let os = |s: &str| std::ffi::OsString::from(s);
    NullFixture {
        policies,
        create: vec![
            os("--root"),
            root.clone().into(),
            os("create"),
            os("--bundle"),
            bundle.into(),
            os("bench-null"),
        ],
        delete: vec![
            os("--root"),
            root.into(),
            os("delete"),
            os("-f"),
            os("bench-null"),
        ],
    }
}

/// labgpu's own latency without runc's jitter (several ms per create): `[runtime] runc` is
/// /bin/true, compared with running /bin/true with the same argv. What is left is exactly
/// what labgpu adds: its exec, the policy, the rewrite, its exec of "runc". Passthroughs are
/// also compared with the floor (`--floor`): a static binary that only execs /bin/true, the
/// least any wrapper process costs.
fn null_runc(o: &Opts, dir: &Path, dev: &Path, bundle: &Path, original: &[u8], res: &mut Results) {
    let labgpu = o.path("labgpu");
    let truth = PathBuf::from("/bin/true");
    let floor = o.0.get("floor").map(PathBuf::from).filter(|f| f.is_file());
    let f = null_fixture(dir, dev, bundle);
    let config = bundle.join("config.json");
    let errfile = dir.join("stderr");
    let runs = o.num("null-runs", 300);
    let [p10, p1000] = &f.policies;
    let create: Vec<&std::ffi::OsStr> = f.create.iter().map(|a| a.as_os_str()).collect();
    let delete: Vec<&std::ffi::OsStr> = f.delete.iter().map(|a| a.as_os_str()).collect();
    // (name, program, policy, argv); the policy matters to labgpu only.
    let (truth, labgpu, p10, p1000) = (
        truth.as_path(),
        labgpu.as_path(),
        p10.as_path(),
        p1000.as_path(),
    );
    let (create, delete) = (create.as_slice(), delete.as_slice());
    let mut arms: Vec<(&str, &Path, &Path, &[&std::ffi::OsStr])> = vec![
        ("true create", truth, p10, create),
        ("labgpu create 10", labgpu, p10, create),
        ("labgpu create 1000", labgpu, p1000, create),
        ("true delete", truth, p10, delete),
        ("labgpu delete 10", labgpu, p10, delete),
        ("labgpu delete 1000", labgpu, p1000, delete),
    ];
    if let Some(fl) = &floor {
        arms.push(("floor delete", fl.as_path(), p10, delete));
    }
    let mut t: Vec<Vec<Duration>> = vec![Vec::new(); arms.len()];
    let n = arms.len();
    for i in 0..runs + 10 {
        for k in 0..n {
            // Rotate and reverse the order run by run, so no arm always follows another.
            let k = if i % 2 == 0 {
                (k + i) % n
            } else {
                (n - 1 - k + i) % n
            };
            let (_, prog, policy, args) = arms[k];
            std::fs::write(&config, original).unwrap();
            let d = timed(prog, policy, args, &errfile);
            if i >= 10 {
                t[k].push(d);
            }
        }
    }
    for p in &f.policies {
        if !labgpu::policy_cache::entry_path(p).is_file() {
            println!(
                "   warning: no policy cache entry for {}: every run parsed the policy",
                p.display()
            );
        }
    }
    println!("-- labgpu alone: [runtime] runc = /bin/true vs /bin/true itself, CDI spec present, {runs} interleaved runs each");
    let names = ["true", "labgpu"];
    compare_named(res, "null_create", "create, 10 users", names, &t[0], &t[1]);
    compare_named(
        res,
        "null_create_1000",
        "create, 1000 users",
        names,
        &t[0],
        &t[2],
    );
    compare_named(
        res,
        "null_delete",
        "delete -f, 10 users",
        names,
        &t[3],
        &t[4],
    );
    compare_named(
        res,
        "null_delete_1000",
        "delete -f, 1000 users",
        names,
        &t[3],
        &t[5],
    );
    if floor.is_some() {
        let names = ["true", "floor"];
        compare_named(
            res,
            "floor",
            "a process that only execs",
            names,
            &t[3],
            &t[6],
        );
        let names = ["floor", "labgpu"];
        compare_named(res, "pass_10", "passthrough, 10 users", names, &t[6], &t[4]);
        compare_named(
            res,
            "pass_1000",
            "passthrough, 1000 users",
            names,
            &t[6],
            &t[5],
        );
    } else {
        println!("   (no --floor binary: the passthrough-vs-floor comparison is skipped)");
    }
}

/// Instructions (valgrind --tool=callgrind) labgpu executes for one create and one
/// passthrough, up to its exec of runc: repeatable to a fraction of a percent whatever the
/// load, so a regression shows here when timings are too noisy to tell.
fn callgrind(o: &Opts) {
    let labgpu = o.path("labgpu");
    let dir = o.path("tmp").join("callgrind");
    let dev = fake_gpus(&dir);
    let runc = runc_path().expect("runc is not installed");
    let bundle = dir.join("bundle");
    std::fs::create_dir_all(&bundle).unwrap();
    let original = bundle_spec(&bundle, &runc, &["true"]);
    let f = null_fixture(&dir, &dev, &bundle);
    let floor = o.0.get("floor").map(PathBuf::from).filter(|f| f.is_file());
    let mut res = Results::open(o);
    println!("\n== instructions up to the exec of runc (valgrind --tool=callgrind, runc = /bin/true, CDI spec present)");
    let (l, p10, p1000) = (
        labgpu.as_path(),
        f.policies[0].as_path(),
        f.policies[1].as_path(),
    );
    let (create, delete) = (f.create.as_slice(), f.delete.as_slice());
    let mut cases: Vec<(&str, &Path, &Path, &[std::ffi::OsString])> = vec![
        ("create_10", l, p10, create),
        ("create_1000", l, p1000, create),
        ("delete_10", l, p10, delete),
        ("delete_1000", l, p1000, delete),
    ];
    if let Some(fl) = &floor {
        cases.push(("floor", fl.as_path(), p10, delete));
    }
    for (name, prog, policy, args) in cases {
        // Once plain, so the policy cache is written, as on a host that has run containers.
        std::fs::write(bundle.join("config.json"), &original).unwrap();
        let args_ref: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
        timed(prog, policy, &args_ref, &dir.join("stderr"));
        std::fs::write(bundle.join("config.json"), &original).unwrap();
        let out = dir.join(format!("cg.{name}"));
        let status = Command::new("valgrind")
            .args(["--tool=callgrind", "--dump-before=execve*"])
            .arg(format!("--callgrind-out-file={}", out.display()))
            .arg(prog)
            .args(args)
            .env("LABGPU_POLICY", policy)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if !status.is_ok_and(|s| s.success()) {
            println!("{name:<12} valgrind failed; skipped");
            continue;
        }
        // --dump-before writes <out>.1 at the exec; <out> itself holds what ran after it.
        let dumped = std::fs::read_to_string(format!("{}.1", out.display())).unwrap_or_default();
        let Some(ir) = dumped
            .lines()
            .find_map(|l| l.strip_prefix("summary: "))
            .and_then(|v| v.trim().parse::<u64>().ok())
        else {
            println!("{name:<12} no callgrind dump at the exec; skipped");
            continue;
        };
        println!("{name:<12} {:>12} instructions", group_digits(ir));
        res.put(&format!("callgrind.{name}"), ir as f64);
    }
}

fn group_digits(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

// ---------------------------------------------------------------------------------------------
// labgpu verify over N running containers

fn verify(o: &Opts) {
    let runc = runc_path().expect("runc is not installed");
    let labgpu = o.path("labgpu");
    let counts: Vec<usize> = o
        .get("counts")
        .split(',')
        .map(|c| c.parse().unwrap())
        .collect();
    let repeats = o.num("repeats", 5);
    let dir = o.path("tmp").join("verify");
    let dev = fake_gpus(&dir);
    let policy = write_policy(&dir, 8, &dev, Some(&runc));
    let bundle = dir.join("bundle");
    busybox_rootfs(&bundle);
    let original = bundle_spec(&bundle, &runc, &["sleep", "3600"]);
    let config = bundle.join("config.json");
    let root = dir.join("runc-root");
    let errfile = dir.join("stderr");
    let mut live = Containers {
        runc: runc.clone(),
        root: root.clone(),
        ids: Vec::new(),
    };
    let mut res = Results::open(o);
    println!("\n== labgpu verify: running busybox `sleep` containers created through labgpu, median of {repeats}");
    let mut points = Vec::new();
    for &count in &counts {
        let t = Instant::now();
        while live.ids.len() < count {
            std::fs::write(&config, &original).unwrap();
            let id = format!("bench-v{}", live.ids.len());
            timed(
                &labgpu,
                &policy,
                &[
                    "--root".as_ref(),
                    root.as_os_str(),
                    "run".as_ref(),
                    "-d".as_ref(),
                    "--bundle".as_ref(),
                    bundle.as_os_str(),
                    id.as_ref(),
                ],
                &errfile,
            );
            live.ids.push(id);
        }
        let started = t.elapsed();
        let (times, last) = time_verify(&labgpu, &policy, &root, repeats);
        let summary = &last["summary"];
        let (p50, p95) = stats(&times);
        println!(
            "verify {count:>4} containers: median {:7.3} s  p95 {:7.3} s  ({} ok, {} violations, {} errors; {} containers started in {:.1} s)",
            p50 / 1e3,
            p95 / 1e3,
            summary["ok"],
            summary["violations"],
            summary["errors"],
            count,
            started.as_secs_f64()
        );
        if summary["ok"].as_u64() != Some(count as u64) {
            println!("   warning: not every container audited ok: {summary}");
        }
        res.put(&format!("verify.{count}.s"), p50 / 1e3);
        points.push((count, p50 / 1e3));
    }
    if let (Some(first), Some(last)) = (points.first(), points.last()) {
        if last.0 > first.0 {
            let per = (last.1 - first.1) / (last.0 - first.0) as f64 * 1e3;
            println!(
                "verify grows by {per:.2} ms per container ({} -> {} containers)",
                first.0, last.0
            );
            res.put("verify.per_container_ms", per);
        }
    }
    if let Some(n) = o.0.get("fixtures").and_then(|n| n.parse::<usize>().ok()) {
        verify_fixtures(&labgpu, &policy, &root, &dir, n, repeats, &mut res);
    }
    let t = Instant::now();
    let n = live.ids.len();
    drop(live);
    println!(
        "({n} containers deleted in {:.1} s)",
        t.elapsed().as_secs_f64()
    );
}

/// `labgpu verify --json` on `root`, `repeats` times after one that warms the page cache:
/// the times and the last report.
fn time_verify(
    labgpu: &Path,
    policy: &Path,
    root: &Path,
    repeats: usize,
) -> (Vec<Duration>, Value) {
    let mut times = Vec::new();
    let mut last = Value::Null;
    for r in 0..=repeats {
        let t = Instant::now();
        let out = Command::new(labgpu)
            .arg("verify")
            .arg("--policy")
            .arg(policy)
            .arg("--root")
            .arg(root)
            .arg("--json")
            .output()
            .unwrap();
        let elapsed = t.elapsed();
        last = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "verify output: {e}: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        if r > 0 {
            times.push(elapsed);
        }
    }
    (times, last)
}

/// verify over `n` containers when that many real ones do not fit the machine: runc state
/// directories copied from the running containers under `live_root`, each with its own id,
/// so that every one is audited in full against a live init process (its /proc files, its
/// mounts, its device cgroup), as a real container would be.
fn verify_fixtures(
    labgpu: &Path,
    policy: &Path,
    live_root: &Path,
    dir: &Path,
    n: usize,
    repeats: usize,
    res: &mut Results,
) {
    let mut states: Vec<Value> = std::fs::read_dir(live_root)
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("state.json")).ok())
        .filter_map(|b| serde_json::from_slice(&b).ok())
        .collect();
    states.sort_by_key(|s: &Value| s["id"].as_str().unwrap_or_default().to_string());
    if states.is_empty() {
        println!("verify fixtures: no running container to copy; skipped");
        return;
    }
    let root = dir.join("fixture-root");
    let _ = std::fs::remove_dir_all(&root);
    for i in 0..n {
        let mut state = states[i % states.len()].clone();
        let id = format!("bench-f{i}");
        state["id"] = Value::String(id.clone());
        let d = root.join(&id);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("state.json"), state.to_string()).unwrap();
    }
    let (times, last) = time_verify(labgpu, policy, &root, repeats);
    let (p50, p95) = stats(&times);
    let summary = &last["summary"];
    println!(
        "verify {n:>4} containers: median {:7.3} s  p95 {:7.3} s  ({} ok, {} violations, {} errors; runc state fixtures copied from {} running containers)",
        p50 / 1e3,
        p95 / 1e3,
        summary["ok"],
        summary["violations"],
        summary["errors"],
        states.len()
    );
    if summary["ok"].as_u64() != Some(n as u64) {
        println!("   warning: not every container audited ok: {summary}");
    }
    res.put("verify.fixtures.n", n as f64);
    res.put("verify.fixtures.s", p50 / 1e3);
    let _ = std::fs::remove_dir_all(&root);
}

// ---------------------------------------------------------------------------------------------
// userns = "owner": create on an overlay2 layout of N layers, bare runc vs labgpu

/// A Docker-shaped data root: `overlay2/<layer>/diff` for `layers` image layers (the first
/// the busybox rootfs, each other one file), `l/` short links, and the container layer `ctr`
/// with `lower`, `diff`, `work` and `merged`. Returns (data root, merged, lowerdir option).
fn overlay2_layout(dir: &Path, layers: usize) -> (PathBuf, PathBuf, String) {
    let root = dir.join(format!("docker-{layers}"));
    let o2 = root.join("overlay2");
    std::fs::create_dir_all(o2.join("l")).unwrap();
    let mut shorts = Vec::new();
    for i in 0..layers {
        let layer = o2.join(format!("layer{i}"));
        if i == 0 {
            let rootfs = busybox_rootfs(&layer);
            std::fs::rename(rootfs, layer.join("diff")).unwrap();
        } else {
            std::fs::create_dir_all(layer.join("diff/etc")).unwrap();
            std::fs::write(layer.join(format!("diff/etc/layer{i}")), "x").unwrap();
        }
        let short = format!("SHORT{i:02}");
        std::os::unix::fs::symlink(format!("../layer{i}/diff"), o2.join("l").join(&short)).unwrap();
        shorts.push(short);
    }
    let ctr = o2.join("ctr");
    for d in ["diff", "work", "merged"] {
        std::fs::create_dir_all(ctr.join(d)).unwrap();
    }
    shorts.reverse();
    let lower: Vec<String> = shorts.iter().map(|s| format!("l/{s}")).collect();
    std::fs::write(ctr.join("lower"), lower.join(":")).unwrap();
    let abs: Vec<String> = shorts
        .iter()
        .map(|s| o2.join("l").join(s).display().to_string())
        .collect();
    let opts = format!(
        "index=off,lowerdir={},upperdir={},workdir={}",
        abs.join(":"),
        ctr.join("diff").display(),
        ctr.join("work").display()
    );
    (root, ctr.join("merged"), opts)
}

/// Mounts Docker's overlay on `merged`, as dockerd does before `create`.
fn docker_mount(merged: &Path, opts: &str) {
    nix::mount::mount(
        Some("overlay"),
        merged,
        Some("overlay"),
        nix::mount::MsFlags::empty(),
        Some(opts),
    )
    .unwrap_or_else(|e| panic!("mount overlay on {}: {e}", merged.display()));
}

/// Unmounts whatever is on `merged`, as dockerd does at stop.
fn docker_unmount(merged: &Path) {
    while nix::mount::umount2(merged, nix::mount::MntFlags::MNT_DETACH).is_ok() {}
}

fn userns(o: &Opts) {
    let runc = runc_path().expect("runc is not installed");
    let labgpu = o.path("labgpu");
    let runs = o.num("runs", 100);
    let owner_uid = o.num("owner-uid", 0) as u32;
    let dir = o.path("tmp").join("userns");
    let dev = fake_gpus(&dir);
    let mut res = Results::open(o);
    let counts: Vec<usize> = o
        .get("layers")
        .split(',')
        .map(|c| c.parse().unwrap())
        .collect();
    let mut overhead = Vec::new();
    for &layers in &counts {
        let (root, merged, opts) = overlay2_layout(&dir, layers);
        let policy = |name: &str, userns: &str| {
            let text = policy_text(8, &dev, &dir.join("labgpu.log"), Some(&runc))
                .replace(
                    "unlabeled = \"deny\"\n",
                    &format!("unlabeled = \"deny\"\ndocker_root = \"{}\"\n", root.display()),
                )
                .replace(
                    &format!("[users.{OWNER}]\nuid = 20001\ngid = 20001\n"),
                    &format!("[users.{OWNER}]\nuid = {owner_uid}\ngid = {owner_uid}\nuserns = \"{userns}\"\n"),
                );
            let p = dir.join(format!("{name}-{layers}.toml"));
            std::fs::write(&p, text).unwrap();
            p
        };
        let truth = Path::new("/bin/true");
        let policy_with = |name: &str, userns: &str, runc_bin: &Path| {
            let p = policy(name, userns);
            let text = std::fs::read_to_string(&p).unwrap().replace(
                &format!("runc = \"{}\"", runc.display()),
                &format!("runc = \"{}\"", runc_bin.display()),
            );
            std::fs::write(&p, text).unwrap();
            p
        };
        let (p_off, p_on) = (policy("off", "off"), policy("owner", "owner"));
        let (n_off, n_on) = (
            policy_with("null-off", "off", truth),
            policy_with("null-owner", "owner", truth),
        );
        let bundle = dir.join(format!("bundle-{layers}"));
        std::fs::create_dir_all(&bundle).unwrap();
        let mut spec: Value =
            serde_json::from_slice(&bundle_spec(&bundle, &runc, &["true"])).unwrap();
        spec["root"] = serde_json::json!({"path": merged, "readonly": false});
        let original = serde_json::to_vec(&spec).unwrap();
        // Kept for profiling one create by hand (strace, perf) after the run.
        std::fs::write(bundle.join("config.orig.json"), &original).unwrap();
        let config = bundle.join("config.json");
        let rroot = dir.join(format!("runc-root-{layers}"));
        let errfile = dir.join("stderr");
        let mut live = Containers {
            runc: runc.clone(),
            root: rroot.clone(),
            ids: Vec::new(),
        };
        // One Docker-style start: mount, create (timed), delete -f, unmount.
        let mut once = |prog: &Path, policy: &Path, id: &str| -> Duration {
            std::fs::write(&config, &original).unwrap();
            docker_mount(&merged, &opts);
            let r = rroot.as_os_str();
            let c = timed(
                prog,
                policy,
                &[
                    "--root".as_ref(),
                    r,
                    "create".as_ref(),
                    "--bundle".as_ref(),
                    bundle.as_os_str(),
                    id.as_ref(),
                ],
                &errfile,
            );
            live.ids.push(id.to_string());
            timed(
                prog,
                policy,
                &[
                    "--root".as_ref(),
                    r,
                    "delete".as_ref(),
                    "-f".as_ref(),
                    id.as_ref(),
                ],
                &errfile,
            );
            live.ids.pop();
            docker_unmount(&merged);
            c
        };
        // [bare runc, labgpu userns = "off", labgpu userns = "owner", and the two labgpu arms
        // again with `[runtime] runc = /bin/true`: labgpu's own share without runc's].
        let arms: [(&Path, &Path); 5] = [
            (&runc, &p_off),
            (&labgpu, &p_off),
            (&labgpu, &p_on),
            (&labgpu, &n_off),
            (&labgpu, &n_on),
        ];
        for (k, (prog, pol)) in arms.iter().enumerate() {
            for w in 0..3 {
                once(prog, pol, &format!("bench-u{layers}-w{k}{w}"));
            }
        }
        let mut t: [Vec<Duration>; 5] = Default::default();
        for i in 0..runs {
            for k in 0..5 {
                // Rotated each run and reversed every other one: no arm always follows another.
                let arm = if i % 2 == 0 {
                    (i + k) % 5
                } else {
                    (i + 5 - k) % 5
                };
                let (prog, pol) = arms[arm];
                t[arm].push(once(prog, pol, &format!("bench-u{layers}-{arm}-{i}")));
            }
        }
        drop(live);
        println!("\n== userns = \"owner\": create alone on a {layers}-layer overlay2 rootfs, {runs} interleaved runs each");
        let key = format!("userns.{layers}");
        compare(&mut res, &key, "create (userns owner)", &t[0], &t[2]);
        let names = ["off", "owner"];
        compare_named(
            &mut res,
            &format!("{key}.vs_off"),
            "labgpu userns off/owner",
            names,
            &t[1],
            &t[2],
        );
        compare_named(
            &mut res,
            &format!("{key}.labgpu_only"),
            "runc=/bin/true off/owner",
            names,
            &t[3],
            &t[4],
        );
        let (b, _) = stats(&t[3]);
        let (u, _) = stats(&t[4]);
        overhead.push((layers, u - b));
    }
    if let (Some(first), Some(last)) = (overhead.first(), overhead.last()) {
        if last.0 > first.0 {
            let per = (last.1 - first.1) / (last.0 - first.0) as f64;
            println!(
                "labgpu's own userns cost grows by {per:+.3} ms per layer ({} -> {} layers)",
                first.0, last.0
            );
            res.put("userns.per_layer_ms", per);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// docker run --rm, --runtime runc vs --runtime labgpu

fn docker(o: &Opts) {
    let runs = o.num("runs", 100);
    let image = o.get("image").to_string();
    let docker =
        o.0.get("docker")
            .cloned()
            .unwrap_or_else(|| "docker".into());
    let once = |runtime: &str| -> Duration {
        let mut cmd = Command::new(&docker);
        cmd.args(["run", "--rm", "--runtime", runtime])
            .args(["--label", &format!("labgpu.user={OWNER}")])
            .args([image.as_str(), "true"])
            .stdin(Stdio::null());
        let t = Instant::now();
        let out = cmd.output().unwrap();
        let elapsed = t.elapsed();
        assert!(
            out.status.success(),
            "docker run --runtime {runtime} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        elapsed
    };
    for _ in 0..2 {
        once("runc");
        once("labgpu");
    }
    let (mut base, mut ours) = (vec![], vec![]);
    for i in 0..runs {
        if i % 2 == 0 {
            base.push(once("runc"));
            ours.push(once("labgpu"));
        } else {
            ours.push(once("labgpu"));
            base.push(once("runc"));
        }
    }
    let mut res = Results::open(o);
    println!("\n== docker run --rm {image} true, private dockerd, {runs} interleaved runs each");
    compare(&mut res, "docker", "docker run --rm", &base, &ours);
}

// ---------------------------------------------------------------------------------------------
// The table

/// Criterion's median estimate (ns) for each benchmark id under `dir`.
fn criterion_medians(dir: &Path) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.ends_with("new/benchmark.json") {
                let read = |f: &Path| -> Option<Value> {
                    serde_json::from_slice(&std::fs::read(f).ok()?).ok()
                };
                let (Some(b), Some(est)) = (read(&p), read(&p.with_file_name("estimates.json")))
                else {
                    continue;
                };
                if let (Some(id), Some(m)) = (
                    b["full_id"].as_str(),
                    est.pointer("/median/point_estimate")
                        .and_then(Value::as_f64),
                ) {
                    out.insert(id.to_string(), m);
                }
            }
        }
    }
    out
}

fn summary(o: &Opts) {
    let text = std::fs::read_to_string(o.path("results")).unwrap_or_default();
    let r: BTreeMap<&str, f64> = text
        .lines()
        .filter_map(|l| l.split_once(' '))
        .filter_map(|(k, v)| Some((k, v.parse().ok()?)))
        .collect();
    let crit = criterion_medians(&o.path("criterion"));
    let verdict = |ok: bool| if ok { "pass" } else { "MISS" };
    let mut rows: Vec<[String; 4]> = Vec::new();
    if let (Some(d), Some(b), Some(l)) = (
        r.get("create.diff_p50_ms"),
        r.get("create.runc.p50_ms"),
        r.get("create.labgpu.p50_ms"),
    ) {
        rows.push([
            "create+delete overhead, p50".into(),
            format!("{d:+.2} ms ({l:.1} vs {b:.1} ms, x{:.3})", l / b),
            "<= 1 ms".into(),
            verdict(*d <= 1.0).into(),
        ]);
    }
    if let (Some(d), Some(p)) = (
        r.get("create_only.diff_p50_ms"),
        r.get("create.diff_p95_ms"),
    ) {
        rows.push([
            "  create alone p50 / pair p95".into(),
            format!("{d:+.2} ms / {p:+.2} ms"),
            "-".into(),
            "info".into(),
        ]);
    }
    for (key, users) in [("null_create", 10), ("null_create_1000", 1000)] {
        if let (Some(c), Some(p)) = (
            r.get(&*format!("{key}.diff_p50_ms")),
            r.get(&*format!("{key}.diff_p95_ms")),
        ) {
            rows.push([
                format!("labgpu's own create, {users} users, CDI"),
                format!("{c:+.2} ms p50, {p:+.2} ms p95 (runc=true)"),
                "<= 1 / 2 ms".into(),
                verdict(*c <= 1.0 && *p <= 2.0).into(),
            ]);
        }
    }
    for (key, users) in [("pass_10", 10), ("pass_1000", 1000)] {
        if let (Some(d), Some(f)) = (
            r.get(&*format!("{key}.diff_p50_ms")),
            r.get("floor.diff_p50_ms"),
        ) {
            rows.push([
                format!("passthrough over the floor, {users} users"),
                format!("{d:+.2} ms p50 (floor: {f:+.2} ms over true)"),
                "<= 0.3 ms".into(),
                verdict(*d <= 0.3).into(),
            ]);
        }
    }
    if let (Some(a), Some(b)) = (
        r.get("null_delete.diff_p50_ms"),
        r.get("null_delete_1000.diff_p50_ms"),
    ) {
        rows.push([
            "  passthrough 1000 vs 10 users".into(),
            format!("{:+.2} ms", b - a),
            "-".into(),
            "info".into(),
        ]);
    }
    // Instruction budgets: about 1.5x what this code executes (docs/performance.md), so a
    // regression shows whatever the load; they move with glibc and the Rust toolchain too.
    for (key, label, budget) in [
        (
            "callgrind.create_10",
            "instructions: create, 10 users",
            CREATE_BUDGET,
        ),
        (
            "callgrind.create_1000",
            "instructions: create, 1000 users",
            CREATE_BUDGET,
        ),
        (
            "callgrind.delete_10",
            "instructions: passthrough, 10 users",
            PASS_BUDGET,
        ),
        (
            "callgrind.delete_1000",
            "instructions: passthrough, 1000 users",
            PASS_BUDGET,
        ),
    ] {
        if let Some(ir) = r.get(key) {
            rows.push([
                label.into(),
                group_digits(*ir as u64),
                format!("<= {}", group_digits(budget)),
                verdict(*ir <= budget as f64).into(),
            ]);
        }
    }
    if let Some(ir) = r.get("callgrind.floor") {
        rows.push([
            "  instructions: the floor".into(),
            group_digits(*ir as u64),
            "-".into(),
            "info".into(),
        ]);
    }
    for (key, label) in [
        ("proxy_ps", "proxy: ps -a of 50 containers"),
        ("proxy_inspect", "proxy: inspect"),
        ("proxy_run", "proxy: create+start+rm"),
        ("proxy_cp", "proxy: docker cp 1 GiB"),
    ] {
        if let (Some(x), Some(d)) = (
            r.get(&*format!("{key}.ratio_p50")),
            r.get(&*format!("{key}.diff_p50_ms")),
        ) {
            rows.push([
                label.into(),
                format!("x{x:.3} ({d:+.2} ms p50)"),
                "<= x1.10".into(),
                verdict(*x <= 1.10).into(),
            ]);
        }
    }
    if let Some(x) = r.get("proxy_throughput.ratio") {
        rows.push([
            "proxy: 200 clients, 4 users".into(),
            format!(
                "x{x:.3} of dockerd's req/s ({:.0} vs {:.0})",
                r.get("proxy_throughput.proxy").unwrap_or(&0.0),
                r.get("proxy_throughput.direct").unwrap_or(&0.0)
            ),
            ">= x0.90".into(),
            verdict(*x >= 0.9).into(),
        ]);
    }
    if let Some(k) = r.get("proxy_idle_kib") {
        rows.push([
            "  proxy: memory per idle connection".into(),
            format!("{k:.1} KiB"),
            "-".into(),
            "info".into(),
        ]);
    }
    if let (Some(n), Some(s)) = (r.get("verify.fixtures.n"), r.get("verify.fixtures.s")) {
        rows.push([
            format!("verify, {n} containers (state fixtures)"),
            format!("{s:.3} s"),
            "< 1 s".into(),
            verdict(*s < 1.0).into(),
        ]);
    }
    if let (Some(p), Some(w)) = (
        r.get("labgpu_process.diff_p50_ms"),
        r.get("rewritten_spec.diff_p50_ms"),
    ) {
        rows.push([
            "  split: labgpu process / runc's extra".into(),
            format!("{p:+.2} ms / {w:+.2} ms"),
            "-".into(),
            "info".into(),
        ]);
    }
    if let Some(ns) = crit.get("create_prepare/8_users") {
        rows.push([
            "labgpu prepare, in-process (Criterion)".into(),
            format!("{:.0} us", ns / 1e3),
            "-".into(),
            "info".into(),
        ]);
    }
    if let Some(ns) = crit.get("spec_write_atomic") {
        rows.push([
            "  config.json atomic write alone".into(),
            format!("{:.0} us", ns / 1e3),
            "-".into(),
            "info".into(),
        ]);
    }
    if let (Some(x), Some(d)) = (r.get("docker.ratio_p50"), r.get("docker.diff_p50_ms")) {
        rows.push([
            "docker run --rm ratio, p50".into(),
            format!("{x:.3} ({d:+.1} ms)"),
            "<= 1.02".into(),
            verdict(*x <= 1.02).into(),
        ]);
    }
    for layers in [1, 10] {
        if let (Some(d), Some(b), Some(x)) = (
            r.get(format!("userns.{layers}.diff_p50_ms").as_str()),
            r.get(format!("userns.{layers}.runc.p50_ms").as_str()),
            r.get(format!("userns.{layers}.ratio_p50").as_str()),
        ) {
            let (target, ok) = if layers == 10 {
                ("< 5 ms", *d < 5.0)
            } else {
                ("-", true)
            };
            rows.push([
                format!("userns create overhead, {layers} layers, p50"),
                format!("{d:+.2} ms (runc {b:.1} ms, x{x:.3})"),
                target.into(),
                if layers == 10 {
                    verdict(ok).into()
                } else {
                    "info".into()
                },
            ]);
        }
    }
    for layers in [1, 10] {
        if let Some(d) = r.get(format!("userns.{layers}.labgpu_only.diff_p50_ms").as_str()) {
            rows.push([
                format!("  labgpu's own share, {layers} layers"),
                format!("{d:+.2} ms"),
                "-".into(),
                "info".into(),
            ]);
        }
    }
    if let Some(p) = r.get("userns.per_layer_ms") {
        rows.push([
            "  labgpu's userns cost per layer".into(),
            format!("{p:+.3} ms"),
            "-".into(),
            "info".into(),
        ]);
    }
    for (key, label) in [
        ("verify.10.s", "verify, 10 containers"),
        ("verify.50.s", "verify, 50 containers"),
    ] {
        if let Some(s) = r.get(key) {
            rows.push([label.into(), format!("{s:.3} s"), "-".into(), "info".into()]);
        }
    }
    if let Some(s) = r.get("verify.200.s") {
        let per = r
            .get("verify.per_container_ms")
            .map(|p| format!(" (+{p:.2} ms/container)"))
            .unwrap_or_default();
        rows.push([
            "verify, 200 containers".into(),
            format!("{s:.3} s{per}"),
            "< 0.5 s".into(),
            verdict(*s < 0.5).into(),
        ]);
    }
    for users in [10, 100] {
        if let Some(ns) = crit.get(&format!("policy_load/{users}")) {
            rows.push([
                format!("policy load, {users} users"),
                format!("{:.3} ms", ns / 1e6),
                "-".into(),
                "info".into(),
            ]);
        }
    }
    if let Some(ns) = crit.get("policy_load/1000") {
        rows.push([
            "policy load, 1000 users".into(),
            format!("{:.3} ms", ns / 1e6),
            "< 5 ms".into(),
            verdict(ns / 1e6 < 5.0).into(),
        ]);
    }
    let head = ["measure", "value", "target", "result"];
    let width = |i: usize| {
        rows.iter()
            .map(|r| r[i].chars().count())
            .chain([head[i].len()])
            .max()
            .unwrap()
    };
    let w: Vec<usize> = (0..4).map(width).collect();
    let line = |cells: [&str; 4]| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&w)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("| {} |", padded.join(" | "));
    };
    println!("\n== summary");
    line(head);
    let dashes: Vec<String> = w.iter().map(|w| "-".repeat(*w)).collect();
    line([&dashes[0], &dashes[1], &dashes[2], &dashes[3]]);
    for row in &rows {
        line([&row[0], &row[1], &row[2], &row[3]]);
    }
    let misses = rows.iter().filter(|r| r[3] == "MISS").count();
    if o.0.contains_key("check") && misses > 0 {
        eprintln!("bench --check: {misses} goal(s) missed");
        std::process::exit(1);
    }
}

/// Instructions up to the exec of runc (see `callgrind`), over which `--check` fails.
const CREATE_BUDGET: u64 = 8_000_000;
const PASS_BUDGET: u64 = 650_000;
