#!/usr/bin/env bash
# The VM lane's job, run inside the VM (Debian trixie: systemd as PID 1, cgroup v2, Docker 26
# from Debian with the systemd cgroup driver) from the 9p share, which holds this script as
# job.sh, the labgpu .deb built on the host, and a copy of integration/.
#
# 1. install the .deb with apt: postinst registers the runtime and reloads the real
#    docker.service (running containers keep running, dockerd keeps its pid);
# 2. enable labgpu-proxy.service;
# 3. the e2e, proxy and fairshare suites against the system's Docker and the installed binary
#    (LABGPU_E2E_SYSTEM_DOCKER=1): /var/run/docker.sock, /run/labgpu/docker.sock, runc state in
#    /run/docker/runtime-runc/moby;
# 4. apt purge, and what the README says purge leaves: no runtime in daemon.json or docker info,
#    no unit, no socket, no /etc/labgpu.
# Prints one "NAME: N passed, N failed" line per part and exits 1 if any failed.
# shellcheck disable=SC2317,SC2016 # functions run through check/eventually; sh -c scripts
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")" || exit 2
SHARE="$PWD"
export DEBIAN_FRONTEND=noninteractive
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root LANG=C.UTF-8 # a systemd unit's environment has neither
DAEMON_JSON=/etc/docker/daemon.json
HOOK_LOG=/run/labgpu-e2e-hook.log
TMP="$(mktemp -d /tmp/labgpu-vm-job.XXXX)"

pass=0 fail=0
ok() {
    pass=$((pass + 1))
    printf 'ok   %s\n' "$*"
}
bad() {
    fail=$((fail + 1))
    printf 'FAIL %s\n' "$*"
}
# check DESCRIPTION COMMAND...: passes when the command succeeds.
check() {
    local what=$1
    shift
    if "$@" >"$TMP/check.out" 2>&1; then ok "$what"; else
        bad "$what"
        sed 's/^/     | /' "$TMP/check.out" | head -n 20
    fi
}
# eventually SECONDS COMMAND...: the command succeeds within SECONDS (Docker applies a reload
# asynchronously, after systemctl reload has returned).
eventually() {
    local limit=$1 i
    shift
    for ((i = 0; i < limit * 4; i++)); do
        "$@" && return 0
        sleep 0.25
    done
    "$@"
}
section() { printf '\n=== %s\n' "$*"; }
jqt() { jq -e "$@" >/dev/null; }
runtimes() { docker info --format '{{range $k, $v := .Runtimes}}{{$k}} {{end}}'; }
has_runtime() { [[ " $(runtimes) " == *" $1 "* ]]; }
lacks_runtime() { ! has_runtime "$1"; }
docker_pid() { systemctl show -p MainPID --value docker.service; }
default_runtime_is() { [[ $(docker info --format '{{.DefaultRuntime}}') == "$1" ]]; }

section "the machine"
echo "kernel $(uname -r); $(systemctl --version | head -n 1); /sys/fs/cgroup is $(stat -fc %T /sys/fs/cgroup)"
echo "docker $(docker version --format '{{.Server.Version}}'), $(runc --version | head -n 1), $(containerd --version | cut -d' ' -f3)"
echo "docker info: cgroup driver $(docker info --format '{{.CgroupDriver}}'), cgroup v$(docker info --format '{{.CgroupVersion}}'), runtimes: $(runtimes)"
check "systemd is PID 1" test "$(cat /proc/1/comm)" = systemd
check "cgroup v2 only (no devices.list)" sh -c 'test "$(stat -fc %T /sys/fs/cgroup)" = cgroup2fs && ! test -e /sys/fs/cgroup/devices'
check "docker.service is active" systemctl is-active --quiet docker.service
check "docker uses the systemd cgroup driver" test "$(docker info --format '{{.CgroupDriver}}')" = systemd

# `--gpus` needs nvidia-container-runtime-hook on dockerd's PATH when dockerd starts: a fake one
# that records its calls, as lib.sh makes for its private dockerd.
(
    # shellcheck source=integration/lib.sh
    source "$SHARE/integration/lib.sh"
    lg_write_fake_hook /usr/local/bin/nvidia-container-runtime-hook "$HOOK_LOG"
)
systemctl restart docker.service
check "docker.service restarted with the fake nvidia hook on its PATH" systemctl is-active --quiet docker.service

# A container that must outlive the install and the purge: Docker is reloaded, never restarted.
mkdir -p "$TMP/bb/bin"
cp /bin/busybox "$TMP/bb/bin/busybox"
ln -s busybox "$TMP/bb/bin/sh"
ln -s busybox "$TMP/bb/bin/sleep"
tar -C "$TMP/bb" -c . | docker import - labgpu-vm-keep:latest >/dev/null
docker run -d --name labgpu-vm-keep labgpu-vm-keep:latest sleep 100000 >/dev/null
pid_before="$(docker_pid)"

section "apt install ./$(basename "$SHARE"/labgpu_*.deb)"
check "no $DAEMON_JSON before the install" test ! -e "$DAEMON_JSON"
if apt install -y "$SHARE"/labgpu_*.deb >"$TMP/apt.log" 2>&1; then ok "apt install succeeds"; else
    bad "apt install succeeds"
fi
grep -E 'labgpu|rror' "$TMP/apt.log" | grep -v '^WARNING: apt does not' | sed 's/^/     | /'
check "postinst says it reloaded Docker" grep -q 'labgpu: reloaded Docker' "$TMP/apt.log"
check "daemon.json created with only the runtime" \
    jqt '. == {"runtimes": {"labgpu": {"path": "/usr/bin/labgpu"}}}' "$DAEMON_JSON"
check "docker info lists the labgpu runtime" eventually 15 has_runtime labgpu
check "dockerd was reloaded, not restarted (same pid)" test "$(docker_pid)" = "$pid_before"
check "a running container kept running" \
    test "$(docker inspect -f '{{.State.Running}}' labgpu-vm-keep)" = true
check "labgpu-proxy.service installed, not enabled" \
    sh -c '! systemctl is-enabled --quiet labgpu-proxy.service && systemctl cat labgpu-proxy.service >/dev/null'
check "labgpu policy check passes on the shipped policy" labgpu policy check
# The suites count the machine's containers: theirs only.
docker rm -f labgpu-vm-keep >/dev/null

section "systemctl enable --now labgpu-proxy"
# The README's step: the proxy needs a [proxy] table (with it the runtime believes only the
# proxy's records of who owns a container).
check "labgpu-proxy refuses to start without [proxy]" \
    sh -c 'timeout 5 labgpu proxy --listen /run/labgpu-nostart.sock 2>&1 | grep -q "has no \[proxy\] table"'
check "[proxy] uncommented in the shipped policy" \
    sh -c "sed -i 's/^# \\[proxy\\]\$/[proxy]/' /etc/labgpu/policy.toml && grep -qx '\\[proxy\\]' /etc/labgpu/policy.toml && labgpu policy check"
check "systemctl enable --now labgpu-proxy succeeds" systemctl enable --now labgpu-proxy.service
check "labgpu-proxy.service is active" eventually 10 systemctl is-active --quiet labgpu-proxy.service
check "it listens on /run/labgpu/docker.sock" eventually 10 test -S /run/labgpu/docker.sock
check "root through the proxy reaches Docker" \
    eventually 10 curl -sf --unix-socket /run/labgpu/docker.sock http://docker/_ping

section "Docker's own CDI on (for the e2e suite's docker_cdi case)"
# Docker 26 applies `--device nvidia.com/gpu=N` itself only with features.cdi, read at start.
check "features.cdi set in $DAEMON_JSON, docker.service restarted" \
    sh -c "jq '.features.cdi = true' $DAEMON_JSON >$DAEMON_JSON.new && mv $DAEMON_JSON.new $DAEMON_JSON && systemctl restart docker.service"
check "docker info lists CDI spec directories" \
    eventually 15 sh -c 'docker info --format "{{json .CDISpecDirs}}" | grep -q /etc/cdi'
# The purge checks below are about the package: it must not restart dockerd from here on.
pid_before="$(docker_pid)"
package_install_pass=$pass package_install_fail=$fail

# The lane's LABGPU_VM_SUITES and LABGPU_VM_ONLY (lane.sh writes them into the share).
SUITES="$(cat "$SHARE/suites" 2>/dev/null || echo e2e proxy fairshare)"
ONLY="$(cat "$SHARE/only" 2>/dev/null)"

# suite NAME SCRIPT: one suite against the system Docker; its summary line is kept.
suite() {
    local name=$1 script=$2 t0=$SECONDS rc=0
    if [[ " $SUITES " != *" $name "* ]]; then
        echo "$name: skipped (LABGPU_VM_SUITES=$SUITES)" >>"$TMP/times"
        return 0
    fi
    section "$name suite (integration/$script, system Docker, /usr/bin/labgpu)${ONLY:+, groups: $ONLY}"
    # The timeouts only catch hangs: an emulated CPU on a busy host is slow (20 concurrent
    # `docker run`s took over 120 s each under load, and the e2e suite over 20 minutes).
    LABGPU_E2E_SYSTEM_DOCKER=1 LABGPU_E2E_BIN=/usr/bin/labgpu LABGPU_E2E_HOOK_LOG="$HOOK_LOG" \
        LABGPU_E2E_TIMEOUT=300 LABGPU_E2E_ONLY="$ONLY" \
        timeout 2400 bash "$SHARE/integration/$script" 2>&1 | tee "$TMP/$name.log" || rc=$?
    local line
    line="$(grep -E '^[0-9]+ passed, [0-9]+ failed$' "$TMP/$name.log" | tail -n 1)"
    [[ -n $line ]] || line="0 passed, 1 failed"
    echo "$name: $line" >>"$TMP/summary"
    echo "$name: $((SECONDS - t0)) s" >>"$TMP/times"
    return "$rc"
}
: >"$TMP/summary"
: >"$TMP/times"
suite e2e e2e.sh
# Builds through the proxy run their steps under labgpu only as Docker's default runtime
# (classic builder) and with the BuildKit drop-in (BuildKit), whose environment applies when
# dockerd starts: this job restarts Docker, the package never does.
check "labgpu setup docker --default --buildkit, daemon-reload, restart docker (for builds)" \
    sh -c 'labgpu setup docker --default --buildkit && systemctl daemon-reload && systemctl restart docker'
check "docker.service is active again" eventually 30 systemctl is-active --quiet docker.service
check "docker info: default runtime labgpu" eventually 15 default_runtime_is labgpu
check "dockerd runs BuildKit's steps with labgpu (DOCKER_BUILDKIT_RUNC_COMMAND)" \
    sh -c 'tr "\0" "\n" <"/proc/$(systemctl show -p MainPID --value docker.service)/environ" | grep -qx DOCKER_BUILDKIT_RUNC_COMMAND=/usr/bin/labgpu'
pid_before="$(docker_pid)"
suite proxy proxy.sh
# Per-user parents as systemd slices (cgroup v2), through labgpu-proxy.service.
suite fairshare fairshare.sh

section "a login through labgpu-shell (the installed proxy, Docker's own CLI)"
pass_before=$pass fail_before=$fail
LOGIN=lgvm-login
check "labgpu-shell is a link to labgpu, listed in /etc/shells" \
    sh -c 'test "$(readlink /usr/bin/labgpu-shell)" = labgpu && grep -qx /usr/bin/labgpu-shell /etc/shells'
useradd -m "$LOGIN"
check "labgpu user add --login" labgpu user add "$LOGIN" --login
check "its login shell is /usr/bin/labgpu-shell" \
    test "$(getent passwd "$LOGIN" | cut -d: -f7)" = /usr/bin/labgpu-shell
check "labgpu user set: a login image" \
    labgpu user set "$LOGIN" --set 'session={ image = "labgpu-vm-keep:latest" }'
# The image has only busybox's sh and sleep: the host name is read with sh's own read.
check "a login runs its command in the user's container, with its exit status" \
    sh -c 'out=$(runuser -u '"$LOGIN"' -- /usr/bin/labgpu-shell -c "read h </etc/hostname; echo \$h; exit 4" 2>&1); rc=$?; echo "$out"; [ $rc = 4 ] && case $out in '"$LOGIN"'-*) true ;; *) false ;; esac'
check "the login container runs under labgpu, owned by the user" \
    sh -c 'test "$(docker ps --filter label=labgpu.session='"$LOGIN"' --format "{{.Label \"labgpu.user\"}} {{.State}}")" = "'"$LOGIN"' running" && test "$(docker inspect -f "{{.HostConfig.Runtime}}" "session-'"$LOGIN"'")" = labgpu'
check "labgpu user rm --containers remove" labgpu user rm "$LOGIN" --containers remove
check "the login container is gone" \
    test -z "$(docker ps -aq --filter label=labgpu.session="$LOGIN")"
userdel -r "$LOGIN" >/dev/null 2>&1
echo "login: $((pass - pass_before)) passed, $((fail - fail_before)) failed" >>"$TMP/summary"

section "apt purge labgpu (labgpu made Docker's default runtime first)"
pass=0 fail=0
mapfile -t left < <(docker ps -aq --filter label=labgpu.user)
((${#left[@]} == 0)) || docker rm -f "${left[@]}" >/dev/null 2>&1
docker run -d --runtime runc --name labgpu-vm-keep labgpu-vm-keep:latest sleep 100000 >/dev/null
check "labgpu setup docker --default, systemctl reload docker" \
    sh -c 'labgpu setup docker --default && systemctl reload docker'
check "docker info: default runtime labgpu" eventually 15 default_runtime_is labgpu
if apt purge -y labgpu >"$TMP/purge.log" 2>&1; then ok "apt purge succeeds"; else bad "apt purge succeeds"; fi
grep -E 'labgpu|rror' "$TMP/purge.log" | grep -v '^WARNING: apt does not' | sed 's/^/     | /'
check "package is gone" sh -c '! dpkg -s labgpu >/dev/null 2>&1'
check "prerm says it reloaded Docker" grep -q 'labgpu: reloaded Docker' "$TMP/purge.log"
check "the BuildKit drop-in is gone" test ! -e /etc/systemd/system/docker.service.d/labgpu-buildkit.conf
check "prerm says BuildKit builds fail until Docker restarts" grep -q 'BuildKit builds on this Docker fail until it restarts' "$TMP/purge.log"
check "no runtimes.labgpu left in daemon.json" jqt '(.runtimes // {}) | has("labgpu") | not' "$DAEMON_JSON"
check "docker info no longer lists labgpu" eventually 15 lacks_runtime labgpu
check "docker info: default runtime runc again" eventually 15 default_runtime_is runc
check "labgpu-proxy.service stopped" sh -c '! systemctl is-active --quiet labgpu-proxy.service'
check "its socket /run/labgpu/docker.sock is gone" test ! -e /run/labgpu/docker.sock
check "the unit file is gone" test ! -e /lib/systemd/system/labgpu-proxy.service -a ! -e /usr/lib/systemd/system/labgpu-proxy.service
check "no enablement symlink left" sh -c '! find /etc/systemd/system -name "labgpu-proxy*" | grep -q .'
check "systemd no longer knows the unit" \
    sh -c 'systemctl daemon-reload; ! systemctl cat labgpu-proxy.service >/dev/null 2>&1'
check "/usr/bin/labgpu, /etc/labgpu, /var/lib/labgpu and /var/log/labgpu.log are gone" \
    test ! -e /usr/bin/labgpu -a ! -e /etc/labgpu -a ! -e /var/lib/labgpu -a ! -e /var/log/labgpu.log
check "dockerd was never restarted by the package (same pid)" test "$(docker_pid)" = "$pid_before"
check "a container started before the purge still runs" \
    test "$(docker inspect -f '{{.State.Running}}' labgpu-vm-keep)" = true
check "test users are gone" sh -c '! getent passwd | grep -q "^lgt-"'
check "/etc/shells no longer lists labgpu-shell" sh -c '! grep -qx /usr/bin/labgpu-shell /etc/shells'
docker rm -f labgpu-vm-keep >/dev/null 2>&1
docker rmi labgpu-vm-keep:latest >/dev/null 2>&1
echo "package: $((package_install_pass + pass)) passed, $((package_install_fail + fail)) failed" >>"$TMP/summary"

section "summary"
cat "$TMP/times"
cat "$TMP/summary"
rc=0
grep -qv ' 0 failed$' "$TMP/summary" && rc=1
rm -rf "$TMP"
exit "$rc"
