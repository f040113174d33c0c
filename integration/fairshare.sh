#!/usr/bin/env bash
# Fair share against real Docker and real cgroups: per-user ceilings over all of a user's
# containers (one parent cgroup per user), shm_size, docker update, and host port ranges,
# through the labgpu proxy as the host users alice and bob. Pressure is real (memory held by
# dd, a burst of forks, busy loops) and is read back from the cgroups' own counters, never
# from wall-clock timings. Prints `N passed, N failed`; exits 1 if any failed. With
# LABGPU_E2E_SYSTEM_DOCKER=1 (the VM lane: systemd driver, cgroup v2), the system's dockerd
# and labgpu-proxy.service.
#
#   bash integration/fairshare.sh                 (as root; see lib.sh for the knobs)
#   LABGPU_E2E_ONLY='memory pids' bash integration/fairshare.sh
# shellcheck disable=SC2016,SC2012,SC2119 # scripts for the container's sh; a listing for a message; no args
set -uo pipefail

# shellcheck source=integration/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

I="$LG_IMAGE"
LG_POLICY_PROXY=1
LG_POLICY_UNLABELED=no-gpu
PSOCK=""
CGN="" # [runtime] user_cgroups: this run's own, so runs never share a parent
ALICE_MEM=96m
ALICE_MEM_BYTES=$((96 << 20))

# The test policy plus the fair-share keys.
eval "$(declare -f lg_policy_text | sed '1s/lg_policy_text/lg_policy_text_base/')"
lg_policy_text() {
    lg_policy_text_base | awk -v cgn="$CGN" -v amem="$ALICE_MEM" '
        { print }
        $0 == "[runtime]" { print "user_cgroups = \"" cgn "\"" }
        $0 == "[defaults]" { print "shm_size = \"32m\"" }
        $0 == "[users.alice]" {
            print "memory = \"" amem "\""; print "pids = 48"; print "cpus = 0.5"
            print "ports = [\"20000-20009\"]" }
        $0 == "[users.bob]" { print "memory = \"256m\""; print "cpus = 0.5"; print "pids = 100"; print "ports = [\"20010-20019\"]" }'
}

as() {
    local u="$1"
    shift
    timeout "$LG_TIMEOUT" runuser -u "$(lg_user "$u")" -- env -i PATH="$LG_SYS_PATH" HOME="$(lg_home "$u")" \
        LANG=C.UTF-8 DOCKER_HOST="unix://$PSOCK" DOCKER_CONFIG="$LG_TMP/cli-$u" "$@"
}
dk() {
    local u="$1"
    shift
    as "$u" "$LG_DOCKER_CLI" "$@"
}
real() { lg_docker "$@"; }

expect_ok() { # NAME CMD...: output in OUT
    local name="$1" rc=0
    shift
    OUT="$("$@" 2>&1)" || rc=$?
    if [[ $rc -ne 0 ]]; then
        fail "$name" "exit $rc: $OUT"
        return 1
    fi
}
expect_true() { # NAME DETAIL CMD...
    local name="$1" detail="$2"
    shift 2
    if "$@"; then pass "$name"; else fail "$name" "$detail"; fi
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
# The cgroups, whichever the driver and version

V2=0
[[ -e /sys/fs/cgroup/cgroup.controllers ]] && V2=1
DRIVER=""

# pdir CONTROLLER USER: the user's parent cgroup directory for that controller.
pdir() {
    local rel
    if [[ $DRIVER == systemd ]]; then
        rel="$CGN.slice/$CGN-$2.slice"
    else
        rel="$CGN/$2"
    fi
    if ((V2)); then echo "/sys/fs/cgroup/$rel"; else echo "/sys/fs/cgroup/$1/$rel"; fi
}
# cdir CONTROLLER CONTAINER: the container's cgroup directory, from its init's /proc entry.
cdir() {
    local pid path
    pid="$(real inspect -f '{{.State.Pid}}' "$2")"
    if ((V2)); then
        path="$(sed -n 's/^0:://p' "/proc/$pid/cgroup")"
        echo "/sys/fs/cgroup$path"
    else
        path="$(awk -F: -v c="$1" '{ n = split($2, a, ","); for (i = 1; i <= n; i++) if (a[i] == c) print $3 }' "/proc/$pid/cgroup")"
        echo "/sys/fs/cgroup/$1$path"
    fi
}
mem_limit() { if ((V2)); then cat "$1/memory.max"; else cat "$1/memory.limit_in_bytes"; fi; }
mem_usage() { if ((V2)); then cat "$1/memory.current"; else cat "$1/memory.usage_in_bytes"; fi; }
mem_peak() { if ((V2)); then cat "$1/memory.peak"; else cat "$1/memory.max_usage_in_bytes"; fi; }
oom_kills() {
    if ((V2)); then awk '$1 == "oom_kill" { print $2 }' "$1/memory.events"; else
        awk '$1 == "oom_kill" { print $2 }' "$1/memory.oom_control"
    fi
}
pids_max_hits() { awk '$1 == "max" { n = $2 } END { print n + 0 }' "$1/pids.events"; }
burst_stopped() { (($(pids_max_hits "$1") + $(pids_max_hits "$2") >= 1)); }
usage_above() { [[ $(mem_usage "$1") -gt $2 ]]; }
limit_is() { [[ $(mem_limit "$1") == "$2" ]]; }
# cpu_ns DIR: CPU time used by the cgroup and everything under it, in ns.
cpu_ns() {
    if ((V2)); then awk '$1 == "usage_usec" { print $2 * 1000 }' "$1/cpu.stat"; else cat "$1/cpuacct.usage"; fi
}
cpu_max() {
    if ((V2)); then cat "$1/cpu.max"; else echo "$(cat "$1/cpu.cfs_quota_us") $(cat "$1/cpu.cfs_period_us")"; fi
}

# Removes what the run left of its parents (normally the proxy has, once they are empty).
remove_parents() {
    [[ -n $CGN ]] || return 0
    if [[ $DRIVER == systemd ]]; then
        systemctl stop "$CGN.slice" >/dev/null 2>&1 || true
    fi
    local d
    for d in /sys/fs/cgroup/"$CGN" /sys/fs/cgroup/*/"$CGN"; do
        [[ -d $d ]] && find "$d" -depth -type d -exec rmdir {} + 2>/dev/null
    done
    return 0
}

fs_teardown() {
    local rc=$? ids
    ids="$(real ps -aq --filter label=labgpu.user 2>/dev/null)"
    # shellcheck disable=SC2086 # one id per word
    [[ -z $ids ]] || real rm -f $ids >/dev/null 2>&1
    [[ $LG_SYSTEM_DOCKER == 1 ]] || lg_stop_own_proxy
    remove_parents
    (exit "$rc")
    teardown_all
}

# ---------------------------------------------------------------------------------------------
# Cases

case_policy() {
    local bad="$LG_TMP/overlap.toml"
    lg_policy_text | sed 's/"20010-20019"/"20005-20019"/' >"$bad"
    expect_fail policy-check-overlapping-ports "[users.bob] ports 20005-20019 overlaps [users.alice] ports 20000-20009" \
        "$LG_BIN" policy check "$bad"
}

case_placement() {
    expect_ok placement-run dk alice run -d --name fa1 -m 1g --pids-limit 1000 "$I" sleep 300 || return
    local c p
    c="$(cdir memory fa1)"
    p="$(pdir memory alice)"
    expect_true placement-under-alice "container cgroup $c is not under $p" test "${c%/*}" = "$p"
    expect_eq placement-parent-memory "$ALICE_MEM_BYTES" "$(mem_limit "$p")"
    expect_eq placement-parent-pids 48 "$(cat "$(pdir pids alice)/pids.max")"
    expect_eq placement-parent-cpu "50000 100000" "$(cpu_max "$(pdir cpu alice)")"
    expect_eq placement-own-memory-cut "$ALICE_MEM_BYTES" "$(mem_limit "$c")"
    expect_eq placement-own-pids-cut 48 "$(cat "$(cdir pids fa1)/pids.max")"
    # labgpu verify reads the placement back from /proc (its fair-share check).
    local in_ns=() out id
    [[ -n ${LG_NETNS_PID:-} ]] && in_ns=(nsenter "--net=/proc/$LG_NETNS_PID/ns/net" --)
    out="$(${in_ns[@]+"${in_ns[@]}"} "$LG_BIN" verify --policy "$LG_POLICY" --root "$LG_EXEC_ROOT/runtime-runc/moby" 2>&1)"
    id="$(real inspect -f '{{.Id}}' fa1)"
    expect_true placement-verify-clean "$out" \
        sh -c "printf '%s\n' \"\$1\" | grep '^${id:0:12}' | grep -qv 'parent cgroup'" sh "$out"
    # carol has no ceiling: her containers stay where Docker puts them.
    expect_ok placement-carol dk carol run -d --name fc1 "$I" sleep 300 &&
        expect_true placement-carol-not-moved "$(cdir memory fc1)" \
            sh -c "! echo '$(cdir memory fc1)' | grep -q '$CGN'"
    real rm -f fa1 fc1 >/dev/null
}

# Two of alice's containers each write 60m to a tmpfs (memory no reclaim can take back,
# with no swap) against her 96m: the second gets less than its 60m (the kernel refuses or
# OOM-kills in her parent), whose peak never passes 96m; bob does the same under his 256m.
FILL60='if dd if=/dev/zero of=/t/x bs=1M count=60 2>/tmp/e && grep -q "^60+0 records out" /tmp/e; then echo full; else echo short; fi'
case_memory() {
    local u
    for u in alice bob; do
        dk "$u" run -d --name "fm-$u-1" --tmpfs /t:size=100m "$I" sh -c "$FILL60; exec sleep 300" >/dev/null
    done
    for u in alice bob; do
        within 20 usage_above "$(pdir memory "$u")" $((55 << 20)) ||
            fail "memory-$u-first-holds-60m" "usage $(mem_usage "$(pdir memory "$u")")"
    done
    local second_alice second_bob
    second_alice="$(dk alice run --rm --tmpfs /t:size=100m "$I" sh -c "$FILL60" 2>&1)"
    second_bob="$(dk bob run --rm --tmpfs /t:size=100m "$I" sh -c "$FILL60" 2>&1)"
    local pa pb detail
    pa="$(pdir memory alice)"
    pb="$(pdir memory bob)"
    detail="second container: $second_alice; parent: oom_kill $(oom_kills "$pa"), peak $(mem_peak "$pa")"
    expect_true memory-alice-second-cut-short "$detail" test "$second_alice" != full
    expect_true memory-alice-peak-within-ceiling "$detail" test "$(mem_peak "$pa")" -le "$ALICE_MEM_BYTES"
    expect_eq memory-bob-second-fits full "$second_bob"
    expect_eq memory-bob-no-oom 0 "$(oom_kills "$pb")"
    expect_true memory-bob-holds-120m "peak $(mem_peak "$pb")" test "$(mem_peak "$pb")" -gt $((110 << 20))
    real rm -f fm-alice-1 fm-bob-1 >/dev/null
}

# 30 sleeps in one of alice's containers and a burst of 200 forks in another stop at her
# 48 (her parent's limit, not the containers' own); bob's 20 forks go on meanwhile.
case_pids() {
    # The forks that fail end the subshell (ash exits on "can't fork"); the container's
    # shell then needs no fork of its own to go on.
    dk alice run -d --name fp-a1 "$I" sh -c '(for i in $(seq 30); do sleep 30 & done); exec sleep 30' >/dev/null
    dk alice run -d --name fp-a2 "$I" sh -c '(for i in $(seq 200); do sleep 30 & done) 2>/dev/null; exec sleep 30' >/dev/null
    local pa ca
    pa="$(pdir pids alice)"
    ca="$(cdir pids fp-a2)"
    # cgroup v1 counts the failed fork in the cgroup that forked, v2 in the one whose limit
    # was hit (and above).
    within 10 burst_stopped "$ca" "$pa"
    local detail
    detail="parent: pids.current $(cat "$pa/pids.current"), max events $(pids_max_hits "$pa"); burst container: pids.current $(cat "$ca/pids.current"), max events $(pids_max_hits "$ca")"
    expect_true pids-burst-stopped "$detail" burst_stopped "$ca" "$pa"
    expect_true pids-parent-at-most-48 "$detail" test "$(cat "$pa/pids.current")" -le 48
    # Its own limit (48, cut to the ceiling) was not what stopped it: the parent was.
    expect_true pids-stopped-by-the-parent "$detail" test "$(cat "$ca/pids.current")" -le 20
    if expect_ok pids-bob-forks dk bob run --rm "$I" sh -c 'for i in $(seq 20); do sleep 5 & done; wait; echo forked'; then
        expect_eq pids-bob-unaffected forked "$OUT"
    fi
    real rm -f fp-a1 fp-a2 >/dev/null
}

# Busy loops: alice's two containers share her 0.5 CPU; bob's one keeps its own 0.5.
case_cpu() {
    local n
    for n in 1 2; do dk alice run -d --name "fcpu-a$n" "$I" sh -c 'while :; do :; done' >/dev/null; done
    dk bob run -d --name fcpu-b1 "$I" sh -c 'while :; do :; done' >/dev/null
    # Every path first: the counters are then read back to back (a docker inspect between
    # them would widen one window against another on a slow machine).
    local dirs=("$(pdir cpuacct alice)" "$(pdir cpuacct bob)" "$(cdir cpuacct fcpu-a1)" "$(cdir cpuacct fcpu-a2)")
    sleep 1
    local t0 t1 d before=() after=()
    t0="$(date +%s%N)"
    for d in "${dirs[@]}"; do before+=("$(cpu_ns "$d")"); done
    sleep 3
    t1="$(date +%s%N)"
    for d in "${dirs[@]}"; do after+=("$(cpu_ns "$d")"); done
    local span=$((t1 - t0)) alice=$((after[0] - before[0])) bob=$((after[1] - before[1]))
    local c1=$((after[2] - before[2])) c2=$((after[3] - before[3]))
    local detail="over ${span}ns: alice $alice (containers $c1, $c2), bob $bob"
    # 0.5 CPU, with 10% for the period boundaries.
    expect_true cpu-alice-sum-within-half "$detail" test "$alice" -le $((span * 55 / 100))
    expect_true cpu-alice-both-run "$detail" test "$c1" -gt $((span / 20)) -a "$c2" -gt $((span / 20))
    # bob's one loop against alice's two: per user, not per container (per container bob
    # would get half of what alice's pair gets; absolute shares depend on the host's load).
    expect_true cpu-bob-keeps-his-share "$detail" test $((bob * 10)) -ge $((alice * 7))
    real rm -f fcpu-a1 fcpu-a2 fcpu-b1 >/dev/null
}

case_update() {
    expect_ok update-run dk alice run -d --name fu1 -m 32m "$I" sleep 300 || return
    expect_fail update-above-refused "it is above the ceiling of 96m ([users.alice] memory)" \
        dk alice update -m 1g --memory-swap 2g fu1
    expect_ok update-below-ok dk alice update -m 48m --memory-swap 96m fu1 &&
        expect_eq update-below-applied $((48 << 20)) "$(mem_limit "$(cdir memory fu1)")"
    # Straight to Docker (the docker group): the runtime cuts what reaches runc.
    expect_ok update-root-direct real update -m 1g --memory-swap 2g fu1 &&
        expect_eq update-direct-cut "$ALICE_MEM_BYTES" "$(mem_limit "$(cdir memory fu1)")"
    # A policy change reaches her running parent within 5 s; the empty parent goes away.
    local p
    p="$(pdir memory alice)"
    ALICE_MEM=80m ALICE_MEM_BYTES=$((80 << 20))
    lg_write_policy
    expect_true follow-policy-within-5s "memory limit $(mem_limit "$p")" within 5 limit_is "$p" "$ALICE_MEM_BYTES"
    ALICE_MEM=96m ALICE_MEM_BYTES=$((96 << 20))
    lg_write_policy
    real rm -f fu1 >/dev/null
    expect_true follow-empty-parent-removed "$p still there: $(ls "$p" 2>&1 | head -n 3)" within 8 test ! -d "$p"
}

case_shm() {
    if expect_ok shm-run dk alice run --rm --shm-size 1g "$I" sh -c "df -k /dev/shm | tail -n 1"; then
        expect_eq shm-cut-to-32m 32768 "$(awk '{ print $2 }' <<<"$OUT")"
    fi
}

case_ports() {
    expect_ok ports-own-range dk alice create --name fpo1 -p 20001:80 -p 20002-20003:81-82 "$I" true
    expect_fail ports-outside-refused "host port 6012 is not in alice's ranges; alice may publish host ports 20000-20009 (ports in [defaults] or [users.alice])" \
        dk alice create -p 6012:22 "$I" true
    expect_fail ports-others-range-refused "host port 20001 is not in bob's ranges" dk bob create -p 20001:80 "$I" true
    expect_fail ports-random-refused "-P picks random host ports" dk alice create -P --expose 80 "$I" true
    expect_fail ports-no-host-port-refused "random" dk alice create -p 80 "$I" true
    real rm -f fpo1 >/dev/null
}

# ---------------------------------------------------------------------------------------------

ALL_CASES="policy placement memory pids cpu update shm ports"
START=$SECONDS
setup_all
CGN="lgt_$LG_RUN_ID"
lg_write_policy
DRIVER="$(real info --format '{{.CgroupDriver}}')"
trap fs_teardown EXIT
if [[ $LG_SYSTEM_DOCKER == 1 ]]; then
    PSOCK=/run/labgpu/docker.sock
    systemctl is-active --quiet labgpu-proxy.service || lg_die "labgpu-proxy.service is not active"
else
    lg_start_own_proxy
    PSOCK="$LG_PSOCK"
fi
lg_make_cli_dirs
lg_say "suite starts ($((SECONDS - START))s setup); cgroup driver $DRIVER, v$((V2 + 1)), parents under $CGN"
for c in ${LABGPU_E2E_ONLY:-$ALL_CASES}; do
    printf -- '--- %s\n' "$c"
    "case_$c"
done
if ((LG_FAILED)); then
    printf 'failed: %s\n' "${LG_FAILURES[@]}"
    if [[ $LG_SYSTEM_DOCKER == 1 ]]; then
        journalctl -q -u labgpu-proxy.service -n 20 --no-pager 2>&1 | sed 's/^/     | proxy: /'
    else
        tail -n 20 "$LG_TMP/proxy.log" | sed 's/^/     | proxy: /'
    fi
    tail -n 10 "$LG_TMP/labgpu.log" 2>/dev/null | sed 's/^/     | runtime: /'
fi
lg_say "took $((SECONDS - START))s"
print_summary
((LG_FAILED == 0))
