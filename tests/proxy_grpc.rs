//! BuildKit's `/grpc` through `labgpu proxy`, without Docker: a fake dockerd (this test
//! binary again, with `DOCKER_BUILDKIT_RUNC_COMMAND` naming labgpu in its environment, and
//! API 1.45 as Docker 26 says) upgrades `/grpc` to HTTP/2 and echoes each gRPC call's
//! message back; a client of another uid (uid 65534, a policy user) talks gRPC to the proxy
//! as buildx does. What reached the fake dockerd is what the proxy let through.

mod common;

use std::convert::Infallible;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use labgpu::proxy::buildkit::wire::{self, BridgeSolveRequest, Exporter, SolveRequest};
use prost::Message;
use serde_json::{json, Value};

const NOBODY: u32 = 65534;
const FAKE_ENV: &str = "LABGPU_GRPC_TEST_DOCKERD";
const CLIENT_ENV: &str = "LABGPU_GRPC_TEST_CLIENT";

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).boxed()
}

/// Not a test of its own: the fake dockerd, in a process of its own.
#[test]
fn fake_dockerd_process() {
    let Ok(socket) = std::env::var(FAKE_ENV) else {
        return;
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let listener = tokio::net::UnixListener::bind(&socket).unwrap();
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let conn = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service_fn(dockerd))
                    .with_upgrades();
                let _ = conn.await;
            });
        }
    });
}

async fn dockerd(mut req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_string();
    if path.ends_with("/version") {
        let v = json!({"ApiVersion": "1.45", "Version": "26.1.5"}).to_string();
        return Ok(Response::new(full(v)));
    }
    if path.ends_with("/grpc") {
        let on = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            let io = on.await.unwrap();
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(io, service_fn(echo))
                .await;
        });
        let resp = Response::builder()
            .status(101)
            .header("Connection", "Upgrade")
            .header("Upgrade", "h2c")
            .body(full(""))
            .unwrap();
        return Ok(resp);
    }
    Ok(Response::new(full("{}")))
}

/// The gRPC call's message back, as BuildKit's answer would come: data, then trailers.
async fn echo(req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_string();
    let bytes = req.into_body().collect().await.unwrap().to_bytes();
    let mut trailers = hyper::HeaderMap::new();
    trailers.insert("grpc-status", "0".parse().unwrap());
    let body = Full::new(bytes)
        .with_trailers(async move { Some(Ok(trailers)) })
        .boxed();
    let resp = Response::builder()
        .header("content-type", "application/grpc")
        .header("x-echo-path", path)
        .body(body)
        .unwrap();
    Ok(resp)
}

/// Not a test of its own: the client, in a process of uid 65534. Prints one RESULT line:
/// for each call, its gRPC status, message and echoed bytes (hex).
#[test]
fn grpc_client_process() {
    let Ok(socket) = std::env::var(CLIENT_ENV) else {
        return;
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let results = rt.block_on(client(PathBuf::from(socket)));
    println!("RESULT {results}");
}

async fn http1(socket: &Path, req: Request<Body>) -> Response<Incoming> {
    let stream = tokio::net::UnixStream::connect(socket).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn.with_upgrades());
    sender.send_request(req).await.unwrap()
}

async fn client(socket: PathBuf) -> Value {
    // The session first, as buildx opens it.
    let session = Request::post("/v1.45/session")
        .header("Host", "docker")
        .header("X-Docker-Expose-Session-Uuid", "s1")
        .body(full(""))
        .unwrap();
    let status = http1(&socket, session).await.status().as_u16();
    let grpc = Request::post("/v1.45/grpc")
        .header("Host", "docker")
        .header("Connection", "Upgrade")
        .header("Upgrade", "h2c")
        .body(full(""))
        .unwrap();
    let mut resp = http1(&socket, grpc).await;
    assert_eq!(resp.status(), 101, "the /grpc upgrade");
    let io = hyper::upgrade::on(&mut resp).await.unwrap();
    let (mut h2, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
        .await
        .unwrap();
    tokio::spawn(conn);
    let solve = SolveRequest {
        r#ref: "r1".into(),
        session: "s1".into(),
        exporters: vec![Exporter {
            r#type: "moby".into(),
            attrs: [("name".to_string(), "nobody/x".to_string())].into(),
        }],
        ..Default::default()
    };
    let mut insecure = solve.clone();
    insecure.r#ref = "r2".into();
    insecure.entitlements = vec!["security.insecure".into()];
    let mut foreign_session = solve.clone();
    foreign_session.r#ref = "r3".into();
    foreign_session.session = "someone-elses".into();
    let bridge = BridgeSolveRequest {
        frontend: "dockerfile.v0".into(),
        ..Default::default()
    };
    let calls: Vec<(&str, &str, Bytes)> = vec![
        (
            "solve",
            "/moby.buildkit.v1.Control/Solve",
            wire::frame(&solve),
        ),
        (
            "insecure",
            "/moby.buildkit.v1.Control/Solve",
            wire::frame(&insecure),
        ),
        (
            "foreign-session",
            "/moby.buildkit.v1.Control/Solve",
            wire::frame(&foreign_session),
        ),
        (
            "bridge",
            "/moby.buildkit.v1.frontend.LLBBridge/Solve",
            wire::frame(&bridge),
        ),
        (
            "history",
            "/moby.buildkit.v1.Control/ListenBuildHistory",
            Bytes::from_static(&[0, 0, 0, 0, 0]),
        ),
        (
            "workers",
            "/moby.buildkit.v1.Control/ListWorkers",
            Bytes::from_static(&[0, 0, 0, 0, 0]),
        ),
    ];
    let mut out = json!({"session": status});
    for (name, path, body) in calls {
        let mut req = Request::post(format!("http://localhost{path}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers");
        if name == "bridge" {
            req = req.header("buildkit-controlapi-buildid", "r1");
        }
        h2.ready().await.unwrap();
        let resp = h2
            .send_request(req.body(full(body)).unwrap())
            .await
            .unwrap();
        let head = resp.headers().clone();
        let collected = resp.into_body().collect().await.unwrap();
        let trailers = collected.trailers().cloned().unwrap_or_default();
        let get = |k: &str| {
            head.get(k)
                .or_else(|| trailers.get(k))
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string()
        };
        let data = collected.to_bytes();
        out[name] = json!({
            "status": get("grpc-status"),
            "message": get("grpc-message"),
            "echo_path": get("x-echo-path"),
            "echo": data.iter().map(|b| format!("{b:02x}")).collect::<String>(),
        });
    }
    out
}

struct Killed(Vec<Child>);

impl Drop for Killed {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn wait_for(path: &Path) {
    for _ in 0..200 {
        if path.exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{} never appeared", path.display());
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn grpc_calls_are_checked_on_the_way_to_dockerd() {
    common::require_root();
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(
        dir.path().join("policy.toml"),
        format!(
            "version = 1\n[proxy]\nstate_dir = \"{}\"\n[users.nobody]\nuid = {NOBODY}\ngid = {NOBODY}\n",
            dir.path().join("state").display()
        ),
    )
    .unwrap();
    let me = std::env::current_exe().unwrap();
    let test_run = |name: &str| {
        let mut c = Command::new(&me);
        c.args(["--exact", name, "--nocapture", "--test-threads=1"]);
        c
    };
    let upstream = dir.path().join("docker.sock");
    let fake = test_run("fake_dockerd_process")
        .env(FAKE_ENV, &upstream)
        .env("DOCKER_BUILDKIT_RUNC_COMMAND", common::BIN)
        .spawn()
        .unwrap();
    let mut children = Killed(vec![fake]);
    wait_for(&upstream);
    let socket = dir.path().join("run/proxy.sock");
    let proxy = Command::new(common::BIN)
        .arg("proxy")
        .arg("--listen")
        .arg(&socket)
        .arg("--upstream")
        .arg(&upstream)
        .arg("--policy")
        .arg(dir.path().join("policy.toml"))
        .stderr(std::fs::File::create(dir.path().join("proxy.log")).unwrap())
        .spawn()
        .unwrap();
    children.0.push(proxy);
    wait_for(&socket);
    let out = test_run("grpc_client_process")
        .env(CLIENT_ENV, &socket)
        .uid(NOBODY)
        .gid(NOBODY)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let log = std::fs::read_to_string(dir.path().join("proxy.log")).unwrap_or_default();
    let line = stdout
        .lines()
        .find_map(|l| l.split_once("RESULT ").map(|(_, r)| r))
        .unwrap_or_else(|| {
            panic!(
                "the client printed no result: {stdout} {} proxy log: {log}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    let r: Value = serde_json::from_str(line).unwrap();
    assert_eq!(r["session"], 200, "{r}");

    // A plain build's Solve reaches dockerd, re-encoded with the caller's cache namespace.
    assert_eq!(r["solve"]["status"], "0", "{r} {log}");
    assert_eq!(r["solve"]["echo_path"], "/moby.buildkit.v1.Control/Solve");
    let echoed = unhex(r["solve"]["echo"].as_str().unwrap());
    let seen = SolveRequest::decode(wire::unframe(&echoed).unwrap()).unwrap();
    assert_eq!(seen.exporters[0].attrs["name"], "nobody/x");
    assert_eq!(
        seen.frontend_attrs["build-arg:BUILDKIT_CACHE_MOUNT_NS"],
        format!("labgpu-uid-{NOBODY}")
    );

    // What the proxy refuses never reaches dockerd, and the caller reads why.
    for (name, says) in [
        ("insecure", "security.insecure"),
        (
            "foreign-session",
            "session \"someone-elses\" is not one this user started",
        ),
        ("history", "ListenBuildHistory is not allowed"),
    ] {
        assert_eq!(r[name]["status"], "7", "{name}: {r}");
        assert_eq!(r[name]["echo_path"], "", "{name} reached dockerd: {r}");
        assert!(
            r[name]["message"].as_str().unwrap().contains(says),
            "{name}: {r}"
        );
    }

    // The build's own frontend call passes, with dockerd's Dockerfile frontend kept final.
    assert_eq!(r["bridge"]["status"], "0", "{r}");
    let echoed = unhex(r["bridge"]["echo"].as_str().unwrap());
    let seen = BridgeSolveRequest::decode(wire::unframe(&echoed).unwrap()).unwrap();
    assert!(seen.frontend_opt.contains_key("cmdline"), "{seen:?}");
    assert_eq!(r["workers"]["status"], "0", "{r}");
}
