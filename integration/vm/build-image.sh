#!/usr/bin/env bash
# The VM lane's image: Debian trixie (systemd, cgroup v2, Docker 26 from Debian) debootstrapped
# from the mirror in the host's apt sources, as an ext4 file system image plus the kernel and
# initrd to boot it directly. Prints the image directory (vmlinuz, initrd.img, rootfs.img).
#
#   bash integration/vm/build-image.sh          (as root; about 5 minutes, then cached)
#   LABGPU_VM_REBUILD=1 ...                     build even when the cache has this image
#
# Cached in $LABGPU_VM_CACHE (/var/cache/labgpu-vm)/<key>, the key a hash of this script, the
# package list and guest/; older images are removed. Nothing is mounted on the host: debootstrap
# runs in its own mount and pid namespaces, so its /proc and /sys mounts and its processes end
# with it, also when this script is interrupted or killed.
set -euo pipefail

# shellcheck source=integration/vm/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

vm_require_root
KEY="$(vm_image_key)"
OUT="$VM_CACHE/$KEY"
if [[ -f $OUT/ok && ${LABGPU_VM_REBUILD:-0} != 1 ]]; then
    vm_say "image $KEY from the cache"
    echo "$OUT"
    exit 0
fi
vm_install_tools
mkdir -p "$VM_CACHE"
# One build at a time on this machine; a second waits and then finds the first one's image.
exec 9>"$VM_CACHE/lock"
flock 9
if [[ -f $OUT/ok && ${LABGPU_VM_REBUILD:-0} != 1 ]]; then
    echo "$OUT"
    exit 0
fi

# A build killed with SIGKILL leaves its directory (its namespace took the mounts and the
# processes); the lock says no other build is running.
for d in "$VM_CACHE"/build.*; do
    [[ -d $d ]] || continue
    awk -v t="$d/" 'index($2, t) == 1 { found = 1 } END { exit !found }' /proc/mounts || rm -rf "$d"
done
WORK="$(mktemp -d "$VM_CACHE/build.XXXX")"
CHILD=""
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [[ -n $CHILD ]]; then
        kill -TERM "$CHILD" 2>/dev/null || true
        wait "$CHILD" 2>/dev/null || true
    fi
    # The namespace took its mounts with it; this is the check, not the cleanup.
    if awk -v t="$WORK/" 'index($2, t) == 1 { found = 1 } END { exit !found }' /proc/mounts; then
        vm_say "warning: mounts remain under $WORK; not removing it"
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# in_ns CMD...: CMD in private mount + pid namespaces, killed with this script (SIGKILL too).
in_ns() {
    setpriv --pdeathsig KILL -- unshare --mount --propagation private --pid --fork --kill-child \
        --mount-proc -- "$@" &
    CHILD=$!
    local rc=0
    wait "$CHILD" || rc=$?
    CHILD=""
    return "$rc"
}

MIRROR="$(vm_mirror)"
PKGS="$(grep -v '^#' "$VM_DIR/packages" | paste -sd, -)"
ROOT="$WORK/root"
T0=$SECONDS
vm_say "debootstrap $VM_SUITE from $MIRROR (log: $WORK/debootstrap.log)"
if ! in_ns debootstrap --variant=minbase --components=main --include="$PKGS" \
    "$VM_SUITE" "$ROOT" "$MIRROR" >"$WORK/debootstrap.log" 2>&1; then
    tail -n 30 "$WORK/debootstrap.log" >&2
    [[ -f $ROOT/debootstrap/debootstrap.log ]] && tail -n 30 "$ROOT/debootstrap/debootstrap.log" >&2
    vm_die "debootstrap failed"
fi
vm_say "debootstrap took $((SECONDS - T0)) s"

# --- configure the tree ------------------------------------------------------------------------
echo labgpu-vm >"$ROOT/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 labgpu-vm\n::1 localhost ip6-localhost ip6-loopback\n' >"$ROOT/etc/hosts"
echo '/dev/vda / ext4 rw,noatime 0 0' >"$ROOT/etc/fstab"
# A fixed machine id: an empty one makes every boot a "first boot" (presets applied anew).
od -An -N16 -tx1 /dev/urandom | tr -d ' \n' >"$ROOT/etc/machine-id"
echo >>"$ROOT/etc/machine-id"
install -m 0755 "$VM_DIR/guest/labgpu-vm-job" "$ROOT/usr/local/sbin/labgpu-vm-job"
install -m 0644 "$VM_DIR/guest/labgpu-vm-job.service" "$ROOT/etc/systemd/system/labgpu-vm-job.service"
in_ns chroot "$ROOT" systemctl enable labgpu-vm-job.service >/dev/null 2>&1 ||
    vm_die "systemctl enable labgpu-vm-job.service failed"
# Timers that would compete for the two emulated CPUs during a run.
in_ns chroot "$ROOT" systemctl mask apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer \
    fstrim.timer e2scrub_all.timer systemd-tmpfiles-clean.timer >/dev/null 2>&1 || true
# The serial console, for debugging a boot by hand: root without a password (the VM has no
# network, and every run starts from this image again).
in_ns chroot "$ROOT" passwd -d root >/dev/null
rm -f "$ROOT"/var/cache/apt/archives/*.deb "$ROOT"/var/cache/apt/*.bin
rm -rf "$ROOT"/var/lib/apt/lists/*

kernel="$(find "$ROOT/boot" -maxdepth 1 -name 'vmlinuz-*' | sort | tail -n 1)"
initrd="$(find "$ROOT/boot" -maxdepth 1 -name 'initrd.img-*' | sort | tail -n 1)"
[[ -n $kernel && -n $initrd ]] || vm_die "no kernel or initrd under $ROOT/boot"
cp "$kernel" "$WORK/vmlinuz"
cp "$initrd" "$WORK/initrd.img"

# --- the file system image ---------------------------------------------------------------------
# Room for Docker's images and containers on top of the system; sparse, and opened with
# snapshot=on so runs never write it.
used_mb="$(du -sm "$ROOT" | cut -f1)"
size_mb=$((used_mb + 3072))
vm_say "mke2fs -d: ${used_mb} MiB of files in a ${size_mb} MiB ext4 image"
mke2fs -q -t ext4 -L labgpu-vm -d "$ROOT" "$WORK/rootfs.img" "${size_mb}M" >/dev/null ||
    vm_die "mke2fs -d failed"
rm -rf "$ROOT"

{
    echo "suite $VM_SUITE"
    echo "mirror $MIRROR"
    echo "kernel $(basename "$kernel")"
    echo "built $(date -u +%Y-%m-%dT%H:%M:%SZ) in $((SECONDS - T0)) s"
} >"$WORK/ok"
rm -rf "$OUT"
mkdir -p "$OUT"
mv "$WORK/vmlinuz" "$WORK/initrd.img" "$WORK/rootfs.img" "$OUT/"
mv "$WORK/ok" "$OUT/ok"
# Older images (another key): a run still booting one keeps its open files.
for d in "$VM_CACHE"/*; do
    [[ -d $d && $d != "$OUT" && $(basename "$d") =~ ^[0-9a-f]{16}$ ]] && rm -rf "$d"
done
vm_say "image $KEY built in $((SECONDS - T0)) s"
echo "$OUT"
