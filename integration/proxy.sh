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
# The policy has a [proxy] table (owners only from the proxy's records), builds run as
# unlabeled containers with no GPU, under labgpu as dockerd's default runtime.
LG_POLICY_PROXY=1
LG_POLICY_UNLABELED=no-gpu
LG_DEFAULT_RUNTIME=labgpu
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

# api_json USER METHOD PATH JSON: like api, with a JSON body.
api_json() {
    as "$1" curl -sS --unix-socket "$PSOCK" -X "$2" -H 'Content-Type: application/json' \
        -d "$4" -w '\n%{http_code}\n' "http://docker$3"
}

# expect_status NAME CODE PATTERN OUTPUT: an api/api_json answer with that HTTP status and
# PATTERN in its message.
expect_status() {
    if [[ $4 == *"$3"* && $4 == *$'\n'"$2" ]]; then pass "$1"; else fail "$1" "want $2 and '$3': $4"; fi
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
    lg_make_cli_dirs
}

start_own_proxy() {
    lg_start_own_proxy
    PSOCK="$LG_PSOCK"
    PROXY_PID="$LG_PROXY_PID"
}

proxy_teardown() {
    local rc=$?
    [[ $LG_SYSTEM_DOCKER == 1 ]] || lg_stop_own_proxy
    PROXY_PID=""
    (exit "$rc")
    teardown_all
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
    if [[ $out == *"with root's credentials"* && $out == *$'\n403' ]]; then pass ref-build-ssh-remote; else
        fail ref-build-ssh-remote "$out"
    fi
    expect_ok ref-update-memory dk alice update --memory 256m --memory-swap 512m pa1 && pass ref-update-memory
    expect_fail ref-plugins "only the administrator" dk alice plugin ls
    expect_fail ref-swarm "only the administrator" dk alice swarm init
    # Normal use: --tmpfs, an allowed capability, Docker's seccomp default.
    if expect_ok ref-tmpfs-cap dk alice run --rm --tmpfs /t --cap-add NET_BIND_SERVICE "$I" \
        sh -c 'grep -c " /t tmpfs " /proc/mounts; grep ^Seccomp: /proc/self/status'; then
        expect_eq ref-tmpfs-cap "1 Seccomp: 2" "$(printf '%s' "$OUT" | tr '\n\t' '  ' | tr -s ' ')"
    fi
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
    # The LABEL names bob: with labgpu as the default runtime, the RUN step used to run as
    # bob's container, with his GPU. Build steps are unlabeled now: no GPU at all.
    printf 'FROM %s\nLABEL labgpu.user=bob\nRUN echo built-by-proxy > /built; ls /dev >/devs\n' "$I" >"$ctx/Dockerfile"
    chown -R "$(lg_user alice)" "$ctx"
    if expect_ok build-legacy as alice env DOCKER_BUILDKIT=0 "$LG_DOCKER_CLI" build -q -t alice/built "$ctx"; then
        pass build-legacy
        if expect_ok build-run-image dk alice run --rm alice/built cat /built; then
            expect_eq build-run-image built-by-proxy "$OUT"
        fi
        if expect_ok build-step-no-gpu dk alice run --rm alice/built cat /devs; then
            if [[ $OUT == *nvidia* ]]; then fail build-step-no-gpu "the RUN step saw GPUs: $OUT"; else
                pass build-step-no-gpu
            fi
        fi
        # The image's label does not make bob the owner of alice's container.
        if expect_ok build-run-label dk alice create --name pbuilt2 alice/built true; then
            expect_eq build-label-overridden alice \
                "$(real inspect -f '{{index .Config.Labels "labgpu.user"}}' pbuilt2 2>&1)"
        fi
    fi
    # --ulimit is a create option a build may use; security options and cgroup parents not.
    expect_ok build-ulimit as alice env DOCKER_BUILDKIT=0 "$LG_DOCKER_CLI" build -q --ulimit nofile=1024:1024 \
        -t alice/built2 "$ctx" && pass build-ulimit
    expect_status build-securityopt 403 "build option securityopt is not allowed" \
        "$(api alice POST '/v1.41/build?securityopt=seccomp%3Dunconfined' 2>&1)"
    expect_status build-isolation 403 'build option isolation' \
        "$(api alice POST '/v1.41/build?isolation=hyperv' 2>&1)"
    expect_status build-unknown-option 400 "build option bogus is not a field" \
        "$(api alice POST '/v1.41/build?bogus=1' 2>&1)"
    expect_status build-network-container 403 "cannot join another container's network" \
        "$(api alice POST '/v1.41/build?networkmode=container%3Apa1' 2>&1)"
    # With unlabeled = "deny" build steps could not run: the proxy says so first.
    lg_policy_text | sed 's/^unlabeled = .*/unlabeled = "deny"/' >"$LG_POLICY"
    expect_fail build-needs-no-gpu 'unlabeled = "no-gpu"' \
        as alice env DOCKER_BUILDKIT=0 "$LG_DOCKER_CLI" build -q -t alice/built3 "$ctx"
    lg_write_policy
}

# Whether this dockerd runs BuildKit's RUN steps through labgpu (Docker 26 and later with
# `labgpu setup docker --buildkit`'s DOCKER_BUILDKIT_RUNC_COMMAND; the VM lane's job sets it)
# and users have buildx: then BuildKit builds go through the proxy, checked.
buildkit_through_labgpu() {
    local server p
    server="$(real version --format '{{.Server.Version}}' 2>/dev/null)"
    ((${server%%.*} >= 26)) || return 1
    as alice "$LG_DOCKER_CLI" buildx version >/dev/null 2>&1 || return 1
    for p in $(pidof dockerd); do
        tr '\0' '\n' <"/proc/$p/environ" | grep -q '^DOCKER_BUILDKIT_RUNC_COMMAND=/' && return 0
    done
    return 1
}

case_buildkit() {
    local ctx="$LG_TMP/build-bk" cli out rc=0
    mkdir -p "$ctx"
    printf 'FROM %s\nRUN echo bk > /bk\n' "$I" >"$ctx/Dockerfile"
    chown -R "$(lg_user alice)" "$ctx"
    # Docker CLIs before 23 send BuildKit builds as POST /build?version=2, which carries
    # none of what the proxy checks on /grpc.
    expect_status build-version-2 403 "BuildKit builds through POST /build" \
        "$(api alice POST '/v1.41/build?version=2&remote=client-session' 2>&1)"
    if buildkit_through_labgpu; then
        buildkit_builds
        return
    fi
    cli="$("$LG_DOCKER_CLI" version --format '{{.Client.Version}}' 2>/dev/null)"
    if ((${cli%%.*} < 23)); then
        # Docker 20.10's CLI with DOCKER_BUILDKIT=1: /session, then /build?version=2, whose
        # refusal it prints.
        expect_fail build-buildkit-refused "DOCKER_BUILDKIT=0 docker build" \
            as alice env DOCKER_BUILDKIT=1 "$LG_DOCKER_CLI" build --progress plain --network none -t alice/bk "$ctx"
    elif as alice "$LG_DOCKER_CLI" buildx version >/dev/null 2>&1; then
        # buildx drives BuildKit's controller over /grpc: refused where BuildKit's steps
        # would run outside labgpu. buildx then falls back to a BuildKit container of its own
        # (which the proxy would refuse as privileged, and which cannot be pulled here).
        out="$(as alice env DOCKER_BUILDKIT=1 "$LG_DOCKER_CLI" build --progress plain --network none \
            -t alice/bk "$ctx" 2>&1)" || rc=$?
        if ((rc == 0)); then
            fail build-buildx-refused "a BuildKit build through buildx succeeded: $out"
        elif ! proxy_log_tail 100 | grep -q "$(lg_user alice).*refused: BuildKit builds are not allowed"; then
            fail build-buildx-refused "no /grpc refusal for alice in the proxy's log; the build said: $out"
        else
            pass build-buildx-refused
        fi
    else
        printf 'skip build-buildkit (docker CLI %s builds with BuildKit only through buildx, not installed)\n' "$cli"
    fi
    # The h2c upgrade to /grpc that buildx's docker driver makes: refused before any gRPC,
    # with the reason (Docker 20.10 runs BuildKit's steps with the runc on its PATH).
    out="$(as alice curl -sS --unix-socket "$PSOCK" -X POST -H 'Connection: Upgrade' -H 'Upgrade: h2c' \
        -w '\n%{http_code}\n' http://docker/grpc 2>&1)"
    expect_status build-grpc-refused 403 "BuildKit builds are not allowed: dockerd" "$out"
}

# bk_build USER NAME TAG DOCKERFILE-TEXT [BUILD ARGS...]: a buildx build of DOCKERFILE-TEXT
# as USER through the proxy; the output is left in OUT, the exit status returned.
bk_build() {
    local u="$1" name="$2" tag="$3" text="$4" ctx="$LG_TMP/bk-$2" rc=0
    shift 4
    mkdir -p "$ctx"
    printf '%s\n' "$text" >"$ctx/Dockerfile"
    chown -R "$(lg_user "$u")" "$ctx"
    OUT="$(as "$u" env DOCKER_BUILDKIT=1 "$LG_DOCKER_CLI" build --progress plain -t "$tag" "$@" "$ctx" 2>&1)" || rc=$?
    return "$rc"
}

# BuildKit builds through the proxy, where their RUN steps run under labgpu.
buildkit_builds() {
    local status='^(CapBnd|NoNewPrivs):' token="$RANDOM$RANDOM" step run
    if bk_build alice bk alice/bk "FROM $I
RUN echo $token; grep -E '$status' /proc/self/status >/step-status; ls /dev >/devs"; then
        pass buildx-build
        step="$(dk alice run --rm alice/bk cat /step-status 2>&1)"
        run="$(dk alice run --rm alice/bk grep -E "$status" /proc/self/status 2>&1)"
        if [[ -n $step && $step == "$run" && $step == *"NoNewPrivs:"*1* ]]; then
            pass buildx-step-confined-as-a-container
        else
            fail buildx-step-confined-as-a-container "RUN step: $step; container: $run"
        fi
        out="$(dk alice run --rm alice/bk cat /devs 2>&1)"
        if [[ $out == *nvidia* || -z $out ]]; then fail buildx-step-no-gpu "$out"; else pass buildx-step-no-gpu; fi
        if grep -q 'BuildKit build step allowed' "$LG_TMP/labgpu.log"; then pass buildx-step-through-labgpu; else
            fail buildx-step-through-labgpu "no 'BuildKit build step allowed' in labgpu.log: $(tail -n 3 "$LG_TMP/labgpu.log")"
        fi
    else
        fail buildx-build "$OUT"
    fi
    # Entitlements: the host network only with allow_host_network, insecure never.
    if bk_build alice bkhost alice/bkhost "FROM $I
RUN true" --allow network.host --network host; then
        fail buildx-host-network-refused "$OUT"
    elif [[ $OUT == *"network.host is not allowed for alice (allow_host_network"* ]]; then
        pass buildx-host-network-refused
    else
        fail buildx-host-network-refused "$OUT"
    fi
    if bk_build alice bkins alice/bkins "FROM $I
RUN true" --allow security.insecure; then
        fail buildx-insecure-refused "$OUT"
    elif [[ $OUT == *'"security.insecure" is not allowed'* ]]; then pass buildx-insecure-refused; else
        fail buildx-insecure-refused "$OUT"
    fi
    # -t obeys the image-name rule.
    if bk_build alice bkname bob/bk "FROM $I"; then fail buildx-name-refused "$OUT"
    elif [[ $OUT == *"only under their own prefix"* ]]; then pass buildx-name-refused; else
        fail buildx-name-refused "$OUT"
    fi
    # A frontend image (# syntax=) is never pulled or run: dockerd's own frontend builds.
    if bk_build alice bksyntax alice/bksyntax "# syntax=evil.invalid/frontend:1
FROM $I
RUN echo syntax-ignored >/s"; then pass buildx-syntax-ignored; else fail buildx-syntax-ignored "$OUT"; fi
    if bk_build alice bksyntax2 alice/bksyntax2 "FROM $I" --build-arg BUILDKIT_SYNTAX=evil.invalid/f; then
        fail buildx-syntax-arg-refused "$OUT"
    elif [[ $OUT == *BUILDKIT_SYNTAX* ]]; then pass buildx-syntax-arg-refused; else
        fail buildx-syntax-arg-refused "$OUT"
    fi
    # Git sources are cloned by dockerd as root: denied by the proxy's source policy.
    if bk_build alice bkgit alice/bkgit "FROM $I
ADD git@git.example.invalid:lab/repo.git /repo"; then fail buildx-git-source-refused "$OUT"
    elif [[ $OUT == *"denied by policy"* ]]; then pass buildx-git-source-refused; else
        fail buildx-git-source-refused "$OUT"
    fi
    # Cache mounts are per user: alice plants a file in cache "shared", bob's build of the
    # same mount does not see it; alice's own next build does (the case can fail).
    local plant="FROM $I
RUN --mount=type=cache,target=/c,id=shared echo $token-planted >/c/planted"
    local look="FROM $I
RUN --mount=type=cache,target=/c,id=shared sh -c 'echo $token-look; cat /c/planted >/seen 2>&1 || true'"
    if bk_build alice bkplant alice/bkplant "$plant" && bk_build bob bklook bob/bklook "$look"; then
        out="$(dk bob run --rm bob/bklook cat /seen 2>&1)"
        if [[ $out == *"$token-planted"* ]]; then fail buildx-cache-mount-per-user "bob's build saw: $out"; else
            pass buildx-cache-mount-per-user
        fi
        # The very step bob ran: BuildKit keeps cache mount ids out of its cache keys, so
        # without per-uid RUN caching alice would get bob's result (what his mount held).
        if bk_build alice bklook2 alice/bklook "$look"; then
            out="$(dk alice run --rm alice/bklook cat /seen 2>&1)"
            if [[ $out == *"$token-planted"* ]]; then pass buildx-cache-mount-own; else
                fail buildx-cache-mount-own "alice's identical step saw: $out"
            fi
        else
            fail buildx-cache-mount-own "$OUT"
        fi
    else
        fail buildx-cache-mount-per-user "$OUT"
    fi
}

# Local volume options are mount(8) run by dockerd as root.
case_volumes() {
    expect_fail vol-create-proc "volume option type" dk alice volume create -o type=proc -o device=proc pv-proc
    expect_fail vol-create-overlay "volume option type" dk alice volume create -o type=overlay \
        -o device=overlay -o "o=lowerdir=$(lg_home bob),upperdir=/tmp/u,workdir=/tmp/w" pv-ovl
    expect_fail vol-create-relative-bind "volume option device" dk alice volume create -o o=bind -o device=rel pv-rel
    expect_fail vol-create-bind "volume option type" dk alice volume create -o type=none -o o=bind \
        -o "device=$(lg_home bob)" pv-bind
    expect_fail vol-create-tmpfs-exec "tmpfs volumes take only" dk alice volume create -o type=tmpfs \
        -o device=tmpfs -o o=size=1m,exec pv-tx
    expect_fail vol-driver-plugin "only the local driver" dk alice volume create --driver sshfs pv-sshfs
    expect_fail vol-inline-sysfs "volume option type" dk alice run --rm \
        --mount type=volume,src=pv-inline,dst=/x,volume-opt=type=sysfs,volume-opt=device=sysfs "$I" true
    if real volume inspect pv-proc pv-ovl pv-rel pv-bind pv-inline >/dev/null 2>&1; then
        fail vol-none-created "a refused volume exists: $(real volume ls -q | tr '\n' ' ')"
    else
        pass vol-none-created
    fi
    if expect_ok vol-tmpfs dk alice volume create -o type=tmpfs -o device=tmpfs -o "o=size=1m,uid=$(lg_uid alice)" pv-t &&
        expect_ok vol-tmpfs-run dk alice run --rm -v pv-t:/t "$I" sh -c 'grep -c " /t tmpfs " /proc/mounts'; then
        expect_eq vol-tmpfs 1 "$OUT"
    fi
    if expect_ok vol-plain dk bob run --rm -v pv-plain:/v "$I" sh -c 'echo hi >/v/f && cat /v/f'; then
        expect_eq vol-plain hi "$OUT"
    fi
    real volume rm -f pv-t pv-plain >/dev/null 2>&1
    true
}

# Fields the CLI never sends, straight from the API.
case_rawfields() {
    local base="{\"Image\":\"$I\",\"Cmd\":[\"true\"],\"HostConfig\":"
    expect_status raw-masked-paths 403 "HostConfig.MaskedPaths" \
        "$(api_json alice POST /v1.41/containers/create "$base{\"MaskedPaths\":[\"/proc/kcore\"]}}")"
    expect_status raw-readonly-paths 403 "HostConfig.ReadonlyPaths" \
        "$(api_json alice POST /v1.41/containers/create "$base{\"ReadonlyPaths\":[]}}")"
    expect_status raw-writable-cgroups 403 "allow_unconfined" \
        "$(api_json alice POST /v1.41/containers/create "$base{\"SecurityOpt\":[\"writable-cgroups=true\"]}}")"
    expect_status raw-systemd-annotation 403 "org.systemd.property.DeviceAllow" \
        "$(api_json alice POST /v1.41/containers/create "$base{\"Annotations\":{\"org.systemd.property.DeviceAllow\":\"char-* rwm\"}}}")"
    expect_status raw-log-driver 403 "LogConfig.Type" \
        "$(api_json alice POST /v1.41/containers/create "$base{\"LogConfig\":{\"Type\":\"syslog\",\"Config\":{\"syslog-address\":\"udp://10.9.9.9:514\"}}}}")"
    expect_status raw-unknown-field 400 "HostConfig.Bogus is not a field" \
        "$(api_json alice POST /v1.41/containers/create "$base{\"Bogus\":1}}")"
    expect_status raw-oom-kill-disable 403 "OomKillDisable" \
        "$(api_json alice POST /v1.41/containers/create "$base{\"OomKillDisable\":true}}")"
    expect_status raw-relative-device 403 "PathOnHost" \
        "$(api_json alice POST /v1.41/containers/create "$base{\"Devices\":[{\"PathOnHost\":\"../../../dev/vda\",\"PathInContainer\":\"/dev/x\",\"CgroupPermissions\":\"rwm\"}]}}")"
    # Go 1.21+ reads "Contaıner" (dotless ı) as Container: two containers in one connect.
    expect_status raw-connect-folded-key 400 "appears twice" \
        "$(api_json alice POST /v1.41/networks/bridge/connect '{"Container":"pa1","Contaıner":"pb1"}')"
    expect_status raw-connect-driver-opts 403 "DriverOpts" \
        "$(api_json alice POST /v1.41/networks/bridge/connect '{"Container":"pa1","EndpointConfig":{"DriverOpts":{"com.docker.network.endpoint.sysctls":"x"}}}')"
    expect_status raw-connect-link-other 403 "belongs to another user" \
        "$(api_json alice POST /v1.41/networks/bridge/connect '{"Container":"pa1","EndpointConfig":{"Links":["pb1:x"]}}')"
    # dockerd before Go 1.17 splits a query at ';'.
    expect_status raw-semicolon-query 400 "a raw ';'" \
        "$(api alice POST '/v1.41/build?dockerfile=x;networkmode=host' 2>&1)"
    expect_status raw-build-cgroupparent-false 403 "build option cgroupparent" \
        "$(api alice POST '/v1.41/build?cgroupparent=false' 2>&1)"
    expect_status raw-build-remote-url 403 "fetched by the Docker daemon as root" \
        "$(api alice POST '/v1.41/build?remote=https%3A%2F%2F169.254.169.254%2Fctx.tar' 2>&1)"
}

# dockerd resolved its default seccomp profile for SYS_ADMIN; labgpu cuts both.
case_seccomp() {
    if ! unshare -U true 2>/dev/null; then
        printf 'skip seccomp (no unprivileged user namespaces on this kernel)\n'
        return
    fi
    if expect_ok seccomp-cap-add dk alice run --rm --cap-add SYS_ADMIN "$I" \
        sh -c 'unshare -U true 2>&1 && echo userns-created; true'; then
        if [[ $OUT == *userns-created* ]]; then fail seccomp-cap-add "unshare -U worked: $OUT"; else
            pass seccomp-cap-add
        fi
    fi
    "$LG_BIN" seccomp default --docker "$(real version -f '{{.Server.Version}}')" --cap-add ALL \
        >"$LG_TMP/cli-alice/all.json"
    chmod 644 "$LG_TMP/cli-alice/all.json"
    expect_fail seccomp-custom-profile "seccomp_profiles in [defaults] or [users.alice]" \
        dk alice run --rm --security-opt "seccomp=$LG_TMP/cli-alice/all.json" "$I" true
    # Listed by the administrator (by the hash `labgpu seccomp hash` prints): it runs.
    local hash
    hash="$("$LG_BIN" seccomp hash --docker "$(real version -f '{{.Server.Version}}')" "$LG_TMP/cli-alice/all.json")"
    lg_policy_text | sed "/^\[users.alice\]/a seccomp_profiles = [\"$hash\"]" >"$LG_POLICY"
    expect_ok seccomp-listed-profile dk alice run --rm --security-opt "seccomp=$LG_TMP/cli-alice/all.json" "$I" true &&
        pass seccomp-listed-profile
    lg_write_policy
}

# Image names change only by their owner's hand: alice may name images alice/… (or
# localhost/alice/…); the administrator's and bob's names, and names nobody pulled yet, are
# not hers to make or move.
case_images() {
    local shared_id dir="$LG_TMP/img"
    mkdir -p "$dir"
    chmod 755 "$dir"
    shared_id="$(real image inspect -f '{{.Id}}' "$I")"
    expect_ok img-tag-own dk alice tag "$I" alice/mine:1 && pass img-tag-own
    expect_ok img-tag-localhost dk alice tag "$I" localhost/alice/mine:2 && pass img-tag-localhost
    expect_fail img-tag-shared "only under their own prefix" dk alice tag alice/mine:1 "$I"
    expect_fail img-tag-squat "only under their own prefix" dk alice tag alice/mine:1 ubuntu:22.04
    expect_fail img-tag-other-user "only under their own prefix" dk alice tag alice/mine:1 bob/x
    expect_eq img-shared-unchanged "$shared_id" "$(real image inspect -f '{{.Id}}' "$I" 2>&1)"
    if real image inspect ubuntu:22.04 >/dev/null 2>&1; then fail img-no-squat "ubuntu:22.04 exists"; else
        pass img-no-squat
    fi
    local ctx="$LG_TMP/img-build"
    mkdir -p "$ctx"
    printf 'FROM %s\nRUN echo evil >/evil\n' "$I" >"$ctx/Dockerfile"
    chown -R "$(lg_user alice)" "$ctx"
    expect_fail img-build-shared "only under their own prefix" \
        as alice env DOCKER_BUILDKIT=0 "$LG_DOCKER_CLI" build -q -t team/pytorch:latest "$ctx"
    expect_ok img-commit-own dk alice commit pa1 alice/snap:1 && pass img-commit-own
    expect_fail img-commit-shared "only under their own prefix" dk alice commit pa1 team/pytorch
    # import: a rootfs tarball under alice's prefix only, and never from a URL dockerd fetches.
    mkdir -p "$dir/root/bin"
    cp /bin/busybox "$dir/root/bin/sh"
    tar -C "$dir/root" -cf "$dir/rootfs.tar" .
    chmod 644 "$dir/rootfs.tar"
    expect_ok img-import-own dk alice import "$dir/rootfs.tar" alice/imported:1 && pass img-import-own
    expect_fail img-import-shared "only under their own prefix" dk alice import "$dir/rootfs.tar" team/x
    expect_fail img-import-url "fetch it from the host's network" dk alice import http://127.0.0.1:9/x.tar alice/x
    # load: the names come from inside the archive.
    real save -o "$dir/own.tar" alice/mine:1 && chmod 644 "$dir/own.tar"
    real tag "$I" team/loaded:1 && real save -o "$dir/team.tar" team/loaded:1 && real rmi team/loaded:1 >/dev/null
    chmod 644 "$dir/team.tar"
    expect_ok img-load-own dk alice load -i "$dir/own.tar" && pass img-load-own
    expect_fail img-load-shared 'team/loaded:1", outside your prefix' dk alice load -i "$dir/team.tar"
    if real image inspect team/loaded:1 >/dev/null 2>&1; then fail img-load-nothing-loaded "team/loaded:1 exists"; else
        pass img-load-nothing-loaded
    fi
    gzip -c "$dir/team.tar" >"$dir/team.tar.gz" && chmod 644 "$dir/team.tar.gz"
    expect_fail img-load-gzip 'team/loaded:1", outside your prefix' dk alice load -i "$dir/team.tar.gz"
    # rmi and prune: only names under the prefix.
    expect_fail img-rm-shared "only under their own prefix" dk alice rmi "$I"
    expect_fail img-rm-by-id "only under their own prefix" dk alice rmi -f "$shared_id"
    expect_fail img-prune-all "users prune only dangling images" dk alice image prune -a -f
    expect_ok img-prune-dangling dk alice image prune -f && pass img-prune-dangling
    expect_ok img-rm-own dk alice rmi alice/mine:1 localhost/alice/mine:2 alice/imported:1 alice/snap:1 &&
        pass img-rm-own
    expect_eq img-shared-still-there "$shared_id" "$(real image inspect -f '{{.Id}}' "$I" 2>&1)"
    # Everyone can still run every image.
    expect_ok img-bob-runs-shared dk bob run --rm "$I" true && pass img-bob-runs-shared
}

# Volumes are owned like containers.
case_owned_volumes() {
    local out n0 n1
    expect_ok ovol-create dk alice volume create av1 &&
        expect_eq ovol-create-owner alice "$(real volume inspect -f '{{index .Labels "labgpu.user"}}' av1 2>&1)"
    expect_fail ovol-mount-other "volume \"av1\" belongs to another user" dk bob run --rm -v av1:/x "$I" true
    expect_fail ovol-mount-flag-other "volume \"av1\" belongs to another user" \
        dk bob run --rm --mount type=volume,src=av1,dst=/x "$I" true
    expect_fail ovol-inspect-other "belongs to another user" dk bob volume inspect av1
    expect_fail ovol-rm-other "belongs to another user" dk bob volume rm av1
    expect_fail ovol-create-same-name "belongs to another user" dk bob volume create av1
    expect_ok ovol-prune-other dk bob volume prune -f && pass ovol-prune-other
    if real volume inspect av1 >/dev/null 2>&1; then pass ovol-prune-spared; else fail ovol-prune-spared "bob's prune removed av1"; fi
    out="$(dk bob volume ls -q 2>&1)"
    if [[ $out == *av1* ]]; then fail ovol-ls-own "bob sees av1: $out"; else pass ovol-ls-own; fi
    expect_ok ovol-mount-own dk alice run --rm -v av1:/x "$I" true && pass ovol-mount-own
    # Volumes dockerd would make implicitly are made owned.
    expect_ok ovol-implicit dk alice run --rm -v av-implicit:/x "$I" true &&
        expect_eq ovol-implicit alice "$(real volume inspect -f '{{index .Labels "labgpu.user"}}' av-implicit 2>&1)"
    real rm -f panon >/dev/null 2>&1
    if expect_ok ovol-anon dk alice run -d --name panon -v /anon "$I" sleep 120; then
        out="$(real inspect -f '{{range .Mounts}}{{.Name}} {{end}}' panon)"
        expect_eq ovol-anon-owner alice "$(real volume inspect -f '{{index .Labels "labgpu.user"}}' ${out%% *} 2>&1)"
    fi
    real rm -f -v panon >/dev/null 2>&1
    # The image's VOLUME too, and --rm still removes anonymous volumes.
    local tmpc
    tmpc="$(real create "$I" true)" && real commit --change 'VOLUME /data' "$tmpc" labgpu-test:vol >/dev/null &&
        real rm "$tmpc" >/dev/null
    if expect_ok ovol-image-volume dk alice run -d --name pimgvol labgpu-test:vol sleep 120; then
        out="$(real inspect -f '{{range .Mounts}}{{if eq .Destination "/data"}}{{.Name}}{{end}}{{end}}' pimgvol)"
        expect_eq ovol-image-volume-owner alice "$(real volume inspect -f '{{index .Labels "labgpu.user"}}' "$out" 2>&1)"
    fi
    real rm -f -v pimgvol >/dev/null 2>&1
    n0="$(real volume ls -q | wc -l)"
    expect_ok ovol-rm-anonymous dk alice run --rm -v /anon2 labgpu-test:vol true
    n1="$(real volume ls -q | wc -l)"
    expect_eq ovol-rm-anonymous-gone "$n0" "$n1"
    # The administrator's volumes: everyone's, read-only unless listed writable.
    real volume create adminvol >/dev/null
    out="$(dk bob run --rm -v adminvol:/x "$I" sh -c 'touch /x/f 2>&1; ls /x' 2>&1)"
    if [[ $out == *"Read-only file system"* ]]; then pass ovol-admin-read-only; else fail ovol-admin-read-only "$out"; fi
    expect_fail ovol-admin-rm "made by the administrator" dk bob volume rm adminvol
    lg_policy_text | sed '/^\[users.bob\]/a writable_volumes = ["adminvol"]' >"$LG_POLICY"
    expect_ok ovol-admin-writable dk bob run --rm -v adminvol:/x "$I" touch /x/f && pass ovol-admin-writable
    lg_write_policy
    real volume rm -f av1 av-implicit adminvol >/dev/null 2>&1
    real rmi labgpu-test:vol >/dev/null 2>&1
    true
}

# Networks are owned too, and users' networks take no options that change the host.
case_owned_networks() {
    local out
    expect_ok onet-create dk alice network create an1 &&
        expect_eq onet-create-owner alice "$(real network inspect -f '{{index .Labels "labgpu.user"}}' an1 2>&1)"
    expect_fail onet-subnet "IPAM.Config" dk alice network create --subnet 10.99.0.0/24 an2
    expect_fail onet-gateway "IPAM.Config" dk alice network create --subnet 10.98.0.0/24 --gateway 10.98.0.1 an3
    expect_fail onet-driver-opt "Options" dk alice network create -o com.docker.network.bridge.name=eth0 an4
    expect_fail onet-macvlan "macvlan" dk alice network create -d macvlan an5
    expect_fail onet-connect-other "network \"an1\" belongs to another user" dk bob network connect an1 pb1
    expect_fail onet-run-other "network \"an1\" belongs to another user" dk bob run --rm --network an1 "$I" true
    expect_fail onet-inspect-other "belongs to another user" dk bob network inspect an1
    expect_fail onet-rm-other "belongs to another user" dk bob network rm an1
    out="$(dk bob network ls --format '{{.Name}}' 2>&1)"
    if [[ $out == *an1* ]]; then fail onet-ls-own "bob sees an1: $out"; else pass onet-ls-own; fi
    expect_ok onet-run-own dk alice run --rm --network an1 "$I" true && pass onet-run-own
    real network create adminnet >/dev/null
    expect_ok onet-admin-usable dk bob run --rm --network adminnet "$I" true && pass onet-admin-usable
    expect_fail onet-admin-rm "made by the administrator" dk bob network rm adminnet
    expect_ok onet-rm-own dk alice network rm an1 && pass onet-rm-own
    real network rm adminnet >/dev/null 2>&1
    true
}

# One user's flood of half-sent requests (or a stranger's) must not starve another user.
case_flood() {
    local f="$LG_TMP/flood" t opened i
    mkdir -p "$f"
    chmod 777 "$f"
    as alice python3 "$LG_REPO/integration/flood.py" "$PSOCK" 5000 14 >"$f/alice" 2>&1 &
    local apid=$!
    for ((i = 0; i < 100; i++)); do grep -qs '^opened' "$f/alice" && break; sleep 0.1; done
    opened="$(awk '/^opened/ {print $2}' "$f/alice")"
    if [[ -n $opened ]] && ((opened <= 64)); then pass "flood-user-capped ($opened of 5000 held)"; else
        fail flood-user-capped "alice holds $opened connections: $(cat "$f/alice")"
    fi
    t="$(as bob curl -sS -o /dev/null -w '%{time_total}' --unix-socket "$PSOCK" http://docker/v1.41/containers/json 2>&1)"
    if awk -v t="$t" 'BEGIN { exit !(t + 0 > 0 && t + 0 < 1) }'; then
        pass "flood-other-user-ps (${t}s while alice holds $opened)"
    else
        fail flood-other-user-ps "bob's ps took $t s"
    fi
    as nobody python3 "$LG_REPO/integration/flood.py" "$PSOCK" 2000 1 >"$f/nobody" 2>&1 &
    local npid=$!
    for ((i = 0; i < 100; i++)); do grep -qs '^opened' "$f/nobody" && break; sleep 0.1; done
    opened="$(awk '/^opened/ {print $2}' "$f/nobody")"
    if [[ -n $opened ]] && ((opened <= 4)); then pass "flood-stranger-capped ($opened of 2000 held)"; else
        fail flood-stranger-capped "uid nobody holds $opened connections: $(cat "$f/nobody")"
    fi
    t="$(as bob curl -sS -o /dev/null -w '%{time_total}' --unix-socket "$PSOCK" http://docker/v1.41/containers/json 2>&1)"
    if awk -v t="$t" 'BEGIN { exit !(t + 0 > 0 && t + 0 < 1) }'; then
        pass "flood-stranger-other-user-ps (${t}s)"
    else
        fail flood-stranger-other-user-ps "bob's ps took $t s"
    fi
    wait "$apid" "$npid"
    # Headers must arrive within 10 s: after 14 s none of alice's half-sent requests is open.
    if grep -q '^still-open 0$' "$f/alice"; then pass flood-header-timeout; else
        fail flood-header-timeout "$(cat "$f/alice")"
    fi
}

# Owners come from the proxy's records: a docker-group member's label is not one.
case_provenance() {
    local id out
    out="$(real run --rm --runtime labgpu --label labgpu.user=bob "$I" sh -c 'ls /dev' 2>&1)"
    if [[ $out == *nvidia* ]]; then fail owner-group-member-label "got GPUs: $out"; else pass owner-group-member-label; fi
    if grep -q 'ignored_label="bob"' "$LG_TMP/labgpu.log"; then pass owner-label-ignored-logged; else
        fail owner-label-ignored-logged "$(tail -n 3 "$LG_TMP/labgpu.log")"
    fi
    id="$(real inspect -f '{{.Id}}' pa1 2>/dev/null)"
    if [[ -n $id && "$(cat "$LG_TMP/state/containers/$id" 2>&1)" == '{"owner":"alice"}' ]]; then
        pass owner-recorded
    else
        fail owner-recorded "no record for pa1 ($id): $(ls "$LG_TMP/state/containers" 2>&1)"
    fi
    # The administrator through the proxy: a labelled container is recorded too.
    if out="$(DOCKER_HOST="unix://$PSOCK" lg_docker run --rm --runtime labgpu --label labgpu.user=bob "$I" sh -c 'ls /dev' 2>&1)" &&
        [[ $out == *nvidia2* ]]; then
        pass owner-admin-through-proxy
    else
        fail owner-admin-through-proxy "$out"
    fi
    # verify names the container that claims an owner the proxy did not record.
    id="$(real run -d --runtime labgpu --label labgpu.user=bob "$I" sleep 60 2>&1)"
    out="$("$LG_BIN" verify --policy "$LG_POLICY" --root "$LG_EXEC_ROOT/runtime-runc/moby" 2>&1)"
    if [[ $(printf '%s\n' "$out" | grep "^${id:0:12}") == *"not created through the labgpu proxy"* ]]; then
        pass verify-unrecorded-owner
    else
        fail verify-unrecorded-owner "$out"
    fi
    real rm -f "$id" >/dev/null 2>&1
    # An image can carry the owner label into a container the proxy did not create: a build
    # step FROM an image labelled alice is bob's build, not alice's container.
    local tmpc ctx="$LG_TMP/build-lbl" step
    tmpc="$(real create "$I" true)" && real commit --change 'LABEL labgpu.user=alice' "$tmpc" labgpu-test:alicelabel >/dev/null &&
        real rm "$tmpc" >/dev/null
    mkdir -p "$ctx"
    printf 'FROM labgpu-test:alicelabel\nRUN sleep 15\n' >"$ctx/Dockerfile"
    chown -R "$(lg_user bob)" "$ctx"
    as bob env DOCKER_BUILDKIT=0 "$LG_DOCKER_CLI" build -q -t bob/slow "$ctx" >/dev/null 2>&1 &
    local bpid=$! i
    for ((i = 0; i < 50; i++)); do
        step="$(real ps -q --filter label=labgpu.user=alice --filter ancestor=labgpu-test:alicelabel 2>/dev/null | head -n 1)"
        [[ -n $step ]] && break
        sleep 0.2
    done
    if [[ -z $step ]]; then
        fail owner-build-step-label "bob's build step did not show up"
    else
        out="$(dk alice ps -q 2>&1)"
        if [[ $out == *"$step"* ]]; then fail owner-build-step-ps "alice lists bob's build step: $out"; else pass owner-build-step-ps; fi
        expect_fail owner-build-step-exec "belongs to another user" dk alice exec "$step" env
    fi
    wait "$bpid"
    expect_fail owner-commit-label "the owner label is the proxy's to set" \
        dk alice commit --change 'LABEL labgpu.user=bob' pa1 alice/labelled
    expect_status owner-build-label 403 "the owner label is the proxy's to set" \
        "$(api alice POST '/v1.41/build?labels=%7B%22labgpu.user%22%3A%22bob%22%7D' 2>&1)"
    real rmi labgpu-test:alicelabel bob/slow >/dev/null 2>&1
    true
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
    # Two requests on one curl command line: %{num_connects} is the number of new connections
    # each transfer opened, so "1" then "0" means the proxy kept the first one open and
    # served the second request on it (whatever curl's verbose wording of the day).
    local out
    out="$(as alice curl -sS --unix-socket "$PSOCK" -o /dev/null -o /dev/null \
        -w '%{http_code} %{num_connects}\n' http://docker/_ping http://docker/v1.41/version 2>&1)"
    expect_eq keepalive-two-requests $'200 1\n200 0' "$out"
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

# A tar of the file $2 under the name $3 in $1, as `tar --owner=0 --group=0 --mode=4755`
# makes it: readable by the test users.
arc_suid_tar() {
    local dir="$1" tarname="$2" member="$3"
    mkdir -p "$dir/m"
    printf '#!/bin/sh\nid\n' >"$dir/m/$member"
    tar --owner=0 --group=0 --mode=4755 -C "$dir/m" -cf "$dir/$tarname" "$member"
    chmod 644 "$dir/$tarname"
}

# arc_put USER TAR PATH: the raw API, as curl sends a tar; the body, then the status.
arc_put() {
    as "$1" curl -sS --unix-socket "$PSOCK" -X PUT -H 'Content-Type: application/x-tar' \
        --data-binary "@$2" -w '\n%{http_code}\n' "http://docker/v1.41/containers/parc/archive?path=$3"
}

# expect_owner NAME HOSTPATH "UID:GID MODE"
expect_owner() {
    expect_eq "$1" "$3" "$(stat -c '%u:%g %a' "$2" 2>&1)"
}

case_archive() {
    local home dir me out
    home="$(lg_home alice)"
    me="$(lg_uid alice):$(lg_gid alice)"
    dir="$LG_TMP/arc"
    mkdir -p "$dir"
    chmod 755 "$dir"
    # dockerd extracts into the binds it knows, those of the create request (the policy's
    # `mounts` are added by the runtime, out of dockerd's sight): alice's home as /h, her data
    # directory as /h/data.
    expect_ok arc-run dk alice run -d --name parc -v "$home:/h" -v "$LG_TMP/data/alice:/h/data" \
        "$I" sleep 300 || return 0
    # A root-owned 4755 file into alice's home: straight to dockerd (the admin, unchanged) it
    # lands setuid root, which is what the proxy is there to stop.
    arc_suid_tar "$dir" admin.tar .labgpu-e2e-admin
    if real cp - parc:/h <"$dir/admin.tar" >/dev/null 2>&1; then
        expect_owner arc-admin-unchanged "$home/.labgpu-e2e-admin" "0:0 4755"
    else
        fail arc-admin-unchanged "the admin's docker cp failed"
    fi
    rm -f "$home/.labgpu-e2e-admin"
    arc_suid_tar "$dir" suid.tar .labgpu-e2e-suid
    expect_ok arc-cp-setuid dk alice cp - parc:/h <"$dir/suid.tar" &&
        expect_owner arc-cp-setuid-owner "$home/.labgpu-e2e-suid" "$me 755"
    arc_suid_tar "$dir" curl.tar .labgpu-e2e-curl
    out="$(arc_put alice "$dir/curl.tar" /h 2>&1)"
    if [[ $out == *$'\n200' ]]; then
        expect_owner arc-curl-setuid-owner "$home/.labgpu-e2e-curl" "$me 755"
    else
        fail arc-curl-setuid "$out"
    fi
    # noOverwriteDirNonDir=false would let dockerd remove whole directories (others', in a
    # shared bind) that the archive replaces with files; absent, the proxy sets it true.
    out="$(as alice curl -sS --unix-socket "$PSOCK" -X PUT -H 'Content-Type: application/x-tar' \
        --data-binary "@$dir/curl.tar" -w '\n%{http_code}\n' \
        "http://docker/v1.41/containers/parc/archive?path=/h&noOverwriteDirNonDir=false")"
    expect_status arc-overwrite-dirs 403 "noOverwriteDirNonDir=false is not allowed" "$out"
    # Destination / with an entry h/x, and a destination that is a symlink planted in
    # the container pointing into the bind: both land in the home, rewritten.
    mkdir -p "$dir/root/h"
    printf 'x\n' >"$dir/root/h/.labgpu-e2e-via-root"
    tar --owner=0 --group=0 --mode=4755 -C "$dir/root" -cf "$dir/via-root.tar" h/.labgpu-e2e-via-root
    chmod 644 "$dir/via-root.tar"
    out="$(arc_put alice "$dir/via-root.tar" / 2>&1)"
    if [[ $out == *$'\n200' ]]; then
        expect_owner arc-dest-root-owner "$home/.labgpu-e2e-via-root" "$me 755"
    else
        fail arc-dest-root "$out"
    fi
    arc_suid_tar "$dir" planted.tar .labgpu-e2e-planted-suid
    if expect_ok arc-plant-symlink dk alice exec parc ln -s /h /tmp/planted; then
        out="$(arc_put alice "$dir/planted.tar" /tmp/planted 2>&1)"
        if [[ $out == *$'\n200' ]]; then
            expect_owner arc-planted-symlink-owner "$home/.labgpu-e2e-planted-suid" "$me 755"
        else
            fail arc-planted-symlink "$out"
        fi
    fi
    # A character device entry (/dev/mem's numbers): refused, nothing created.
    mkdir -p "$dir/dev"
    mknod "$dir/dev/.labgpu-e2e-mem" c 1 1
    tar --owner=0 --group=0 -C "$dir/dev" -cf "$dir/dev.tar" .labgpu-e2e-mem
    chmod 644 "$dir/dev.tar"
    expect_fail arc-char-device 'archive entry ".labgpu-e2e-mem" is a character device; device nodes cannot be copied' \
        dk alice cp - parc:/h <"$dir/dev.tar"
    if [[ -e $home/.labgpu-e2e-mem || -L $home/.labgpu-e2e-mem ]]; then
        fail arc-char-device-host "$(ls -l "$home/.labgpu-e2e-mem")"
    else
        pass arc-char-device-host
    fi
    out="$(arc_put alice "$dir/dev.tar" /h 2>&1)"
    if [[ $out == *'is a character device'* && $out == *$'\n403' ]]; then pass arc-char-device-curl; else
        fail arc-char-device-curl "$out"
    fi
    # Mid-stream: a 20 MiB file, then the device. The upload to dockerd is aborted; the file
    # before it may be there (dockerd extracts as it reads), the device is not. And the device
    # first, with 20 MiB after it still on its way.
    head -c $((20 << 20)) /dev/zero >"$dir/dev/.labgpu-e2e-before"
    tar --owner=0 --group=0 -C "$dir/dev" -cf "$dir/dev-late.tar" .labgpu-e2e-before .labgpu-e2e-mem
    tar --owner=0 --group=0 -C "$dir/dev" -cf "$dir/dev-early.tar" .labgpu-e2e-mem .labgpu-e2e-before
    chmod 644 "$dir/dev-late.tar" "$dir/dev-early.tar"
    expect_fail arc-char-device-late 'archive entry ".labgpu-e2e-mem" is a character device' \
        dk alice cp - parc:/h <"$dir/dev-late.tar"
    expect_fail arc-char-device-early 'archive entry ".labgpu-e2e-mem" is a character device' \
        dk alice cp - parc:/h <"$dir/dev-early.tar"
    if [[ -e $home/.labgpu-e2e-mem || -L $home/.labgpu-e2e-mem ]]; then
        fail arc-char-device-stream-host "$(ls -l "$home/.labgpu-e2e-mem")"
    else
        pass arc-char-device-stream-host
    fi
    rm -f "$home/.labgpu-e2e-before"
    # 20 MiB with curl (which sends Expect: 100-continue past 1 MiB), rewritten all the same.
    tar --owner=0 --group=0 --mode=4755 -C "$dir/dev" -cf "$dir/big.tar" .labgpu-e2e-before
    chmod 644 "$dir/big.tar"
    out="$(arc_put alice "$dir/big.tar" /h 2>&1)"
    if [[ $out == *$'\n200' ]]; then
        expect_eq arc-curl-big "$me 755 $((20 << 20))" \
            "$(stat -c '%u:%g %a %s' "$home/.labgpu-e2e-before" 2>&1)"
    else
        fail arc-curl-big "$out"
    fi
    rm -f "$home/.labgpu-e2e-before"
    # docker cp -a: dockerd would chown to the container's user.
    head -c 100000 /dev/urandom >"$dir/plain"
    chmod 644 "$dir/plain"
    expect_fail arc-cp-a 'copyUIDGID (docker cp -a) is not allowed' \
        dk alice cp -a "$dir/plain" parc:/h/.labgpu-e2e-a
    if [[ -e $home/.labgpu-e2e-a ]]; then fail arc-cp-a-host "$(ls -l "$home/.labgpu-e2e-a")"; else
        pass arc-cp-a-host
    fi
    # An ordinary docker cp still works, content and all.
    if expect_ok arc-cp-plain dk alice cp "$dir/plain" parc:/h/.labgpu-e2e-plain; then
        if cmp -s "$dir/plain" "$home/.labgpu-e2e-plain"; then pass arc-cp-plain-content; else
            fail arc-cp-plain-content "$(ls -l "$home/.labgpu-e2e-plain")"
        fi
        expect_owner arc-cp-plain-owner "$home/.labgpu-e2e-plain" "$me 644"
        expect_ok arc-cp-plain-inside dk alice exec parc md5sum /h/.labgpu-e2e-plain &&
            expect_eq arc-cp-plain-inside "$(md5sum <"$dir/plain" | cut -d' ' -f1)" "${OUT%% *}"
    fi
    # A directory with a hard link inside it and a symlink pointing out of it.
    mkdir -p "$dir/tree/.labgpu-e2e-tree/sub"
    printf 'one\n' >"$dir/tree/.labgpu-e2e-tree/sub/a"
    ln "$dir/tree/.labgpu-e2e-tree/sub/a" "$dir/tree/.labgpu-e2e-tree/b"
    ln -s /etc/shadow "$dir/tree/.labgpu-e2e-tree/shadow"
    chmod -R a+rX "$dir/tree"
    if expect_ok arc-cp-tree dk alice cp "$dir/tree/.labgpu-e2e-tree" parc:/h/; then
        local t="$home/.labgpu-e2e-tree"
        expect_eq arc-tree-hard-link "$(stat -c %i "$t/sub/a")" "$(stat -c %i "$t/b" 2>&1)"
        expect_eq arc-tree-symlink "/etc/shadow $(lg_uid alice)" "$(readlink "$t/shadow") $(stat -c %u "$t/shadow")"
        expect_eq arc-tree-owners "$me" "$(find "$t" -printf '%U:%G\n' | sort -u | tr -d '\n')"
    fi
    # A hard link to a file the archive did not bring: dockerd would link it and chown it to
    # the caller (here root's file in alice's home).
    printf 'secret\n' >"$home/.labgpu-e2e-rootfile"
    chown 0:0 "$home/.labgpu-e2e-rootfile"
    chmod 600 "$home/.labgpu-e2e-rootfile"
    mkdir -p "$dir/steal"
    printf 'x\n' >"$dir/steal/x"
    ln "$dir/steal/x" "$dir/steal/.labgpu-e2e-steal"
    tar -P --owner="$(lg_uid alice)" --group="$(lg_gid alice)" --numeric-owner --transform 'flags=h;s,^x$,.labgpu-e2e-rootfile,' \
        -C "$dir/steal" -cf "$dir/steal.tar" x .labgpu-e2e-steal
    tar --delete -f "$dir/steal.tar" x
    chmod 644 "$dir/steal.tar"
    # Straight to dockerd, root's file becomes alice's.
    real cp - parc:/h <"$dir/steal.tar" >/dev/null 2>&1
    expect_eq arc-hard-link-steal-admin "$me 2" "$(stat -c '%u:%g %h' "$home/.labgpu-e2e-rootfile")"
    rm -f "$home/.labgpu-e2e-steal"
    chown 0:0 "$home/.labgpu-e2e-rootfile"
    expect_fail arc-hard-link-steal 'is a hard link to ".labgpu-e2e-rootfile", which is not a file earlier in the archive' \
        dk alice cp - parc:/h <"$dir/steal.tar"
    expect_eq arc-hard-link-steal-host "0:0 600 1" "$(stat -c '%u:%g %a %h' "$home/.labgpu-e2e-rootfile")"
    tar -P --transform 'flags=h;s,^x$,../../../../etc/passwd,' -C "$dir/steal" -cf "$dir/up.tar" x .labgpu-e2e-steal
    tar --delete -f "$dir/up.tar" x
    chmod 644 "$dir/up.tar"
    local passwd_links
    passwd_links="$(stat -c %h /etc/passwd)"
    expect_fail arc-hard-link-up 'is a hard link to a name with a ".." component' \
        dk alice cp - parc:/h <"$dir/up.tar"
    expect_eq arc-hard-link-up-host "$passwd_links" "$(stat -c %h /etc/passwd)"
    if [[ -e $home/.labgpu-e2e-steal ]]; then fail arc-hard-link-none "$(ls -l "$home/.labgpu-e2e-steal")"; else
        pass arc-hard-link-none
    fi
    # A symlink out of the destination (/h/data, a bind of its own) and an entry through it:
    # the entry would land in /h, the home.
    mkdir -p "$dir/esc/a" "$dir/esc/b/.labgpu-e2e-up"
    ln -s /h "$dir/esc/a/.labgpu-e2e-up"
    printf 'e\n' >"$dir/esc/b/.labgpu-e2e-up/.labgpu-e2e-escaped"
    tar -cf "$dir/esc.tar" -C "$dir/esc/a" .labgpu-e2e-up -C "$dir/esc/b" .labgpu-e2e-up/.labgpu-e2e-escaped
    chmod 644 "$dir/esc.tar"
    # Straight to dockerd the entry does land there: dockerd 20.10 checks the symlink's
    # target as if rooted at the destination, then writes through it.
    real cp - parc:/h/data <"$dir/esc.tar" >/dev/null 2>&1
    if [[ -e $home/.labgpu-e2e-escaped ]]; then pass arc-through-symlink-admin; else
        fail arc-through-symlink-admin "no $home/.labgpu-e2e-escaped"
    fi
    rm -f "$home/.labgpu-e2e-escaped" "$LG_TMP/data/alice/.labgpu-e2e-up"
    expect_fail arc-through-symlink 'lies under ".labgpu-e2e-up", a symlink earlier in the archive' \
        dk alice cp - parc:/h/data <"$dir/esc.tar"
    if [[ -e $home/.labgpu-e2e-escaped ]]; then fail arc-through-symlink-host "$(ls -l "$home/.labgpu-e2e-escaped")"; else
        pass arc-through-symlink-host
    fi
    expect_ok arc-rm dk alice rm -f parc && pass arc-rm
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

# [groups.NAME]: a member of the host group with no [users] table of their own is a policy
# user through the proxy (uid -> passwd name -> the group's table), gets the group's GPUs,
# and stops being one on the request after `gpasswd -d`.
case_groups() {
    local ml dave
    ml="$(lg_group ml)"
    if ! lg_make_extra_users dave || ! { getent group "$ml" >/dev/null || groupadd "$ml"; } ||
        ! usermod -aG "$ml" "$(lg_extra dave)"; then
        fail groups-setup "useradd/groupadd/usermod failed"
        return
    fi
    dave="$(lg_extra dave)"
    { lg_policy_text; printf '\n[groups.%s]\ngpus = [3]\n' "$ml"; } >"$LG_POLICY.new"
    mv "$LG_POLICY.new" "$LG_POLICY"
    if expect_ok groups-member-through-proxy dk "$dave" run --rm "$I" sh -c 'ls -1d /dev/nvidia[0-9]* 2>/dev/null; cat /dev/nvidia3 2>&1; true'; then
        if [[ $(printf '%s\n' "$OUT" | grep -c '^/dev/nvidia') == 1 && $OUT == "/dev/nvidia3"$'\n'*"No such device or address"* ]]; then
            pass groups-member-through-proxy
        else
            fail groups-member-through-proxy "expected /dev/nvidia3 alone, opening as far as the driver (ENXIO): $OUT"
        fi
    fi
    if expect_ok groups-member-owner-label dk "$dave" run -d --name pg1 "$I" sleep 300; then
        expect_eq groups-member-owner-label "$dave" "$(real inspect -f '{{index .Config.Labels "labgpu.user"}}' pg1 2>&1)"
        real rm -f pg1 >/dev/null 2>&1
    fi
    gpasswd -d "$dave" "$ml" >/dev/null
    expect_fail groups-gpasswd-d-through-proxy "uid $(id -u "$dave") ($dave) is not a user in" dk "$dave" ps
    lg_write_policy
}

ALL_CASES="owner isolation refusals streams build buildkit volumes images owned_volumes owned_networks rawfields seccomp provenance policy groups keepalive archive flood load cleanup"
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
