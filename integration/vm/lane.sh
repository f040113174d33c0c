#!/usr/bin/env bash
# The VM lane: labgpu where most lab servers are. A Debian trixie VM under QEMU (systemd 257 as
# PID 1, cgroup v2 only, Docker 26 from Debian with the systemd cgroup driver, runc 1.1,
# containerd 1.7, kernel 6.12) installs this tree's .deb with apt, enables labgpu-proxy, runs
# the e2e, proxy and fairshare suites against its own Docker, and purges the package (job.sh).
#
#   bash integration/vm/lane.sh             (as root)
#
# Needs: debootstrap and qemu-system-x86 (installed when missing; see common.sh), cargo-deb
# (`cargo install cargo-deb`, done here when missing), the Debian mirror of the host's apt
# sources. Takes about 5 minutes more the first time, to build the image; it is then cached
# (LABGPU_VM_REBUILD=1 builds it again). Under TCG (no usable KVM) the suites run several
# times slower than on the host.
#
# The image is built (or found in the cache) in the background while `cargo deb` builds the
# package: debootstrap mostly waits on the mirror and the disk, the build on the CPUs.
#
# Knobs: LABGPU_VM_DEB=FILE (use this .deb, do not build one), LABGPU_VM_TIMEOUT (seconds the VM
# may run, 2700), LABGPU_VM_REBUILD=1, LABGPU_VM_SUITES="proxy" (only these of the job's
# suites: e2e, proxy, fairshare) and LABGPU_VM_ONLY="build buildkit" (only these case groups in them),
# for a quick look at one feature, and those of common.sh and run.sh.
# Prints "vm: N passed, N failed" (the sum of the job's parts) last; exits 1 if any failed,
# 2 if the lane could not run.
set -uo pipefail

# shellcheck source=integration/vm/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
REPO="$(cd "$VM_DIR/../.." && pwd)"
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
vm_require_root
T0=$SECONDS

SHARE=""
OUT=""
CHILD=""
IMAGE_CHILD=""
TAIL=""
# shellcheck disable=SC2317 # run by the trap
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    # build-image.sh and run.sh stop debootstrap and qemu on SIGTERM.
    local c
    for c in "$CHILD" "$IMAGE_CHILD"; do
        [[ -n $c ]] || continue
        kill -TERM "$c" 2>/dev/null || true
        wait "$c" 2>/dev/null || true
    done
    [[ -n $TAIL ]] && kill "$TAIL" 2>/dev/null
    [[ -n $SHARE ]] && rm -rf "$SHARE"
    [[ -n $OUT ]] && rm -f "$OUT"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# child CMD...: CMD in the background, waited for, so that a signal to this script reaches the
# trap at once (bash runs traps only between foreground commands) and the trap can stop it;
# SIGTERM also comes when this script is killed outright (parent-death signal).
child() {
    setpriv --pdeathsig TERM -- "$@" &
    CHILD=$!
    local rc=0
    wait "$CHILD" || rc=$?
    CHILD=""
    return "$rc"
}

# --- the image, in the background -----------------------------------------------------------
# Its tools first, here: apt-get must not run beside another suite's apt-get.
vm_install_tools
image_start="$(date +%s)"
OUT="$(mktemp /tmp/labgpu-vm-out.XXXX)"
setpriv --pdeathsig TERM -- bash "$VM_DIR/build-image.sh" >"$OUT" &
IMAGE_CHILD=$!

# --- the package, built on the host -----------------------------------------------------------
deb="${LABGPU_VM_DEB:-}"
if [[ -z $deb ]]; then
    t=$SECONDS
    if ! command -v cargo-deb >/dev/null; then
        # Installed beside the release build that `cargo deb` would start with (the same
        # `cargo build --release`): two builds fill each other's single-threaded stretches.
        vm_say "cargo install cargo-deb --locked, beside cargo build --release"
        setpriv --pdeathsig TERM -- cargo install cargo-deb --locked >/tmp/labgpu-vm-cargo-install.log 2>&1 &
        install=$!
        (cd "$REPO" && cargo build --release --quiet) || vm_say "cargo build --release failed (cargo deb says why)"
        wait "$install" || {
            tail -n 30 /tmp/labgpu-vm-cargo-install.log >&2
            vm_die "cargo install cargo-deb failed"
        }
        rm -f /tmp/labgpu-vm-cargo-install.log
    fi
    deb="$(cd "$REPO" && cargo deb 2>/tmp/labgpu-vm-cargo-deb.log | tail -n 1)"
    [[ -f $deb ]] || {
        tail -n 30 /tmp/labgpu-vm-cargo-deb.log >&2
        vm_die "cargo deb failed"
    }
    rm -f /tmp/labgpu-vm-cargo-deb.log
    vm_say "cargo deb: $(basename "$deb") in $((SECONDS - t)) s"
fi
[[ -f $deb ]] || vm_die "no .deb at $deb"

# --- the image: waited for --------------------------------------------------------------------
image_rc=0
wait "$IMAGE_CHILD" || image_rc=$?
IMAGE_CHILD=""
((image_rc == 0)) || vm_die "the image could not be built"
IMAGE="$(tail -n 1 "$OUT")"
# Built by this run (its ok file is newer than the build's start): the build's own time.
image_s=0
(($(stat -c %Y "$IMAGE/ok") >= image_start)) && image_s="$(sed -n 's/^built .* in \([0-9]*\) s$/\1/p' "$IMAGE/ok")"

# --- the share: the job, the .deb, the suites ---------------------------------------------------
SHARE="$(mktemp -d /tmp/labgpu-vm-share.XXXX)"
cp "$deb" "$SHARE/"
cp -r "$REPO/integration" "$SHARE/integration"
cp "$VM_DIR/job.sh" "$SHARE/job.sh"
printf '%s\n' "${LABGPU_VM_SUITES:-e2e proxy fairshare}" >"$SHARE/suites"
printf '%s\n' "${LABGPU_VM_ONLY:-}" >"$SHARE/only"
# mktemp made the share 0700; the proxy suite runs its flood client as alice and nobody.
chmod -R a+rX "$SHARE"

t=$SECONDS
: >"$OUT"
tail -n +1 -f "$OUT" &
TAIL=$!
rc=0
child bash "$VM_DIR/run.sh" "$IMAGE" "$SHARE" "${LABGPU_VM_TIMEOUT:-2700}" >"$OUT" 2>&1 || rc=$?
sleep 1 # tail's last lines
kill "$TAIL" 2>/dev/null
wait "$TAIL" 2>/dev/null
TAIL=""
vm_s=$((SECONDS - t))

# --- what it took, what it found ----------------------------------------------------------------
boot="$(sed -n 's/^\[vm\] booted: the job started \([0-9]*\) s after qemu$/\1/p' "$OUT")"
echo
echo "VM lane times: image $(vm_minutes "${image_s:-0}") min ($([[ ${image_s:-0} -gt 0 ]] && echo "built, beside cargo deb" || echo cached)), boot ${boot:-?} s, VM $(vm_minutes "$vm_s") min, lane $(vm_minutes $((SECONDS - T0))) min"
sed -n 's/^\(e2e\|proxy\|fairshare\): \([0-9]*\) s$/  \1 suite in the VM: \2 s/p' "$OUT"
passed=0 failed=0
while read -r name p _ f _; do
    echo "  $name $p passed, $f failed"
    passed=$((passed + p))
    failed=$((failed + f))
done < <(sed -n 's/^\(e2e\|proxy\|fairshare\|login\|package\): \([0-9]*\) passed, \([0-9]*\) failed$/\1: \2 passed, \3 failed/p' "$OUT")
if ((rc != 0 && failed == 0)); then
    # The VM ended without the job's verdict (timeout, crash): count that as a failure.
    failed=1
    vm_say "the job did not finish (status $rc)"
fi
echo "vm: $passed passed, $failed failed"
((failed == 0))
