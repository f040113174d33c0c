#!/usr/bin/env bash
# GPU pools against real Docker: `--gpus N` (and the labgpu.gpus label) takes free GPUs of
# [pools.shared] at create, the pool-full refusal names who holds what, stop and rm give the
# GPU back, 20 concurrent creates never share one, a runtime killed with SIGKILL while it
# allocates leaves nothing held, and `labgpu reclaim` stops a container idle on its GPU.
# Who may open which GPU is asked of the kernel: root in each container (CAP_MKNOD, granted
# for this suite) makes a node per GPU minor and opens it; its own GPU gets as far as the
# absent driver (ENXIO), the others stop at the device cgroup (EPERM). Prints `N passed,
# N failed`; exits 1 if any failed.
#
#   bash integration/pools.sh                 (as root; see lib.sh for the knobs)
#   LABGPU_E2E_ONLY='basic concurrent' bash integration/pools.sh
# shellcheck disable=SC2016 # scripts for the container's shell
set -uo pipefail

# shellcheck source=integration/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

I="$LG_IMAGE"
RT="$LG_RUNTIME"
A=(--label labgpu.user=alice)
B=(--label labgpu.user=bob)
C=(--label labgpu.user=carol)
POOL_EXTRA="" # more [pools.shared] keys (the reclaim case)

# The test policy with no owned GPUs: GPUs 0-3 are [pools.shared]; alice may hold 4 of them,
# bob 2, carol 1. CAP_MKNOD and run_as = "image" for the probe.
eval "$(declare -f lg_policy_text | sed '1s/lg_policy_text/lg_policy_text_base/')"
lg_policy_text() {
    lg_policy_text_base | sed -e 's/^gpus = \[.*\]$/gpus = []/' \
        -e 's/^run_as = "owner"$/run_as = "image"/' |
        awk '{ print }
            $0 == "[users.alice]" { print "capabilities = [\"CAP_MKNOD\"]"; print "pools = { shared = 4 }" }
            $0 == "[users.bob]" { print "capabilities = [\"CAP_MKNOD\"]"; print "pools = { shared = 2 }" }
            $0 == "[users.carol]" { print "capabilities = [\"CAP_MKNOD\"]"; print "pools = { shared = 1 }" }'
    printf '\n[pools.shared]\ngpus = [0, 1, 2, 3]\n%s\n' "$POOL_EXTRA"
}

docker() { lg_docker "$@"; }

# The pool state of this run's policy (src/pools/state.rs: one directory per policy path).
state_dir() { printf '/run/labgpu/pools/%s' "$(printf '%s' "$LG_POLICY" | sha256sum | cut -c1-32)"; }
STATE=""
# held: "gpu owner" per line, sorted, from the state file.
held() {
    [[ -f $STATE ]] || return 0
    # Pretty-printed by serde, one key per line, "gpu" before "owner" in each entry.
    awk -F'"' '$2 == "gpu" { g = $4 } $2 == "owner" { print g, $4 }' "$STATE" | LC_ALL=C sort
}
held_count() { held | grep -c . || true; }

# Which of GPUs 0-3 the kernel lets this container open: "0 2" etc.
PROBE='out=""; for m in 0 1 2 3; do
    mknod /tmp/n c 195 $m 2>/dev/null || { echo "mknod failed"; exit 1; }
    e="$(cat /tmp/n 2>&1 >/dev/null)"; rm -f /tmp/n
    case $e in *"No such device or address"*) out="$out $m" ;; *"Operation not permitted"*) ;; *) echo "minor $m: $e"; exit 1 ;; esac
done; echo "${out# }"'
# opens CONTAINER: the probe run in it with docker exec (exec gets the container's GPUs).
opens() { docker exec "$1" sh -c "$PROBE" 2>&1; }

run_d() { docker run -d --runtime "$RT" "$@"; }

# Removes every container the cases made.
clean() {
    local ids
    ids="$(docker ps -aq --filter label=labgpu.user 2>/dev/null)"
    # shellcheck disable=SC2086 # one id per word
    [[ -z $ids ]] || docker rm -f $ids >/dev/null 2>&1
    return 0
}

# within SECONDS CMD...: CMD succeeds within SECONDS.
within() {
    local limit=$1 i
    shift
    for ((i = 0; i < limit * 5; i++)); do
        "$@" && return 0
        sleep 0.2
    done
    "$@"
}

# ---------------------------------------------------------------------------------------------
# Cases

case_basic() {
    clean
    expect_ok two-users-alice run_d --name pa1 "${A[@]}" --gpus 2 "$I" sleep 300 || return
    expect_ok two-users-bob run_d --name pb1 "${B[@]}" --gpus 2 "$I" sleep 300 || return
    local a b
    a="$(opens pa1)"
    b="$(opens pb1)"
    expect_eq two-users-alice-two-gpus 2 "$(wc -w <<<"$a")" "alice opens: $a"
    expect_eq two-users-bob-two-gpus 2 "$(wc -w <<<"$b")" "bob opens: $b"
    expect_eq two-users-all-different "0 1 2 3" "$(echo "$a $b" | tr ' ' '\n' | sort -n | tr '\n' ' ' | sed 's/ $//')"
    expect_eq two-users-state "$(printf '%s alice\n' $a; printf '%s bob\n' $b)" "$(held)"
    expect_refused pool-full-refused 'pool "shared" has no free GPU: 4 of 4 busy (alice 2, bob 2)' \
        "${C[@]}" --gpus 1 "$I" true
    # No request: no pool GPU, whatever is free.
    docker rm -f pb1 >/dev/null
    if expect_run_ok no-request-no-gpu "${C[@]}" "$I" sh -c "$PROBE"; then
        expect_eq no-request-no-gpu "" "$RUN_OUT"
    fi
    # rm gave bob's two back: carol takes one, by label this time.
    if expect_run_ok label-request "${C[@]}" --label labgpu.gpus=1 "$I" sh -c "$PROBE"; then
        expect_eq label-request-one-gpu 1 "$(wc -w <<<"$RUN_OUT")" "carol opens: $RUN_OUT"
    fi
    # --rm: the container is gone and so is its allocation.
    expect_eq run-rm-freed "$(printf '%s alice\n' $a)" "$(held)"
    expect_refused per-user-max 'carol may hold at most 1 GPU of pool "shared" ([users.carol] pools) and holds 0: 2 more were asked for' \
        "${C[@]}" --gpus 2 "$I" true
    expect_refused device-absent 'GPU 7 is not present on this host' "${C[@]}" --gpus device=7 "$I" true
    # A GPU of this host that is neither carol's nor pooled.
    [[ -e $LG_TMP/dev/nvidia4 ]] || mknod -m 666 "$LG_TMP/dev/nvidia4" c 195 4
    expect_refused device-not-in-pool "GPU 4 (--gpus device=) is not carol's nor in a pool carol may use" \
        "${C[@]}" --gpus device=4 "$I" true
    rm -f "$LG_TMP/dev/nvidia4"
    # A GPU that alice holds, by name.
    local first="${a%% *}"
    expect_refused device-busy "GPU $first of pool \"shared\" is busy (alice)" "${B[@]}" --gpus "device=$first" "$I" true
    clean
}

case_stop_start() {
    clean
    expect_ok stop-run run_d --name ps1 "${B[@]}" --gpus 2 "$I" sleep 300 || return
    expect_eq stop-held 2 "$(held_count)"
    docker stop -t 1 ps1 >/dev/null
    expect_true stop-frees "$(held)" within 10 test "$(held_count)" = 0
    expect_ok stop-others-get-it run_d --name ps2 "${A[@]}" --gpus 4 "$I" sleep 300 || return
    expect_refused stop-restart-refused-while-full 'pool "shared" has no free GPU: 4 of 4 busy (alice 4)' \
        "${B[@]}" --gpus 1 "$I" true
    docker rm -f ps2 >/dev/null
    # docker start runs create again: the stopped container gets GPUs anew.
    if expect_ok start-again docker start ps1; then
        expect_eq start-again-two-gpus 2 "$(wc -w <<<"$(opens ps1)")"
        expect_eq start-again-held "2" "$(held_count)"
    fi
    clean
    expect_true rm-frees-all "$(held)" within 10 test "$(held_count)" = 0
}

expect_true() { # NAME DETAIL CMD...
    local name="$1" detail="$2"
    shift 2
    if "$@"; then pass "$name"; else fail "$name" "$detail"; fi
}

case_concurrent() {
    clean
    local dir="$LG_TMP/conc" i pids=()
    rm -rf "$dir"
    mkdir -p "$dir"
    for ((i = 0; i < 20; i++)); do
        (
            docker run -d --runtime "$RT" --name "pc$i" "${A[@]}" --gpus 1 "$I" sleep 300 \
                >"$dir/$i.out" 2>"$dir/$i.err"
            echo $? >"$dir/$i.rc"
        ) &
        pids+=($!)
    done
    wait "${pids[@]}"
    local ok=() bad="" opened=() o
    for ((i = 0; i < 20; i++)); do
        if [[ $(cat "$dir/$i.rc") == 0 ]]; then
            ok+=("pc$i")
        elif ! grep -q -e 'pool "shared" has no free GPU' -e 'alice already holds 4 GPUs of pool "shared"' "$dir/$i.err"; then
            bad+="pc$i: $(cat "$dir/$i.err")"$'\n'
        fi
    done
    expect_eq concurrent-four-created 4 "${#ok[@]}" "$bad"
    [[ -z $bad ]] && pass concurrent-refusals-say-why || fail concurrent-refusals-say-why "$bad"
    for c in ${ok[@]+"${ok[@]}"}; do
        o="$(opens "$c")"
        opened+=("$o")
        [[ $(wc -w <<<"$o") == 1 ]] || bad+="$c opens '$o'"$'\n'
    done
    expect_eq concurrent-each-one-different "0 1 2 3" \
        "$(printf '%s\n' ${opened[@]+"${opened[@]}"} | sort -n | tr '\n' ' ' | sed 's/ $//')" "$bad"
    expect_eq concurrent-state "0 alice
1 alice
2 alice
3 alice" "$(held)"
    clean
}

# SIGKILL of the runtime while it waits for the pool's lock (it has allocated nothing yet):
# the create fails, nothing is held, the next create gets the GPUs.
case_kill9() {
    clean
    local id lock pid i
    id="$(docker create --runtime "$RT" --name pk1 "${A[@]}" --gpus 2 "$I" sleep 300)" || {
        fail kill9-create "$id"
        return
    }
    lock="$(state_dir)/lock"
    mkdir -p "$(state_dir)"
    exec 9>>"$lock"
    flock -x 9
    docker start pk1 >"$LG_TMP/kill9.out" 2>&1 &
    local start_pid=$!
    pid=""
    for ((i = 0; i < 100; i++)); do
        pid="$(ps -eo pid=,args= | awk -v id="$id" -v bin="$LG_BIN" '$2 == bin && $0 ~ / create / && index($0, id) { print $1; exit }')"
        [[ -n $pid ]] && break
        sleep 0.1
    done
    if [[ -z $pid ]]; then
        flock -u 9
        exec 9>&-
        fail kill9-found-runtime "no labgpu create for $id: $(ps -eo args= | grep -c labgpu)"
        wait "$start_pid"
        return
    fi
    kill -9 "$pid"
    flock -u 9
    exec 9>&-
    wait "$start_pid"
    expect_eq kill9-nothing-held "" "$(held)"
    expect_ok kill9-next-gets-gpus run_d --name pk2 "${A[@]}" --gpus 4 "$I" sleep 300 &&
        expect_eq kill9-next-all-four "0 1 2 3" "$(opens pk2)"
    clean
}

build_fake_nvml() {
    lg_build_fake_nvml
    set_load ""
}
# set_load LINES: the four fake GPUs at 0% plus LINES ("load G UTIL ...").
set_load() { lg_nvml_fixture "$1"; }
# gpu_of CONTAINER: the pool GPU the state file gives it.
gpu_of() {
    local id
    id="$(docker inspect -f '{{.Id}}' "$1")"
    awk -F'"' -v id="$id" '$2 == "gpu" { g = $4 } $2 == "container" && $4 == id { print g }' "$STATE"
}
reclaim() { "$LG_BIN" reclaim --policy "$LG_POLICY" --docker-host "$LG_SOCK" 2>&1; }

# labgpu reclaim stops a container that used its pool GPU for nothing (the fake NVML says
# 0% and no process) for idle_after; one whose GPU is busy stays.
case_reclaim() {
    clean
    POOL_EXTRA='idle_after = "6s"'
    lg_write_policy
    set_load ""
    expect_ok reclaim-run-idle run_d --name pr1 "${B[@]}" --gpus 1 "$I" sleep 300 || return
    expect_ok reclaim-run-busy run_d --name pr2 "${C[@]}" --gpus 1 "$I" sleep 300 || return
    local busy out
    busy="$(gpu_of pr2)"
    set_load "load $busy 50 1000 100000"
    out="$(reclaim)"
    expect_eq reclaim-first-look-stops-nothing "" "$out"
    sleep 7
    out="$(reclaim)"
    expect_true reclaim-says-why "$out" grep -q "^stopped container .* (bob), GPU .* of pool \"shared\": its pool GPUs were idle for" <<<"$out"
    expect_eq reclaim-idle-stopped exited "$(docker inspect -f '{{.State.Status}}' pr1)"
    expect_eq reclaim-busy-kept running "$(docker inspect -f '{{.State.Status}}' pr2)"
    expect_true reclaim-freed "$(held)" within 10 test "$(held)" = "$busy carol"
    expect_true reclaim-logged "$(tail -n 5 "$LG_TMP/labgpu.log")" grep -q "reclaiming pool GPUs" "$LG_TMP/labgpu.log"
    if expect_ok reclaim-metric "$LG_BIN" metrics --policy "$LG_POLICY" --root "$LG_EXEC_ROOT/runtime-runc/moby"; then
        expect_true reclaim-metric-idle "$(grep pool <<<"$OUT")" grep -q 'labgpu_pool_reclaims_total{reason="idle"} 1' <<<"$OUT"
        expect_true reclaim-metric-busy "$(grep pool <<<"$OUT")" grep -q 'labgpu_pool_gpus{pool="shared",state="busy"} 1' <<<"$OUT"
    fi
    POOL_EXTRA=""
    lg_write_policy
    clean
}

# labgpu gpus: pool GPUs free or busy, with the holder.
case_views() {
    clean
    expect_ok views-run run_d --name pv1 "${B[@]}" --gpus 1 "$I" sleep 300 || return
    local g
    g="$(held | awk '{ print $1 }')"
    expect_ok views-gpus "$LG_BIN" gpus --policy "$LG_POLICY" &&
        expect_true views-gpus-holder "$OUT" grep -q "pool shared: busy (bob" <<<"$OUT"
    expect_true views-gpus-free "$OUT" grep -q "pool shared: free" <<<"$OUT"
    clean
    [[ -n $g ]] || fail views-held "nothing held"
}

# ---------------------------------------------------------------------------------------------

ALL_CASES="basic stop_start concurrent kill9 views reclaim"
START=$SECONDS
setup_all
build_fake_nvml
LG_POLICY_GPUS_EXTRA="nvml_lib = \"$NVML_DIR/libnvidia-ml.so.1\""
lg_write_policy
STATE="$(state_dir)/state.json"
trap 'clean; rm -rf "$(state_dir)"; teardown_all' EXIT
lg_say "suite starts ($((SECONDS - START))s setup); pool state $(state_dir)"
for c in ${LABGPU_E2E_ONLY:-$ALL_CASES}; do
    printf -- '--- %s\n' "$c"
    "case_$c"
done
if ((LG_FAILED)); then
    printf 'failed: %s\n' "${LG_FAILURES[@]}"
    tail -n 15 "$LG_TMP/labgpu.log" 2>/dev/null | sed 's/^/     | runtime: /'
fi
lg_say "took $((SECONDS - START))s"
print_summary
((LG_FAILED == 0))
