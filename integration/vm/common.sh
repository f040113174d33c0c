# shellcheck shell=bash
# integration/vm/common.sh: sourced by build-image.sh, run.sh and lane.sh.
#
# Knobs (environment):
#   LABGPU_VM_CACHE=/var/cache/labgpu-vm   where built images are kept between runs
#   LABGPU_VM_ACCEL=kvm|tcg                 skip the detection (tcg on PVM hosts, where /dev/kvm
#                                           exists but cannot run a stock kernel)
#   LABGPU_VM_MIRROR=URL                    Debian mirror (default: the host's apt sources)

VM_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck disable=SC2034 # used by the scripts that source this
VM_CACHE="${LABGPU_VM_CACHE:-/var/cache/labgpu-vm}"
VM_SUITE=trixie

vm_say() { printf '[vm] %s\n' "$*" >&2; }
vm_die() {
    printf '[vm] FATAL: %s\n' "$*" >&2
    exit 2
}

vm_require_root() {
    [[ $(id -u) -eq 0 ]] || vm_die "must run as root (debootstrap, mke2fs -d of a root tree, qemu)"
}

# The Debian archive the host's apt already uses (no other download source is allowed): the
# first non-security URI of /etc/apt/sources.list.d/*.sources (deb822), else of sources.list.
vm_mirror() {
    if [[ -n ${LABGPU_VM_MIRROR:-} ]]; then
        printf '%s\n' "$LABGPU_VM_MIRROR"
        return 0
    fi
    local uri f
    for f in /etc/apt/sources.list.d/debian.sources /etc/apt/sources.list.d/*.sources; do
        [[ -r $f ]] || continue
        uri="$(awk 'BEGIN { RS = ""; FS = "\n" }
            {
                uri = ""; suites = ""; types = ""
                for (i = 1; i <= NF; i++) {
                    if ($i ~ /^URIs:/) { v = $i; sub(/^URIs:[ \t]*/, "", v); split(v, a, /[ \t]+/); uri = a[1] }
                    if ($i ~ /^Suites:/) suites = $i
                    if ($i ~ /^Types:/) types = $i
                }
                if (uri ~ /\/debian\/?$/ && types ~ /[ \t]deb([ \t]|$)/ && suites !~ /-security/) { print uri; exit }
            }' "$f")"
        [[ -n $uri ]] && break
    done
    if [[ -z $uri && -r /etc/apt/sources.list ]]; then
        uri="$(awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i !~ /^\[/ && $i ~ /^(https?|file):/) { if ($i ~ /\/debian\/?$/) { print $i; exit } break } }' /etc/apt/sources.list)"
    fi
    [[ -n $uri ]] || vm_die "no Debian archive in the host's apt sources (set LABGPU_VM_MIRROR)"
    printf '%s\n' "${uri%/}"
}

vm_apt_install() { # [apt-get options...] packages...
    vm_say "apt-get install $*"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null ||
        vm_die "apt-get install $* failed"
}

# debootstrap, mke2fs, setpriv, qemu-system-x86_64. On bookworm hosts whose qemu-utils comes
# from bookworm-backports (qemu 10), qemu-system-x86 must come from there too: bookworm's 7.2
# conflicts with it. The backports source is added (same mirror) when apt does not have one.
vm_install_tools() {
    local need=() updated=0
    command -v debootstrap >/dev/null || need+=(debootstrap)
    command -v mke2fs >/dev/null || need+=(e2fsprogs)
    command -v setpriv >/dev/null || need+=(util-linux)
    if ((${#need[@]})); then
        apt-get update -qq >/dev/null
        updated=1
        vm_apt_install "${need[@]}"
    fi
    command -v qemu-system-x86_64 >/dev/null && return 0
    local utils codename
    utils="$(dpkg-query -W -f='${Version}' qemu-utils 2>/dev/null || true)"
    codename="$(. /etc/os-release && echo "${VERSION_CODENAME:-}")"
    if [[ $codename == bookworm && $utils == *bpo12* ]]; then
        if ! apt-cache policy 2>/dev/null | grep -q 'bookworm-backports'; then
            vm_say "adding bookworm-backports to apt's sources (qemu-utils $utils came from there)"
            cat >/etc/apt/sources.list.d/bookworm-backports.sources <<SRC
Types: deb
URIs: $(vm_mirror)
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
            updated=0
        fi
        ((updated)) || apt-get update -qq >/dev/null
        vm_apt_install -t bookworm-backports qemu-system-x86
    else
        ((updated)) || apt-get update -qq >/dev/null
        vm_apt_install qemu-system-x86
    fi
    command -v qemu-system-x86_64 >/dev/null || vm_die "qemu-system-x86_64 still missing"
}

# The image's cache key: everything that goes into it.
vm_image_key() {
    cat "$VM_DIR/build-image.sh" "$VM_DIR/packages" "$VM_DIR"/guest/* |
        { sha256sum; echo "$VM_SUITE $(uname -m)"; } | sha256sum | cut -c1-16
}

# kvm where it can boot a stock kernel, else TCG. A PVM host (module kvm_pvm) has a /dev/kvm
# that only runs PVM-aware guests.
vm_accel() {
    case ${LABGPU_VM_ACCEL:-} in
    kvm | tcg)
        echo "$LABGPU_VM_ACCEL"
        return 0
        ;;
    esac
    if [[ -d /sys/module/kvm_pvm ]]; then
        echo tcg
    elif [[ -r /dev/kvm && -w /dev/kvm ]]; then
        echo kvm
    else
        echo tcg
    fi
}

# Minutes with one decimal from seconds.
vm_minutes() { awk -v s="$1" 'BEGIN { printf "%.1f", s / 60 }'; }
