#!/usr/bin/env bash
# What labgpu costs, measured against bare runc in the same run (issue 8). As root:
#
#   bash integration/bench.sh
#
# 1. Criterion (benches/rewrite.rs): labgpu's in-process share of a create, the atomic write
#    alone, and policy load at 10/100/1000 users.
# 2. benches/timings.rs: `runc create`+`delete -f` vs `labgpu create`+`delete -f` on the same
#    busybox bundle (fake GPUs, 8-user policy), interleaved; `labgpu verify` over 10/50/200
#    running containers; `runc create` vs `labgpu create` with userns = "owner" on an
#    overlay2 layout of 1 and 10 layers (a test account with a subordinate range is made for
#    it); `docker run --rm` through a private dockerd (lib.sh) with `--runtime runc` vs
#    `--runtime labgpu`, interleaved.
# 3. A table of the targets with pass/MISS.
#
# Knobs: LABGPU_BENCH_RUNS (create runs per arm, 100), LABGPU_BENCH_DOCKER_RUNS (100),
# LABGPU_BENCH_COUNTS (10,50,200), LABGPU_BENCH_SKIP_DOCKER=1, LABGPU_E2E_SKIP_BUILD=1,
# LABGPU_BENCH_DISK=1 (bundles on disk, not on a tmpfs like Docker's /run),
# LABGPU_BENCH_USERNS_LAYERS (1,10), LABGPU_BENCH_SKIP_USERNS=1.
# Everything lives in /tmp/labgpu-bench.XXXX and is removed at the end, containers included.
set -euo pipefail

# shellcheck source=integration/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

RUNS="${LABGPU_BENCH_RUNS:-100}"
DOCKER_RUNS="${LABGPU_BENCH_DOCKER_RUNS:-100}"
COUNTS="${LABGPU_BENCH_COUNTS:-10,50,200}"

bench_teardown() {
    local rc=$? root id
    trap - EXIT INT TERM
    [[ -n $LG_TMP && -d $LG_TMP ]] || exit "$rc"
    lg_stop_dockerd
    lg_remove_bench_user
    # timings.rs deletes its containers itself; this is for a run killed midway.
    for root in "$LG_TMP"/*/runc-root "$LG_TMP"/run/*/runc-root; do
        [[ -d $root ]] || continue
        for id in $(runc --root "$root" list -q 2>/dev/null); do
            runc --root "$root" delete -f "$id" >/dev/null 2>&1 || true
        done
    done
    lg_unmount_all
    if awk -v t="$LG_TMP" 'index($2, t) == 1 { found = 1 } END { exit !found }' /proc/mounts; then
        lg_say "warning: mounts remain under $LG_TMP; not removing it"
    else
        rm -rf "$LG_TMP"
    fi
    exit "$rc"
}

# The owner of the userns benchmark: a host account of this run with a subordinate range.
BENCH_USER=""
lg_remove_bench_user() {
    [[ -n $BENCH_USER ]] || return 0
    [[ $(getent passwd "$BENCH_USER" | cut -d: -f5) == "$(lg_user_mark "$LG_TMP")" ]] &&
        userdel -r "$BENCH_USER" >/dev/null 2>&1
    BENCH_USER=""
}

lg_require_root
trap bench_teardown EXIT
trap 'exit 130' INT TERM
lg_install_packages
lg_find_cargo || lg_die "cargo not found (install Rust >= 1.85 with rustup)"
cd "$LG_REPO"
lg_build
lg_say "cargo bench --no-run"
cargo bench --quiet --no-run 2>/dev/null || lg_die "cargo bench --no-run failed"
lg_mktmp /tmp/labgpu-bench
RESULTS="$LG_TMP/results"
# Bundles and runc state where Docker keeps them: under /run, a tmpfs on systemd hosts (fsync
# of config.json is free there, and costs 0.3 ms or more on a disk). LABGPU_BENCH_DISK=1 keeps
# them on $LG_TMP's filesystem instead.
BENCH_DIR="$LG_TMP"
if [[ ${LABGPU_BENCH_DISK:-0} != 1 ]]; then
    BENCH_DIR="$LG_TMP/run"
    mkdir -p "$BENCH_DIR"
    mount -t tmpfs -o size=1g,mode=0711 labgpu-bench "$BENCH_DIR" || lg_die "mount tmpfs on $BENCH_DIR failed"
fi
export LABGPU_BENCH_TMP="$BENCH_DIR"
timings() { cargo bench --quiet --bench timings -- "$@" --results "$RESULTS"; }

echo "== machine"
echo "date:    $(date -u +%Y-%m-%dT%H:%M:%SZ)"
echo "cpus:    $(nproc) x $(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)"
echo "kernel:  $(uname -sr)"
echo "runc:    $(runc --version | head -1)"
echo "docker:  $(dockerd --version)"
echo "load:    $(cut -d' ' -f1-3 /proc/loadavg) (1/5/15 min) at start"
echo "bundles: $BENCH_DIR ($(stat -f -c %T "$BENCH_DIR"))"

echo
echo "== criterion: labgpu in-process (benches/rewrite.rs); full output in target/bench-criterion.log"
# Stale estimates must not reach the table.
rm -rf target/criterion/create_prepare_8_users target/criterion/spec_write_atomic \
    target/criterion/policy_load
cargo bench --quiet --bench rewrite -- --warm-up-time 1 --measurement-time 3 \
    >target/bench-criterion.log 2>&1 || {
    tail -n 30 target/bench-criterion.log >&2
    lg_die "cargo bench --bench rewrite failed"
}
grep -E 'time:|skipped' target/bench-criterion.log

timings create --labgpu "$LG_BIN" --tmp "$BENCH_DIR" --runs "$RUNS"
timings verify --labgpu "$LG_BIN" --tmp "$BENCH_DIR" --counts "$COUNTS"
if [[ ${LABGPU_BENCH_SKIP_USERNS:-0} != 1 ]]; then
    # Layers on disk as Docker keeps them ($LG_TMP, not the tmpfs: tmpfs layers would flatter).
    BENCH_USER="lgt-$LG_RUN_ID-bench"
    lg_useradd "$BENCH_USER" || lg_die "useradd $BENCH_USER failed"
    lg_ensure_subids "$BENCH_USER"
    mkdir -p "$LG_TMP/layers"
    timings userns --labgpu "$LG_BIN" --tmp "$LG_TMP/layers" --runs "$RUNS" \
        --layers "${LABGPU_BENCH_USERNS_LAYERS:-1,10}" --owner-uid "$(id -u "$BENCH_USER")"
    lg_remove_bench_user
fi

if [[ ${LABGPU_BENCH_SKIP_DOCKER:-0} != 1 ]]; then
    lg_make_fake_gpus "$LG_TMP/dev"
    timings policy --users 8 --dev "$LG_TMP/dev" --log "$LG_TMP/labgpu.log" \
        --out "$LG_TMP/policy.toml"
    # labgpu registered by its own path, as the .deb does (no wrapper shell in the way);
    # the policy reaches it through the daemons' environment.
    lg_write_daemon_json labgpu "$LG_BIN"
    LG_DAEMON_ENV=("LABGPU_POLICY=$LG_TMP/policy.toml")
    lg_start_dockerd
    lg_make_image
    timings docker --runs "$DOCKER_RUNS" --image "$LG_IMAGE" --docker "$LG_DOCKER_CLI"
    grep -q 'create allowed' "$LG_TMP/labgpu.log" || lg_die "labgpu's log shows no create: was it in the path?"
fi

echo
echo "load:    $(cut -d' ' -f1-3 /proc/loadavg) (1/5/15 min) at the end"
timings summary --criterion "$LG_REPO/target/criterion"
