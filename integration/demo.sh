#!/usr/bin/env bash
# A short transcript of labgpu at work: a private dockerd with four fake GPUs, alice owning
# GPUs 0 and 1, bob owning GPU 2. Builds labgpu, sets everything up, shows what is
# neutralised and what is refused, audits, tears down. Nothing touches the machine's own
# Docker: every `docker` line talks to the private dockerd's socket, and says so (-H).
#
#   bash integration/demo.sh        (as root)
set -euo pipefail

# shellcheck source=integration/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

docker() { lg_docker "$@"; }

# say LINE...: a comment block, one "# " line per argument.
say() {
    echo
    printf '# %s\n' "$@"
}

# show 'COMMAND': echo it as typed, then run it (through docker() above), output as is.
show() {
    printf '$ %s\n' "$1"
    local rc=0
    eval "$1" 2>&1 || rc=$?
    ((rc == 0)) || printf '(exit status %d)\n' "$rc"
}

lg_check_toolchain
if [[ ! -x $LG_BIN ]]; then
    lg_say "first build: cargo build --release compiles labgpu and the ~130 crates it uses;"
    lg_say "roughly 2 to 5 minutes on 2 cores, and it prints nothing until it is done"
    lg_say "(later runs rebuild in seconds)"
fi
setup_all
IMG=labgpu-test
# The private dockerd's socket on every line: copied into a shell, a line cannot reach the
# machine's own Docker (and fails once the demo has torn its dockerd down).
D="docker -H unix://$LG_SOCK"
RUN="$D run --rm --runtime labgpu"
A="--label labgpu.user=alice"
B="--label labgpu.user=bob"
version="$(docker version -f '{{.Server.Version}}' 2>/dev/null || echo unknown)"

cat <<EOF

==========================================================================================
 labgpu demo: a private dockerd $version (its socket: $LG_SOCK; the
 machine's own Docker is not used), four fake GPUs (/dev/nvidia0-3 under $LG_TMP/dev),
 policy $LG_POLICY:
   alice: GPUs 0, 1; runs as herself; $(lg_home alice) at /workspace
   bob:   GPU 2
   every container: 11 capabilities at most, no-new-privileges, no --privileged
 Owners come from the labgpu.user label here; on a server users go through labgpu proxy,
 which sets it (a label alone is forgeable).
==========================================================================================
EOF

say "alice gets her two GPUs and the control nodes, nothing else"
show "$RUN $A $IMG sh -c 'ls /dev/nvidia*'"

say "they open as far as the (absent) driver: ENXIO, not 'Operation not permitted'"
show "$RUN $A $IMG cat /dev/nvidia0"

say "she runs as her own uid, with capabilities cut to the policy's list"
show "$RUN $A $IMG sh -c 'id; grep Cap /proc/self/status'"

say "her home and data directory are mounted for her"
show "$RUN $A $IMG grep workspace /proc/mounts"

say "bob sees only GPU 2"
show "$RUN $B $IMG sh -c 'ls /dev/nvidia*'"

say "NEUTRALISED: alice asking for more GPUs runs, with her GPUs only" "... bob's GPU by device node"
show "$RUN $A --device $LG_TMP/dev/nvidia2:/dev/nvidia2 $IMG sh -c 'ls /dev/nvidia*'"
say "... every GPU, the NVIDIA way (labgpu drops the toolkit's hook and the variable)"
show "$RUN $A --gpus all $IMG sh -c 'ls /dev/nvidia*; echo NVIDIA_VISIBLE_DEVICES=\$NVIDIA_VISIBLE_DEVICES'"
show "$RUN $A -e NVIDIA_VISIBLE_DEVICES=all $IMG sh -c 'ls /dev/nvidia*; echo NVIDIA_VISIBLE_DEVICES=\$NVIDIA_VISIBLE_DEVICES'"

say "REFUSED: what would reach another user's data or the host; docker prints labgpu's reason" \
    "... bob binding alice's home"
show "$RUN $B -v $(lg_home alice):/alice $IMG ls /alice"
say "... bob asking for --privileged"
show "$RUN $B --privileged $IMG true"

say "labgpu verify audits what runs, from runc's state, /proc and the devices cgroup." \
    "alice's and bob's containers are clean. A third one skips labgpu (--runtime runc) and" \
    "takes bob's GPU; the proxy refuses --runtime for users, but a docker-group member can:"
docker run -d --name demo-alice --runtime labgpu --label labgpu.user=alice $IMG sleep 600 >/dev/null
docker run -d --name demo-bob --runtime labgpu --label labgpu.user=bob $IMG sleep 600 >/dev/null
show "$D run -d --name demo-bypass --runtime runc --device $LG_TMP/dev/nvidia2:/dev/nvidia2 $IMG sleep 600 | cut -c1-12"
say "verify finds it and exits 1 (a finding): that is the bypass it is there to catch"
show "$LG_BIN verify --policy $LG_POLICY --root $LG_EXEC_ROOT/runtime-runc/moby"
docker rm -f demo-alice demo-bob demo-bypass >/dev/null

say "labgpu's decision log (one line per container it allowed or refused)"
show "tail -n 3 $LG_TMP/labgpu.log"
echo
