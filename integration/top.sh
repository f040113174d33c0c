#!/usr/bin/env bash
# `labgpu top` and the metrics against real Docker: the private dockerd of lib.sh, `labgpu
# proxy` in front of it with its Prometheus listener, the test users' containers made through
# the proxy, and GPU figures from the fake libnvidia-ml.so (tests/fixtures/fake_nvml.c) whose
# processes are the containers' real pids. Checks what each person sees: root the whole host,
# a user their own containers and GPU processes only (`labgpu top` through the proxy socket),
# the live view read off a tmux pane, and a real Prometheus (Debian's package, installed if
# missing) scraping the listener and answering a per-user query. Prints `N passed, N
# failed`; exits 1 if any failed.
#
#   bash integration/top.sh        (as root; see lib.sh for the LABGPU_E2E_* knobs)
#   LABGPU_E2E_ONLY='screens prometheus' bash integration/top.sh    only these case groups
#
# Host lane only: it compiles the fake NVML library with cc and installs prometheus and tmux.
set -uo pipefail

# shellcheck source=integration/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

I="$LG_IMAGE"
LG_POLICY_PROXY=1
METRICS=""   # host:port of the proxy's metrics listener
PROM_PID=""
PROM_PORT=""
TMUX_SOCK=""  # root's tmux server
ALICE_TMUX="" # alice's, in her home
GIB=1073741824

# as USER CMD...: CMD as USER with a clean environment pointed at the proxy.
as() {
    local u="$1"
    shift
    timeout "$LG_TIMEOUT" runuser -u "$(lg_user "$u")" -- env -i PATH="$LG_SYS_PATH" HOME="$(lg_home "$u")" \
        LANG=C.UTF-8 TERM=xterm DOCKER_HOST="unix://$LG_PSOCK" DOCKER_CONFIG="$LG_TMP/cli-$u" "$@"
}
dk() {
    local u="$1"
    shift
    as "$u" "$LG_DOCKER_CLI" "$@"
}
real() { lg_docker "$@"; }
pid_of() { real inspect -f '{{.State.Pid}}' "$1"; }
id_of() { real inspect -f '{{.Id}}' "$1"; }

# expect_jq NAME FILTER JSON EXPECTED: jq -r FILTER on JSON must print EXPECTED.
expect_jq() {
    expect_eq "$1" "$4" "$(jq -r "$2" <<<"$3" 2>&1)" "$3"
}

# ---------------------------------------------------------------------------------------------
# Setup

install_tools() {
    local need=()
    command -v jq >/dev/null || need+=(jq)
    command -v tmux >/dev/null || need+=(tmux)
    command -v prometheus >/dev/null || need+=(prometheus)
    ((${#need[@]})) || return 0
    lg_say "installing ${need[*]}"
    # prometheus's maintainer scripts would start the system's own: a policy-rc.d of ours
    # (when there is none) keeps it down.
    local rcd=/usr/sbin/policy-rc.d made=0
    if [[ ! -e $rcd ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$rcd" && chmod 755 "$rcd" && made=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" \
        >/tmp/labgpu-top-apt.log 2>&1 || lg_say "apt-get install ${need[*]} failed (/tmp/labgpu-top-apt.log)"
    ((made)) && rm -f "$rcd"
    if ! command -v jq >/dev/null || ! command -v tmux >/dev/null || ! command -v prometheus >/dev/null; then
        lg_die "top.sh needs jq, tmux and prometheus"
    fi
}

# set_gpus LINES: the fake NVML's GPUs plus LINES (load, proc).
set_gpus() { lg_nvml_fixture "$1"; }

start_proxy() {
    LG_PROXY_EXTRA=(--metrics 127.0.0.1:0 --root "$LG_EXEC_ROOT/runtime-runc/moby")
    # shellcheck disable=SC2119 # no command prefix: the proxy runs in the host's namespaces
    lg_start_own_proxy
    local i
    for ((i = 0; i < 50; i++)); do
        METRICS="$(grep -o 'metrics listening addr=127.0.0.1:[0-9]*' "$LG_TMP/proxy.log" | sed 's/.*addr=//')"
        [[ -n $METRICS ]] && break
        sleep 0.1
    done
    [[ -n $METRICS ]] || lg_die "the proxy did not say where its metrics listener is: $(cat "$LG_TMP/proxy.log")"
    lg_make_cli_dirs
}

top_teardown() {
    local rc=$?
    [[ -n $PROM_PID ]] && lg_stop_pid "$PROM_PID" 10
    [[ -n $TMUX_SOCK ]] && tmux -S "$TMUX_SOCK" kill-server 2>/dev/null
    [[ -n $ALICE_TMUX ]] && as alice tmux -S "$ALICE_TMUX" kill-server 2>/dev/null
    # carol's host process, before userdel removes her.
    [[ -n $PC ]] && kill "$PC" 2>/dev/null
    local i
    for ((i = 0; i < 20; i++)); do
        if [[ -z $CAROL_RUNUSER ]] || ! kill -0 "$CAROL_RUNUSER" 2>/dev/null; then break; fi
        sleep 0.1
    done
    lg_stop_own_proxy
    (exit "$rc")
    teardown_all
}

# The scene: alice's and bob's containers through the proxy, a container made straight on
# dockerd with runc and a forged alice label and GPU 3 (a bypass: no record), and a process
# of carol's outside any container; each one a GPU process in the fake NVML.
PA="" PB="" PF="" PC="" IDA="" IDB="" IDF="" CAROL_RUNUSER="" SCENE=""
make_scene() {
    dk alice run -d --name ta1 "$I" sleep 600 >/dev/null || lg_die "alice's container did not start"
    dk bob run -d --name tb1 "$I" sleep 600 >/dev/null || lg_die "bob's container did not start"
    real run -d --name tf1 --runtime runc --label labgpu.user=alice \
        --device "$LG_TMP/dev/nvidia3:/dev/nvidia3" "$I" sleep 600 >/dev/null ||
        lg_die "the forged container did not start"
    # runuser says "Terminated" when the sleep is killed at the end.
    runuser -u "$(lg_user carol)" -- sleep 600 2>/dev/null &
    CAROL_RUNUSER=$!
    disown "$CAROL_RUNUSER"
    PA="$(pid_of ta1)" PB="$(pid_of tb1)" PF="$(pid_of tf1)"
    IDA="$(id_of ta1)" IDB="$(id_of tb1)" IDF="$(id_of tf1)"
    # runuser forks: carol's sleep is its child.
    local i
    for ((i = 0; i < 20; i++)); do
        PC="$(pgrep -u "$(lg_user carol)" -x sleep | head -n 1)"
        [[ -n $PC ]] && break
        sleep 0.1
    done
    [[ -n $PC ]] || lg_die "carol's host process did not start"
    SCENE="load 0 40 $GIB $((16 * GIB))
load 2 70 $((2 * GIB)) $((16 * GIB))
load 3 90 $((3 * GIB)) $((16 * GIB))
proc 0 $PA $GIB 40
proc 2 $PB $((2 * GIB)) 70
proc 3 $PF $((2 * GIB)) 60
proc 3 $PC $GIB 30"
    set_gpus "$SCENE"
}

# ---------------------------------------------------------------------------------------------
# Cases

case_admin() {
    local v
    v="$("$LG_BIN" top --json --policy "$LG_POLICY" 2>&1)"
    expect_jq admin-scope '.scope' "$v" all
    expect_jq admin-alice-gpu0 ".gpus[] | select(.minor == 0) | .processes[] | select(.pid == $PA) | \"\(.owner) \(.container)\"" "$v" "alice $IDA"
    expect_jq admin-bob-gpu2 ".gpus[] | select(.minor == 2) | .processes[] | select(.pid == $PB) | .owner" "$v" bob
    # The label says alice; the proxy never recorded it: nobody's.
    expect_jq admin-forged-label-not-believed ".gpus[] | select(.minor == 3) | .processes[] | select(.pid == $PF) | \"\(.owner) \(.container)\"" "$v" "null $IDF"
    expect_jq admin-host-process-by-uid ".gpus[] | select(.minor == 3) | .processes[] | select(.pid == $PC) | \"\(.owner) \(.container)\"" "$v" "carol null"
    expect_jq admin-alice-totals '.users[] | select(.user == "alice") | "\(.containers) \(.gpu_memory_bytes) \(.gpu_sm_percent)"' "$v" "1 $GIB 40"
    expect_jq admin-carol-totals '.users[] | select(.user == "carol") | "\(.containers) \(.gpu_memory_bytes)"' "$v" "0 $GIB"
    expect_jq admin-container-usage ".containers[] | select(.id == \"$IDA\") | (.usage.pids > 0 and .usage.memory_bytes > 0 and .cpu_cores != null)" "$v" true
    expect_jq admin-no-ceilings '.users[] | select(.user == "alice") | .ceilings' "$v" null
}

case_users() {
    local v
    v="$(as alice "$LG_BIN" top --json 2>&1)"
    expect_jq user-alice-scope '.scope' "$v" alice
    expect_jq user-alice-containers '[.containers[].id] | join(",")' "$v" "$IDA"
    expect_jq user-alice-processes '[.gpus[].processes[].pid] | join(",")' "$v" "$PA"
    # GPUs 0 and 1 are hers (policy), 2 and 3 are not: bob's and the forged container's.
    expect_jq user-alice-gpus '[.gpus[].minor] | join(",")' "$v" "0,1"
    expect_jq user-alice-gpu0-load '.gpus[] | select(.minor == 0) | .utilization_percent' "$v" 40
    expect_jq user-alice-sees-no-one-else '[.users[].user] | join(",")' "$v" alice
    v="$(as bob "$LG_BIN" top --json 2>&1)"
    expect_jq user-bob-processes '[.gpus[].processes[] | "\(.pid) \(.owner)"] | join(",")' "$v" "$PB bob"
    expect_jq user-bob-containers '[.containers[].id] | join(",")' "$v" "$IDB"
    # carol's own host process on GPU 3, which she shares with the forged container: hers
    # is shown, the other process and the whole-GPU load are not.
    v="$(as carol "$LG_BIN" top --json 2>&1)"
    expect_jq user-carol-host-process '[.gpus[].processes[] | "\(.pid) \(.owner)"] | join(",")' "$v" "$PC carol"
    expect_jq user-carol-shared-gpu-load '.gpus[] | select(.minor == 3) | "\(.utilization_percent) \(.memory_used_bytes)"' "$v" "null null"
    local out rc=0
    out="$(as nobody "$LG_BIN" top --json 2>&1)" || rc=$?
    if ((rc != 0)) && [[ $out == *"is not a user in $LG_POLICY"* ]]; then pass user-nobody-refused; else
        fail user-nobody-refused "exit $rc: $out"
    fi
}

# capture SOCKET SESSION PATTERN: the pane's text once it shows PATTERN (up to 10 s).
capture() {
    local i screen=""
    for ((i = 0; i < 50; i++)); do
        screen="$(tmux -S "$1" capture-pane -p -t "$2" 2>&1)"
        [[ $screen == *"$3"* ]] && break
        sleep 0.2
    done
    printf '%s\n' "$screen"
}

# row SCREEN PID: the screen's line that has PID as a word.
row() { awk -v p="$2" '{ for (i = 1; i <= NF; i++) if ($i == p) { print; exit } }' <<<"$1"; }

case_screens() {
    # --once: one screen for scripts and mail, the same rows.
    local once
    once="$("$LG_BIN" top --once --policy "$LG_POLICY" 2>&1)"
    printf '%s\n' "$once" >"$LG_TMP/top-once.txt"
    if [[ "$(row "$once" "$PA")" == *" alice "* && "$(row "$once" "$PB")" == *" bob "* ]]; then
        pass screen-once
    else fail screen-once "$once"; fi
    TMUX_SOCK="$LG_TMP/tmux-root"
    tmux -S "$TMUX_SOCK" new-session -d -s top -x 150 -y 50 \
        "$LG_BIN top --policy $LG_POLICY --interval 1" || fail tmux-start
    local s r
    s="$(capture "$TMUX_SOCK" top "$PC")"
    r="$(row "$s" "$PA")"
    if [[ $r == 0* && $r == *" alice "* && $r == *" ${IDA:0:12} "* && $r == *"1.0GiB"* ]]; then
        pass screen-admin-alice-row
    else fail screen-admin-alice-row "row: $r
$s"; fi
    r="$(row "$s" "$PB")"
    if [[ $r == 2* && $r == *" bob "* && $r == *" ${IDB:0:12} "* ]]; then pass screen-admin-bob-row; else
        fail screen-admin-bob-row "row: $r
$s"
    fi
    r="$(row "$s" "$PF")"
    if [[ $r == *"(unknown)"* && $r == *" ${IDF:0:12} "* ]]; then pass screen-admin-forged-row; else
        fail screen-admin-forged-row "row: $r
$s"
    fi
    r="$(row "$s" "$PC")"
    if [[ $r == *" carol "* && $r == *"(host)"* ]]; then pass screen-admin-host-row; else
        fail screen-admin-host-row "row: $r
$s"
    fi
    # It refreshes: a process that starts shows up without a restart.
    set_gpus "$SCENE
proc 1 $PA 4096 5"
    local i again=""
    for ((i = 0; i < 25; i++)); do
        again="$(tmux -S "$TMUX_SOCK" capture-pane -p -t top)"
        grep -qE "^1 .* $PA +alice " <<<"$again" && break
        sleep 0.2
    done
    if grep -qE "^1 .* $PA +alice " <<<"$again"; then pass screen-refreshes; else
        fail screen-refreshes "$again"
    fi
    # alice's own live view, through the proxy: her row, nobody else's.
    ALICE_TMUX="$(lg_home alice)/tmux.sock"
    as alice tmux -S "$ALICE_TMUX" new-session -d -s top -x 150 -y 50 \
        "$LG_BIN top --interval 1" || fail tmux-alice-start
    s="$(capture "$ALICE_TMUX" top "$PA")"
    r="$(row "$s" "$PA")"
    if [[ $r == *" alice "* && $s == *"labgpu top: user alice"* ]]; then pass screen-alice-own-row; else
        fail screen-alice-own-row "row: $r
$s"
    fi
    if [[ $s != *" $PB "* && $s != *" $PF "* && $s != *" $PC "* && $s != *" bob "* ]]; then
        pass screen-alice-sees-no-one-else
    else fail screen-alice-sees-no-one-else "$s"; fi
    as alice tmux -S "$ALICE_TMUX" kill-server 2>/dev/null
    tmux -S "$TMUX_SOCK" kill-server 2>/dev/null
    set_gpus "$SCENE"
}

# metric NAME_AND_LABELS: its value in one scrape of the proxy's listener.
metric() {
    curl -sS "http://$METRICS/metrics" | awk -v k="$1" '$1 == k { print $2 }'
}

case_metrics() {
    expect_eq metrics-alice-gpu-memory "$GIB" "$(metric 'labgpu_user_gpu_memory_bytes{user="alice"}')"
    expect_eq metrics-bob-gpu-util 70 "$(metric 'labgpu_user_gpu_utilization_percent{user="bob"}')"
    expect_eq metrics-alice-containers 1 "$(metric 'labgpu_user_containers{user="alice"}')"
    expect_eq metrics-gpu3-util 90 "$(metric 'labgpu_gpu_utilization_percent{gpu="3"}')"
    # At least the forged one (the host may run other dockerds' containers: all unowned here).
    local unowned
    unowned="$(metric labgpu_unowned_containers)"
    if [[ $unowned =~ ^[0-9]+$ ]] && ((unowned >= 1)); then pass metrics-unowned; else
        fail metrics-unowned "labgpu_unowned_containers = '$unowned'"
    fi
    expect_eq metrics-verify-bypass 1 "$(metric 'labgpu_verify_findings{kind="bypass"}')"
    # A refusal through the proxy is counted by its reason.
    dk bob run --rm --privileged "$I" true >/dev/null 2>&1
    expect_eq metrics-refusal-privileged 1 "$(metric 'labgpu_proxy_refusals_total{reason="privileged"}')"
    local ct
    ct="$(curl -sS -o /dev/null -w '%{content_type}' "http://$METRICS/metrics")"
    expect_eq metrics-content-type "text/plain; version=0.0.4; charset=utf-8" "$ct"
    expect_eq metrics-loopback-only 127.0.0.1 "${METRICS%:*}"
    # Every series the shipped Grafana dashboard graphs is one the proxy exports.
    local name missing="" text
    text="$(curl -sS "http://$METRICS/metrics")"
    for name in $(jq -r '.. | .expr? // empty' "$LG_REPO/config/grafana-dashboard.json" | grep -o 'labgpu_[a-z_]*' | sort -u); do
        grep -q "^# TYPE $name " <<<"$text" || missing+=" $name"
    done
    expect_eq metrics-dashboard-series "" "$missing"
}

case_prometheus() {
    local p="$LG_TMP/prometheus" i
    mkdir -p "$p/data"
    cat >"$p/prometheus.yml" <<EOF
global:
  scrape_interval: 1s
scrape_configs:
  - job_name: labgpu
    static_configs:
      - targets: ["$METRICS"]
EOF
    promtool check config "$p/prometheus.yml" >/dev/null 2>&1 || fail prometheus-config "$(promtool check config "$p/prometheus.yml" 2>&1)"
    for ((i = 0; i < 5; i++)); do
        PROM_PORT=$((20000 + RANDOM % 20000))
        ss -ltn | grep -q ":$PROM_PORT " && continue
        prometheus --config.file="$p/prometheus.yml" --storage.tsdb.path="$p/data" \
            --web.listen-address="127.0.0.1:$PROM_PORT" >"$p/log" 2>&1 &
        PROM_PID=$!
        disown "$PROM_PID"
        sleep 1
        kill -0 "$PROM_PID" 2>/dev/null && break
        PROM_PID=""
    done
    [[ -n $PROM_PID ]] || {
        fail prometheus-start "$(tail -n 5 "$p/log")"
        return
    }
    local q='labgpu_user_gpu_memory_bytes{user="alice"}' answer="" value=""
    for ((i = 0; i < 60; i++)); do
        answer="$(curl -sS -G "http://127.0.0.1:$PROM_PORT/api/v1/query" --data-urlencode "query=$q" 2>&1)"
        value="$(jq -r '.data.result[0].value[1] // empty' <<<"$answer" 2>/dev/null)"
        [[ -n $value ]] && break
        sleep 0.5
    done
    expect_eq prometheus-alice-gpu-memory "$GIB" "$value" "$answer"
    answer="$(curl -sS -G "http://127.0.0.1:$PROM_PORT/api/v1/query" \
        --data-urlencode 'query=sum by (user) (labgpu_gpu_user_memory_bytes{user=~"bob|carol"})')"
    expect_eq prometheus-per-user-sum "bob=$((2 * GIB)) carol=$GIB" \
        "$(jq -r '[.data.result[] | "\(.metric.user)=\(.value[1])"] | sort | join(" ")' <<<"$answer")" "$answer"
    answer="$(curl -sS -G "http://127.0.0.1:$PROM_PORT/api/v1/query" --data-urlencode 'query=up{job="labgpu"}')"
    expect_eq prometheus-target-up 1 "$(jq -r '.data.result[0].value[1]' <<<"$answer")" "$answer"
    lg_stop_pid "$PROM_PID" 10
    PROM_PID=""
}

# ---------------------------------------------------------------------------------------------

ALL_CASES="admin users screens metrics prometheus"
START=$SECONDS
install_tools
setup_all
trap top_teardown EXIT
lg_build_fake_nvml
LG_POLICY_GPUS_EXTRA="nvml_lib = \"$NVML_DIR/libnvidia-ml.so.1\""
lg_write_policy
start_proxy
make_scene
lg_say "suite starts ($((SECONDS - START))s setup); metrics on $METRICS"
for c in ${LABGPU_E2E_ONLY:-$ALL_CASES}; do
    printf -- '--- %s\n' "$c"
    "case_$c"
done
if ((LG_FAILED)); then
    printf 'failed: %s\n' "${LG_FAILURES[@]}"
    tail -n 20 "$LG_TMP/proxy.log" | sed 's/^/     | proxy: /'
fi
lg_say "took $((SECONDS - START))s"
print_summary
((LG_FAILED == 0))
