#!/usr/bin/env bash
# The identity proxy against real Docker: the private dockerd of lib.sh with the labgpu
# runtime, `labgpu proxy` in front of it, and the real docker CLI run as host users alice,
# bob and carol (never in the docker group; the proxy socket is all they get). Prints
# `N passed, N failed`; exits 1 if any failed. With LABGPU_E2E_SYSTEM_DOCKER=1 (the VM lane),
# the system's dockerd and the running labgpu-proxy.service on /run/labgpu/docker.sock.
#
#   bash integration/proxy.sh             (as root; see lib.sh for the LABGPU_E2E_* knobs)
#   LABGPU_E2E_ONLY='owner streams' bash integration/proxy.sh    run only these case groups
set -uo pipefail

# shellcheck source=integration/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

I="$LG_IMAGE"
PSOCK=""
PROXY_PID=""
PROXY_FDS0=0
LOAD_N="${LABGPU_PROXY_LOAD:-200}"

# as USER CMD...: CMD as USER with a clean environment pointed at the proxy.
as() {
    local u="$1"
    shift
    timeout "$LG_TIMEOUT" runuser -u "$(lg_user "$u")" -- env -i PATH="$LG_SYS_PATH" HOME="$(lg_home "$u")" \
        LANG=C.UTF-8 DOCKER_HOST="unix://$PSOCK" DOCKER_CONFIG="$LG_TMP/cli-$u" "$@"
}
# dk USER ARGS...: the docker CLI as USER, through the proxy.
dk() {
    local u="$1"
    shift
    as "$u" "$LG_DOCKER_CLI" "$@"
}
# Root straight to dockerd, to see what really happened.
real() { lg_docker "$@"; }
# api USER METHOD PATH: curl through the proxy; prints the body, then the status on its own line.
api() {
    as "$1" curl -sS --unix-socket "$PSOCK" -X "$2" -w '\n%{http_code}\n' "http://docker$3"
}

# The packaged unit, started by the caller (systemctl enable --now labgpu-proxy).
use_system_proxy() {
    PSOCK=/run/labgpu/docker.sock
    systemctl is-active --quiet labgpu-proxy.service || lg_die "labgpu-proxy.service is not active"
    PROXY_PID="$(systemctl show -p MainPID --value labgpu-proxy.service)"
    [[ -S $PSOCK && $PROXY_PID != 0 ]] || lg_die "labgpu-proxy.service has no socket $PSOCK"
}

proxy_log_tail() {
    if [[ $LG_SYSTEM_DOCKER == 1 ]]; then
        journalctl -q -u labgpu-proxy.service -n "$1" --no-pager 2>&1
    else
        tail -n "$1" "$LG_TMP/proxy.log"
    fi
}

start_proxy() {
    if [[ $LG_SYSTEM_DOCKER == 1 ]]; then
        use_system_proxy
    else
        start_own_proxy
    fi
    PROXY_FDS0="$(ls "/proc/$PROXY_PID/fd" | wc -l)"
    local u
    for u in alice bob carol; do
        mkdir -p "$LG_TMP/cli-$u"
        chown "$(lg_user "$u")" "$LG_TMP/cli-$u"
    done
}

start_own_proxy() {
    PSOCK="$LG_TMP/proxy/docker.sock"
    "$LG_BIN" proxy --listen "$PSOCK" --upstream "$LG_SOCK" --policy "$LG_POLICY" \
        >"$LG_TMP/proxy.log" 2>&1 &
    PROXY_PID=$!
    local i
    for ((i = 0; i < 50; i++)); do
        [[ -S $PSOCK ]] && break
        kill -0 "$PROXY_PID" 2>/dev/null || break
        sleep 0.1
    done
    [[ -S $PSOCK ]] || {
        cat "$LG_TMP/proxy.log" >&2
        lg_die "labgpu proxy did not start"
    }
}

proxy_teardown() {
    local rc=$?
    if [[ -n $PROXY_PID && $LG_SYSTEM_DOCKER != 1 ]]; then
        kill -TERM "$PROXY_PID" 2>/dev/null || true
        wait "$PROXY_PID" 2>/dev/null || true
        if [[ -e $PSOCK ]]; then
            echo "[e2e] warning: the proxy left its socket $PSOCK behind" >&2
        fi
        PROXY_PID=""
    fi
    (exit "$rc")
    teardown_all
}

# expect_fail NAME PATTERN CMD...: CMD must fail and its output contain PATTERN.
expect_fail() {
    local name="$1" pattern="$2" out rc=0
    shift 2
    out="$("$@" 2>&1)" || rc=$?
    if [[ $rc -eq 0 ]]; then
        fail "$name" "succeeded, expected a refusal: $out"
    elif [[ $out != *"$pattern"* ]]; then
        fail "$name" "exit $rc without '$pattern': $out"
    else
        pass "$name"
    fi
}

# expect_ok NAME CMD...: CMD must succeed; its output is left in OUT.
expect_ok() {
    local name="$1" rc=0
    shift
    OUT="$("$@" 2>&1)" || rc=$?
    if [[ $rc -ne 0 ]]; then
        fail "$name" "exit $rc: $OUT"
        return 1
    fi
    return 0
}

# ---------------------------------------------------------------------------------------------
# Cases

case_owner() {
    if expect_ok owner-run-forged dk alice run -d --name pa1 --label labgpu.user=bob --runtime runc \
        "$I" sleep 300; then
        local owner runtime
        owner="$(real inspect -f '{{index .Config.Labels "labgpu.user"}}' pa1 2>&1)"
        runtime="$(real inspect -f '{{.HostConfig.Runtime}}' pa1 2>&1)"
        expect_eq owner-label-is-caller alice "$owner"
        expect_eq owner-runtime-forced labgpu "$runtime"
        local id
        id="$(real inspect -f '{{.Id}}' pa1)"
        if grep -q "create allowed container=$id owner=\"alice\"" "$LG_TMP/labgpu.log"; then
            pass owner-runtime-ran
        else
            fail owner-runtime-ran "no create line for $id in labgpu.log: $(tail -n 3 "$LG_TMP/labgpu.log")"
        fi
    fi
    expect_ok owner-run-bob dk bob run -d --name pb1 "$I" sleep 300 &&
        expect_eq owner-bob-label bob "$(real inspect -f '{{index .Config.Labels "labgpu.user"}}' pb1 2>&1)"
    expect_ok owner-run-carol dk carol run -d --name pc1 "$I" sleep 300 && pass owner-run-carol
    # Go reads JSON keys case-insensitively: "labels" and "hostconfig"."runtime" are the
    # same fields to dockerd, and must be to the proxy.
    local out
    out="$(as alice curl -sS --unix-socket "$PSOCK" -X POST -H 'Content-Type: application/json' \
        -d "{\"Image\":\"$I\",\"Cmd\":[\"true\"],\"labels\":{\"labgpu.user\":\"bob\"},\"hostconfig\":{\"runtime\":\"runc\"}}" \
        -w '\n%{http_code}\n' "http://docker/v1.41/containers/create?name=pa2" 2>&1)"
    if [[ $out == *$'\n201' ]]; then
        expect_eq owner-lowercase-keys "alice labgpu" \
            "$(real inspect -f '{{index .Config.Labels "labgpu.user"}} {{.HostConfig.Runtime}}' pa2 2>&1)"
    else
        fail owner-lowercase-keys "$out"
    fi
    out="$(api nobody GET /v1.41/containers/json 2>&1)"
    if [[ $out == *'"message":"labgpu proxy: uid '*"is not a user in $LG_POLICY"* && $out == *$'\n403' ]]; then
        pass owner-unknown-uid-json
    else
        fail owner-unknown-uid-json "$out"
    fi
}

case_isolation() {
    local pattern="belongs to another user"
    expect_fail iso-inspect "$pattern" dk bob inspect pa1
    expect_fail iso-exec "$pattern" dk bob exec pa1 true
    expect_fail iso-logs "$pattern" dk bob logs pa1
    expect_fail iso-stop "$pattern" dk bob stop -t 1 pa1
    expect_fail iso-kill "$pattern" dk bob kill pa1
    expect_fail iso-rm "$pattern" dk bob rm -f pa1
    expect_fail iso-cp-from "$pattern" dk bob cp pa1:/etc/passwd /tmp/x
    expect_fail iso-cp-to "$pattern" dk bob cp /etc/hostname pa1:/tmp/x
    expect_fail iso-commit "$pattern" dk bob commit pa1 stolen
    expect_fail iso-attach "$pattern" dk bob attach pa1
    expect_fail iso-rename "$pattern" dk bob rename pa1 mine
    expect_fail iso-update "$pattern" dk bob update --memory 64m pa1
    expect_fail iso-net-join "$pattern" dk bob run --rm --network container:pa1 "$I" true
    expect_fail iso-pid-join "$pattern" dk bob run --rm --pid container:pa1 "$I" true
    expect_fail iso-volumes-from "$pattern" dk bob run --rm --volumes-from pa1 "$I" true
    expect_fail iso-link "$pattern" dk bob run --rm --link pa1:a "$I" true
    # By full id too, and through an exec id of alice's.
    local id exec_id
    id="$(real inspect -f '{{.Id}}' pa1)"
    expect_fail iso-inspect-id "$pattern" dk bob inspect "$id"
    exec_id="$(curl -sS --unix-socket "$LG_SOCK" -X POST \
        -H 'Content-Type: application/json' -d '{"Cmd":["true"]}' \
        "http://docker/v1.41/containers/$id/exec" | sed -n 's/.*"Id":"\([0-9a-f]*\)".*/\1/p')"
    if [[ -n $exec_id ]]; then
        local out
        out="$(api bob GET "/v1.41/exec/$exec_id/json")"
        if [[ $out == *"$pattern"* && $out == *$'\n403' ]]; then pass iso-exec-id; else fail iso-exec-id "$out"; fi
    else
        fail iso-exec-id "could not create an exec instance in pa1"
    fi
    # ps, ps -a, ps --filter of someone else's label: only one's own.
    local names
    names="$(dk bob ps -a --format '{{.Names}}' 2>&1 | sort | tr '\n' ' ')"
    expect_eq iso-ps-bob "pb1 " "$names"
    names="$(dk alice ps -a --format '{{.Names}}' 2>&1 | sort | tr '\n' ' ')"
    expect_eq iso-ps-alice "pa1 pa2 " "$names"
    names="$(dk bob ps -a --filter label=labgpu.user=alice --format '{{.Names}}' 2>&1)"
    expect_eq iso-ps-filter-other "" "$names"
    names="$(real ps -a --format '{{.Names}}' | sort | tr '\n' ' ')"
    expect_eq iso-admin-sees-all "pa1 pa2 pb1 pc1 " "$names"
    # The admin through the proxy: root in the host pid namespace passes unfiltered.
    names="$(DOCKER_HOST="unix://$PSOCK" lg_docker ps -a --format '{{.Names}}' 2>&1 | sort | tr '\n' ' ')"
    expect_eq iso-admin-through-proxy "pa1 pa2 pb1 pc1 " "$names"
    # Root in another pid namespace (a container that mounted the socket) is not the admin.
    local out
    out="$(timeout 20 unshare --pid --fork --mount-proc curl -sS --unix-socket "$PSOCK" \
        -w '\n%{http_code}\n' http://docker/v1.41/containers/json 2>&1)"
    if [[ $out == *"uid 0"*"is not a user in"* && $out == *$'\n403' ]]; then
        pass iso-root-other-pidns
    else
        fail iso-root-other-pidns "$out"
    fi
    # Prune is filtered too: bob's prune leaves alice's stopped pa2 alone, also when the
    # filters come in a form body (which dockerd would prefer to the query string).
    expect_ok iso-prune-bob dk bob container prune -f && pass iso-prune-bob
    out="$(as bob curl -sS --unix-socket "$PSOCK" -X POST -w '\n%{http_code}\n' \
        -H 'Content-Type: application/x-www-form-urlencoded' --data 'filters={}' \
        http://docker/v1.41/containers/prune 2>&1)"
    if [[ $out == *"is not accepted"* && $out == *$'\n400' ]]; then pass iso-prune-form-body; else
        fail iso-prune-form-body "$out"
    fi
    if real inspect pa2 >/dev/null 2>&1; then pass iso-prune-spared-alice; else
        fail iso-prune-spared-alice "bob's prune removed alice's pa2"
    fi
    # Own containers work: inspect, exec, cp, logs, rename back and forth.
    expect_ok iso-own-exec dk alice exec pa1 echo own-exec && expect_eq iso-own-exec own-exec "$OUT"
    if expect_ok iso-own-cp-to dk alice cp /etc/hostname pa1:/tmp/h &&
        expect_ok iso-own-cp-from dk alice cp pa1:/tmp/h "$LG_TMP/cli-alice/h"; then
        pass iso-own-cp
    fi
    expect_ok iso-own-rename dk alice rename pa2 pa2b && expect_ok iso-own-rename-back dk alice rename pa2b pa2 &&
        pass iso-own-rename
    local events
    events="$(dk alice events --since "$START_TS" --until "$(date +%s)" \
        --format '{{index .Actor.Attributes "labgpu.user"}}' 2>&1 | sort -u | tr '\n' ' ')"
    expect_eq iso-events-own "alice " "$events"
    out="$(api bob GET /v1.41/system/df 2>&1)"
    if [[ $out == *'"/pb1"'* && $out != *'"/pa1"'* && $out != *'"/pc1"'* && $out == *$'\n200' ]]; then
        pass iso-df-own
    else
        fail iso-df-own "$out"
    fi
}

case_refusals() {
    expect_fail ref-privileged "privileged containers are not allowed" dk alice run --rm --privileged "$I" true
    expect_fail ref-pid-host "PidMode = \"host\"" dk alice run --rm --pid host "$I" true
    expect_fail ref-net-host "allow_host_network" dk alice run --rm --network host "$I" true
    expect_fail ref-userns-host "UsernsMode" dk alice run --rm --userns host "$I" true
    expect_fail ref-cgroup-parent "CgroupParent" dk alice run --rm --cgroup-parent /system.slice "$I" true
    expect_fail ref-bind-etc "bind mount of host path /etc is not allowed for alice" \
        dk alice run --rm -v /etc:/x "$I" true
    expect_fail ref-bind-mount-flag "bind mount of host path /root is not allowed" \
        dk alice run --rm --mount type=bind,source=/root,target=/r "$I" true
    [[ -e $LG_TMP/dev/mem ]] || mknod -m 666 "$LG_TMP/dev/mem" c 1 1
    expect_fail ref-device "device $LG_TMP/dev/mem is not allowed for alice" \
        dk alice run --rm --device "$LG_TMP/dev/mem:/dev/mem" "$I" true
    expect_fail ref-seccomp "seccomp=unconfined" dk alice run --rm --security-opt seccomp=unconfined "$I" true
    local out
    out="$(as alice curl -sS --unix-socket "$PSOCK" -X POST -H 'Content-Type: application/json' \
        -d '{"DeviceCgroupRules":["c 195:* rwm"]}' -w '\n%{http_code}\n' \
        http://docker/v1.41/containers/pa1/update 2>&1)"
    if [[ $out == *"DeviceCgroupRules cannot be changed"* && $out == *$'\n403' ]]; then
        pass ref-update-devices
    else
        fail ref-update-devices "$out"
    fi
    # Before API 1.24 a start request could replace the container's host config.
    out="$(as alice curl -sS --unix-socket "$PSOCK" -X POST -H 'Content-Type: application/json' \
        -d '{"Privileged":true,"Runtime":"runc","Binds":["/:/host"]}' -w '\n%{http_code}\n' \
        http://docker/v1.23/containers/pa1/start 2>&1)"
    if [[ $out == *"API version 1.23 is too old"* && $out == *$'\n400' ]]; then
        pass ref-old-api-start
    else
        fail ref-old-api-start "$out"
    fi
    out="$(api alice POST '/v1.41/build?remote=git%40example.com%3Aa%2Fb.git' 2>&1)"
    if [[ $out == *"root's) ssh credentials"* && $out == *$'\n403' ]]; then pass ref-build-ssh-remote; else
        fail ref-build-ssh-remote "$out"
    fi
    expect_ok ref-update-memory dk alice update --memory 256m --memory-swap 512m pa1 && pass ref-update-memory
    expect_fail ref-plugins "only the administrator" dk alice plugin ls
    expect_fail ref-swarm "only the administrator" dk alice swarm init
    # The user's own bind (a policy mount source) is allowed.
    expect_ok ref-bind-own dk alice run --rm -v "$LG_TMP/data/alice:/d" "$I" true && pass ref-bind-own
}

case_streams() {
    # docker run -it on a pty: input typed in, output back, exit status of the shell.
    local out
    # shellcheck disable=SC2016 # for the container's shell
    out="$( (sleep 2; printf 'echo pty-$((6*7))\n'; sleep 1; printf 'exit 3\n'; sleep 1) |
        timeout 60 script -qec "$(printf '%q ' runuser -u "$(lg_user alice)" -- env -i PATH="$LG_SYS_PATH" \
            HOME=/tmp DOCKER_HOST="unix://$PSOCK" DOCKER_CONFIG="$LG_TMP/cli-alice" \
            "$LG_DOCKER_CLI" run -it --rm "$I" sh)" /dev/null 2>&1)"
    local rc=$?
    if [[ $out == *"pty-42"* && $rc == 3 ]]; then pass stream-run-it; else fail stream-run-it "rc $rc: $out"; fi
    # shellcheck disable=SC2016
    out="$( (sleep 1; printf 'echo exec-$((7*6)) $(id -u)\n'; sleep 1; printf 'exit\n'; sleep 1) |
        timeout 60 script -qec "$(printf '%q ' runuser -u "$(lg_user alice)" -- env -i PATH="$LG_SYS_PATH" \
            HOME=/tmp DOCKER_HOST="unix://$PSOCK" DOCKER_CONFIG="$LG_TMP/cli-alice" \
            "$LG_DOCKER_CLI" exec -it pa1 sh)" /dev/null 2>&1)"
    if [[ $out == *"exec-42 $(lg_uid alice)"* ]]; then pass stream-exec-it; else fail stream-exec-it "$out"; fi
    # stdin to EOF, then output: the client's half-close has to reach the container.
    out="$(printf 'one\ntwo\n' | as alice "$LG_DOCKER_CLI" run -i --rm "$I" sh -c 'wc -l; echo done' 2>&1)"
    expect_eq stream-half-close "2
done" "$(printf '%s' "$out" | tr -d ' ')"
    # logs -f streams as the container writes, and ends when it exits.
    dk alice run -d --name plog "$I" sh -c 'echo first; sleep 3; echo second' >/dev/null 2>&1
    dk alice logs -f plog >"$LG_TMP/logs-f.out" 2>&1 &
    local lpid=$!
    sleep 1.5
    local early
    early="$(cat "$LG_TMP/logs-f.out")"
    wait "$lpid"
    local lrc=$?
    out="$(cat "$LG_TMP/logs-f.out")"
    if [[ $early == first && $out == "first
second" && $lrc == 0 ]]; then
        pass stream-logs-f
    else
        fail stream-logs-f "after 1.5s: '$early'; at the end (rc $lrc): '$out'"
    fi
    # wait blocks until the exit and reports the code.
    dk alice run -d --name pwait "$I" sh -c 'sleep 1; exit 7' >/dev/null 2>&1
    expect_ok stream-wait dk alice wait pwait && expect_eq stream-wait 7 "$OUT"
    # stats streams one sample and stops.
    expect_ok stream-stats dk alice stats --no-stream --format '{{.Name}}' pa1 && expect_eq stream-stats pa1 "$OUT"
}

case_build() {
    local ctx="$LG_TMP/build"
    mkdir -p "$ctx"
    printf 'FROM %s\nRUN echo built-by-proxy > /built\nLABEL labgpu.user=bob\n' "$I" >"$ctx/Dockerfile"
    chown -R "$(lg_user alice)" "$ctx"
    if expect_ok build-legacy as alice env DOCKER_BUILDKIT=0 "$LG_DOCKER_CLI" build -q -t proxy-built "$ctx"; then
        pass build-legacy
        # The image's label does not make bob the owner of alice's container.
        if expect_ok build-run-image dk alice run --rm proxy-built cat /built; then
            expect_eq build-run-image built-by-proxy "$OUT"
        fi
        if expect_ok build-run-label dk alice create --name pbuilt2 proxy-built true; then
            expect_eq build-label-overridden alice \
                "$(real inspect -f '{{index .Config.Labels "labgpu.user"}}' pbuilt2 2>&1)"
        fi
    fi
}

case_buildkit() {
    local ctx="$LG_TMP/build-bk" cli out rc=0
    mkdir -p "$ctx"
    printf 'FROM %s\nRUN echo bk > /bk\n' "$I" >"$ctx/Dockerfile"
    chown -R "$(lg_user alice)" "$ctx"
    cli="$("$LG_DOCKER_CLI" version --format '{{.Client.Version}}' 2>/dev/null)"
    if ((${cli%%.*} < 23)); then
        # BuildKit through /build?version=2 and the /session upgrade (h2c), as Docker 20.10's
        # CLI does with DOCKER_BUILDKIT=1. --network none: the private dockerd has no bridge.
        if expect_ok build-buildkit as alice env DOCKER_BUILDKIT=1 "$LG_DOCKER_CLI" build --progress plain \
            --network none -t proxy-bk "$ctx"; then
            pass build-buildkit
        fi
    elif as alice "$LG_DOCKER_CLI" buildx version >/dev/null 2>&1; then
        # CLI 23 and later build with BuildKit through buildx, which drives BuildKit's
        # controller over /grpc: the administrator's only (its requests cannot be checked).
        # buildx then falls back to a BuildKit container of its own (which the proxy would
        # refuse as privileged, and which cannot be pulled here): the build must fail, and the
        # proxy must have refused /grpc. Users build with DOCKER_BUILDKIT=0 (case_build).
        out="$(as alice env DOCKER_BUILDKIT=1 "$LG_DOCKER_CLI" build --progress plain --network none \
            -t proxy-bk "$ctx" 2>&1)" || rc=$?
        if ((rc == 0)); then
            fail build-buildx-refused "a BuildKit build through buildx succeeded: $out"
        elif ! proxy_log_tail 100 | grep -q "refused: the BuildKit gRPC API (/grpc).*$(lg_user alice)"; then
            fail build-buildx-refused "no /grpc refusal for alice in the proxy's log; the build said: $out"
        else
            pass build-buildx-refused
        fi
    else
        printf 'skip build-buildkit (docker CLI %s builds with BuildKit only through buildx, not installed)\n' "$cli"
    fi
    # The same, raw: the h2c upgrade to /grpc that buildx's docker driver makes.
    out="$(as alice curl -sS --unix-socket "$PSOCK" -X POST -H 'Connection: Upgrade' -H 'Upgrade: h2c' \
        -w '\n%{http_code}\n' http://docker/grpc 2>&1)"
    if [[ $out == *"only the administrator"* && $out == *$'\n403' ]]; then pass build-grpc-refused; else
        fail build-grpc-refused "$out"
    fi
}

case_policy() {
    # Read per request: a user taken out of the policy is refused on the next request, and a
    # broken policy stops users (503) but not the administrator.
    lg_policy_text | sed '/^\[users.carol\]/,$d' >"$LG_POLICY.new"
    mv "$LG_POLICY.new" "$LG_POLICY"
    expect_fail policy-user-removed "uid $(lg_uid carol) ($(lg_user carol)) is not a user in" dk carol ps
    lg_write_policy
    expect_ok policy-user-back dk carol ps && pass policy-user-back
    echo 'version = 1 [broken' >>"$LG_POLICY"
    expect_fail policy-broken "the proxy cannot use its policy" dk alice ps
    local names
    names="$(DOCKER_HOST="unix://$PSOCK" lg_docker ps -a --format '{{.Names}}' 2>&1 | grep -c .)"
    if [[ $names -ge 3 ]]; then pass policy-broken-admin-passes; else fail policy-broken-admin-passes "$names"; fi
    lg_write_policy
    expect_ok policy-fixed dk alice ps && pass policy-fixed
}

case_keepalive() {
    local out
    out="$(as alice curl -sv --unix-socket "$PSOCK" http://docker/_ping http://docker/v1.41/version 2>&1)"
    # curl 7.88 says "Re-using existing connection", 8.14 "Re-using existing http: connection".
    if [[ $out == *"Re-using existing "*connection* && $out == *OK* && $out == *ApiVersion* ]]; then
        pass keepalive-two-requests
    else
        fail keepalive-two-requests "$out"
    fi
}

case_load() {
    local dir="$LG_TMP/load" i u before after users=(alice bob carol)
    mkdir -p "$dir"
    chmod 777 "$dir"
    before="$(ls "/proc/$PROXY_PID/fd" | wc -l)"
    local t0=$SECONDS pids=()
    for ((i = 0; i < LOAD_N; i++)); do
        u="${users[i % 3]}"
        as "$u" curl -sS --unix-socket "$PSOCK" -o "$dir/$i.out" -w '%{http_code}' \
            "http://docker/v1.41/containers/json?all=1" >"$dir/$i.code" 2>"$dir/$i.err" &
        pids+=($!)
    done
    # Only these: a bare `wait` would wait for dockerd and the proxy too.
    wait "${pids[@]}"
    local took=$((SECONDS - t0)) bad="" labels
    for ((i = 0; i < LOAD_N; i++)); do
        u="${users[i % 3]}"
        labels="$(grep -o '"labgpu.user":"[a-z]*"' "$dir/$i.out" 2>/dev/null | sort -u | tr '\n' ' ')"
        if [[ $(cat "$dir/$i.code") != 200 ]]; then
            bad+="#$i ($u): HTTP $(cat "$dir/$i.code") $(cat "$dir/$i.err")"$'\n'
        elif [[ $labels != "\"labgpu.user\":\"$u\" " ]]; then
            bad+="#$i ($u): saw $labels"$'\n'
        fi
    done
    if [[ -z $bad ]]; then pass "load-$LOAD_N-concurrent (${took}s)"; else fail "load-$LOAD_N-concurrent" "$(head -n 20 <<<"$bad")"; fi
    for ((i = 0; i < 50; i++)); do
        after="$(ls "/proc/$PROXY_PID/fd" | wc -l)"
        ((after <= before)) && break
        sleep 0.1
    done
    if ((after <= before)); then pass "load-no-fd-leak ($before fds before, $after after)"; else
        fail load-no-fd-leak "$before fds before, $after after: $(ls -l "/proc/$PROXY_PID/fd")"
    fi
}

case_cleanup() {
    # Owners can remove their own containers; the proxy is still alive and its fds settle.
    expect_ok cleanup-rm dk alice rm -f pa1 pa2 plog pwait pbuilt2 && pass cleanup-rm
    if kill -0 "$PROXY_PID" 2>/dev/null; then pass proxy-alive; else
        fail proxy-alive "the proxy died: $(proxy_log_tail 10)"
    fi
    # Every attach, exec -it, logs -f and build stream of the run is over: back to the start.
    local i n
    for ((i = 0; i < 50; i++)); do
        n="$(ls "/proc/$PROXY_PID/fd" | wc -l)"
        ((n <= PROXY_FDS0)) && break
        sleep 0.1
    done
    if ((n <= PROXY_FDS0)); then pass "proxy-fds-settle ($PROXY_FDS0 at start, $n at the end)"; else
        fail proxy-fds-settle "$PROXY_FDS0 at start, $n at the end: $(ls -l "/proc/$PROXY_PID/fd")
$(ss -xp 2>/dev/null | grep "pid=$PROXY_PID,")"
    fi
}

# ---------------------------------------------------------------------------------------------

ALL_CASES="owner isolation refusals streams build buildkit policy keepalive load cleanup"
START=$SECONDS
START_TS="$(date +%s)"
setup_all
# What this suite needs beyond lib.sh's packages (.ci/run installs them up front as well).
if ! command -v curl >/dev/null || ! command -v script >/dev/null || ! command -v runuser >/dev/null ||
    ! command -v unshare >/dev/null; then
    lg_say "installing curl bsdutils util-linux"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        curl bsdutils util-linux >/dev/null
    command -v curl >/dev/null && command -v script >/dev/null && command -v runuser >/dev/null ||
        lg_die "proxy.sh needs curl, script (bsdutils), runuser and unshare (util-linux)"
fi
trap proxy_teardown EXIT
start_proxy
lg_say "suite starts ($((SECONDS - START))s setup); proxy pid $PROXY_PID on $PSOCK"
for c in ${LABGPU_E2E_ONLY:-$ALL_CASES}; do
    printf -- '--- %s\n' "$c"
    "case_$c"
done
if ((LG_FAILED)); then
    printf 'failed: %s\n' "${LG_FAILURES[@]}"
    [[ $LG_SYSTEM_DOCKER == 1 ]] || lg_say "proxy log: $LG_TMP/proxy.log (LABGPU_E2E_KEEP=1 keeps it)"
    proxy_log_tail 20 | sed 's/^/     | proxy: /'
fi
lg_say "took $((SECONDS - START))s"
print_summary
((LG_FAILED == 0))
