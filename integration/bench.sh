#!/usr/bin/env bash
# What labgpu costs, measured against bare runc in the same run (issues 8 and 22). As root:
#
#   bash integration/bench.sh            # prints the table of goals; exits 0 whatever it shows
#   bash integration/bench.sh --check    # the same, exiting 1 when a goal is missed
#
# 1. Criterion (benches/rewrite.rs): labgpu's in-process share of a create, the atomic write
#    alone, and policy load at 10/100/1000 users.
# 2. benches/timings.rs: `runc create`+`delete -f` vs `labgpu create`+`delete -f` on the same
#    busybox bundle (fake GPUs, 8-user policy), interleaved; labgpu with runc = /bin/true
#    (10- and 1000-user policies, a CDI spec) against /bin/true and against the floor, a
#    static C program that only execs (built here with gcc -static); callgrind instruction
#    counts of one create and one passthrough (valgrind); `labgpu verify` over 10/50 running
#    containers and 1000 runc state fixtures; `docker run --rm` through a private dockerd
#    (lib.sh) with `--runtime runc` vs `--runtime labgpu`; `labgpu proxy` vs dockerd's own
#    socket (ps, inspect, create+start+rm, a 1 GiB docker cp, 200 clients over 4 users,
#    memory per idle connection). Every comparison interleaves its arms.
# 3. A table of the goals with pass/MISS.
#
# Knobs: LABGPU_BENCH_RUNS (create runs per arm, 60), LABGPU_BENCH_DOCKER_RUNS (60),
# LABGPU_BENCH_COUNTS (10,50), LABGPU_BENCH_FIXTURES (1000), LABGPU_BENCH_CP_MIB (1024),
# LABGPU_BENCH_SKIP_DOCKER=1 (no docker run, no proxy), LABGPU_BENCH_SKIP_PROXY=1,
# LABGPU_BENCH_ONLY=proxy (the proxy's part alone),
# LABGPU_BENCH_USERNS_LAYERS (1,10: `runc create` vs labgpu with userns = "owner" on an
# overlay2 layout of that many layers, as a test account with a subordinate range),
# LABGPU_BENCH_SKIP_USERNS=1, LABGPU_E2E_SKIP_BUILD=1, LABGPU_BENCH_DISK=1 (bundles on disk, not on a tmpfs like
# Docker's /run).
# Everything lives in /tmp/labgpu-bench.XXXX and is removed at the end, containers included.
set -euo pipefail

# shellcheck source=integration/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

RUNS="${LABGPU_BENCH_RUNS:-60}"
DOCKER_RUNS="${LABGPU_BENCH_DOCKER_RUNS:-60}"
COUNTS="${LABGPU_BENCH_COUNTS:-10,50}"
FIXTURES="${LABGPU_BENCH_FIXTURES:-1000}"
CP_MIB="${LABGPU_BENCH_CP_MIB:-1024}"
CHECK=()
for arg in "$@"; do
    case $arg in
    --check) CHECK=(--check 1) ;;
    *)
        echo "usage: bash integration/bench.sh [--check]" >&2
        exit 2
        ;;
    esac
done
# The proxy's benchmark users: uids with no passwd entry, named by the policy alone.
PROXY_UIDS=(30000 30001 30002 30003)

bench_teardown() {
    local rc=$? root id
    trap - EXIT INT TERM
    [[ -n $LG_TMP && -d $LG_TMP ]] || exit "$rc"
    lg_stop_own_proxy
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

# The proxy against dockerd: the runtime's policy gains four users known by uid only, the
# [proxy] table, and unlabeled = "no-gpu" (containers created straight on dockerd's socket
# then run, GPU-less, as the proxy's do for these users). dockerd's socket is opened to them
# for the run: the worker compares both sides from one process.
proxy_bench() {
    local k
    {
        sed 's/^unlabeled = .*/unlabeled = "no-gpu"/' "$LG_TMP/policy.toml"
        for k in "${!PROXY_UIDS[@]}"; do
            printf '\n[users.pb%s]\nuid = %s\ngid = %s\ngpus = []\n' "$k" "${PROXY_UIDS[$k]}" "${PROXY_UIDS[$k]}"
        done
        printf '\n[proxy]\nstate_dir = "%s"\n' "$LG_TMP/state"
    } >"$LG_TMP/policy.toml.new"
    mv "$LG_TMP/policy.toml.new" "$LG_TMP/policy.toml"
    LG_POLICY="$LG_TMP/policy.toml"
    lg_start_own_proxy
    chmod 666 "$LG_SOCK"
    timings proxy --direct "$LG_SOCK" --proxy "$LG_PSOCK" --proxy-pid "$LG_PROXY_PID" \
        --image "$LG_IMAGE" --uids "$(IFS=,; echo "${PROXY_UIDS[*]}")" --cp-mib "$CP_MIB"
    chmod 660 "$LG_SOCK"
    lg_stop_own_proxy
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
lg_check_toolchain
cd "$LG_REPO"
lg_build
lg_say "cargo bench --no-run"
cargo bench --quiet --no-run --bench rewrite --bench timings 2>/dev/null || lg_die "cargo bench --no-run failed"
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

ONLY="${LABGPU_BENCH_ONLY:-}"
if [[ -z $ONLY ]]; then
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

# The floor: the least a process that only execs runc costs (static, no dynamic loader).
FLOOR=()
printf '#include <unistd.h>\nint main(int c, char **v) { (void)c; execv("/bin/true", v); return 127; }\n' \
    >"$LG_TMP/floor.c"
if gcc -O2 -static -o "$LG_TMP/floor" "$LG_TMP/floor.c" 2>"$LG_TMP/floor.err"; then
    FLOOR=(--floor "$LG_TMP/floor")
else
    lg_say "gcc -static failed (apt-get install gcc libc6-dev): no floor arm"
fi
timings create --labgpu "$LG_BIN" --tmp "$BENCH_DIR" --runs "$RUNS" "${FLOOR[@]}"
if command -v valgrind >/dev/null; then
    timings callgrind --labgpu "$LG_BIN" --tmp "$BENCH_DIR" "${FLOOR[@]}"
else
    lg_say "valgrind not installed (apt-get install valgrind): no instruction counts"
fi
timings verify --labgpu "$LG_BIN" --tmp "$BENCH_DIR" --counts "$COUNTS" --fixtures "$FIXTURES"
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
fi

if [[ ${LABGPU_BENCH_SKIP_DOCKER:-0} != 1 ]]; then
    lg_make_fake_gpus "$LG_TMP/dev"
    timings policy --users 8 --dev "$LG_TMP/dev" --log "$LG_TMP/labgpu.log" \
        --out "$LG_TMP/policy.toml"
    # The owner label is read from the private dockerd's data root, pinned by the policy.
    sed -i "/^\[runtime\]/a docker_root = \"$LG_DATA_ROOT\"" "$LG_TMP/policy.toml"
    # labgpu registered by its own path, as the .deb does (no wrapper shell in the way);
    # the policy reaches it through the daemons' environment.
    lg_write_daemon_json labgpu "$LG_BIN"
    LG_DAEMON_ENV=("LABGPU_POLICY=$LG_TMP/policy.toml")
    lg_start_dockerd
    # No test accounts here: the image's passwd needs none.
    LG_TEST_USERS="" lg_make_image
    if [[ -z $ONLY ]]; then
        timings docker --runs "$DOCKER_RUNS" --image "$LG_IMAGE" --docker "$LG_DOCKER_CLI"
        grep -q 'create allowed' "$LG_TMP/labgpu.log" || lg_die "labgpu's log shows no create: was it in the path?"
    fi
    if [[ ${LABGPU_BENCH_SKIP_PROXY:-0} != 1 ]]; then
        proxy_bench
    fi
fi

echo
echo "load:    $(cut -d' ' -f1-3 /proc/loadavg) (1/5/15 min) at the end"
timings summary --criterion "$LG_REPO/target/criterion" "${CHECK[@]}"
