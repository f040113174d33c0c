#!/usr/bin/env python3
"""Holds connections to a unix socket open with a half-sent request, as a flood would.

    flood.py SOCKET COUNT HOLD_SECONDS

Prints "opened N refused M" once all attempts are made (a connection the server answers with
429 and closes counts as refused), then holds the rest open for HOLD_SECONDS and prints
"still-open K" (how many the server had not closed by then)."""
import socket
import sys
import time

path, count, hold = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
# Raise the soft fd limit to the hard one. python3-minimal (the VM image) has no `resource`
# module; there the caller's limit must do (prlimit in the suite, or the default).
try:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
except ImportError:
    pass
conns, refused = [], 0
for _ in range(count):
    try:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    except OSError:
        # Out of descriptors on this side: as many as this process can hold.
        break
    try:
        s.connect(path)
        s.sendall(b"GET /v1.41/containers/json HTTP/1.1\r\nHost: docker\r\n")
    except OSError:
        refused += 1
        s.close()
        continue
    conns.append(s)
time.sleep(0.5)
alive = []
for s in conns:
    s.setblocking(False)
    try:
        data = s.recv(4096)
        if not data or b"429" in data:
            refused += 1
            s.close()
            continue
    except BlockingIOError:
        pass
    except OSError:
        refused += 1
        continue
    alive.append(s)
print(f"opened {len(alive)} refused {refused}", flush=True)
time.sleep(hold)
still = 0
for s in alive:
    # Open means nothing came: no answer (a timeout's or a refusal's), no end of stream.
    try:
        s.recv(4096)
    except BlockingIOError:
        still += 1
    except OSError:
        pass
print(f"still-open {still}", flush=True)
