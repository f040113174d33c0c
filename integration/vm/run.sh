#!/usr/bin/env bash
# Boots the VM lane's image and runs one job in it: SHARE/job.sh, started by a systemd unit
# after docker.service, with SHARE mounted over 9p at /mnt/share. Prints the job's output as it
# comes and exits with the job's exit status; the VM powers off when the job ends.
#
#   bash integration/vm/run.sh IMAGE_DIR SHARE_DIR [TIMEOUT_SECONDS]    (as root)
#
# Exit status: the job's; 124 when the timeout (default 1800 s) ran out; 2 when the VM ended
# without a result (the console's last lines are printed). The disk is opened with snapshot=on:
# every run starts from the image as built, and nothing the job does is kept. qemu is killed
# on timeout, Ctrl-C, SIGTERM, and (parent-death signal) when this script itself is killed.
#
# Knobs: LABGPU_VM_CPUS (2), LABGPU_VM_MEM (MiB, 3072), LABGPU_VM_ACCEL (see common.sh).
set -euo pipefail

# shellcheck source=integration/vm/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

[[ $# -ge 2 ]] || vm_die "usage: run.sh IMAGE_DIR SHARE_DIR [TIMEOUT_SECONDS]"
IMAGE="$1"
SHARE="$2"
TIMEOUT="${3:-1800}"
vm_require_root
[[ -f $IMAGE/ok ]] || vm_die "$IMAGE is not a built image (integration/vm/build-image.sh)"
[[ -f $SHARE/job.sh ]] || vm_die "$SHARE/job.sh is missing"
command -v qemu-system-x86_64 >/dev/null || vm_install_tools
rm -f "$SHARE/rc" "$SHARE/out.log"

RUN="$(mktemp -d /tmp/labgpu-vm-run.XXXX)"
QPID=""
TPID=""
stop_qemu() {
    [[ -n $QPID ]] || return 0
    local i
    kill -TERM "$QPID" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
        kill -0 "$QPID" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$QPID" 2>/dev/null || true
    wait "$QPID" 2>/dev/null || true
    QPID=""
}
stop_tail() {
    [[ -n $TPID ]] || return 0
    kill "$TPID" 2>/dev/null || true
    wait "$TPID" 2>/dev/null || true
    TPID=""
}
# shellcheck disable=SC2317 # run by the trap
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    stop_qemu
    stop_tail
    rm -rf "$RUN"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

ACCEL="$(vm_accel)"
if [[ $ACCEL == kvm ]]; then
    accel_args=(-accel kvm -cpu host)
else
    # shellcheck disable=SC2054 # qemu's own comma syntax
    accel_args=(-accel tcg,thread=multi -cpu max)
fi
vm_say "booting $(sed -n 's/^kernel //p' "$IMAGE/ok") ($ACCEL, ${LABGPU_VM_CPUS:-2} CPUs, ${LABGPU_VM_MEM:-3072} MiB); timeout ${TIMEOUT}s"
T0=$SECONDS
setpriv --pdeathsig KILL -- qemu-system-x86_64 \
    -machine q35 "${accel_args[@]}" \
    -smp "${LABGPU_VM_CPUS:-2}" -m "${LABGPU_VM_MEM:-3072}" \
    -kernel "$IMAGE/vmlinuz" -initrd "$IMAGE/initrd.img" \
    -append "root=/dev/vda rw console=ttyS0 loglevel=4 panic=-1" \
    -drive "file=$IMAGE/rootfs.img,format=raw,if=virtio,snapshot=on,cache=unsafe" \
    -virtfs "local,path=$SHARE,mount_tag=share,security_model=none,id=share" \
    -nic none -display none -monitor none -serial "file:$RUN/console.log" -no-reboot \
    </dev/null >"$RUN/qemu.log" 2>&1 &
QPID=$!

timed_out=0
while kill -0 "$QPID" 2>/dev/null; do
    if [[ -z $TPID && -e $SHARE/out.log ]]; then
        vm_say "booted: the job started $((SECONDS - T0)) s after qemu"
        tail -n +1 -F "$SHARE/out.log" 2>/dev/null &
        TPID=$!
    fi
    if ((SECONDS - T0 >= TIMEOUT)); then
        vm_say "timeout after ${TIMEOUT}s: stopping the VM"
        timed_out=1
        stop_qemu
        break
    fi
    sleep 1
done
wait "$QPID" 2>/dev/null || true
QPID=""
sleep 1 # tail's last lines
stop_tail

if [[ -f $SHARE/rc ]]; then
    rc="$(cat "$SHARE/rc")"
    vm_say "job exit status $rc; the VM ran $((SECONDS - T0)) s"
    exit "$rc"
fi
if ((timed_out)); then
    rc=124
else
    rc=2
    vm_say "the VM ended without a result; qemu: $(tail -n 5 "$RUN/qemu.log")"
fi
vm_say "last console lines:"
tail -n 40 "$RUN/console.log" | sed 's/^/     | /' >&2
exit "$rc"
