//! `labgpu proxy` over real sockets, without Docker: a scripted fake dockerd upstream, the
//! proxy binary in between, and clients that really are another uid (this test binary run
//! again as uid 65534 / 65533), so SO_PEERCRED, ownership checks, body rewriting and the
//! HTTP upgrade splice are exercised end to end. integration/proxy.sh does the same against
//! a real dockerd and the docker CLI.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

const HELPER_ENV: &str = "LABGPU_PROXY_TEST_CLIENT";
const NOBODY: u32 = 65534;
const STRANGER: u32 = 65533;

/// One request as the fake dockerd saw it.
#[derive(Debug, Clone)]
struct Seen {
    line: String,
    /// The headers, lower-cased.
    head: String,
    body: String,
}

/// A fake dockerd: inspect answers by name ("mine" belongs to nobody, anything else to
/// alice), create records its body, attach upgrades and then echoes until EOF.
fn fake_dockerd(path: &Path) -> Arc<Mutex<Vec<Seen>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let listener = UnixListener::bind(path).unwrap();
    let log = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let log = log.clone();
            std::thread::spawn(move || serve_one(stream, &log));
        }
    });
    seen
}

fn serve_one(stream: UnixStream, log: &Mutex<Vec<Seen>>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut out = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let line = line.trim_end().to_string();
        let mut length = 0;
        let mut upgrade = false;
        let mut chunked = false;
        let mut head = String::new();
        loop {
            let mut h = String::new();
            reader.read_line(&mut h).unwrap();
            let h = h.trim_end().to_ascii_lowercase();
            if h.is_empty() {
                break;
            }
            head.push_str(&h);
            head.push('\n');
            if let Some(v) = h.strip_prefix("content-length:") {
                length = v.trim().parse().unwrap();
            }
            upgrade |= h.starts_with("upgrade:");
            chunked |= h.starts_with("transfer-encoding:") && h.contains("chunked");
        }
        let body = if chunked {
            // A rewritten archive; an aborted one ends the connection here.
            match read_chunked(&mut reader) {
                Some(body) => body,
                None => return,
            }
        } else {
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            body
        };
        let body = String::from_utf8(body).unwrap();
        log.lock().unwrap().push(Seen {
            line: line.clone(),
            head,
            body,
        });
        let target = line.split(' ').nth(1).unwrap_or_default();
        let path = target.split('?').next().unwrap_or_default().to_string();
        if path.ends_with("/attach") && upgrade {
            out.write_all(
                b"HTTP/1.1 101 UPGRADED\r\nContent-Type: application/vnd.docker.raw-stream\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n",
            )
            .unwrap();
            let mut buf = [0; 1024];
            loop {
                match reader.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => out.write_all(&buf[..n]).unwrap(),
                }
            }
            return;
        }
        let (status, body) = if let Some(rest) = path.split("/containers/").nth(1) {
            match rest.split_once('/') {
                Some((id, "json")) => {
                    let owner = if id == "mine" || id == "mine-full" {
                        "nobody"
                    } else {
                        "alice"
                    };
                    (
                        "200 OK",
                        json!({"Id": format!("{}-full", id.trim_end_matches("-full")),
                               "Config": {"Labels": {"labgpu.user": owner}}}),
                    )
                }
                _ if rest.starts_with("create") => ("201 Created", json!({"Id": "new"})),
                _ => ("200 OK", json!({})),
            }
        } else {
            ("200 OK", json!({"ApiVersion": "1.41"}))
        };
        let body = body.to_string();
        write!(
            out,
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
    }
}

/// A chunked request body, or None if the connection ends before its last chunk.
fn read_chunked(reader: &mut impl BufRead) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let mut size = String::new();
        if reader.read_line(&mut size).ok()? == 0 {
            return None;
        }
        let size = usize::from_str_radix(size.trim_end(), 16).ok()?;
        let mut chunk = vec![0; size + 2];
        reader.read_exact(&mut chunk).ok()?;
        if size == 0 {
            return Some(body);
        }
        body.extend_from_slice(&chunk[..size]);
    }
}

/// A raw HTTP exchange on the proxy socket: the status code and the rest of the response.
fn exchange(socket: &Path, request: &str, after_head: Option<&str>) -> (u16, String) {
    let mut s = UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut reader = BufReader::new(s.try_clone().unwrap());
    let mut status = String::new();
    reader.read_line(&mut status).unwrap();
    let code = status.split(' ').nth(1).unwrap_or("0").parse().unwrap_or(0);
    loop {
        let mut h = String::new();
        reader.read_line(&mut h).unwrap();
        if h.trim_end().is_empty() {
            break;
        }
    }
    if let Some(data) = after_head {
        // Upgraded: send, half-close, and everything echoed must still come back.
        s.write_all(data.as_bytes()).unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
    }
    let mut rest = String::new();
    let _ = reader.read_to_string(&mut rest);
    (code, rest)
}

fn request(method: &str, path: &str, body: Option<&Value>) -> String {
    match body {
        Some(b) => {
            let b = b.to_string();
            format!(
                "{method} {path} HTTP/1.1\r\nHost: docker\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{b}",
                b.len()
            )
        }
        None => format!("{method} {path} HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n"),
    }
}

/// Runs one exchange as `uid` in a child process (this test binary, helper mode).
fn as_uid(uid: u32, socket: &Path, req: &str, after_head: Option<&str>) -> (u16, String) {
    let spec = json!({"socket": socket, "request": req, "after": after_head}).to_string();
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "helper_client",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(HELPER_ENV, spec)
        .uid(uid)
        .gid(uid)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.split_once("RESULT ").map(|(_, r)| r))
        .unwrap_or_else(|| {
            panic!(
                "helper as uid {uid} printed no result: {stdout} {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    let v: Value = serde_json::from_str(line).unwrap();
    (
        v["code"].as_u64().unwrap() as u16,
        v["rest"].as_str().unwrap().to_string(),
    )
}

/// Not a test of its own: the client half of `as_uid`, in a process of another uid.
#[test]
fn helper_client() {
    let Ok(spec) = std::env::var(HELPER_ENV) else {
        return;
    };
    let v: Value = serde_json::from_str(&spec).unwrap();
    let (code, rest) = exchange(
        Path::new(v["socket"].as_str().unwrap()),
        v["request"].as_str().unwrap(),
        v["after"].as_str(),
    );
    println!("RESULT {}", json!({"code": code, "rest": rest}));
}

/// A tar of empty root-owned entries (name, type, mode); ASCII throughout, so it travels in
/// the helper's JSON.
fn tar_of(entries: &[(&str, tar::EntryType, u32)]) -> String {
    let mut b = tar::Builder::new(Vec::new());
    for (name, kind, mode) in entries {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(*kind);
        h.set_mode(*mode);
        h.set_size(0);
        b.append_data(&mut h, name, std::io::empty()).unwrap();
    }
    String::from_utf8(b.into_inner().unwrap()).unwrap()
}

fn put_archive(id: &str, extra_query: &str, tar: &str) -> String {
    format!(
        "PUT /v1.41/containers/{id}/archive?path=%2Fw{extra_query} HTTP/1.1\r\nHost: docker\r\nConnection: close\r\nContent-Type: application/x-tar\r\nContent-Length: {}\r\n\r\n{tar}",
        tar.len()
    )
}

struct Proxy {
    child: Child,
    socket: PathBuf,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_proxy(dir: &Path) -> Proxy {
    let socket = dir.join("run/proxy.sock");
    let child = Command::new(common::BIN)
        .arg("proxy")
        .arg("--listen")
        .arg(&socket)
        .arg("--upstream")
        .arg(dir.join("docker.sock"))
        .arg("--policy")
        .arg(dir.join("policy.toml"))
        .stderr(std::fs::File::create(dir.join("proxy.log")).unwrap())
        .spawn()
        .unwrap();
    for _ in 0..100 {
        if socket.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        socket.exists(),
        "the proxy did not create {}",
        socket.display()
    );
    Proxy { child, socket }
}

#[test]
fn proxy_over_real_sockets() {
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
    // The proxy's record that it created "mine" for nobody: ownership is the record's.
    labgpu::records::record(&dir.path().join("state"), "mine-full", "nobody").unwrap();
    let seen = fake_dockerd(&dir.path().join("docker.sock"));
    let proxy = start_proxy(dir.path());
    let sock = proxy.socket.clone();
    let last = |prefix: &str| -> Seen {
        seen.lock()
            .unwrap()
            .iter()
            .rev()
            .find(|s| s.line.starts_with(prefix))
            .cloned()
            .unwrap_or_else(|| panic!("upstream never saw {prefix}"))
    };

    // Stamped and forced, whatever the request said.
    let body = json!({"Image": "x", "Labels": {"labgpu.user": "alice"}, "HostConfig": {"Runtime": "runc"}});
    let (code, _) = as_uid(
        NOBODY,
        &sock,
        &request("POST", "/v1.41/containers/create?name=c", Some(&body)),
        None,
    );
    assert_eq!(code, 201);
    let sent: Value = serde_json::from_str(&last("POST /v1.41/containers/create").body).unwrap();
    assert_eq!(sent["Labels"]["labgpu.user"], "nobody");
    assert_eq!(sent["HostConfig"]["Runtime"], "labgpu");

    // Someone else's container, and a uid the policy does not know.
    let (code, rest) = as_uid(
        NOBODY,
        &sock,
        &request("POST", "/v1.41/containers/other/stop", None),
        None,
    );
    assert_eq!(code, 403, "{rest}");
    assert!(
        rest.contains(r#""message":"labgpu proxy: container \"other\" belongs to another user""#),
        "{rest}"
    );
    assert!(!seen
        .lock()
        .unwrap()
        .iter()
        .any(|s| s.line.contains("/other/stop")));
    let (code, rest) = as_uid(
        STRANGER,
        &sock,
        &request("GET", "/v1.41/containers/json", None),
        None,
    );
    assert_eq!(code, 403, "{rest}");
    assert!(rest.contains(&format!("uid {STRANGER}")), "{rest}");

    // One's own: forwarded by full id; an upgraded attach echoes through a half-close.
    let (code, _) = as_uid(
        NOBODY,
        &sock,
        &request("POST", "/v1.41/containers/mine/stop", None),
        None,
    );
    assert_eq!(code, 200);
    last("POST /v1.41/containers/mine-full/stop");
    let attach = "POST /v1.41/containers/mine/attach?stream=1&stdin=1 HTTP/1.1\r\nHost: docker\r\nConnection: Upgrade\r\nUpgrade: tcp\r\nContent-Length: 0\r\n\r\n";
    let (code, rest) = as_uid(NOBODY, &sock, attach, Some("hello through the proxy"));
    assert_eq!(code, 101);
    assert_eq!(rest, "hello through the proxy");

    // ps is filtered to the caller's label.
    let (code, _) = as_uid(
        NOBODY,
        &sock,
        &request("GET", "/v1.41/containers/json?all=1", None),
        None,
    );
    assert_eq!(code, 200);
    let line = last("GET /v1.41/containers/json").line;
    assert!(line.contains("labgpu.user%3Dnobody"), "{line}");

    // inspect: one request to Docker, as the caller sent it (version, query), whose answer is
    // both the ownership check and the reply; someone else's answer never reaches the caller.
    let before = seen.lock().unwrap().len();
    let (code, rest) = as_uid(
        NOBODY,
        &sock,
        &request("GET", "/v1.41/containers/mine/json?size=1", None),
        None,
    );
    assert_eq!(code, 200, "{rest}");
    assert!(rest.contains(r#""Id":"mine-full""#), "{rest}");
    let lines: Vec<String> = seen.lock().unwrap()[before..]
        .iter()
        .map(|s| s.line.clone())
        .collect();
    assert_eq!(
        lines,
        ["GET /v1.41/containers/mine/json?size=1 HTTP/1.1"],
        "upstream saw {lines:?}"
    );
    let (code, rest) = as_uid(
        NOBODY,
        &sock,
        &request("GET", "/v1.41/containers/other/json", None),
        None,
    );
    assert_eq!(code, 403, "{rest}");
    assert!(rest.contains("belongs to another user"), "{rest}");
    assert!(!rest.contains("other-full"), "{rest}");

    // docker cp into one's own container: dockerd gets the tar rewritten (and chunked), owned
    // by the caller's uid and the policy's gid, without the setuid bit.
    let suid = tar_of(&[("x", tar::EntryType::Regular, 0o4755)]);
    let (code, rest) = as_uid(NOBODY, &sock, &put_archive("mine", "", &suid), None);
    assert_eq!(code, 200, "{rest}");
    let sent = last("PUT /v1.41/containers/mine-full/archive?path=%2Fw").body;
    let mut archive = tar::Archive::new(sent.as_bytes());
    let entry = archive.entries().unwrap().next().unwrap().unwrap();
    let h = entry.header();
    assert_eq!(
        (h.uid().unwrap(), h.gid().unwrap(), h.mode().unwrap()),
        (NOBODY.into(), NOBODY.into(), 0o755)
    );
    let before = seen.lock().unwrap().len();
    let dev = tar_of(&[("mem", tar::EntryType::Char, 0o666)]);
    let (code, rest) = as_uid(NOBODY, &sock, &put_archive("mine", "", &dev), None);
    assert_eq!(code, 403, "{rest}");
    assert!(
        rest.contains(r#"archive entry \"mem\" is a character device"#),
        "{rest}"
    );
    let (code, rest) = as_uid(
        NOBODY,
        &sock,
        &put_archive("mine", "&copyUIDGID=1", &suid),
        None,
    );
    assert_eq!(code, 403, "{rest}");
    assert!(
        rest.contains("copyUIDGID (docker cp -a) is not allowed"),
        "{rest}"
    );
    // Neither reached dockerd whole (the aborted upload is not in its log), only inspects.
    assert!(seen.lock().unwrap()[before..]
        .iter()
        .all(|s| s.line.starts_with("GET ")));

    // BuildKit's control API: this fake dockerd says API 1.41 (Docker 20.10), whose BuildKit
    // runs build steps with the runc on its PATH: refused before anything reaches Docker.
    let grpc = "POST /v1.41/grpc HTTP/1.1\r\nHost: docker\r\nConnection: Upgrade\r\nUpgrade: h2c\r\nContent-Length: 0\r\n\r\n";
    let (code, rest) = as_uid(NOBODY, &sock, grpc, None);
    assert_eq!(code, 403, "{rest}");
    assert!(
        rest.contains("BuildKit builds are not allowed: dockerd") && rest.contains("plain runc"),
        "{rest}"
    );
    assert!(!seen
        .lock()
        .unwrap()
        .iter()
        .any(|s| s.line.contains("/grpc")));
    // A BuildKit session becomes the caller's, its shared key scoped to the caller's uid.
    let session = "POST /v1.41/session HTTP/1.1\r\nHost: docker\r\nConnection: close\r\nX-Docker-Expose-Session-Uuid: s3ss10n\r\nX-Docker-Expose-Session-Sharedkey: ctx:node1\r\nContent-Length: 0\r\n\r\n";
    let (code, rest) = as_uid(NOBODY, &sock, session, None);
    assert_eq!(code, 200, "{rest}");
    let head = last("POST /v1.41/session").head;
    assert!(
        head.contains(&format!(
            "x-docker-expose-session-sharedkey: labgpu-uid-{NOBODY}:ctx:node1\n"
        )),
        "{head}"
    );
    let nameless = "POST /v1.41/session HTTP/1.1\r\nHost: docker\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";
    let (code, rest) = as_uid(NOBODY, &sock, nameless, None);
    assert_eq!(code, 403, "{rest}");

    // Root in our pid namespace is the admin: passed through untouched.
    let (code, _) = exchange(
        &sock,
        &request("POST", "/v1.41/containers/other/stop", None),
        None,
    );
    assert_eq!(code, 200);
    last("POST /v1.41/containers/other/stop");

    // SIGTERM: the proxy exits and takes its socket with it.
    let mut proxy = proxy;
    // SAFETY: kill(2) on our own child's pid; no memory is involved.
    let rc = unsafe { libc::kill(proxy.child.id() as i32, libc::SIGTERM) };
    assert_eq!(rc, 0);
    let status = proxy.child.wait().unwrap();
    assert!(status.success(), "{status}");
    assert!(!sock.exists());
}
