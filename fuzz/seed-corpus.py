#!/usr/bin/env python3
"""Writes the fuzz targets' seed corpora (fuzz/corpus/<target>/seed-*) from real inputs.

  python3 fuzz/seed-corpus.py        (from anywhere; needs only Python 3 and, for the
                                      request seeds, a docker CLI on PATH)

- proxy_create, proxy_query, proxy_archive: the requests the docker CLI on this machine
  sends for a list of commands (normal use and the attacks the proxy refuses), captured by a
  fake dockerd on a private socket that answers _ping and docker cp's stat and fails the rest,
  so nothing runs anywhere. Also small tar archives of every entry type, and docker save /
  OCI layout archives for docker load.
- runtime_spec, runtime_argv: the Docker 20.10 captures in tests/fixtures/docker20.
- policy: config/policy.toml and the integration suites' test policy.

Files this script did not write (libFuzzer's finds, merged by LABGPU_FUZZ_MERGE=1 bash
integration/fuzz.sh, and seed-regression-* inputs of fixed crashes) are left alone; its own
are rewritten on every run.
"""

import base64
import gzip
import io
import json
import os
import re
import shutil
import socket
import socketserver
import subprocess
import sys
import tarfile
import tempfile
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler

FUZZ = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(FUZZ)
CORPUS = os.path.join(FUZZ, "corpus")
FIXTURES = os.path.join(REPO, "tests", "fixtures", "docker20")


def write(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)


def clear_seeds():
    if not os.path.isdir(CORPUS):
        return
    for target in os.listdir(CORPUS):
        for f in os.listdir(os.path.join(CORPUS, target)):
            if f.startswith("seed-") and not f.startswith("seed-regression-"):
                os.remove(os.path.join(CORPUS, target, f))


# ------------------------------------------------------------------------------------------
# The docker CLI's requests

captured = []


class FakeDockerd(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return out
                out += self.rfile.read(size)
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def answer(self, status, body=b"", headers=()):
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def handle_any(self):
        body = self.body()
        url = urllib.parse.urlsplit(self.path)
        path = re.sub(r"^/v[0-9.]+", "", url.path)
        if path == "/_ping":
            return self.answer(
                200,
                b"OK",
                [("Api-Version", "1.47"), ("Ostype", "linux"), ("Builder-Version", "1")],
            )
        captured.append(
            {
                "method": self.command,
                "path": url.path,
                "query": url.query,
                "content_type": self.headers.get_all("Content-Type") or [],
                "body": body,
            }
        )
        if self.command == "HEAD" and path.endswith("/archive"):
            stat = {"name": "tmp", "size": 4096, "mode": 2147484141,
                    "mtime": "2024-01-01T00:00:00Z", "linkTarget": ""}
            return self.answer(
                200,
                headers=[("X-Docker-Container-Path-Stat",
                          base64.b64encode(json.dumps(stat).encode()).decode())],
            )
        msg = json.dumps({"message": "labgpu corpus capture: not a real dockerd"}).encode()
        self.answer(500, msg, [("Content-Type", "application/json")])

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = handle_any


class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def get_request(self):
        req, _ = super().get_request()
        return req, ("local", 0)


# (seed name, docker arguments, stdin). Each command's requests become seeds named after it.
COMMANDS = [
    ("run-plain", ["create", "busybox", "true"]),
    ("run-it", ["create", "-it", "--name", "web", "alice/app:1", "sh"]),
    ("run-gpus-all", ["create", "--gpus", "all", "nvidia/cuda:12.4.0-base", "nvidia-smi"]),
    ("run-gpus-device", ["create", "--gpus", "device=0,1", "alice/train"]),
    ("run-binds", ["create", "-v", "/home/alice/data:/data", "-v", "myvol:/vol:ro",
                   "-v", "/anon", "-v", "/srv/data:/d:rslave", "busybox"]),
    ("run-mounts", ["create", "--mount", "type=bind,src=/srv/data,dst=/d,readonly",
                    "--mount", "type=volume,src=scratch,dst=/s",
                    "--mount", "type=volume,src=t,dst=/t,volume-opt=type=tmpfs,"
                               "volume-opt=device=tmpfs,volume-opt=o=size=64m",
                    "--mount", "type=tmpfs,dst=/tmp,tmpfs-size=64m", "busybox"]),
    ("run-devices", ["create", "--device", "/dev/fuse", "--device", "/dev/nvidia0",
                     "--device", "nvidia.com/gpu=0",
                     "--device-cgroup-rule", "c 195:* rwm", "busybox"]),
    ("run-join", ["create", "--network", "container:web", "--pid", "container:web",
                  "--ipc", "container:web", "--volumes-from", "web:ro", "busybox"]),
    ("run-link", ["create", "--link", "db:db", "--network", "mynet", "--network-alias", "a",
                  "busybox"]),
    ("run-host-ns", ["create", "--network", "host", "--pid", "host", "--ipc", "host",
                     "--uts", "host", "--userns", "host", "--cgroupns", "host", "busybox"]),
    ("run-privileged", ["create", "--privileged", "busybox"]),
    ("run-security-opts", ["create", "--security-opt", "no-new-privileges",
                           "--security-opt", "apparmor=unconfined",
                           "--security-opt", "label=disable",
                           "--security-opt", "systempaths=unconfined", "busybox"]),
    ("run-seccomp-unconfined", ["create", "--security-opt", "seccomp=unconfined", "busybox"]),
    ("run-seccomp-profile", ["create", "--security-opt", "seccomp=@PROFILE@", "busybox"]),
    ("run-caps", ["create", "--cap-add", "ALL", "--cap-drop", "NET_RAW", "busybox"]),
    ("run-log", ["create", "--log-driver", "syslog", "--log-opt",
                 "syslog-address=udp://10.0.0.1:514", "busybox"]),
    ("run-log-json", ["create", "--log-opt", "max-size=10m", "--log-opt", "max-file=3",
                      "busybox"]),
    ("run-resources", ["create", "--memory", "1g", "--cpus", "2", "--shm-size", "1g",
                       "--ulimit", "nofile=1024:2048", "--pids-limit", "100",
                       "--sysctl", "net.ipv4.ip_forward=1", "--oom-score-adj", "500",
                       "busybox"]),
    ("run-cgroup-parent", ["create", "--cgroup-parent", "/system.slice", "busybox"]),
    ("run-oom-kill-disable", ["create", "--oom-kill-disable", "busybox"]),
    ("run-labels", ["create", "--label", "labgpu.user=bob", "--label", "team=ml",
                    "--annotation", "io.labgpu.owner=bob", "--runtime", "runc", "busybox"]),
    ("run-misc", ["create", "--tmpfs", "/run:size=64m", "--read-only", "--init",
                  "--restart", "always", "-p", "8080:80", "-e", "NVIDIA_VISIBLE_DEVICES=all",
                  "--user", "1000:1000", "--group-add", "0", "--hostname", "h",
                  "--dns", "1.1.1.1", "--add-host", "x:10.0.0.2", "--workdir", "/w",
                  "--entrypoint", "/bin/sh", "--stop-signal", "SIGINT",
                  "--health-cmd", "true", "busybox", "-c", "sleep 1"]),
    ("run-storage-opt", ["create", "--storage-opt", "size=10G", "--cgroup", "private",
                         "busybox"]),
    ("update", ["update", "--memory", "2g", "--memory-swap", "4g", "--cpus", "1",
                "--restart", "on-failure:3", "web"]),
    ("volume-create", ["volume", "create", "--label", "x=y", "v1"]),
    ("volume-create-tmpfs", ["volume", "create", "--opt", "type=tmpfs", "--opt",
                             "device=tmpfs", "--opt", "o=size=100m,uid=1000", "t1"]),
    ("volume-create-nfs", ["volume", "create", "--opt", "type=nfs", "--opt",
                           "o=addr=10.0.0.1,rw", "--opt", "device=:/export", "n1"]),
    ("volume-create-bind", ["volume", "create", "--opt", "type=none", "--opt", "o=bind",
                            "--opt", "device=/etc", "b1"]),
    ("network-create", ["network", "create", "--internal", "--label", "x=y", "n1"]),
    ("network-create-macvlan", ["network", "create", "-d", "macvlan", "--subnet",
                                "10.9.0.0/24", "-o", "parent=eth0", "m1"]),
    ("network-create-opts", ["network", "create", "--ipv6", "--subnet", "fd00::/64",
                             "-o", "com.docker.network.bridge.name=eth0", "n2"]),
    ("network-connect", ["network", "connect", "--alias", "w", "--link", "db:d",
                         "--ip", "10.0.0.5", "n1", "web"]),
    ("network-disconnect", ["network", "disconnect", "-f", "n1", "web"]),
    ("ps", ["ps", "-a", "--filter", "label=team=ml", "--filter", "status=exited"]),
    ("events", ["events", "--since", "1h", "--until", "0s", "--filter", "type=container"]),
    ("container-prune", ["container", "prune", "-f", "--filter", "until=24h",
                         "--filter", "label=x"]),
    ("image-prune", ["image", "prune", "-f", "--filter", "until=1h"]),
    ("image-prune-all", ["image", "prune", "-a", "-f"]),
    ("system-df", ["system", "df"]),
    ("tag", ["tag", "busybox", "alice/bb:1"]),
    ("tag-other", ["tag", "alice/x", "team/pytorch:latest"]),
    ("rmi", ["rmi", "alice/bb:1", "ubuntu:22.04"]),
    ("commit", ["commit", "-c", "ENV A=1", "-c", "LABEL labgpu.user=bob", "web", "alice/snap:1"]),
    ("import", ["import", "-c", "CMD sh", "-", "alice/imp:1"]),
    ("import-url", ["import", "http://10.0.0.1/x.tar", "alice/imp"]),
    ("pull", ["pull", "--platform", "linux/amd64", "ubuntu:22.04"]),
    ("push", ["push", "alice/bb:1"]),
    ("exec", ["exec", "-u", "0", "--privileged", "-e", "A=1", "-w", "/", "web", "true"]),
    ("rm", ["rm", "-f", "-v", "web"]),
    ("logs", ["logs", "--since", "10m", "-t", "web"]),
    ("inspect", ["inspect", "--type", "container", "web"]),
    ("kill", ["kill", "-s", "HUP", "web"]),
    ("rename", ["rename", "web", "web2"]),
]


def seccomp_profile():
    return json.dumps({
        "defaultAction": "SCMP_ACT_ERRNO",
        "architectures": ["SCMP_ARCH_X86_64"],
        "syscalls": [
            {"names": ["read", "write", "exit", "exit_group", "futex"],
             "action": "SCMP_ACT_ALLOW"},
            {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 0, "value": 0, "op": "SCMP_CMP_EQ"}]},
        ],
    })


def capture_cli(tmp):
    docker = shutil.which("docker")
    if not docker:
        print("seed-corpus: no docker CLI on PATH; request seeds not captured", file=sys.stderr)
        return []
    sock = os.path.join(tmp, "docker.sock")
    server = Server(sock, FakeDockerd)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = dict(os.environ, DOCKER_HOST="unix://" + sock, DOCKER_CONFIG=os.path.join(tmp, "cfg"),
               DOCKER_BUILDKIT="0", DOCKER_CLI_HINTS="false")
    profile = os.path.join(tmp, "profile.json")
    with open(profile, "w") as f:
        f.write(seccomp_profile())
    ctx = os.path.join(tmp, "ctx")
    os.makedirs(os.path.join(ctx, "src"), exist_ok=True)
    with open(os.path.join(ctx, "Dockerfile"), "w") as f:
        f.write("FROM busybox\nCOPY src /src\nRUN echo hi\n")
    with open(os.path.join(ctx, "src", "main.py"), "w") as f:
        f.write("print('hi')\n")
    os.symlink("main.py", os.path.join(ctx, "src", "link.py"))
    image_tar = os.path.join(tmp, "image.tar")
    with open(image_tar, "wb") as f:
        f.write(docker_save(["alice/x:1"]))
    commands = list(COMMANDS) + [
        ("build", ["build", "-t", "alice/b:1", "--build-arg", "A=1", "--label", "k=v",
                   "--network", "host", "--shm-size", "64m", ctx]),
        ("build-plain", ["build", "-q", "-t", "alice/b", ctx]),
        ("load", ["load", "-i", image_tar]),
        ("cp", ["cp", os.path.join(ctx, "src"), "web:/tmp"]),
        ("cp-a", ["cp", "-a", os.path.join(ctx, "Dockerfile"), "web:/tmp/"]),
    ]
    out = []
    for name, args in commands:
        args = [a.replace("@PROFILE@", profile) for a in args]
        start = len(captured)
        stdin = docker_save(["alice/imp:1"]) if name == "import" else b""
        subprocess.run([docker] + args, env=env, input=stdin, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=60)
        out.extend((name, i, r) for i, r in enumerate(captured[start:]))
    server.shutdown()
    return out


def request_seeds(requests):
    for name, i, r in requests:
        suffix = f"-{i}" if i else ""
        line = "\n".join([r["method"], r["path"], r["query"]] + r["content_type"])
        write("proxy_query", f"{name}{suffix}.txt", line)
        body = r["body"]
        if not body:
            continue
        if body[:1] in (b"{", b"["):
            write("proxy_create", f"{name}{suffix}.json", body)
        else:
            write("proxy_archive", f"{name}{suffix}.tar", body)


# Request lines the docker CLI never sends, each one a refusal the proxy must keep.
QUERY_ATTACKS = {
    "path-encoded-slash": "POST\n/v1.41/containers%2Fcreate\n\napplication/json",
    "path-dotdot": "POST\n/v1.41/containers/x/../../plugins/pull\n",
    "path-double-slash": "POST\n/v1.41//containers/create\n",
    "old-api-start": "POST\n/v1.23/containers/x/start\n\napplication/json",
    "grpc": "POST\n/grpc\n",
    "swarm": "POST\n/v1.41/swarm/init\n\napplication/json",
    "form-body": "POST\n/v1.41/containers/prune\n\napplication/x-www-form-urlencoded",
    "multipart": "POST\n/v1.41/build\nt=alice%2Fx\nmultipart/form-data; boundary=x",
    "filters-twice": "GET\n/v1.41/containers/json\nfilters=%7B%7D&filters=%7B%7D",
    "filters-label-list": "GET\n/v1.41/containers/json\nfilters=%7B%22label%22%3A%5B%22x%3D1%22%5D%7D",
    "build-buildkit": "POST\n/v1.41/build\nremote=client-session&version=2&session=abc",
    "build-cgroupparent": "POST\n/v1.41/build\ncgroupparent=%2Fsystem.slice&t=alice%2Fx",
    "build-remote": "POST\n/v1.41/build\nremote=https%3A%2F%2Fgithub.com%2Fa%2Fb.git",
    "build-labels": "POST\n/v1.41/build\nlabels=%7B%22labgpu.user%22%3A%22bob%22%7D",
    "import-url": "POST\n/v1.41/images/create\nfromSrc=http%3A%2F%2F10.0.0.1%2Fx.tar&repo=alice%2Fx",
    "prune-dangling-false": "POST\n/v1.41/images/prune\nfilters=%7B%22dangling%22%3A%5B%22false%22%5D%7D",
    "archive-copyuidgid": "PUT\n/v1.41/containers/web/archive\npath=%2Ftmp&copyUIDGID=true",
    "archive-overwrite": "PUT\n/v1.41/containers/web/archive\npath=%2F&noOverwriteDirNonDir=false",
    "container-prune-until": "POST\n/v1.41/containers/prune\nfilters=%7B%22until%22%3A%5B%221h30m%22%5D%7D",
    "image-names": "POST\n/v1.41/images/localhost:5000/alice/x:1/tag\nrepo=index.docker.io%2Falice%2Fy&tag=v1",
}


# ------------------------------------------------------------------------------------------
# Archives

def tar_of(entries, fmt=tarfile.GNU_FORMAT):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as t:
        for info, data in entries:
            info.mtime = 1700000000
            t.addfile(info, io.BytesIO(data) if data is not None else None)
    # tarfile pads to 10 KiB records; the end marker (two zero blocks) is enough.
    body = buf.getvalue().rstrip(b"\0")
    return body + b"\0" * (-len(body) % 512 + 1024)


def entry(name, kind=tarfile.REGTYPE, data=b"", **kw):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    info.mode = kw.pop("mode", 0o644)
    for k, v in kw.items():
        setattr(info, k, v)
    return info, (data if kind == tarfile.REGTYPE else None)


def archive_seeds():
    hello = b"hello\n"
    write("proxy_archive", "files.tar", tar_of([
        entry("dir/", tarfile.DIRTYPE, mode=0o755),
        entry("dir/a.txt", data=hello),
        entry("dir/link", tarfile.SYMTYPE, linkname="a.txt"),
        entry("dir/hard", tarfile.LNKTYPE, linkname="dir/a.txt"),
        entry("dir/fifo", tarfile.FIFOTYPE),
    ]))
    write("proxy_archive", "dot-root.tar", tar_of([
        entry("./", tarfile.DIRTYPE, mode=0o755),
        entry("./x", data=hello, uid=0, gid=0, uname="root", gname="root"),
    ]))
    write("proxy_archive", "setuid-root.tar", tar_of([
        entry("sh", data=b"\x7fELF", mode=0o4755, uid=0, gid=0),
        entry("sgid-dir/", tarfile.DIRTYPE, mode=0o2775),
    ]))
    write("proxy_archive", "char-device.tar", tar_of([
        entry("mem", tarfile.CHRTYPE, devmajor=1, devminor=1),
    ]))
    write("proxy_archive", "block-device.tar", tar_of([
        entry("sda", tarfile.BLKTYPE, devmajor=8, devminor=0),
    ]))
    write("proxy_archive", "long-names.tar", tar_of([
        entry("d/" + "x" * 150 + "/", tarfile.DIRTYPE, mode=0o755),
        entry("d/" + "x" * 150 + "/" + "y" * 120, data=hello),
        entry("l", tarfile.SYMTYPE, linkname="t" * 200),
    ]))
    pax = tarfile.TarInfo("cap")
    pax.size = len(hello)
    pax.pax_headers = {"SCHILY.xattr.security.capability": "\x01\x00\x00\x02",
                       "SCHILY.xattr.user.x": "1", "mtime": "1700000000.5"}
    write("proxy_archive", "pax-xattrs.tar", tar_of([(pax, hello)], tarfile.PAX_FORMAT))
    write("proxy_archive", "ustar.tar", tar_of([entry("u.txt", data=hello)],
                                               tarfile.USTAR_FORMAT))
    write("proxy_archive", "dotdot.tar", tar_of([entry("../../etc/x", data=hello)]))
    write("proxy_archive", "absolute.tar", tar_of([entry("/etc/cron.d/x", data=hello)]))
    write("proxy_archive", "under-symlink.tar", tar_of([
        entry("l", tarfile.SYMTYPE, linkname="/etc"),
        entry("l/passwd", data=hello),
    ]))
    write("proxy_archive", "hardlink-outside.tar", tar_of([
        entry("h", tarfile.LNKTYPE, linkname="/etc/shadow"),
    ]))
    write("proxy_archive", "gzip.tar.gz",
          gzip.compress(tar_of([entry("z", data=hello)]), mtime=0))
    write("proxy_archive", "empty.tar", b"\0" * 1024)
    # GNU sparse (type S) written by hand: tarfile reads them but does not write them.
    sparse = bytearray(tar_of([entry("sparse", data=b"")]))
    sparse[156:157] = b"S"
    sparse[148:156] = b" " * 8
    sparse[148:156] = b"%06o\0 " % sum(sparse[:512])
    write("proxy_archive", "sparse-type.tar", bytes(sparse))
    for name, tags in [("load-own", ["alice/x:1", "localhost/alice/y:latest"]),
                       ("load-other", ["alice/x:1", "team/pytorch:latest"]),
                       ("load-untagged", None)]:
        write("proxy_archive", name + ".tar", docker_save(tags))
    write("proxy_archive", "load-legacy.tar", tar_of([
        entry("repositories", data=json.dumps({"ubuntu": {"22.04": "a" * 64}}).encode()),
    ]))
    index = {"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": "sha256:" + "b" * 64, "size": 1,
        "annotations": {"io.containerd.image.name": "docker.io/alice/oci:1",
                        "org.opencontainers.image.ref.name": "1"}}]}
    write("proxy_archive", "load-oci.tar", tar_of([
        entry("oci-layout", data=b'{"imageLayoutVersion":"1.0.0"}'),
        entry("index.json", data=json.dumps(index).encode()),
    ]))


def docker_save(tags):
    manifest = [{"Config": "c.json", "RepoTags": tags, "Layers": ["l/layer.tar"]}]
    layer = tar_of([entry("bin/", tarfile.DIRTYPE, mode=0o755),
                    entry("bin/hello", data=b"#!/bin/sh\necho hi\n", mode=0o755)])
    return tar_of([
        entry("l/", tarfile.DIRTYPE, mode=0o755),
        entry("l/layer.tar", data=layer),
        entry("c.json", data=b'{"architecture":"amd64","os":"linux","config":{}}'),
        entry("manifest.json", data=json.dumps(manifest).encode()),
    ])


# ------------------------------------------------------------------------------------------
# The runtime's inputs and policies

def runtime_seeds():
    for f in sorted(os.listdir(FIXTURES)):
        if not f.endswith(".json") or f == "config.v2.json":
            continue
        with open(os.path.join(FIXTURES, f), "rb") as src:
            data = src.read()
        write("runtime_spec", f, data)
        spec = json.loads(data)
        if f == "plain.json":
            write("runtime_spec", "seccomp-docker-default.json",
                  json.dumps(spec["linux"]["seccomp"]))
    write("runtime_spec", "seccomp-custom.json", seccomp_profile())
    write("runtime_spec", "seccomp-allow-all.json",
          json.dumps({"defaultAction": "SCMP_ACT_ALLOW"}))
    with open(os.path.join(FIXTURES, "argv.txt")) as f:
        for line in f:
            kind, _, rest = line.partition(": ")
            if kind == "create" or kind == "exec":
                name, _, args = rest.partition(" ")
                write("runtime_argv", f"{kind}-{name}", "\0".join(args.split()))
    calls = [["--root", "/run/docker/runtime-runc/moby", "--log", "/b/log.json",
              "--log-format", "json", "--systemd-cgroup", "start", "cid"],
             ["--root=/r", "kill", "--all", "cid", "9"],
             ["update", "--resources", "-", "cid"],
             ["features"], ["--version"], ["policy", "check"],
             ["exec", "--cap", "CAP_SYS_ADMIN", "-u", "0", "--process=/tmp/p.json", "cid"],
             ["create", "-b", "/b", "--", "cid"]]
    for i, args in enumerate(calls):
        write("runtime_argv", f"call-{i}", "\0".join(args))


def policy_seeds():
    with open(os.path.join(REPO, "config", "policy.toml"), "rb") as f:
        write("policy", "config-policy.toml", f.read())
    with open(os.path.join(REPO, "integration", "lib.sh")) as f:
        lib = f.read()
    text = lib.split("lg_policy_text() {\n    cat <<EOF\n", 1)[1].split("\nEOF\n", 1)[0]
    text = re.sub(r"\$\(lg_(uid|gid) \w+\)", "1001", text)
    text = re.sub(r"\$\(lg_home (\w+)\)", r"/home/\1", text)
    text = text.replace("$LG_TMP", "/tmp/labgpu-e2e").replace(
        "${LG_POLICY_UNLABELED:-deny}", "deny")
    write("policy", "integration.toml", text + "\n")
    write("policy", "integration-proxy.toml",
          text + '\n\n[proxy]\nstate_dir = "/tmp/labgpu-e2e/state"\n')
    write("policy", "full.toml", """version = 1
[runtime]
owner_label = "owner"
unlabeled = "no-gpu"
runc = "/usr/sbin/runc"
[gpus]
discovery = "nvml"
cdi_spec = "/etc/cdi/nvidia.yaml"
dev_root = "/dev"
[defaults]
bind_allow = ["/srv/datasets"]
devices = ["/dev/fuse"]
allow_host_network = true
seccomp_profiles = ["%s"]
mounted_volumes = ["nfs"]
writable_volumes = ["scratch"]
[users.a]
gpus = ["GPU-00000000-0000-0000-0000-000000000000", "1:2", "MIG-00000001-0000-0000-0000-000000000000"]
allow_privileged = true
capabilities = ["SYS_PTRACE"]
[proxy]
socket_group = "docker"
socket_mode = "0660"
image_prefix = "reg.lab/{user}/"
runtime = "labgpu"
""" % ("ab" * 32))
    # Group tables: members of ml and vision in the fuzz target's fixed account files.
    write("policy", "groups.toml", """version = 1
[proxy]
[groups.vision]
gpus = [1]
cpus = 2
[groups.ml]
gpus = [0, "1:2"]
memory = "8g"
run_as = "owner"
session = { image = "lab/base:1" }
[users.alice]
gpus = []
""")


def main():
    clear_seeds()
    with tempfile.TemporaryDirectory() as tmp:
        request_seeds(capture_cli(tmp))
    for name, line in QUERY_ATTACKS.items():
        write("proxy_query", f"attack-{name}.txt", line)
    archive_seeds()
    runtime_seeds()
    policy_seeds()
    for target in sorted(os.listdir(CORPUS)):
        n = len([f for f in os.listdir(os.path.join(CORPUS, target)) if f.startswith("seed-")])
        print(f"{target}: {n} seeds")


if __name__ == "__main__":
    main()
