//! `labgpu proxy` against dockerd's own socket, in the same run (issue 22): raw HTTP/1.1
//! over the Unix sockets, so that no client start-up hides the difference.
//!
//!   timings proxy --direct SOCK --proxy SOCK --proxy-pid PID --image IMG --uids U0,U1,U2,U3
//!                 --results FILE [--runs 30] [--clients 200] [--seconds 2] [--cp-mib 1024]
//!
//! Latency (one client, a new connection per request, as the docker CLI makes): `ps` of 50
//! containers, `inspect`, `create`+`start`+`rm`, and a `docker cp` download of one big file,
//! each request sent straight to dockerd and through the proxy alternately. The proxy is
//! called as policy user U0 (the containers are U0's, created through the proxy), so its
//! ownership filtering is in the figure; straight calls are made by the same process, which
//! is why the caller makes dockerd's socket reachable by U0 for the run. Then throughput with
//! `--clients` concurrent clients spread over the `--uids` users, and the proxy's memory per
//! idle connection. The work runs in `proxy-worker` processes started with each user's uid.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{compare_named, Opts, Results};

/// A response: status and body (the body only counted when `keep` is false).
struct Response {
    status: u16,
    body: Vec<u8>,
    len: u64,
}

/// One request on a fresh connection (`Connection: close`), body read to the end.
fn request(sock: &Path, method: &str, path: &str, body: Option<&Value>, keep: bool) -> Response {
    let mut s =
        UnixStream::connect(sock).unwrap_or_else(|e| panic!("connect {}: {e}", sock.display()));
    let payload = body.map(|b| b.to_string()).unwrap_or_default();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n");
    if body.is_some() {
        head += &format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            payload.len()
        );
    }
    head += "\r\n";
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(payload.as_bytes()).unwrap();
    read_response(BufReader::with_capacity(256 * 1024, s), keep)
}

fn read_response(mut r: impl BufRead, keep: bool) -> Response {
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    let status: u16 = line
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {line:?}"));
    let (mut length, mut chunked) = (None, false);
    loop {
        line.clear();
        r.read_line(&mut line).unwrap();
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let (k, v) = l.split_once(':').unwrap_or((l, ""));
        let (k, v) = (k.to_ascii_lowercase(), v.trim());
        if k == "content-length" {
            length = v.parse::<u64>().ok();
        } else if k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked") {
            chunked = true;
        }
    }
    let mut out = Response {
        status,
        body: Vec::new(),
        len: 0,
    };
    let sink = |buf: &[u8], out: &mut Response| {
        out.len += buf.len() as u64;
        if keep {
            out.body.extend_from_slice(buf);
        }
    };
    if chunked {
        loop {
            line.clear();
            r.read_line(&mut line).unwrap();
            let size = u64::from_str_radix(line.trim().split(';').next().unwrap(), 16).unwrap();
            if size == 0 {
                break;
            }
            copy_n(&mut r, size, &mut |b| sink(b, &mut out));
            line.clear();
            r.read_line(&mut line).unwrap();
        }
    } else if let Some(n) = length {
        copy_n(&mut r, n, &mut |b| sink(b, &mut out));
    } else {
        copy_n(&mut r, u64::MAX, &mut |b| sink(b, &mut out));
    }
    out
}

fn copy_n(r: &mut impl BufRead, mut n: u64, sink: &mut dyn FnMut(&[u8])) {
    while n > 0 {
        let buf = r.fill_buf().unwrap();
        if buf.is_empty() {
            break;
        }
        let k = buf.len().min(n.min(usize::MAX as u64) as usize);
        sink(&buf[..k]);
        r.consume(k);
        n -= k as u64;
    }
}

fn ok(r: &Response, what: &str) {
    assert!(
        (200..300).contains(&r.status),
        "{what}: HTTP {}: {}",
        r.status,
        String::from_utf8_lossy(&r.body)
    );
}

fn json_of(r: &Response) -> Value {
    serde_json::from_slice(&r.body).unwrap_or(Value::Null)
}

// ---------------------------------------------------------------------------------------------
// The driver (root)

pub fn run(o: &Opts) {
    let direct = o.path("direct");
    let proxy = o.path("proxy");
    let uids: Vec<u32> = o
        .get("uids")
        .split(',')
        .map(|u| u.parse().unwrap())
        .collect();
    let mut res = Results::open(o);
    println!(
        "\n== labgpu proxy vs dockerd's socket, same run (a new connection per request, as the docker CLI)"
    );
    // Latency: one worker as U0 does both sides, alternately.
    let out = worker_cmd(o, uids[0], &["--role", "latency"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "proxy latency worker failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        // "key what|direct ms...|proxy ms..."
        let mut parts = line.splitn(4, '|');
        let (Some(key), Some(what), Some(d), Some(p)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            println!("{line}");
            continue;
        };
        let parse = |s: &str| -> Vec<Duration> {
            s.split(' ')
                .filter_map(|v| v.parse::<f64>().ok())
                .map(|ms| Duration::from_secs_f64(ms / 1e3))
                .collect()
        };
        let names = ["dockerd", "proxy"];
        compare_named(&mut res, key, what, names, &parse(d), &parse(p));
    }
    throughput(o, &uids, &mut res);
    idle_memory(o, &proxy, &direct, &mut res);
}

fn worker_cmd(o: &Opts, uid: u32, extra: &[&str]) -> Command {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.arg("proxy-worker");
    for key in [
        "direct", "proxy", "image", "runs", "cp-mib", "seconds", "threads",
    ] {
        if let Some(v) = o.0.get(key) {
            cmd.arg(format!("--{key}")).arg(v);
        }
    }
    cmd.args(extra).uid(uid).gid(uid).stdin(Stdio::null());
    cmd
}

/// `--clients` clients over the users, each a thread sending `GET /containers/json` on a new
/// connection in a loop for `--seconds`: dockerd's socket, then the proxy, twice over.
fn throughput(o: &Opts, uids: &[u32], res: &mut Results) {
    let clients = o.num("clients", 200);
    let per = clients.div_ceil(uids.len());
    let mut rates: [Vec<f64>; 2] = Default::default();
    for round in 0..4 {
        let side = round % 2; // 0 direct, 1 proxy
        let target = if side == 0 { "direct" } else { "proxy" };
        let children: Vec<_> = uids
            .iter()
            .map(|&u| {
                worker_cmd(o, u, &["--role", "load", "--target", target])
                    .arg("--threads")
                    .arg(per.to_string())
                    .stdout(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        let mut total = 0.0;
        for c in children {
            let out = c.wait_with_output().unwrap();
            assert!(out.status.success(), "load worker failed");
            total += String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse::<f64>()
                .unwrap_or(0.0);
        }
        rates[side].push(total);
    }
    let d = rates[0].iter().cloned().fold(0.0, f64::max);
    let p = rates[1].iter().cloned().fold(0.0, f64::max);
    println!(
        "{:<28} dockerd {d:9.0} req/s   proxy {p:9.0} req/s   ratio {:.3}   ({clients} clients over {} users, best of 2 rounds each)",
        "throughput, GET /containers/json",
        p / d,
        uids.len()
    );
    res.put("proxy_throughput.direct", d);
    res.put("proxy_throughput.proxy", p);
    res.put("proxy_throughput.ratio", p / d);
}

/// The proxy's resident memory with 200 idle keep-alive connections (each has made one
/// request, as an idle docker CLI has), less without, per connection.
fn idle_memory(o: &Opts, proxy: &Path, _direct: &Path, res: &mut Results) {
    let pid = o.get("proxy-pid");
    let rss = || -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .unwrap()
    };
    let n = 200;
    std::thread::sleep(Duration::from_millis(300));
    let before = rss();
    let mut conns = Vec::new();
    for _ in 0..n {
        let mut s = UnixStream::connect(proxy).unwrap();
        s.write_all(b"GET /_ping HTTP/1.1\r\nHost: docker\r\n\r\n")
            .unwrap();
        let mut r = BufReader::new(s.try_clone().unwrap());
        let resp = read_response(&mut r, true);
        assert_eq!(resp.status, 200, "ping through the proxy");
        conns.push(s);
    }
    std::thread::sleep(Duration::from_millis(300));
    let after = rss();
    drop(conns);
    let per = (after - before) / n as f64;
    println!(
        "{:<28} {per:.1} KiB per connection (proxy RSS {before:.0} KiB -> {after:.0} KiB with {n} idle connections)",
        "idle connection memory"
    );
    res.put("proxy_idle_kib", per);
}

// ---------------------------------------------------------------------------------------------
// The worker (a policy user's uid)

pub fn worker(o: &Opts) {
    match o.get("role") {
        "latency" => latency(o),
        "load" => load(o),
        r => panic!("unknown role {r}"),
    }
}

fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1e3)
}

/// Times `f(sock)` on both sides alternately, `runs` times each, and prints the line the
/// driver parses.
fn both(key: &str, what: &str, runs: usize, direct: &Path, proxy: &Path, mut f: impl FnMut(&Path)) {
    let (mut d, mut p) = (Vec::new(), Vec::new());
    for i in 0..runs + 2 {
        let order = if i % 2 == 0 { [0, 1] } else { [1, 0] };
        for side in order {
            let sock = if side == 0 { direct } else { proxy };
            let t = Instant::now();
            f(sock);
            let e = t.elapsed();
            if i >= 2 {
                (if side == 0 { &mut d } else { &mut p }).push(ms(e));
            }
        }
    }
    println!("{key}|{what}|{}|{}", d.join(" "), p.join(" "));
}

fn create_body(image: &str, cmd: &[&str], via_proxy: bool) -> Value {
    let mut body = json!({"Image": image, "Cmd": cmd, "HostConfig": {}});
    if !via_proxy {
        // What the proxy forces, so that both sides ask dockerd for the same container.
        body["HostConfig"]["Runtime"] = json!("labgpu");
    }
    body
}

fn latency(o: &Opts) {
    let direct = o.path("direct");
    let proxy = o.path("proxy");
    let image = o.get("image");
    let runs = o.num("runs", 30);
    // 50 containers of this user, created through the proxy (so it recorded them).
    let mut ids = Vec::new();
    for _ in 0..50 {
        let r = request(
            &proxy,
            "POST",
            "/containers/create",
            Some(&create_body(image, &["true"], true)),
            true,
        );
        ok(&r, "create through the proxy");
        ids.push(json_of(&r)["Id"].as_str().unwrap().to_string());
    }
    let listed = |sock: &Path| {
        let r = request(sock, "GET", "/containers/json?all=1", None, true);
        ok(&r, "ps");
        json_of(&r).as_array().map_or(0, Vec::len)
    };
    let (nd, np) = (listed(&direct), listed(&proxy));
    assert!(
        np >= 50 && nd >= np,
        "ps: dockerd lists {nd}, the proxy {np}"
    );
    both(
        "proxy_ps",
        "ps -a, 50 containers",
        runs,
        &direct,
        &proxy,
        |s| {
            ok(
                &request(s, "GET", "/containers/json?all=1", None, false),
                "ps",
            );
        },
    );
    let inspect = format!("/containers/{}/json", ids[0]);
    both("proxy_inspect", "inspect", runs, &direct, &proxy, |s| {
        ok(&request(s, "GET", &inspect, None, false), "inspect");
    });
    for id in &ids[1..] {
        request(
            &proxy,
            "DELETE",
            &format!("/containers/{id}?force=1"),
            None,
            false,
        );
    }
    let csr_runs = (runs / 2).max(5);
    both(
        "proxy_run",
        "create+start+rm",
        csr_runs,
        &direct,
        &proxy,
        |s| {
            let via_proxy = s == proxy.as_path();
            let body = create_body(image, &["true"], via_proxy);
            let r = request(s, "POST", "/containers/create", Some(&body), true);
            ok(&r, "create");
            let id = json_of(&r)["Id"].as_str().unwrap().to_string();
            ok(
                &request(s, "POST", &format!("/containers/{id}/start"), None, true),
                "start",
            );
            ok(
                &request(
                    s,
                    "DELETE",
                    &format!("/containers/{id}?force=1"),
                    None,
                    true,
                ),
                "rm",
            );
        },
    );
    copy_stream(o, &direct, &proxy, &ids[0]);
    request(
        &proxy,
        "DELETE",
        &format!("/containers/{}?force=1", ids[0]),
        None,
        false,
    );
}

/// `docker cp` out of a container of one file of `--cp-mib` MiB, put there by an upload.
fn copy_stream(o: &Opts, direct: &Path, proxy: &Path, id: &str) {
    let mib = o.num("cp-mib", 1024) as u64;
    let size = mib << 20;
    // Upload straight to dockerd (the upload is not what is timed): a tar of one file.
    let mut s = UnixStream::connect(direct).unwrap();
    let total = 512 + size.div_ceil(512) * 512 + 1024;
    let head = format!(
        "PUT /containers/{id}/archive?path=/tmp HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\
         Content-Type: application/x-tar\r\nContent-Length: {total}\r\n\r\n"
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(&tar_header("big", size)).unwrap();
    let zeros = vec![0u8; 1 << 20];
    let mut left = size.div_ceil(512) * 512 + 1024;
    while left > 0 {
        let k = left.min(zeros.len() as u64) as usize;
        s.write_all(&zeros[..k]).unwrap();
        left -= k as u64;
    }
    let r = read_response(BufReader::new(s), true);
    ok(&r, "upload of the big file");
    let path = format!("/containers/{id}/archive?path=/tmp/big");
    both(
        "proxy_cp",
        &format!("docker cp of {mib} MiB"),
        3,
        direct,
        proxy,
        |s| {
            let r = request(s, "GET", &path, None, false);
            ok(&r, "cp");
            assert!(r.len >= size, "cp returned {} bytes of {size}", r.len);
        },
    );
}

fn tar_header(name: &str, size: u64) -> [u8; 512] {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    h[100..107].copy_from_slice(b"0000644");
    h[108..115].copy_from_slice(b"0000000");
    h[116..123].copy_from_slice(b"0000000");
    h[124..135].copy_from_slice(format!("{size:011o}").as_bytes());
    h[136..147].copy_from_slice(b"00000000000");
    h[156] = b'0';
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| b as u32).sum();
    h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
    h
}

/// `--threads` clients, each sending requests on new connections for `--seconds`; prints
/// this user's requests per second.
fn load(o: &Opts) {
    let sock: PathBuf = o.path(o.get("target"));
    let threads = o.num("threads", 50);
    let seconds = o.num("seconds", 2) as u64;
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (sock, done, stop) = (sock.clone(), done.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let r = request(&sock, "GET", "/containers/json", None, false);
                    assert_eq!(r.status, 200, "GET /containers/json");
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(seconds));
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.join().unwrap();
    }
    let rate = done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64();
    let _ = std::io::stdout().write_all(format!("{rate}\n").as_bytes());
    let _ = std::io::stdout().flush();
}
