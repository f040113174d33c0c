#!/usr/bin/env bash
# End-to-end: a private dockerd with `--runtime labgpu`, fake GPUs and users alice, bob,
# carol. Each case drives the real docker CLI and asserts what the container sees (or that
# docker reports labgpu's refusal). Prints `N passed, N failed`; exits 1 if any failed.
#
#   bash integration/e2e.sh               (as root; see lib.sh for the LABGPU_E2E_* knobs)
#   LABGPU_E2E_ONLY='caps mounts' bash integration/e2e.sh    run only these case groups
#   LABGPU_E2E_RUNTIME=runc ...           exercise the harness itself without labgpu
set -uo pipefail

# shellcheck source=integration/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

RT="$LG_RUNTIME"
I="$LG_IMAGE"
A=(--label labgpu.user=alice)
B=(--label labgpu.user=bob)
C=(--label labgpu.user=carol)

docker() { lg_docker "$@"; }

# Bit numbers of the policy's 11 default capabilities: CHOWN 0, DAC_OVERRIDE 1, FOWNER 3,
# FSETID 4, KILL 5, SETGID 6, SETUID 7, SETPCAP 8, NET_BIND_SERVICE 10, SYS_CHROOT 18,
# AUDIT_WRITE 29.
cap_mask() {
    local m=0 b
    for b in "$@"; do m=$((m | (1 << b))); done
    printf '%016x' "$m"
}
MASK="$(cap_mask 0 1 3 4 5 6 7 8 10 18 29)"
[[ $MASK == 00000000200405fb ]] || lg_die "capability mask arithmetic: $MASK"

ALICE_DEVS="/dev/nvidia-uvm /dev/nvidia-uvm-tools /dev/nvidia0 /dev/nvidia1 /dev/nvidiactl"
BOB_DEVS="/dev/nvidia-uvm /dev/nvidia-uvm-tools /dev/nvidia2 /dev/nvidiactl"
CAROL_DEVS=""
LS_NVIDIA='ls -1d /dev/nvidia* 2>/dev/null; true'

# Sorted, space-joined lines of $1 that look like /dev/nvidia* paths.
nvidia_set() {
    printf '%s\n' "$1" | grep '^/dev/nvidia' | LC_ALL=C sort | tr '\n' ' ' | sed 's/ $//'
}

# Field of /proc/<pid>/status from the output of `cat /proc/self/status`.
status_field() { printf '%s\n' "$2" | awk -v k="$1:" '$1 == k { print $2 }'; }

# CapX values are hex; true when every bit of $1 is in $2.
within() { (((16#$1 & ~16#$2) == 0)); }

# ---------------------------------------------------------------------------------------------
# Cases

case_devices() {
    if expect_run_ok devices-alice "${A[@]}" "$I" sh -c "$LS_NVIDIA"; then
        expect_eq devices-alice "$ALICE_DEVS" "$(nvidia_set "$RUN_OUT")"
    fi
    if expect_run_ok devices-bob "${B[@]}" "$I" sh -c "$LS_NVIDIA"; then
        expect_eq devices-bob "$BOB_DEVS" "$(nvidia_set "$RUN_OUT")"
    fi
    if expect_run_ok devices-carol "${C[@]}" "$I" sh -c "$LS_NVIDIA"; then
        expect_eq devices-carol "$CAROL_DEVS" "$(nvidia_set "$RUN_OUT")"
    fi
    # Allowed nodes open as far as the (absent) driver: ENXIO, not EPERM from the cgroup.
    local n
    for n in nvidia0 nvidiactl nvidia-uvm; do
        if expect_run_ok "open-allowed-alice-$n" "${A[@]}" "$I" sh -c "cat /dev/$n 2>&1; true"; then
            if [[ $RUN_OUT == *"No such device or address"* ]]; then
                pass "open-allowed-alice-$n"
            else
                fail "open-allowed-alice-$n" "expected ENXIO (No such device or address), got: $RUN_OUT"
            fi
        fi
    done
}

case_device_flags() {
    # --device of another user's GPU: the container runs, the node is not there.
    if expect_run_ok device-flag-nvidia2-alice "${A[@]}" --device "$LG_TMP/dev/nvidia2:/dev/nvidia2" \
        "$I" sh -c "$LS_NVIDIA"; then
        expect_eq device-flag-nvidia2-alice "$ALICE_DEVS" "$(nvidia_set "$RUN_OUT")"
    fi
    # --device of the whole GPU under another name.
    if expect_run_ok device-flag-renamed-alice "${A[@]}" --device "$LG_TMP/dev/nvidia3:/dev/gpu" \
        "$I" sh -c 'ls /dev/gpu 2>&1; true'; then
        if [[ $RUN_OUT == *"No such file"* ]]; then
            pass device-flag-renamed-alice
        else
            fail device-flag-renamed-alice "/dev/gpu (nvidia3) should be absent: $RUN_OUT"
        fi
    fi
    # A non-GPU host device (a fake /dev/mem, c 1:1) is not passed through either.
    [[ -e $LG_TMP/dev/mem ]] || mknod -m 666 "$LG_TMP/dev/mem" c 1 1
    if expect_run_ok device-flag-mem-bob "${B[@]}" --device "$LG_TMP/dev/mem:/dev/mem" "$I" \
        sh -c 'ls /dev/mem 2>&1; grep "^c 1:1 " /sys/fs/cgroup/devices/devices.list; true'; then
        if [[ $RUN_OUT == *"No such file"* && $RUN_OUT != *"c 1:1 "*[rw]* ]]; then
            pass device-flag-mem-bob
        else
            fail device-flag-mem-bob "/dev/mem (c 1:1) should be absent and not readable: $RUN_OUT"
        fi
    fi
    # --device-cgroup-rule 'c 195:* rwm': the kernel must refuse others' GPUs. Asked of the
    # kernel, not of a cgroup file (devices.list is cgroup v1 only; on v2 runc attaches an eBPF
    # program): with CAP_MKNOD granted for this case, root in the container makes a node per
    # minor and opens it. An allowed node gets as far as the absent driver (ENXIO), a denied
    # one stops at the device cgroup (EPERM). c 240:0 (no driver) stands for any other device:
    # only a wildcard rule would let it open.
    lg_policy_text | sed -e '/^\[users\.\(alice\|bob\)\]$/a capabilities = ["CAP_MKNOD"]' \
        -e 's/^run_as = "owner"$/run_as = "image"/' >"$LG_POLICY"
    # shellcheck disable=SC2016 # expanded by the container's shell
    local probe='for n in 195:0 195:1 195:2 195:3 240:0; do
        if ! e="$(mknod /tmp/n c "${n%:*}" "${n#*:}" 2>&1)"; then echo "$n mknod failed: $e"; continue; fi
        e="$(cat /tmp/n 2>&1 >/dev/null)"
        case $e in
        *"No such device or address"*) echo "$n allowed" ;;
        *"Operation not permitted"*) echo "$n denied" ;;
        *) echo "$n $e" ;;
        esac
        rm -f /tmp/n
    done'
    local u args want
    for u in alice bob; do
        if [[ $u == alice ]]; then
            args=("${A[@]}")
            want=$'195:0 allowed\n195:1 allowed\n195:2 denied\n195:3 denied\n240:0 denied'
        else
            args=("${B[@]}")
            want=$'195:0 denied\n195:1 denied\n195:2 allowed\n195:3 denied\n240:0 denied'
        fi
        if expect_run_ok "cgroup-rule-$u" "${args[@]}" --device-cgroup-rule 'c 195:* rwm' \
            "$I" sh -c "$probe"; then
            expect_eq "cgroup-rule-$u" "$want" "$RUN_OUT"
        fi
    done
    lg_write_policy
    # --gpus all: docker adds NVIDIA_VISIBLE_DEVICES and the (fake) nvidia hook; neither may act.
    rm -f "$LG_HOOK_LOG"
    if expect_run_ok gpus-all-alice "${A[@]}" --gpus all "$I" sh -c "$LS_NVIDIA; env"; then
        local bad=""
        [[ $(nvidia_set "$RUN_OUT") == "$ALICE_DEVS" ]] || bad+="devices: $(nvidia_set "$RUN_OUT")"$'\n'
        [[ -e $LG_HOOK_LOG ]] && bad+="nvidia-container-runtime-hook ran: $(cat "$LG_HOOK_LOG")"$'\n'
        printf '%s\n' "$RUN_OUT" | grep -qx 'NVIDIA_VISIBLE_DEVICES=void' || bad+="NVIDIA_VISIBLE_DEVICES is not void"$'\n'
        if [[ -z $bad ]]; then pass gpus-all-alice; else fail gpus-all-alice "$bad$RUN_OUT"; fi
    fi
    if expect_run_ok nvidia-visible-devices-env "${A[@]}" -e NVIDIA_VISIBLE_DEVICES=all "$I" \
        sh -c 'env | grep ^NVIDIA_VISIBLE_DEVICES='; then
        expect_eq nvidia-visible-devices-env "NVIDIA_VISIBLE_DEVICES=void" "$RUN_OUT"
    fi
    # The same from the image's ENV.
    local tmpc
    if tmpc="$(docker create --runtime runc "$I" true 2>&1)" &&
        docker commit --change 'ENV NVIDIA_VISIBLE_DEVICES=all' "$tmpc" labgpu-test:nvenv >/dev/null 2>&1; then
        docker rm "$tmpc" >/dev/null 2>&1
        if expect_run_ok nvidia-visible-devices-image "${A[@]}" labgpu-test:nvenv \
            sh -c 'env | grep ^NVIDIA_VISIBLE_DEVICES='; then
            expect_eq nvidia-visible-devices-image "NVIDIA_VISIBLE_DEVICES=void" "$RUN_OUT"
        fi
    else
        fail nvidia-visible-devices-image "could not build labgpu-test:nvenv: $tmpc"
    fi
    expect_refused cgroup-rule-allow-all privileged "${A[@]}" --device-cgroup-rule 'a *:* rwm' "$I" true
}

# check_caps NAME EXPECTED_EFF RUN-ARGS...: CapEff, CapPrm as expected, CapBnd == mask, NNP 1.
check_caps() {
    local name="$1" want_eff="$2"
    shift 2
    if expect_run_ok "$name" "$@" "$I" cat /proc/self/status; then
        local eff prm bnd nnp bad=""
        eff="$(status_field CapEff "$RUN_OUT")"
        prm="$(status_field CapPrm "$RUN_OUT")"
        bnd="$(status_field CapBnd "$RUN_OUT")"
        nnp="$(status_field NoNewPrivs "$RUN_OUT")"
        [[ $eff == "$want_eff" ]] || bad+="CapEff $eff, want $want_eff"$'\n'
        [[ $prm == "$want_eff" ]] || bad+="CapPrm $prm, want $want_eff"$'\n'
        [[ $bnd == "$MASK" ]] || bad+="CapBnd $bnd, want $MASK"$'\n'
        [[ $nnp == 1 ]] || bad+="NoNewPrivs $nnp, want 1"$'\n'
        if [[ -z $bad ]]; then pass "$name"; else fail "$name" "$bad"; fi
    fi
}

case_caps() {
    check_caps caps-default-bob "$MASK" "${B[@]}"
    check_caps caps-add-all-bob "$MASK" "${B[@]}" --cap-add ALL
    check_caps caps-add-sys-admin-bob "$MASK" "${B[@]}" --cap-add SYS_ADMIN
    check_caps caps-add-all-alice 0000000000000000 "${A[@]}" --cap-add ALL
    check_caps caps-nnp-false-bob "$MASK" "${B[@]}" --security-opt no-new-privileges=false
}

case_refusals() {
    expect_refused refuse-privileged privileged "${A[@]}" --privileged "$I" true
    expect_refused refuse-no-label label "$I" true
    expect_refused refuse-unknown-user mallory --label labgpu.user=mallory "$I" true
    expect_refused refuse-docker-sock "$LG_SOCK" "${B[@]}" -v "$LG_SOCK:/var/run/docker.sock" "$I" true
    expect_refused refuse-host-root "/host" "${B[@]}" -v /:/host "$I" true
    expect_refused refuse-other-home "$(lg_home bob)" "${A[@]}" -v "$(lg_home bob):/x" "$I" true
    expect_refused refuse-other-data "$LG_TMP/data/bob" "${A[@]}" -v "$LG_TMP/data/bob:/x" "$I" true
    expect_refused refuse-host-pid "pid" "${B[@]}" --pid host "$I" true
    expect_refused refuse-host-network "network" "${B[@]}" --network host "$I" true
    expect_refused refuse-host-uts "uts" "${B[@]}" --uts host "$I" true
    expect_refused refuse-host-ipc "ipc" "${B[@]}" --ipc host "$I" true
    expect_refused refuse-seccomp-unconfined "unconfined" "${B[@]}" --security-opt seccomp=unconfined "$I" true
    echo '{"defaultAction": "SCMP_ACT_ALLOW"}' >"$LG_TMP/seccomp-allow.json"
    expect_refused refuse-seccomp-allow-all "allow_unconfined" "${B[@]}" \
        --security-opt "seccomp=$LG_TMP/seccomp-allow.json" "$I" true
    expect_refused refuse-systempaths "unconfined" "${B[@]}" --security-opt systempaths=unconfined "$I" true
    # A broken policy refuses every create, naming the file and the line.
    lg_policy_text | sed '/^\[users.alice\]/a gpuz = [0]' >"$LG_POLICY"
    expect_refused refuse-broken-policy "$LG_POLICY" "${A[@]}" "$I" true
    if [[ $RUN_ERR != *line* ]]; then
        fail refuse-broken-policy-line "message lacks 'line': $RUN_ERR"
    else
        pass refuse-broken-policy-line
    fi
    lg_write_policy
    expect_run_ok policy-restored "${A[@]}" "$I" true && pass policy-restored
}

case_mounts() {
    local alice_uid home
    alice_uid="$(lg_uid alice)"
    home="$(lg_home alice)"
    local script='id -u; grep -E " /(workspace|workspace/data|data) " /proc/mounts | cut -d" " -f2;
        touch /workspace/.labgpu-e2e-owned /workspace/data/.labgpu-e2e-owned 2>&1; true'
    if expect_run_ok mounts-alice "${A[@]}" "$I" sh -c "$script"; then
        local lines
        lines="$(printf '%s\n' "$RUN_OUT" | sed 1d | grep '^/' | LC_ALL=C sort | tr '\n' ' ')"
        expect_eq mounts-alice-uid "$alice_uid" "$(printf '%s\n' "$RUN_OUT" | head -n 1)"
        expect_eq mounts-alice-workspace "/workspace /workspace/data " "$lines" "$RUN_OUT"
        expect_eq mounts-alice-file-owner "$alice_uid $alice_uid" \
            "$(stat -c %u "$home/.labgpu-e2e-owned" 2>&1) $(stat -c %u "$LG_TMP/data/alice/.labgpu-e2e-owned" 2>&1)" "$RUN_OUT"
        rm -f "$home/.labgpu-e2e-owned"
    fi
    if expect_run_ok run-u0-group-add-alice "${A[@]}" -u 0 --group-add 0 "$I" id; then
        expect_eq run-u0-group-add-alice "uid=$alice_uid(alice) gid=$(lg_gid alice)(alice)" "$RUN_OUT"
    fi
    # Host paths: symlinks and .. are resolved before the check; volumes backed by a bind are
    # checked as that bind; plain volumes, tmpfs, --init and the owner's own subdirs are fine.
    ln -sfn "$(lg_home bob)" "$home/.labgpu-e2e-link"
    expect_refused refuse-symlink-to-other-home "$(lg_home bob)" "${A[@]}" -v "$home/.labgpu-e2e-link:/x" "$I" true
    rm -f "$home/.labgpu-e2e-link"
    expect_refused refuse-dotdot-to-other-home "$(lg_home bob)" "${A[@]}" -v "$home/../$(basename "$(lg_home bob)"):/x" "$I" true
    expect_refused refuse-mount-flag-root "/host" "${B[@]}" --mount type=bind,src=/,dst=/host "$I" true
    expect_refused refuse-bind-backed-volume "$(lg_home bob)" "${A[@]}" --mount \
        "type=volume,src=lg-bobvol,dst=/x,volume-opt=type=none,volume-opt=o=bind,volume-opt=device=$(lg_home bob)" "$I" true
    docker volume rm lg-bobvol >/dev/null 2>&1
    mkdir -p "$home/.labgpu-e2e-sub"
    chown "$(lg_user alice):" "$home/.labgpu-e2e-sub"
    expect_run_ok bind-own-subdir-alice "${A[@]}" -v "$home/.labgpu-e2e-sub:/x" "$I" ls -d /x && pass bind-own-subdir-alice
    rmdir "$home/.labgpu-e2e-sub"
    if expect_run_ok named-volume-bob "${B[@]}" -v lg-vol:/v "$I" sh -c 'echo hi >/v/f && cat /v/f'; then
        expect_eq named-volume-bob hi "$RUN_OUT"
    fi
    docker volume rm lg-vol >/dev/null 2>&1
    expect_run_ok tmpfs-bob "${B[@]}" --tmpfs /t "$I" sh -c 'grep -q " /t tmpfs " /proc/mounts' && pass tmpfs-bob
    expect_run_ok init-bob "${B[@]}" --init "$I" true && pass init-bob
    echo "bob's secret" >"$LG_TMP/data/bob/secret"
    if expect_run_ok mounts-bob "${B[@]}" "$I" sh -c 'cat /data/secret; grep -c " /workspace" /proc/mounts; true'; then
        expect_eq mounts-bob "bob's secret
0" "$RUN_OUT"
    fi
    if expect_run_ok mounts-carol "${C[@]}" "$I" sh -c 'grep -cE " /(workspace|data)" /proc/mounts; true'; then
        expect_eq mounts-carol "0" "$RUN_OUT"
    fi
}

case_exec() {
    local ca cb alice_uid
    alice_uid="$(lg_uid alice)"
    ca="$(docker run -d --runtime "$RT" "${A[@]}" "$I" sleep 1000 2>&1)" || {
        fail exec-setup "docker run -d as alice: $ca"
        return
    }
    cb="$(docker run -d --runtime "$RT" "${B[@]}" "$I" sleep 1000 2>&1)" || {
        fail exec-setup "docker run -d as bob: $cb"
        docker rm -f "$ca" >/dev/null 2>&1
        return
    }
    local out eff bnd nnp
    for who in alice bob; do
        local id want_eff
        if [[ $who == alice ]]; then id=$ca want_eff=0000000000000000; else id=$cb want_eff=$MASK; fi
        if out="$(docker exec --privileged "$id" cat /proc/self/status 2>&1)"; then
            eff="$(status_field CapEff "$out")" bnd="$(status_field CapBnd "$out")" nnp="$(status_field NoNewPrivs "$out")"
            if [[ -n $eff ]] && within "$eff" "$MASK" && [[ $eff == "$want_eff" && $bnd == "$MASK" && $nnp == 1 ]]; then
                pass "exec-privileged-$who"
            else
                fail "exec-privileged-$who" "CapEff $eff (want $want_eff) CapBnd $bnd (want $MASK) NoNewPrivs $nnp"
            fi
        else
            # Refusing the exec outright would also be safe; report it so it is a decision.
            fail "exec-privileged-$who" "docker exec --privileged failed: $out"
        fi
        if out="$(docker exec "$id" sh -c "$LS_NVIDIA; env" 2>&1)"; then
            local want=$ALICE_DEVS
            [[ $who == bob ]] && want=$BOB_DEVS
            expect_eq "exec-devices-$who" "$want" "$(nvidia_set "$out")"
            if printf '%s\n' "$out" | grep -qx 'NVIDIA_VISIBLE_DEVICES=void'; then pass "exec-env-$who"; else fail "exec-env-$who" "$out"; fi
        else
            fail "exec-devices-$who" "$out"
        fi
    done
    if out="$(docker exec -u 0 "$ca" id -u 2>&1)"; then
        expect_eq exec-u0-alice "$alice_uid" "$out"
    else
        fail exec-u0-alice "docker exec -u 0 failed: $out"
    fi
    if out="$(docker exec -e NVIDIA_VISIBLE_DEVICES=all "$ca" sh -c 'echo $NVIDIA_VISIBLE_DEVICES' 2>&1)"; then
        expect_eq exec-env-override-alice "void" "$out"
    else
        fail exec-env-override-alice "$out"
    fi
    docker rm -f "$ca" "$cb" >/dev/null 2>&1
}

# Joining another owner's container namespaces (--pid/--network/--ipc container:X) would hand
# over its processes (and, through /proc/PID/root, its mounts), its network and its /dev/shm.
case_namespaces() {
    local cb ca
    echo "bob's secret" >"$LG_TMP/data/bob/secret"
    cb="$(docker run -d --runtime "$RT" "${B[@]}" --ipc shareable "$I" sleep 1000 2>&1)" || {
        fail ns-setup "docker run -d as bob: $cb"
        return
    }
    ca="$(docker run -d --runtime "$RT" "${A[@]}" --ipc shareable "$I" sleep 1000 2>&1)" || {
        fail ns-setup "docker run -d as alice: $ca"
        docker rm -f "$cb" >/dev/null 2>&1
        return
    }
    local ns
    for ns in pid network ipc; do
        expect_refused "ns-join-$ns-other-owner" "$ns" "${C[@]}" "--$ns" "container:$cb" "$I" \
            sh -c 'cat /proc/1/root/data/secret 2>&1; true'
        [[ $ns == pid && $RUN_OUT == *"bob's secret"* ]] &&
            fail ns-join-pid-other-owner-data "carol read bob's /data/secret through /proc/1/root: $RUN_OUT"
        # The same owner may share namespaces between her containers.
        expect_run_ok "ns-join-$ns-same-owner" "${A[@]}" "--$ns" "container:$ca" "$I" true &&
            pass "ns-join-$ns-same-owner"
    done
    # The same through the back door: bob's /dev/shm and /etc/hosts as plain bind mounts.
    local f dest
    for f in mounts/shm:/dev/shm hosts:/etc/hosts; do
        dest="${f#*:}"
        expect_refused "bind-other-owner-${f%%:*}" "belongs to container $cb (bob)" "${C[@]}" \
            -v "$LG_DATA_ROOT/containers/$cb/${f%%:*}:$dest" "$I" true
        expect_run_ok "bind-same-owner-${f%%:*}" "${A[@]}" \
            -v "$LG_DATA_ROOT/containers/$ca/${f%%:*}:$dest" "$I" true &&
            pass "bind-same-owner-${f%%:*}"
    done
    docker rm -f "$ca" "$cb" >/dev/null 2>&1
}

# step NAME CMD...: a docker command that must succeed.
step() {
    local name="$1" out
    shift
    if out="$("$@" 2>&1)"; then pass "$name"; else fail "$name" "$* -> $out"; fi
}

state_is() { # name, container, want
    local s
    s="$(docker inspect -f '{{.State.Status}}' "$2" 2>&1)"
    expect_eq "$1" "$3" "$s"
}

case_passthrough() {
    local c alice_uid
    alice_uid="$(lg_uid alice)"
    c="$(docker run -d --runtime "$RT" "${A[@]}" --name lg-pass "$I" sh -c 'echo hello-from-alice; exec sleep 1000' 2>&1)" || {
        fail passthrough-run "$c"
        return
    }
    state_is passthrough-running lg-pass running
    local out i
    for ((i = 0; i < 25; i++)); do
        out="$(docker logs lg-pass 2>&1)"
        [[ -n $out ]] && break
        sleep 0.2
    done
    expect_eq passthrough-logs hello-from-alice "$out"
    out="$(docker top lg-pass 2>&1)"
    if [[ $out == *"sleep 1000"* ]]; then pass passthrough-top; else fail passthrough-top "$out"; fi
    out="$(docker exec lg-pass id -u 2>&1)"
    expect_eq passthrough-exec "$alice_uid" "$out"
    step passthrough-pause docker pause lg-pass
    state_is passthrough-paused lg-pass paused
    step passthrough-unpause docker unpause lg-pass
    state_is passthrough-unpaused lg-pass running
    step passthrough-update docker update --memory 64m --memory-swap 128m lg-pass
    expect_eq passthrough-update-applied 67108864 "$(docker inspect -f '{{.HostConfig.Memory}}' lg-pass 2>&1)"
    step passthrough-stop docker stop -t 1 lg-pass
    state_is passthrough-stopped lg-pass exited
    step passthrough-start docker start lg-pass
    state_is passthrough-started lg-pass running
    out="$(docker exec lg-pass sh -c "$LS_NVIDIA" 2>&1)"
    expect_eq passthrough-start-devices "$ALICE_DEVS" "$(nvidia_set "$out")"
    step passthrough-restart docker restart -t 1 lg-pass
    state_is passthrough-restarted lg-pass running
    out="$(docker exec lg-pass sh -c "$LS_NVIDIA" 2>&1)"
    expect_eq passthrough-restart-devices "$ALICE_DEVS" "$(nvidia_set "$out")"
    step passthrough-kill docker kill lg-pass
    step passthrough-rm docker rm -f lg-pass
    if docker inspect lg-pass >/dev/null 2>&1; then fail passthrough-gone "lg-pass still exists"; else pass passthrough-gone; fi
}

# NVIDIA's CDI spec (shaped like `nvidia-ctk cdi generate`): the common driver files and each
# owned GPU's files are mounted read-only, never another GPU's or the "all" device's; the
# spec's hook runs with the explicit env labgpu gives it, not the image's.
write_cdi_fixture() {
    local d="$LG_TMP/driver" f
    mkdir -p "$d" "$LG_TMP/cdi" "$LG_TMP/cdi-hook"
    echo "fake libcuda" >"$d/libcuda.so.1"
    for f in gpu0 gpu1 gpu2 gpu3 all; do echo "$f" >"$d/$f"; done
    printf '#!/bin/sh\nenv >"%s/cdi-hook/$$.env"\ncat >/dev/null\nexit 0\n' "$LG_TMP" >"$d/nvidia-cdi-hook"
    chmod 755 "$d/nvidia-cdi-hook"
    {
        printf 'cdiVersion: 0.5.0\nkind: nvidia.com/gpu\ndevices:\n'
        for f in 0 1 2 3; do
            printf -- '- name: "%s"\n  containerEdits:\n    deviceNodes:\n    - path: /dev/nvidia%s\n' "$f" "$f"
            printf '    mounts:\n    - hostPath: %s/gpu%s\n      containerPath: /usr/share/cdi/gpu%s\n      options: [ro, nosuid, nodev, bind]\n' "$d" "$f" "$f"
        done
        printf -- '- name: all\n  containerEdits:\n    deviceNodes:\n'
        for f in 0 1 2 3; do printf '    - path: /dev/nvidia%s\n' "$f"; done
        printf '    mounts:\n    - hostPath: %s/all\n      containerPath: /usr/share/cdi/all\n      options: [ro, bind]\n' "$d"
        printf 'containerEdits:\n  env:\n  - NVIDIA_VISIBLE_DEVICES=void\n  - CDI_FIXTURE=1\n'
        printf '  deviceNodes:\n  - path: /dev/nvidiactl\n'
        printf '  hooks:\n  - hookName: createContainer\n    path: %s/nvidia-cdi-hook\n    args: [nvidia-cdi-hook, update-ldcache]\n' "$d"
        printf '  mounts:\n  - hostPath: %s/libcuda.so.1\n    containerPath: /usr/lib/x86_64-linux-gnu/libcuda.so.1\n    options: [ro, nosuid, nodev, bind]\n' "$d"
    } >"$LG_TMP/cdi/nvidia.yaml"
    lg_policy_text | sed "/^\[gpus\]/a cdi_spec = \"$LG_TMP/cdi/nvidia.yaml\"" >"$LG_POLICY"
}

CDI_LS='cat /usr/lib/x86_64-linux-gnu/libcuda.so.1 2>&1; ls /usr/share/cdi 2>&1; echo "env=$CDI_FIXTURE"; grep libcuda /proc/self/mounts; true'

# The /usr/share/cdi entries in $RUN_OUT, space-joined.
cdi_files() { printf '%s\n' "$RUN_OUT" | grep -E '^(gpu[0-9]|all)$' | tr '\n' ' ' | sed 's/ $//'; }

case_cdi() {
    write_cdi_fixture
    rm -f "$LG_TMP"/cdi-hook/*
    if expect_run_ok cdi-alice "${A[@]}" -e LABGPU_CANARY=leak "$I" sh -c "$CDI_LS"; then
        expect_eq cdi-alice-lib "fake libcuda" "$(printf '%s\n' "$RUN_OUT" | head -n 1)"
        expect_eq cdi-alice-devices "gpu0 gpu1" "$(cdi_files)" "$RUN_OUT"
        expect_eq cdi-alice-env "env=1" "$(printf '%s\n' "$RUN_OUT" | grep '^env=')"
        local m envs
        m="$(printf '%s\n' "$RUN_OUT" | grep ' /usr/lib/x86_64-linux-gnu/libcuda.so.1 ')"
        if [[ $m == *" ro,"*nosuid*nodev* ]]; then pass cdi-alice-mount-options; else fail cdi-alice-mount-options "$m"; fi
        envs="$(cat "$LG_TMP"/cdi-hook/*.env 2>/dev/null)"
        if [[ -z $envs ]]; then
            fail cdi-hook-env "the CDI hook did not run"
        elif [[ $envs == *LABGPU_CANARY* || $envs == *CDI_FIXTURE* ]]; then
            fail cdi-hook-env "the hook saw the container's env: $envs"
        elif [[ $envs != *"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"* ]]; then
            fail cdi-hook-env "no explicit PATH in the hook's env: $envs"
        else
            pass cdi-hook-env
        fi
    fi
    if expect_run_ok cdi-bob "${B[@]}" "$I" sh -c "$CDI_LS"; then
        expect_eq cdi-bob-devices "gpu2" "$(cdi_files)" "$RUN_OUT"
    fi
    if expect_run_ok cdi-carol "${C[@]}" "$I" sh -c "$CDI_LS"; then
        if [[ $RUN_OUT == *"fake libcuda"* || -n $(cdi_files) ]]; then
            fail cdi-carol "carol (no GPU) got driver files: $RUN_OUT"
        else
            pass cdi-carol
        fi
    fi
    # A spec any user could write would let them run hooks as root: refused.
    chmod 666 "$LG_TMP/cdi/nvidia.yaml"
    expect_refused cdi-untrusted-spec "can be written by users other than root" "${A[@]}" "$I" true
    chmod 644 "$LG_TMP/cdi/nvidia.yaml"
    lg_write_policy
}

# Docker 26+ with `features.cdi` applies `--device vendor.com/class=name` itself (nodes, cgroup
# rules, mounts, env, hooks land in the spec as if asked for one by one) before the runtime
# runs. labgpu treats a CDI-named GPU like `--device /dev/nvidiaN`: another user's GPU and
# whatever its CDI device carries are dropped, the container runs with the owner's own GPUs
# and driver edits (from [gpus] cdi_spec). Two kinds of device: "N" carries only its node,
# "mN" also a mount (to /usr/share/cdi/gpuN).
docker_cdi_dirs() { docker info --format '{{json .CDISpecDirs}}' 2>/dev/null; }

write_docker_cdi_spec() { # file, kind
    local n
    {
        printf 'cdiVersion: 0.5.0\nkind: %s\ndevices:\n' "$2"
        for n in 0 1 2 3; do
            printf -- '- name: "%s"\n  containerEdits:\n    deviceNodes:\n' "$n"
            printf '    - {path: /dev/nvidia%s, hostPath: %s/dev/nvidia%s}\n' "$n" "$LG_TMP" "$n"
            printf -- '- name: "m%s"\n  containerEdits:\n    deviceNodes:\n' "$n"
            printf '    - {path: /dev/nvidia%s, hostPath: %s/dev/nvidia%s}\n' "$n" "$LG_TMP" "$n"
            printf '    mounts:\n    - {hostPath: %s/driver/gpu%s, containerPath: /usr/share/cdi/gpu%s, options: [ro, bind]}\n' \
                "$LG_TMP" "$n" "$n"
        done
        printf -- '- name: all\n  containerEdits:\n    deviceNodes:\n'
        for n in 0 1 2 3; do printf '    - {path: /dev/nvidia%s, hostPath: %s/dev/nvidia%s}\n' "$n" "$LG_TMP" "$n"; done
        printf '    mounts:\n    - {hostPath: %s/driver/all, containerPath: /usr/share/cdi/all, options: [ro, bind]}\n' "$LG_TMP"
        printf 'containerEdits:\n  env: [DOCKER_CDI=%s]\n' "$LG_RUN_ID"
    } >"$1.new"
    chmod 644 "$1.new"
    mv "$1.new" "$1"
}

case_docker_cdi() {
    local dirs dir kind
    dirs="$(docker_cdi_dirs)"
    if [[ -z $dirs || $dirs == null || $dirs == "[]" ]]; then
        printf 'skip docker_cdi (Docker %s does not apply CDI devices itself: it needs Docker 26+ with "features": {"cdi": true}; docker info CDISpecDirs: %s)\n' \
            "$(docker version -f '{{.Server.Version}}' 2>/dev/null)" "${dirs:-none}"
        return 0
    fi
    dir="$(printf '%s' "$dirs" | jq -r '.[0]')"
    kind="nvidia.com/lgt-$LG_RUN_ID"
    write_cdi_fixture
    mkdir -p "$dir"
    LG_CDI_FILE="$dir/labgpu-e2e-$LG_RUN_ID.yaml"
    write_docker_cdi_spec "$LG_CDI_FILE" "$kind"
    sleep 1 # dockerd's CDI cache picks new files up from inotify events
    local probe="$LS_NVIDIA; $CDI_LS; echo docker_cdi=\$DOCKER_CDI"
    # The control: without labgpu, dockerd itself puts GPU 2's node and file in.
    if lg_docker run --rm --runtime runc --device "$kind=m2" "$I" sh -c "$probe" >"$LG_TMP/cdi-control.out" 2>&1 &&
        grep -qx /dev/nvidia2 "$LG_TMP/cdi-control.out" && grep -qx gpu2 "$LG_TMP/cdi-control.out"; then
        pass docker-cdi-control-runc
    else
        fail docker-cdi-control-runc "dockerd did not apply $kind=m2: $(cat "$LG_TMP/cdi-control.out")"
    fi
    local name who dev want_devs want_files
    for name in node-other-alice mount-other-alice mount-own-bob all-carol; do
        case $name in
        node-other-alice) who=("${A[@]}") dev=2 want_devs=$ALICE_DEVS want_files="gpu0 gpu1" ;;
        mount-other-alice) who=("${A[@]}") dev=m2 want_devs=$ALICE_DEVS want_files="gpu0 gpu1" ;;
        mount-own-bob) who=("${B[@]}") dev=m2 want_devs=$BOB_DEVS want_files="gpu2" ;;
        all-carol) who=("${C[@]}") dev=all want_devs=$CAROL_DEVS want_files="" ;;
        esac
        if expect_run_ok "docker-cdi-$name" "${who[@]}" --device "$kind=$dev" "$I" sh -c "$probe"; then
            expect_eq "docker-cdi-$name-devices" "$want_devs" "$(nvidia_set "$RUN_OUT")" "$RUN_OUT"
            expect_eq "docker-cdi-$name-files" "$want_files" "$(cdi_files)" "$RUN_OUT"
            expect_eq "docker-cdi-$name-env" "docker_cdi=" "$(printf '%s\n' "$RUN_OUT" | grep '^docker_cdi=')"
        fi
    done
    rm -f "$LG_CDI_FILE"
    LG_CDI_FILE=""
    lg_write_policy
}

# ---------------------------------------------------------------------------------------------
# Routes to host root a docker-group member (or a proxy user, see proxy.sh) could try: the
# runtime must refuse or neutralise each whatever Docker was asked.

# Local volumes: what the kernel has mounted at _data decides, not the options file.
case_volumes() {
    local v
    docker volume create -o type=proc -o device=proc lgv-proc >/dev/null
    expect_refused volume-type-proc 'volume "lgv-proc" is not a plain Docker volume' \
        "${A[@]}" -v lgv-proc:/x "$I" cat /x/sys/kernel/core_pattern
    docker volume create -o type=sysfs -o device=sysfs lgv-sysfs >/dev/null
    expect_refused volume-type-sysfs 'a sysfs mount of sysfs' "${B[@]}" -v lgv-sysfs:/x "$I" true
    mkdir -p "$LG_TMP/ovl/u" "$LG_TMP/ovl/w"
    docker volume create -o type=overlay -o device=overlay \
        -o "o=lowerdir=$LG_TMP/data/bob,upperdir=$LG_TMP/ovl/u,workdir=$LG_TMP/ovl/w" lgv-ovl >/dev/null
    echo "bob's secret" >"$LG_TMP/data/bob/secret"
    expect_refused volume-overlay-other-home 'a overlay mount' "${A[@]}" -v lgv-ovl:/x "$I" cat /x/secret
    # A relative device is resolved against dockerd's working directory.
    docker volume create -o type=none -o o=bind -o device=. lgv-rel >/dev/null
    expect_refused volume-relative-bind 'is not a plain Docker volume' "${A[@]}" -v lgv-rel:/x "$I" ls /x
    expect_refused volume-inline-proc 'is not a plain Docker volume' "${A[@]}" \
        --mount type=volume,src=lgv-inline,dst=/x,volume-opt=type=proc,volume-opt=device=proc "$I" true
    docker volume create -o type=tmpfs -o device=tmpfs -o o=size=1m lgv-tmpfs >/dev/null
    if expect_run_ok volume-tmpfs "${B[@]}" -v lgv-tmpfs:/t "$I" sh -c 'grep -c " /t tmpfs " /proc/mounts'; then
        expect_eq volume-tmpfs 1 "$RUN_OUT"
    fi
    # A bind of a directory on an existing tmpfs is a host path, not a fresh tmpfs.
    mkdir -p "$LG_TMP/hosttmpfs"
    mount -t tmpfs -o size=1m tmpfs "$LG_TMP/hosttmpfs"
    mkdir -p "$LG_TMP/hosttmpfs/secrets"
    docker volume create -o type=none -o o=bind -o "device=$LG_TMP/hosttmpfs/secrets" lgv-tmpbind >/dev/null
    expect_refused volume-bind-of-tmpfs 'is not a plain Docker volume' "${B[@]}" -v lgv-tmpbind:/x "$I" ls /x
    docker volume rm -f lgv-tmpbind >/dev/null 2>&1
    umount "$LG_TMP/hosttmpfs"
    # The administrator's bind-backed volume, named in alice's mounted_volumes: hers only.
    docker volume create -o type=none -o o=bind -o "device=$LG_TMP/data/alice" lgv-admin >/dev/null
    lg_policy_text | sed '/^\[users.alice\]/a mounted_volumes = ["lgv-admin"]' >"$LG_POLICY"
    expect_run_ok volume-mounted-listed "${A[@]}" -v lgv-admin:/x "$I" ls /x && pass volume-mounted-listed
    expect_refused volume-mounted-unlisted 'mounted_volumes' "${B[@]}" -v lgv-admin:/x "$I" ls /x
    lg_write_policy
    for v in lgv-proc lgv-sysfs lgv-ovl lgv-rel lgv-inline lgv-tmpfs lgv-admin; do
        docker volume rm -f "$v" >/dev/null 2>&1
    done
}

# api_run NAME JSON: creates and runs a container through the raw API (fields the CLI never
# sends), as the docker-group member; sets RUN_OUT, RUN_ERR, RUN_RC like run_ctr.
api_run() {
    local name="$1" body="$2" out
    docker rm -f "$name" >/dev/null 2>&1
    out="$(curl -sS --unix-socket "$LG_SOCK" -X POST -H 'Content-Type: application/json' \
        -d "$body" "http://docker/v1.41/containers/create?name=$name" 2>&1)"
    if [[ $out != *'"Id"'* ]]; then
        RUN_RC=1 RUN_OUT="" RUN_ERR="create: $out"
        return
    fi
    RUN_RC=0
    RUN_ERR="$(docker start -a "$name" 2>&1 >/dev/null)" || RUN_RC=$?
    RUN_OUT="$(docker logs "$name" 2>&1)"
    docker rm -f "$name" >/dev/null 2>&1
}

# HostConfig.MaskedPaths/ReadonlyPaths replace Docker's defaults when set: /proc/sys would be
# writable (core_pattern: host root). The probe writes core_pattern's own value back, so a
# failure of the rule changes nothing on the host.
SYSPATHS_PROBE='grep -E " /proc/(sys|keys|kcore) " /proc/self/mountinfo | cut -d" " -f5,6 | sort;
    cat /proc/sys/kernel/core_pattern >/tmp/cp && { cat /tmp/cp >/proc/sys/kernel/core_pattern; } 2>&1; true'

case_system_paths() {
    local probe name hc
    # The probe as a JSON string (no python on every test machine): \ and " escaped,
    # newlines as \n.
    probe="${SYSPATHS_PROBE//\\/\\\\}"
    probe="${probe//\"/\\\"}"
    probe="\"${probe//$'\n'/\\n}\""
    for name in masked readonly both; do
        case $name in
        masked) hc='"MaskedPaths":["/proc/kcore"]' ;;
        readonly) hc='"ReadonlyPaths":["/proc/bus"]' ;;
        both) hc='"MaskedPaths":["/proc/kcore"],"ReadonlyPaths":["/proc/irq"]' ;;
        esac
        api_run lg-sp "{\"Image\":\"$I\",\"Cmd\":[\"sh\",\"-c\",$probe],
            \"Labels\":{\"labgpu.user\":\"bob\"},\"HostConfig\":{\"Runtime\":\"$RT\",$hc}}"
        local bad=""
        [[ $RUN_RC == 0 ]] || bad+="exit $RUN_RC: $RUN_ERR"$'\n'
        printf '%s\n' "$RUN_OUT" | grep -q '^/proc/sys ro,' || bad+="/proc/sys is not mounted read-only"$'\n'
        printf '%s\n' "$RUN_OUT" | grep -q '^/proc/keys ' || bad+="/proc/keys is not masked"$'\n'
        [[ $RUN_OUT == *"Read-only file system"* ]] || bad+="core_pattern was writable"$'\n'
        if [[ -z $bad ]]; then pass "syspaths-$name"; else fail "syspaths-$name" "$bad$RUN_OUT"; fi
    done
    # Docker 28+: --security-opt writable-cgroups=true drops ro from the cgroup mount.
    local version
    version="$(docker version -f '{{.Server.Version}}')"
    if ((${version%%.*} >= 28)); then
        if expect_run_ok syspaths-writable-cgroups "${B[@]}" --security-opt writable-cgroups=true "$I" \
            sh -c 'grep " /sys/fs/cgroup " /proc/self/mountinfo | cut -d" " -f6 | cut -d, -f1'; then
            expect_eq syspaths-writable-cgroups ro "$RUN_OUT"
        fi
    else
        printf 'skip syspaths-writable-cgroups (Docker %s has no writable-cgroups)\n' "$version"
    fi
}

# With --cap-add SYS_ADMIN dockerd's profile allows unshare, mount, setns, bpf and unfiltered
# clone; labgpu cuts SYS_ADMIN, and the profile with it. The probe: an unprivileged user
# namespace, which needs no capability, only the syscall.
USERNS_PROBE='unshare -U true 2>&1 && echo userns-created; grep ^Seccomp: /proc/self/status'

case_seccomp() {
    local c
    if ! unshare -U true 2>/dev/null; then
        printf 'skip seccomp-userns cases (this kernel refuses unprivileged user namespaces)\n'
    else
        for c in "SYS_ADMIN" "ALL"; do
            if expect_run_ok "seccomp-cap-add-$c" "${B[@]}" --cap-add "$c" "$I" sh -c "$USERNS_PROBE"; then
                if [[ $RUN_OUT != *userns-created* && $RUN_OUT == *"Seccomp:"*2* ]]; then
                    pass "seccomp-cap-add-$c"
                else
                    fail "seccomp-cap-add-$c" "unshare -U worked or no filter: $RUN_OUT"
                fi
            fi
        done
    fi
    # A profile that allows every syscall Docker allows with all capabilities, by name.
    local gen
    gen="$(docker version -f '{{.Server.Version}}')"
    "$LG_BIN" seccomp default --docker "$gen" --cap-add ALL >"$LG_TMP/seccomp-all.json"
    expect_refused seccomp-custom-all-caps 'seccomp_profiles' "${B[@]}" \
        --security-opt "seccomp=$LG_TMP/seccomp-all.json" "$I" true
    echo '{"defaultAction": "SCMP_ACT_TRACE"}' >"$LG_TMP/seccomp-trace.json"
    expect_refused seccomp-trace-default 'allows every syscall it does not list' "${B[@]}" \
        --security-opt "seccomp=$LG_TMP/seccomp-trace.json" "$I" true
    # The administrator lists a profile by the hash `labgpu seccomp hash` prints: it runs.
    local hash
    hash="$("$LG_BIN" seccomp hash --docker "$gen" "$LG_TMP/seccomp-all.json")"
    lg_policy_text | sed "/^\[users.bob\]/a seccomp_profiles = [\"$hash\"]" >"$LG_POLICY"
    expect_run_ok seccomp-listed-profile "${B[@]}" --security-opt "seccomp=$LG_TMP/seccomp-all.json" \
        "$I" true && pass seccomp-listed-profile
    expect_refused seccomp-listed-for-bob-only 'seccomp_profiles' "${A[@]}" \
        --security-opt "seccomp=$LG_TMP/seccomp-all.json" "$I" true
    lg_write_policy
}

# The owner label is read from Docker's data root, never from a path a mount names: a fake
# containers/<id>/config.v2.json in alice's home, bound at /etc/hostname, must not make her
# container bob's.
case_provenance() {
    local home fake id f
    home="$(lg_home alice)"
    for f in hostname resolv.conf; do
        fake="$home/.labgpu-e2e-fake"
        rm -rf "$fake"
        mkdir -p "$fake/containers/x"
        : >"$fake/containers/x/$f"
        id="$(docker create --runtime "$RT" "${A[@]}" -v "$fake/containers/x/$f:/etc/$f" "$I" \
            sh -c "$LS_NVIDIA" 2>&1)" || { fail "owner-forged-$f" "create: $id"; continue; }
        mkdir -p "$fake/containers/$id"
        echo '{"Config":{"Labels":{"labgpu.user":"bob"}}}' >"$fake/containers/$id/config.v2.json"
        # Root's, as container root (or an archive upload) makes them.
        chown -R 0:0 "$fake"
        chmod -R go-w "$fake"
        local out
        out="$(docker start -a "$id" 2>&1)"
        expect_eq "owner-forged-$f" "$ALICE_DEVS" "$(nvidia_set "$out")" "$out"
        docker rm -f "$id" >/dev/null 2>&1
        rm -rf "$fake"
    done
    # `labgpu policy check` compares the pinned data root with the one Docker reports.
    local out
    out="$("$LG_BIN" policy check --docker "$LG_SOCK" "$LG_POLICY" 2>&1)"
    if [[ $out != *docker_root* ]]; then pass policy-check-docker-root; else fail policy-check-docker-root "$out"; fi
    lg_policy_text | sed "s|^docker_root = .*|docker_root = \"/srv/elsewhere\"|" >"$LG_POLICY"
    out="$("$LG_BIN" policy check --docker "$LG_SOCK" "$LG_POLICY" 2>&1)"
    if [[ $out == *"error: [runtime] docker_root is /srv/elsewhere but Docker's data root is $LG_DATA_ROOT"* ]]; then
        pass policy-check-docker-root-differs
    else
        fail policy-check-docker-root-differs "$out"
    fi
    lg_write_policy
}

# labgpu verify against what dockerd runs: clean, then a --runtime runc bypass, then drift.
VERIFY_ROOT() { printf '%s' "$LG_EXEC_ROOT/runtime-runc/moby"; }

# run_verify: sets VERIFY_OUT and VERIFY_RC.
run_verify() {
    # In dockerd's network namespace, as an administrator runs it next to the real dockerd.
    local in_ns=()
    [[ -n ${LG_NETNS_PID:-} ]] && in_ns=(nsenter "--net=/proc/$LG_NETNS_PID/ns/net" --)
    VERIFY_RC=0
    VERIFY_OUT="$(${in_ns[@]+"${in_ns[@]}"} "$LG_BIN" verify --policy "$LG_POLICY" \
        --root "$(VERIFY_ROOT)" 2>&1)" || VERIFY_RC=$?
}

# verify_finding NAME PATTERN RUN-ARGS...: a --runtime runc container (a docker-group member
# walking around labgpu) started with RUN-ARGS makes verify exit 1 with PATTERN in its row.
verify_finding() {
    local name="$1" pattern="$2" id row
    shift 2
    id="$(docker run -d --runtime runc "$@" "$I" sleep 300 2>&1)" || {
        fail "$name" "docker run: $id"
        return
    }
    run_verify
    row="$(printf '%s\n' "$VERIFY_OUT" | grep "^${id:0:12}")"
    if [[ $VERIFY_RC == 1 && $row == *"$pattern"* ]]; then pass "$name"; else
        fail "$name" "exit $VERIFY_RC, want 1 and '$pattern' in its row:
$VERIFY_OUT"
    fi
    docker rm -f "$id" >/dev/null 2>&1
}

case_verify_bypass() {
    if [[ $RT != labgpu ]]; then
        printf 'skip verify_bypass (runtime %s)\n' "$RT"
        return
    fi
    verify_finding verify-host-pid "shares the host's pid namespace" --pid host
    verify_finding verify-host-network "shares the host's network namespace" --network host
    [[ -e $LG_TMP/dev/loopx ]] || mknod -m 660 "$LG_TMP/dev/loopx" b 7 222
    verify_finding verify-block-device "can open block device" --device "$LG_TMP/dev/loopx:/dev/loopx"
    verify_finding verify-no-seccomp "without a seccomp filter" --security-opt seccomp=unconfined
    verify_finding verify-writable-proc-sys "/proc/sys is writable" --security-opt systempaths=unconfined
    docker volume create -o type=proc -o device=proc lgv-vproc >/dev/null
    verify_finding verify-proc-volume "a proc filesystem is mounted at /x" -v lgv-vproc:/x
    docker volume rm -f lgv-vproc >/dev/null 2>&1
    # Reachability is what the kernel allows: a rule for every GPU is a bypass reaching them
    # all; a node planted in /dev that the device cgroup denies reaches nothing.
    verify_finding verify-cgroup-rule-gpus "can reach GPU 3" --device-cgroup-rule 'c 195:* rwm'
    local id row
    id="$(docker run -d --runtime runc "$I" sleep 300 2>&1)"
    if docker exec "$id" mknod /dev/nvidia3 c 195 3 2>&1 && docker exec "$id" ls /dev/nvidia3 >/dev/null 2>&1; then
        run_verify
        row="$(printf '%s\n' "$VERIFY_OUT" | grep "^${id:0:12}")"
        if [[ -n $row && $row != *"GPU 3"* ]]; then pass verify-planted-node; else
            fail verify-planted-node "a denied node in /dev counted as reachable: $row"
        fi
    else
        fail verify-planted-node "could not plant /dev/nvidia3 in a --runtime runc container"
    fi
    docker rm -f "$id" >/dev/null 2>&1
    # What labgpu itself runs stays clean.
    docker run -d --name lg-vb-ok --runtime "$RT" "${B[@]}" --cap-add SYS_ADMIN "$I" sleep 300 >/dev/null
    run_verify
    if [[ $VERIFY_RC == 0 ]]; then pass verify-labgpu-clean; else fail verify-labgpu-clean "$VERIFY_OUT"; fi
    docker rm -f lg-vb-ok >/dev/null 2>&1
}

case_verify() {
    if [[ $RT != labgpu ]]; then
        printf 'skip verify (runtime %s)\n' "$RT"
        return
    fi
    docker run -d --name lg-v-alice --runtime "$RT" "${A[@]}" "$I" sleep 600 >/dev/null
    docker run -d --name lg-v-bob --runtime "$RT" "${B[@]}" "$I" sleep 600 >/dev/null
    run_verify
    if [[ $VERIFY_RC == 0 && $VERIFY_OUT == *"2 containers: 2 ok, 0 violations"* ]]; then
        pass verify-clean
    else
        fail verify-clean "exit $VERIFY_RC
$VERIFY_OUT"
    fi

    docker run -d --name lg-v-bypass --runtime runc --device "$LG_TMP/dev/nvidia2:/dev/nvidia2" \
        "$I" sleep 600 >/dev/null
    run_verify
    if [[ $VERIFY_RC == 1 && $VERIFY_OUT == *"not created through labgpu and can reach GPU 2"* ]]; then
        pass verify-bypass
    else
        fail verify-bypass "exit $VERIFY_RC
$VERIFY_OUT"
    fi
    docker rm -f lg-v-bypass >/dev/null

    # The admin takes GPU 1 from alice while her container runs.
    lg_policy_text | sed 's/^gpus = \[0, 1\]$/gpus = [0]/' >"$LG_POLICY"
    run_verify
    if [[ $VERIFY_RC == 1 && $VERIFY_OUT == *"holds GPU 1, which the policy no longer grants its owner"* ]]; then
        pass verify-drift
    else
        fail verify-drift "exit $VERIFY_RC
$VERIFY_OUT"
    fi
    lg_write_policy
    docker rm -f lg-v-alice lg-v-bob >/dev/null
}

case_concurrency() {
    local dir="$LG_TMP/conc" i u pids=() users=(alice bob carol)
    mkdir -p "$dir"
    for ((i = 0; i < 20; i++)); do
        u="${users[i % 3]}"
        (
            lg_docker run --rm --runtime "$RT" --label "labgpu.user=$u" "$I" sh -c "$LS_NVIDIA" \
                >"$dir/$i.out" 2>"$dir/$i.err"
            echo $? >"$dir/$i.rc"
        ) &
        pids+=($!)
    done
    wait "${pids[@]}"
    local bad="" want got
    for ((i = 0; i < 20; i++)); do
        u="${users[i % 3]}"
        case $u in alice) want=$ALICE_DEVS ;; bob) want=$BOB_DEVS ;; carol) want=$CAROL_DEVS ;; esac
        got="$(nvidia_set "$(cat "$dir/$i.out")")"
        if [[ $(cat "$dir/$i.rc") != 0 ]]; then
            bad+="#$i ($u): rc $(cat "$dir/$i.rc"): $(cat "$dir/$i.err")"$'\n'
        elif [[ $got != "$want" ]]; then
            bad+="#$i ($u): got '$got', want '$want'"$'\n'
        fi
    done
    if [[ -z $bad ]]; then pass concurrency-20; else fail concurrency-20 "$bad"; fi
}

case_log() {
    # The decision log names allowed and refused containers.
    if [[ -s $LG_TMP/labgpu.log ]] && grep -q alice "$LG_TMP/labgpu.log" && grep -qi refus "$LG_TMP/labgpu.log"; then
        pass decision-log
    else
        fail decision-log "$LG_TMP/labgpu.log: $(tail -n 5 "$LG_TMP/labgpu.log" 2>&1)"
    fi
}

# ---------------------------------------------------------------------------------------------
# userns = "owner" (issue 15): container root is the owner on the host, container ids 1-65535
# the owner's subordinate ids; the image, Docker's files and volumes look as they do without.

# The test policy with userns = "owner" for alice and bob, plus sed expressions $@ (an
# address /^\[users\.alice\]/ without $: the line has become two by then).
un_policy() {
    lg_policy_text | sed -e 's/^\[users\.\(alice\|bob\)\]$/&\nuserns = "owner"/' "$@" >"$LG_POLICY"
}

# /proc/<pid>/uid_map text without the kernel's padding, lines joined by ";".
un_map() { awk '{ printf "%s%s %s %s", (NR > 1 ? ";" : ""), $1, $2, $3 } END { print "" }'; }

# Mounts under Docker's data root and /run/labgpu, as "mount point fstype" lines: what a
# userns container may leave behind (other suites' mounts elsewhere do not matter).
un_mounts() {
    awk -v r="$LG_DATA_ROOT" '
        { split($0, h, " - "); split(h[2], t, " ") }
        index($5, r) == 1 || index($5, "/run/labgpu") == 1 { print $5, t[1] }' /proc/self/mountinfo |
        LC_ALL=C sort
}

un_wait_running() { # container, seconds
    local i
    for ((i = 0; i < $2 * 2; i++)); do
        [[ $(docker inspect -f '{{.State.Running}}' "$1" 2>/dev/null) == true ]] && return 0
        sleep 0.5
    done
    return 1
}

un_identity() {
    local a_uid a_gid a_sub a_gsub want
    a_uid="$(lg_uid alice)" a_gid="$(lg_gid alice)"
    a_sub="$(lg_subid_start alice)" a_gsub="$(lg_subid_start alice gid)"
    want="0 $a_uid 1;1 $a_sub 65535|0 $a_gid 1;1 $a_gsub 65535|0"
    if expect_run_ok userns-maps "${A[@]}" "$I" sh -c 'cat /proc/self/uid_map | tr -s " " | sed "s/^ //" | paste -sd";"; cat /proc/self/gid_map | tr -s " " | sed "s/^ //" | paste -sd";"; id -u'; then
        expect_eq userns-maps "$want" "$(printf '%s\n' "$RUN_OUT" | paste -sd'|')"
    fi
    # The image as without a user namespace: /etc and /usr root's, apt-style writes work.
    # shellcheck disable=SC2016 # the container's shell expands these
    if expect_run_ok userns-image-root-owned "${A[@]}" "$I" sh -c 'stat -c "%u:%g" /etc /bin/busybox /etc/passwd | paste -sd" ";
        mkdir -p /usr/lib/lgpkg && echo x >/usr/lib/lgpkg/f && echo "lgpkg:x:990:" >>/etc/group && chown 990:990 /usr/lib/lgpkg/f && echo apt-ok'; then
        expect_eq userns-image-root-owned "0:0 0:0 0:0
apt-ok" "$RUN_OUT"
    fi
    # What container root writes in the owner's mounts is the owner's on the host; a setuid
    # root attempt there yields a setuid-owner file.
    local home
    home="$(lg_home alice)"
    rm -f "$home/lg-un-file" "$home/lg-un-suid"
    if expect_run_ok userns-setuid-attempt "${A[@]}" "$I" sh -c 'echo hi >/workspace/lg-un-file &&
        cp /bin/busybox /workspace/lg-un-suid && chown 0:0 /workspace/lg-un-suid && chmod 4755 /workspace/lg-un-suid && echo done'; then
        expect_eq userns-host-file-owner "$a_uid:$a_gid" "$(stat -c '%u:%g' "$home/lg-un-file" 2>&1)"
        expect_eq userns-setuid-is-owners "$a_uid 4755" "$(stat -c '%u %a' "$home/lg-un-suid" 2>&1)"
    fi
    rm -f "$home/lg-un-file" "$home/lg-un-suid"
    # The owner's 0700 files are readable as container root.
    echo "alice's secret" >"$home/lg-un-secret"
    chown "$(lg_user alice):" "$home/lg-un-secret"
    chmod 600 "$home/lg-un-secret"
    if expect_run_ok userns-owner-0600-readable "${A[@]}" "$I" cat /workspace/lg-un-secret; then
        expect_eq userns-owner-0600-readable "alice's secret" "$RUN_OUT"
    fi
    rm -f "$home/lg-un-secret"
}

# ps on the host names the owner; a container uid other than 0 is a subordinate uid there.
un_processes() {
    local c pid want out
    c="$(docker run -d --runtime "$RT" "${A[@]}" "$I" sleep 300 2>&1)" || {
        fail userns-ps "docker run -d: $c"
        return
    }
    pid="$(docker inspect -f '{{.State.Pid}}' "$c")"
    expect_eq userns-ps-uid "$(lg_uid alice) $(lg_user alice)" "$(ps -o uid=,user:40= -p "$pid" | awk '{ print $1, $2 }')"
    docker rm -f "$c" >/dev/null 2>&1
    c="$(docker run -d --runtime "$RT" "${B[@]}" -u 1000 "$I" sh -c 'touch /tmp/u1000; exec sleep 300' 2>&1)" || {
        fail userns-ps-subuid "docker run -d -u 1000: $c"
        return
    }
    pid="$(docker inspect -f '{{.State.Pid}}' "$c")"
    want=$(($(lg_subid_start bob) + 999))
    expect_eq userns-ps-subuid "$want" "$(ps -o uid= -p "$pid" | tr -d ' ')"
    # On disk, Docker's layer keeps the container's id; on the mounted rootfs the host sees
    # the subordinate one.
    local upper merged
    upper="$(docker inspect -f '{{.GraphDriver.Data.UpperDir}}' "$c")"
    merged="$(docker inspect -f '{{.GraphDriver.Data.MergedDir}}' "$c")"
    expect_eq userns-upper-keeps-container-ids "1000 $want" \
        "$(stat -c %u "$upper/tmp/u1000" 2>&1) $(stat -c %u "$merged/tmp/u1000" 2>&1)"
    if out="$(docker exec "$c" id -u 2>&1)"; then expect_eq userns-exec-image-user 1000 "$out"; else fail userns-exec-image-user "$out"; fi
    docker rm -f "$c" >/dev/null 2>&1
}

# GPUs from any uid: owned nodes open (ENXIO), others are absent or denied (EPERM).
un_gpus() {
    if expect_run_ok userns-devices-alice "${A[@]}" "$I" sh -c "$LS_NVIDIA"; then
        expect_eq userns-devices-alice "$ALICE_DEVS" "$(nvidia_set "$RUN_OUT")"
    fi
    local n
    for n in nvidia0 nvidiactl nvidia-uvm; do
        if expect_run_ok "userns-open-$n" "${A[@]}" "$I" sh -c "cat /dev/$n 2>&1; true"; then
            if [[ $RUN_OUT == *"No such device or address"* ]]; then pass "userns-open-$n"; else fail "userns-open-$n" "$RUN_OUT"; fi
        fi
    done
    if expect_run_ok userns-open-as-uid-1000 "${B[@]}" -u 1000 "$I" sh -c 'cat /dev/nvidia2 2>&1; mknod /tmp/n c 195 3 2>&1; true'; then
        if [[ $RUN_OUT == *"No such device or address"* && $RUN_OUT == *"mknod"*"Operation not permitted"* ]]; then
            pass userns-open-as-uid-1000
        else
            fail userns-open-as-uid-1000 "want ENXIO on nvidia2 and EPERM from mknod: $RUN_OUT"
        fi
    fi
    # Another GPU's node bound in (bind_allow): no device cgroup rule, so EPERM.
    un_policy -e "/^\[users\.alice\]/a bind_allow = [\"$LG_TMP/dev\"]"
    if expect_run_ok userns-bound-node-without-rule "${A[@]}" -v "$LG_TMP/dev/nvidia3:/dev/lgx" "$I" sh -c 'cat /dev/lgx 2>&1; true'; then
        if [[ $RUN_OUT == *"Operation not permitted"* ]]; then pass userns-bound-node-without-rule; else fail userns-bound-node-without-rule "$RUN_OUT"; fi
    fi
    un_policy
}

# Another user's 0700 directory, in bind_allow by mistake, stays closed; a group-shared
# 0750 root:lab directory is open to a member of lab (groups are mapped 1:1).
un_host_dirs() {
    echo "bob's secret" >"$LG_TMP/data/bob/secret"
    un_policy -e "/^\[users\.alice\]/a bind_allow = [\"$LG_TMP/data/bob\", \"$LG_TMP/labshare\"]" \
        -e "/^\[users\.bob\]/a bind_allow = [\"$LG_TMP/labshare\"]"
    if expect_run_ok userns-other-0700-closed "${A[@]}" -v "$LG_TMP/data/bob:/x" "$I" sh -c 'cat /x/secret 2>&1; true'; then
        if [[ $RUN_OUT == *"Permission denied"* ]]; then pass userns-other-0700-closed; else fail userns-other-0700-closed "$RUN_OUT"; fi
    fi
    local lab
    lab="$(lg_group lab)"
    if ! groupadd "$lab" || ! usermod -aG "$lab" "$(lg_user alice)"; then
        fail userns-group-share "groupadd/usermod failed"
        return
    fi
    mkdir -p "$LG_TMP/labshare"
    echo "lab data" >"$LG_TMP/labshare/f"
    chown -R "root:$lab" "$LG_TMP/labshare"
    chmod 750 "$LG_TMP/labshare"
    chmod 640 "$LG_TMP/labshare/f"
    local gid
    gid="$(getent group "$lab" | cut -d: -f3)"
    if expect_run_ok userns-group-share "${A[@]}" -v "$LG_TMP/labshare:/lab" "$I" sh -c "cat /lab/f; grep -c '^ *$gid *$gid *1\$' /proc/self/gid_map; id -G | tr ' ' '\n' | grep -cx $gid"; then
        expect_eq userns-group-share "lab data
1
1" "$RUN_OUT"
    fi
    if expect_run_ok userns-group-share-nonmember "${B[@]}" -v "$LG_TMP/labshare:/lab" "$I" sh -c 'cat /lab/f 2>&1; true'; then
        if [[ $RUN_OUT == *"Permission denied"* ]]; then pass userns-group-share-nonmember; else fail userns-group-share-nonmember "$RUN_OUT"; fi
    fi
    gpasswd -d "$(lg_user alice)" "$lab" >/dev/null 2>&1
    groupdel "$lab"
    rm -rf "$LG_TMP/labshare"
    un_policy
}

# Docker's per-container files and volumes: container root reads and writes them as today,
# and they stay root's on disk.
un_docker_files() {
    docker volume rm -f lg-un-vol >/dev/null 2>&1
    docker volume create -o type=tmpfs -o device=tmpfs lg-un-tvol >/dev/null
    # shellcheck disable=SC2016
    if expect_run_ok userns-docker-files "${A[@]}" -v lg-un-vol:/v -v lg-un-tvol:/t "$I" sh -c '
        echo "10.9.9.9 lgx" >>/etc/hosts && echo lgh >/etc/hostname && echo "# lg" >>/etc/resolv.conf &&
        touch /dev/shm/x /v/f /t/f && stat -c "%u:%g" /etc/hosts /etc/hostname /etc/resolv.conf /dev/shm/x /v /v/f /t/f | sort -u'; then
        expect_eq userns-docker-files "0:0" "$RUN_OUT"
        expect_eq userns-volume-on-disk "0:0" "$(stat -c '%u:%g' "$LG_DATA_ROOT/volumes/lg-un-vol/_data/f" 2>&1)"
    fi
    docker volume rm -f lg-un-vol lg-un-tvol >/dev/null 2>&1
    if expect_run_ok userns-init-tmpfs "${A[@]}" --init --tmpfs /t "$I" sh -c 'cat /proc/1/cmdline | tr "\0" " "; echo; touch /t/x && stat -c %u /t/x'; then
        if [[ $RUN_OUT == /sbin/docker-init*$'\n'0 ]]; then pass userns-init-tmpfs; else fail userns-init-tmpfs "$RUN_OUT"; fi
    fi
}

# docker commit, cp, export, diff keep the ids Docker expects (stopped containers: all of
# them; a running one: the limits README documents).
un_docker_commands() {
    local c out
    docker rm -f lg-un-apt >/dev/null 2>&1
    c="$(docker run --name lg-un-apt --runtime "$RT" "${A[@]}" "$I" sh -c '
        mkdir -p /usr/lib/lgpkg && echo x >/usr/lib/lgpkg/f && chown 990:990 /usr/lib/lgpkg/f && echo "lgpkg:x:990:" >>/etc/group' 2>&1)" || {
        fail userns-apt "$c"
        return
    }
    step userns-commit docker commit lg-un-apt lg-un-committed:latest
    out="$(docker run --rm --runtime runc lg-un-committed:latest sh -c 'stat -c "%u:%g" /usr/lib/lgpkg/f /usr/lib/lgpkg /etc/group | paste -sd" "; grep -c ^lgpkg: /etc/group' 2>&1)"
    expect_eq userns-commit-run-plain "990:990 0:0 0:0
1" "$out"
    if expect_run_ok userns-commit-run-userns "${A[@]}" lg-un-committed:latest stat -c '%u:%g' /usr/lib/lgpkg/f; then
        expect_eq userns-commit-run-userns "990:990" "$RUN_OUT"
    fi
    expect_eq userns-diff-stopped "A /usr/lib/lgpkg
A /usr/lib/lgpkg/f
C /etc/group" "$(docker diff lg-un-apt 2>&1 | grep -E 'lgpkg|/etc/group' | LC_ALL=C sort)"
    expect_eq userns-export-stopped "0/0 990/990" \
        "$(docker export lg-un-apt 2>&1 | tar --numeric-owner -tvf - etc/group usr/lib/lgpkg/f 2>&1 | awk '{ print $2 }' | paste -sd' ')"
    expect_eq userns-cp-out-stopped "990/990" \
        "$(docker cp lg-un-apt:/usr/lib/lgpkg/f - 2>&1 | tar --numeric-owner -tvf - 2>&1 | awk '{ print $2 }')"
    echo in >"$LG_TMP/lg-un-in"
    chown 0:0 "$LG_TMP/lg-un-in"
    step userns-cp-in-stopped docker cp "$LG_TMP/lg-un-in" lg-un-apt:/lg-un-in
    docker rm -f lg-un-apt >/dev/null 2>&1
    docker rmi lg-un-committed:latest >/dev/null 2>&1
    # A running container: docker cp out shows host ids, cp in fails (README "Limits").
    c="$(docker run -d --runtime "$RT" "${A[@]}" "$I" sh -c 'echo x >/etc/lg-run; exec sleep 300' 2>&1)"
    sleep 1
    # How dockerd's cp and export read a running container's idmapped rootfs differs by
    # version: Docker 20.10 shows host ids and refuses cp in ("value too large"); Docker 26
    # fails both reads. Either is the documented limit; anything else is a change to look at.
    out="$(docker cp "$c:/etc/lg-run" - 2>&1 | tar --numeric-owner -tvf - 2>&1 | awk '{ print $2 }')"
    if [[ $out == "$(lg_uid alice)/$(lg_gid alice)" || $out == *Exiting* ]]; then
        pass userns-cp-out-running-host-ids
    else fail userns-cp-out-running-host-ids "$out"; fi
    out="$(docker cp "$LG_TMP/lg-un-in" "$c:/etc/" 2>&1)"
    if [[ $? != 0 && $out == *"value too large"* ]]; then pass userns-cp-in-running-refused
    elif [[ $out == *"value too large"* || $out == *"no such"* || $out == *"not a directory"* ]]; then
        printf 'skip userns-cp-in-running-refused (this Docker: %s)\n' "${out//$'\n'/ }"
    else fail userns-cp-in-running-refused "$out"; fi
    # docker export reads the mounted rootfs too: host ids; docker diff lists more than the
    # container changed (docs/userns.md says both).
    out="$(docker export "$c" 2>&1 | tar --numeric-owner -tvf - etc/lg-run 2>&1 | awk '{ print $2 }')"
    if [[ $out == "$(lg_uid alice)/$(lg_gid alice)" || $out == *Exiting* ]]; then
        pass userns-export-running-host-ids
    else fail userns-export-running-host-ids "$out"; fi
    out="$(docker diff "$c" 2>&1 | wc -l)"
    if ((out > 20)); then pass userns-diff-running-lists-more; else fail userns-diff-running-lists-more "$out lines: $(docker diff "$c" 2>&1 | head -n 5)"; fi
    step userns-commit-running docker commit "$c" lg-un-running:latest
    out="$(docker run --rm --runtime runc lg-un-running:latest stat -c '%u:%g' /etc/lg-run /etc/passwd 2>&1 | paste -sd' ')"
    expect_eq userns-commit-running-ids "0:0 0:0" "$out"
    docker rm -f "$c" >/dev/null 2>&1
    docker rmi lg-un-running:latest >/dev/null 2>&1
    rm -f "$LG_TMP/lg-un-in"
}

# exec (-u, --privileged), pause, stop/start/restart under the mapping.
un_lifecycle() {
    local c out eff bnd nnp want
    want="0 $(lg_uid alice) 1;1 $(lg_subid_start alice) 65535"
    c="$(docker run -d --runtime "$RT" "${A[@]}" --name lg-un-life "$I" sleep 1000 2>&1)" || {
        fail userns-lifecycle "docker run -d: $c"
        return
    }
    out="$(docker exec lg-un-life id -u 2>&1)"
    expect_eq userns-exec-root "0" "$out"
    out="$(docker exec -u 1000 lg-un-life id -u 2>&1)"
    expect_eq userns-exec-u-run-as-owner "0" "$out"
    if out="$(docker exec --privileged lg-un-life cat /proc/self/status 2>&1)"; then
        eff="$(status_field CapEff "$out")" bnd="$(status_field CapBnd "$out")" nnp="$(status_field NoNewPrivs "$out")"
        if [[ -n $eff ]] && within "$eff" "$MASK" && [[ $bnd == "$MASK" && $nnp == 1 ]]; then
            pass userns-exec-privileged-cut
        else
            fail userns-exec-privileged-cut "CapEff $eff CapBnd $bnd (want $MASK) NoNewPrivs $nnp"
        fi
    else
        fail userns-exec-privileged-cut "$out"
    fi
    step userns-pause docker pause lg-un-life
    step userns-unpause docker unpause lg-un-life
    step userns-stop docker stop -t 1 lg-un-life
    step userns-start docker start lg-un-life
    expect_eq userns-start-maps "$want" "$(docker exec lg-un-life cat /proc/1/uid_map 2>&1 | un_map)"
    step userns-restart docker restart -t 1 lg-un-life
    expect_eq userns-restart-maps "$want" "$(docker exec lg-un-life cat /proc/1/uid_map 2>&1 | un_map)"
    out="$(docker exec lg-un-life sh -c "$LS_NVIDIA" 2>&1)"
    expect_eq userns-restart-devices "$ALICE_DEVS" "$(nvidia_set "$out")"
    docker rm -f lg-un-life >/dev/null 2>&1
}

# --network/--ipc/--pid container:X of the owner's own containers.
un_joins() {
    local x
    docker rm -f lg-un-x >/dev/null 2>&1
    x="$(docker run -d --runtime "$RT" "${A[@]}" --ipc shareable --name lg-un-x "$I" sleep 1000 2>&1)" || {
        fail userns-join-setup "$x"
        return
    }
    local ns
    for ns in network ipc pid; do
        if expect_run_ok "userns-join-$ns" "${A[@]}" "--$ns" container:lg-un-x "$I" sh -c 'readlink /proc/self/ns/user; ps -o comm | grep -cx sleep; true'; then
            local want_ns
            want_ns="$(docker exec lg-un-x readlink /proc/self/ns/user 2>&1)"
            if [[ $ns == pid ]]; then want_ns+=$'\n1'; else want_ns+=$'\n0'; fi
            expect_eq "userns-join-$ns" "$want_ns" "$RUN_OUT"
        fi
    done
    docker rm -f lg-un-x >/dev/null 2>&1
    # X made before userns was on: its network can be shared (the host's /sys read-only
    # stands in for sysfs), its ipc and pid namespaces cannot.
    lg_write_policy
    x="$(docker run -d --runtime "$RT" "${A[@]}" --ipc shareable --name lg-un-x "$I" sleep 1000 2>&1)"
    un_policy
    # /sys and the host's mounts under it (rro) read-only; Docker's cgroup view on top.
    # shellcheck disable=SC2016
    if expect_run_ok userns-join-network-plain "${A[@]}" --network container:lg-un-x "$I" sh -c '
        awk "\$5 == \"/sys\" { print \$6 }" /proc/self/mountinfo | cut -d, -f1 | sort -u
        awk "\$5 ~ \"^/sys/fs/cgroup/\" && \$4 == \"/\" && \$6 ~ /^rw/" /proc/self/mountinfo | wc -l
        cat /proc/self/uid_map | wc -l'; then
        expect_eq userns-join-network-plain "ro
0
2" "$RUN_OUT"
    fi
    expect_refused userns-join-ipc-plain "without a user namespace" "${A[@]}" --ipc container:lg-un-x "$I" true
    expect_refused userns-join-pid-plain "without a user namespace" "${A[@]}" --pid container:lg-un-x "$I" true
    # verify: alice's container without the user namespace the policy now asks for.
    if [[ $RT == labgpu ]]; then
        run_verify
        local row
        row="$(printf '%s\n' "$VERIFY_OUT" | grep "^${x:0:12}")"
        if [[ $VERIFY_RC == 1 && $row == *"runs without a user namespace although [users.alice] userns = \"owner\""* ]]; then
            pass userns-verify-missing
        else
            fail userns-verify-missing "exit $VERIFY_RC: $VERIFY_OUT"
        fi
    fi
    docker rm -f lg-un-x >/dev/null 2>&1
}

un_cdi() {
    write_cdi_fixture
    un_policy -e "/^\[gpus\]/a cdi_spec = \"$LG_TMP/cdi/nvidia.yaml\""
    rm -f "$LG_TMP"/cdi-hook/*
    # The hook runs as container root, which is alice on the host.
    chmod 777 "$LG_TMP/cdi-hook"
    if expect_run_ok userns-cdi "${A[@]}" "$I" sh -c "$CDI_LS"; then
        expect_eq userns-cdi-lib "fake libcuda" "$(printf '%s\n' "$RUN_OUT" | head -n 1)"
        expect_eq userns-cdi-devices "gpu0 gpu1" "$(cdi_files)" "$RUN_OUT"
        if ls "$LG_TMP"/cdi-hook/*.env >/dev/null 2>&1; then pass userns-cdi-hook; else fail userns-cdi-hook "the CDI hook did not run"; fi
    fi
    chmod 755 "$LG_TMP/cdi-hook"
    un_policy
}

un_verify() {
    [[ $RT == labgpu ]] || return 0
    docker run -d --name lg-un-va --runtime "$RT" "${A[@]}" "$I" sleep 600 >/dev/null
    docker run -d --name lg-un-vb --runtime "$RT" "${B[@]}" "$I" sleep 600 >/dev/null
    run_verify
    local ida idb
    ida="$(docker inspect -f '{{.Id}}' lg-un-va)" idb="$(docker inspect -f '{{.Id}}' lg-un-vb)"
    if [[ $VERIFY_RC == 0 && $(printf '%s\n' "$VERIFY_OUT" | grep -c -E "^(${ida:0:12}|${idb:0:12}) .* ok ") == 2 ]]; then
        pass userns-verify-clean
    else
        fail userns-verify-clean "exit $VERIFY_RC: $VERIFY_OUT"
    fi
    # The policy maps another group now: the running container has the old gid_map.
    un_policy -e '/^\[users\.alice\]/a groups = [3999999]'
    run_verify
    if [[ $VERIFY_RC == 1 && $(printf '%s\n' "$VERIFY_OUT" | grep "^${ida:0:12}") == *"its gid_map is "*" instead of "*"3999999 3999999 1"* ]]; then
        pass userns-verify-other-mapping
    else
        fail userns-verify-other-mapping "exit $VERIFY_RC: $VERIFY_OUT"
    fi
    un_policy
    docker rm -f lg-un-va lg-un-vb >/dev/null 2>&1
}

# Ranges that are missing or unsafe refuse the container and fail `labgpu policy check`.
un_refusals() {
    local carol a_start c_range out
    carol="$(lg_user carol)"
    a_start="$(lg_subid_start alice)"
    c_range="$(awk -F: -v n="$carol" '$1 == n { print $2 "-" $2 + $3 - 1; exit }' /etc/subuid)"
    un_policy -e 's/^\[users\.carol\]$/&\nuserns = "owner"/'
    usermod --del-subuids "$c_range" "$carol"
    expect_refused userns-no-range 'usermod --add-subuids' "${C[@]}" "$I" true
    # Carol's range holding alice's uid: her container root could be alice.
    usermod --add-subuids "$(lg_uid alice)-$(($(lg_uid alice) + 65535))" "$carol"
    expect_refused userns-range-holds-a-uid "contains uid" "${C[@]}" "$I" true
    usermod --del-subuids "$(lg_uid alice)-$(($(lg_uid alice) + 65535))" "$carol"
    # Carol's range inside alice's: both are refused, and policy check says so.
    usermod --add-subuids "$c_range" --add-subuids "$((a_start + 100))-$((a_start + 199))" "$carol"
    expect_refused userns-range-overlap "overlaps $carol's range $((a_start + 100))-$((a_start + 199))" "${A[@]}" "$I" true
    out="$("$LG_BIN" policy check --docker "$LG_SOCK" "$LG_POLICY" 2>&1)"
    if [[ $out == *"error: the subordinate uid range $a_start-$((a_start + 65534)) of host user $(lg_user alice) in /etc/subuid overlaps"* ]]; then
        pass userns-policy-check-overlap
    else
        fail userns-policy-check-overlap "$out"
    fi
    usermod --del-subuids "$((a_start + 100))-$((a_start + 199))" "$carol"
    out="$("$LG_BIN" policy check --docker "$LG_SOCK" "$LG_POLICY" 2>&1)"
    if [[ $out == *" 0 errors"* ]]; then pass userns-policy-check-clean; else fail userns-policy-check-clean "$out"; fi
    # An unlabeled container has no owner to map root to.
    lg_policy_text | sed -e 's/^unlabeled = .*/unlabeled = "no-gpu"/' -e 's/^run_as = "image"$/&\nuserns = "owner"/' >"$LG_POLICY"
    expect_refused userns-unlabeled "has no owner to map its root to" "$I" true
    un_policy
}

# Nothing labgpu mounts outlives a container: 50 create/remove cycles, failures halfway
# through create (labgpu's and runc's), and a dockerd restart with a running container.
un_cleanup() {
    local before after i bad=""
    before="$(un_mounts)"
    for ((i = 0; i < 25; i++)); do
        lg_docker run --rm --runtime "$RT" "${A[@]}" "$I" true >/dev/null 2>&1 || bad+="run --rm #$i failed"$'\n'
        local c
        c="$(lg_docker run -d --runtime "$RT" "${A[@]}" "$I" sleep 100 2>&1)" || bad+="run -d #$i: $c"$'\n'
        lg_docker rm -f "$c" >/dev/null 2>&1
    done
    after="$(un_mounts)"
    if [[ -z $bad && $before == "$after" ]]; then pass userns-50-cycles-mounts; else
        fail userns-50-cycles-mounts "$bad$(diff <(printf '%s\n' "$before") <(printf '%s\n' "$after"))"
    fi
    # labgpu fails after Docker's overlay is replaced (a volume on ramfs cannot be idmapped).
    mkdir -p "$LG_TMP/ramfs"
    mount -t ramfs ramfs "$LG_TMP/ramfs"
    mkdir -p "$LG_TMP/ramfs/v"
    docker volume create -o type=none -o o=bind -o "device=$LG_TMP/ramfs/v" lg-un-ram >/dev/null
    un_policy -e '/^\[users\.alice\]/a mounted_volumes = ["lg-un-ram"]'
    before="$(un_mounts)"
    expect_refused userns-no-idmap-refused "cannot be idmapped" "${A[@]}" -v lg-un-ram:/v "$I" true
    run_ctr "${A[@]}" "$I" /lg-no-such-binary
    if [[ $RUN_RC != 0 && $RUN_ERR == *lg-no-such-binary* ]]; then pass userns-runc-fails-halfway; else
        fail userns-runc-fails-halfway "exit $RUN_RC: $RUN_ERR"
    fi
    expect_eq userns-failures-leave-no-mounts "$before" "$(un_mounts)"
    docker volume rm -f lg-un-ram >/dev/null 2>&1
    umount "$LG_TMP/ramfs"
    un_policy
    # dockerd restart: the container comes back (--restart always) with its mapping, and
    # the rootfs mounted before the restart does not linger.
    before="$(un_mounts)"
    local c want merged
    want="0 $(lg_uid alice) 1;1 $(lg_subid_start alice) 65535"
    c="$(docker run -d --restart always --runtime "$RT" "${A[@]}" "$I" sleep 1000 2>&1)" || {
        fail userns-dockerd-restart "docker run -d: $c"
        return
    }
    if ! lg_restart_dockerd; then
        fail userns-dockerd-restart "dockerd did not come back"
        return
    fi
    if un_wait_running "$c" 60; then
        expect_eq userns-dockerd-restart-maps "$want" "$(docker exec "$c" cat /proc/1/uid_map 2>&1 | un_map)"
        merged="$(docker inspect -f '{{.GraphDriver.Data.MergedDir}}' "$c")"
        expect_eq userns-dockerd-restart-one-rootfs "$merged overlay" "$(un_mounts | grep -F "$merged")"
    else
        fail userns-dockerd-restart "container not running again: $(docker inspect -f '{{.State.Status}} {{.State.Error}}' "$c" 2>&1)"
    fi
    docker rm -f "$c" >/dev/null 2>&1
    # Nothing new is left mounted (with the system's Docker, its other containers' overlays
    # may go with the restart: fewer is fine).
    expect_eq userns-dockerd-restart-mounts "" "$(LC_ALL=C comm -13 <(printf '%s\n' "$before") <(un_mounts))"
}

case_userns() {
    if [[ $RT != labgpu ]]; then
        printf 'skip userns (runtime %s)\n' "$RT"
        return
    fi
    un_policy
    un_identity
    un_processes
    un_gpus
    un_host_dirs
    un_docker_files
    un_docker_commands
    un_lifecycle
    un_joins
    un_cdi
    un_verify
    un_refusals
    un_cleanup
    lg_write_policy
}

# [groups.NAME] tables: a member of the host group with no [users] table gets the group's
# GPUs, a member's own key wins over the group's, a non-member gets nothing, and a
# membership change (gpasswd -d, usermod -aG) applies to the next create, also when the
# policy itself comes from the runtime's cache. The kernel is asked, as in device_flags:
# with the group's CAP_MKNOD and a wildcard cgroup rule, each minor is made and opened
# (ENXIO: granted, EPERM: denied by the device cgroup).
case_groups() {
    local ml dave erin frank
    ml="$(lg_group ml)"
    if ! lg_make_extra_users dave erin frank || ! groupadd "$ml" ||
        ! usermod -aG "$ml" "$(lg_extra dave)" || ! usermod -aG "$ml" "$(lg_extra erin)"; then
        fail groups-setup "useradd/groupadd/usermod failed"
        return
    fi
    dave="$(lg_extra dave)" erin="$(lg_extra erin)" frank="$(lg_extra frank)"
    {
        lg_policy_text
        printf '\n[groups.%s]\ngpus = [3]\ncapabilities = ["CAP_MKNOD"]\n' "$ml"
        # erin's own gpus win; CAP_MKNOD still comes from the group.
        printf '\n[users.%s]\ngpus = [2]\n' "$erin"
    } >"$LG_POLICY.new"
    mv "$LG_POLICY.new" "$LG_POLICY"
    # Old enough for the first create to write the cache entry and the next ones to use it.
    sleep 1.2
    # shellcheck disable=SC2016 # expanded by the container's shell
    local probe='for n in 195:0 195:1 195:2 195:3; do
        if ! e="$(mknod /tmp/n c "${n%:*}" "${n#*:}" 2>&1)"; then echo "$n mknod failed: $e"; continue; fi
        e="$(cat /tmp/n 2>&1 >/dev/null)"
        case $e in
        *"No such device or address"*) echo "$n allowed" ;;
        *"Operation not permitted"*) echo "$n denied" ;;
        *) echo "$n $e" ;;
        esac
        rm -f /tmp/n
    done; ls -1d /dev/nvidia[0-9]* 2>/dev/null; true'
    local rule=(--device-cgroup-rule 'c 195:* rwm')
    local only3=$'195:0 denied\n195:1 denied\n195:2 denied\n195:3 allowed\n/dev/nvidia3'
    local only2=$'195:0 denied\n195:1 denied\n195:2 allowed\n195:3 denied\n/dev/nvidia2'
    if expect_run_ok groups-member-gets-group-gpus --label "labgpu.user=$dave" "${rule[@]}" "$I" sh -c "$probe"; then
        expect_eq groups-member-gets-group-gpus "$only3" "$RUN_OUT"
    fi
    if expect_run_ok groups-own-key-wins --label "labgpu.user=$erin" "${rule[@]}" "$I" sh -c "$probe"; then
        expect_eq groups-own-key-wins "$only2" "$RUN_OUT"
    fi
    expect_refused groups-non-member-refused "is not a user in" --label "labgpu.user=$frank" "$I" true
    # A cache hit from here on: the entry for this policy file exists.
    local entries
    entries="$(find /run/labgpu/policy-cache -maxdepth 1 -name '*.cache' -newer "$LG_POLICY" 2>/dev/null | grep -c .)"
    if ((entries > 0)); then pass groups-policy-cached; else fail groups-policy-cached "no cache entry newer than the policy"; fi
    if ! gpasswd -d "$dave" "$ml" >/dev/null || ! usermod -aG "$ml" "$frank"; then
        fail groups-membership-change "gpasswd/usermod failed"
    else
        expect_refused groups-gpasswd-d-seen "is not a user in" --label "labgpu.user=$dave" "$I" true
        if expect_run_ok groups-usermod-seen --label "labgpu.user=$frank" "${rule[@]}" "$I" sh -c "$probe"; then
            expect_eq groups-usermod-seen "$only3" "$RUN_OUT"
        fi
    fi
    # policy check names the group table; an unknown group is a warning, not an error.
    printf '\n[groups.%s]\ngpus = [0]\n' "$(lg_group nosuch)" >>"$LG_POLICY"
    local out rc=0
    out="$("$LG_BIN" policy check "$LG_POLICY" --docker "$LG_SOCK" 2>&1)" || rc=$?
    if [[ $out == *"warning: [groups.$(lg_group nosuch)]: no group"* && $out == *"through 2 group tables"* ]]; then
        pass groups-policy-check
    else
        fail groups-policy-check "exit $rc: $out"
    fi
    lg_write_policy
}

# ---------------------------------------------------------------------------------------------

ALL_CASES="devices device_flags caps refusals mounts volumes system_paths seccomp provenance namespaces exec passthrough cdi docker_cdi verify verify_bypass concurrency userns groups log"
START=$SECONDS
setup_all
lg_say "suite starts ($((SECONDS - START))s setup); runtime $RT"
for c in ${LABGPU_E2E_ONLY:-$ALL_CASES}; do
    printf -- '--- %s\n' "$c"
    "case_$c"
done
if ((LG_FAILED)); then
    printf 'failed: %s\n' "${LG_FAILURES[@]}"
fi
lg_say "took $((SECONDS - START))s"
print_summary
((LG_FAILED == 0))
