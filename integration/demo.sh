#!/usr/bin/env bash
# A short transcript of labgpu at work: a private dockerd with four fake GPUs, alice owning
# GPUs 0 and 1, bob owning GPU 2. Builds labgpu, sets everything up, shows, tears down.
#
#   bash integration/demo.sh        (as root)
set -euo pipefail

# shellcheck source=integration/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

docker() { lg_docker "$@"; }

say() { printf '\n# %s\n' "$*"; }

# show 'COMMAND': echo it as typed, then run it (through docker() above), output as is.
show() {
    printf '$ %s\n' "$1"
    local rc=0
    eval "$1" 2>&1 || rc=$?
    ((rc == 0)) || printf '(exit status %d)\n' "$rc"
}

setup_all
IMG=labgpu-test
RUN="docker run --rm --runtime labgpu"

cat <<EOF

==========================================================================================
 labgpu demo: docker 20.10 on this host, four fake GPUs (/dev/nvidia0-3 under
 $LG_TMP/dev), policy $LG_POLICY:
   alice: GPUs 0, 1; runs as herself; $(lg_home alice) at /workspace
   bob:   GPU 2
   every container: 11 capabilities at most, no-new-privileges, no --privileged
==========================================================================================
EOF

say "alice gets her two GPUs and the control nodes, nothing else"
show "$RUN --label labgpu.user=alice $IMG sh -c 'ls /dev/nvidia*'"

say "they open as far as the (absent) driver: ENXIO, not 'Operation not permitted'"
show "$RUN --label labgpu.user=alice $IMG cat /dev/nvidia0"

say "she runs as her own uid, with capabilities cut to the policy's list"
show "$RUN --label labgpu.user=alice $IMG sh -c 'id; grep Cap /proc/self/status'"

say "her home and data directory are mounted for her"
show "$RUN --label labgpu.user=alice $IMG grep workspace /proc/mounts"

say "bob sees only GPU 2"
show "$RUN --label labgpu.user=bob $IMG sh -c 'ls /dev/nvidia*'"

say "asking for another GPU by hand: the container runs, the device is not there"
show "$RUN --label labgpu.user=alice --device $LG_TMP/dev/nvidia2:/dev/nvidia2 $IMG sh -c 'ls /dev/nvidia*'"

say "--privileged is refused, with labgpu's reason in docker's error"
show "$RUN --label labgpu.user=alice --privileged $IMG true"

say "labgpu verify audits what runs, from runc's state, /proc and the devices cgroup:"
say "alice's and bob's containers are clean; one started with --runtime runc and bob's GPU is not"
docker run -d --name demo-alice --runtime labgpu --label labgpu.user=alice $IMG sleep 600 >/dev/null
docker run -d --name demo-bob --runtime labgpu --label labgpu.user=bob $IMG sleep 600 >/dev/null
docker run -d --name demo-bypass --runtime runc --device "$LG_TMP/dev/nvidia2:/dev/nvidia2" $IMG sleep 600 >/dev/null
show "$LG_BIN verify --policy $LG_POLICY --root $LG_EXEC_ROOT/runtime-runc/moby"
docker rm -f demo-alice demo-bob demo-bypass >/dev/null

say "labgpu's decision log"
show "tail -n 3 $LG_TMP/labgpu.log"
echo
