#!/usr/bin/env bash
# labgpu's model of Docker's seccomp profiles against the real dockerd on this host.
#
# A private dockerd (lib.sh) runs containers under a `capture` runtime that copies each
# bundle's config.json before it execs runc. For each set of capability flags, the
# linux.seccomp dockerd wrote must equal, key for key, what
# `labgpu seccomp default --docker <this dockerd's version>` prints, both for the same
# --cap-add/--cap-drop flags and for the exact bounding set dockerd put in the spec. A
# custom Docker-format profile must hash (`labgpu seccomp hash`) to what the runtime
# hashes in the spec. Nothing here depends on the Docker version: it is read from
# `docker version`, so the suite runs unchanged on 20.10 (Debian 12) and 26 (trixie VM).
# Prints `N passed, N failed`; exits 1 if any failed.
#
#   bash integration/seccomp-docker.sh    (as root; see lib.sh for the LABGPU_E2E_* knobs)
set -uo pipefail

# shellcheck source=integration/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

I="$LG_IMAGE"
CAP=""
DOCKER_VERSION=""

docker() { lg_docker "$@"; }

# The capture runtime: on create, copy <bundle>/config.json to $CAP/<container id>.json.
make_capture_runtime() {
    local runc
    runc="$(command -v runc)" || lg_die "runc not found"
    CAP="$LG_TMP/capture"
    mkdir -p "$CAP"
    cat >"$LG_TMP/capture-runtime" <<EOF
#!/bin/sh
sub='' bundle='' prev='' last=''
for a in "\$@"; do
    [ "\$prev" = --bundle ] && bundle=\$a
    case "\$a" in --bundle=*) bundle=\${a#--bundle=} ;; esac
    [ -z "\$sub" ] && [ "\$a" = create ] && sub=create
    prev=\$a
    last=\$a
done
if [ "\$sub" = create ] && [ -n "\$bundle" ]; then
    cp "\$bundle/config.json" '$CAP'/"\$last.json"
fi
exec '$runc' "\$@"
EOF
    chmod 755 "$LG_TMP/capture-runtime"
    lg_write_daemon_json capture "$LG_TMP/capture-runtime"
}

setup() {
    lg_require_root
    trap teardown_all EXIT
    trap 'exit 130' INT TERM
    lg_install_packages
    if ! command -v jq >/dev/null 2>&1; then
        lg_say "installing jq"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >/dev/null
        apt-get install -y -qq --no-install-recommends jq >/dev/null
    fi
    command -v jq >/dev/null 2>&1 || lg_die "jq is needed"
    lg_build
    lg_mktmp /tmp/labgpu-seccomp
    lg_say "temp dir $LG_TMP"
    make_capture_runtime
    lg_start_dockerd
    lg_make_image
    DOCKER_VERSION="$(docker version --format '{{.Server.Version}}')" \
        || lg_die "docker version failed"
    lg_say "dockerd $DOCKER_VERSION, kernel $(uname -r), $(uname -m)"
}

# capture FLAGS...: runs a container with FLAGS under the capture runtime; sets SPEC to the
# path of the config.json dockerd wrote for it (empty on failure, after recording why).
capture() {
    local cid err
    SPEC=""
    err="$(mktemp "$LG_TMP/err.XXXX")"
    if ! cid="$(docker create --runtime capture "$@" "$I" true 2>"$err")"; then
        CAPTURE_ERR="docker create failed: $(cat "$err")"
        return 1
    fi
    # runc may refuse a profile after the copy; the spec is all this suite needs.
    docker start -a "$cid" >/dev/null 2>"$err" || true
    docker rm -f "$cid" >/dev/null 2>&1 || true
    if [[ ! -s $CAP/$cid.json ]]; then
        CAPTURE_ERR="no config.json captured: $(cat "$err")"
        return 1
    fi
    SPEC="$CAP/$cid.json"
}

# same_json NAME EXPECTED ACTUAL: compact, key-sorted JSON equality; a diff on mismatch.
same_json() {
    local name="$1" want got
    want="$(jq -S -c . <<<"$2")"
    got="$(jq -S -c . <<<"$3")"
    if [[ -n $want && $want == "$got" ]]; then
        pass "$name"
    else
        fail "$name" "$(diff <(jq -S . <<<"$2") <(jq -S . <<<"$3") | head -n 40)"
    fi
}

# cap_flags FLAGS...: the flags labgpu takes for the same capabilities (--cap-add/--cap-drop
# pairs pass through; others, such as --security-opt, are left out).
cap_flags() {
    local out=() prev=""
    for a in "$@"; do
        case "$prev" in --cap-add | --cap-drop) out+=("$prev" "$a") ;; esac
        prev="$a"
    done
    ((${#out[@]})) && printf '%s\n' "${out[@]}"
    return 0
}

# case_caps NAME FLAGS...: dockerd's default profile for FLAGS against labgpu's, twice.
case_caps() {
    local name="$1" flags bounding
    shift
    if ! capture "$@"; then
        fail "$name" "$CAPTURE_ERR"
        return
    fi
    local dockerd_profile
    dockerd_profile="$(jq -c .linux.seccomp "$SPEC")"
    mapfile -t flags < <(cap_flags "$@")
    same_json "$name" "$dockerd_profile" \
        "$("$LG_BIN" seccomp default --docker "$DOCKER_VERSION" "${flags[@]}" 2>&1)"
    # The exact bounding set dockerd resolved for: the resolver alone, whatever "ALL" means.
    mapfile -t bounding < <(jq -r '(.process.capabilities.bounding // [])[]' "$SPEC")
    local exact=(--cap-drop ALL)
    for c in "${bounding[@]}"; do exact+=(--cap-add "$c"); done
    same_json "$name-bounding" "$dockerd_profile" \
        "$("$LG_BIN" seccomp default --docker "$DOCKER_VERSION" "${exact[@]}" 2>&1)"
}

# A Docker-format profile with one of each condition dockerd resolves (name vs names,
# includes/excludes on caps, arches and kernel, archMap, errnoRet, a zero valueTwo).
# Allow by default so that the container still runs.
custom_profile() {
    cat <<'EOF'
{
  "defaultAction": "SCMP_ACT_ALLOW",
  "defaultErrnoRet": 1,
  "archMap": [
    {"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"]},
    {"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": ["SCMP_ARCH_ARM"]}
  ],
  "syscalls": [
    {"name": "acct", "action": "SCMP_ACT_ERRNO", "comment": "name, not names"},
    {"names": ["reboot"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38,
     "excludes": {"caps": ["CAP_SYS_BOOT"]}},
    {"names": ["kcmp"], "action": "SCMP_ACT_ERRNO", "includes": {"caps": ["CAP_SYS_PTRACE"]}},
    {"names": ["vhangup"], "action": "SCMP_ACT_ERRNO", "includes": {"caps": ["CAP_SYS_TTY_CONFIG"]}},
    {"names": ["syslog"], "action": "SCMP_ACT_ERRNO", "includes": {"minKernel": "4.8"}},
    {"names": ["swapoff"], "action": "SCMP_ACT_ERRNO", "excludes": {"minKernel": "99.0"}},
    {"names": ["arch_prctl"], "action": "SCMP_ACT_ERRNO", "includes": {"arches": ["s390x"]}},
    {"names": ["iopl"], "action": "SCMP_ACT_ERRNO", "excludes": {"arches": ["s390x"]}},
    {"names": ["personality"], "action": "SCMP_ACT_ERRNO",
     "args": [{"index": 0, "value": 4294967295, "valueTwo": 0, "op": "SCMP_CMP_EQ"}]}
  ]
}
EOF
}

case_custom() {
    local file="$LG_TMP/custom-seccomp.json" flags=(--cap-add SYS_PTRACE)
    custom_profile >"$file"
    if ! capture "${flags[@]}" --security-opt "seccomp=$file"; then
        fail custom-profile "$CAPTURE_ERR"
        return
    fi
    # What labgpu resolves must hash to what the runtime sees in dockerd's spec.
    expect_eq custom-profile-hash \
        "$("$LG_BIN" seccomp hash --oci "$SPEC" 2>&1)" \
        "$("$LG_BIN" seccomp hash "$file" --docker "$DOCKER_VERSION" "${flags[@]}" 2>&1)"
    # And both must be the profile resolved as intended, not, say, both empty.
    expect_eq custom-profile-rules \
        '["acct","reboot","kcmp","syslog","swapoff","iopl","personality"]' \
        "$(jq -c '[.linux.seccomp.syscalls[].names[0]]' "$SPEC")"
}

case_version() {
    # Every dockerd this suite runs against must be one labgpu models.
    local out
    if out="$("$LG_BIN" seccomp default --docker "$DOCKER_VERSION" 2>&1)"; then
        pass "version-known ($DOCKER_VERSION)"
    else
        fail "version-known" "$out"
    fi
}

# ---------------------------------------------------------------------------------------------

START=$SECONDS
setup
lg_say "suite starts ($((SECONDS - START))s setup)"
case_version
case_caps default-caps
case_caps cap-add-sys-admin --cap-add SYS_ADMIN
case_caps cap-add-all --cap-add ALL
case_caps cap-drop-all --cap-drop ALL
case_caps cap-add-sys-ptrace --cap-add SYS_PTRACE
case_caps cap-add-all-but-sys-admin --cap-add ALL --cap-drop SYS_ADMIN
case_caps cap-time-nice-no-chroot --cap-add SYS_TIME --cap-add sys_nice --cap-drop SYS_CHROOT
case_custom
if ((LG_FAILED)); then
    printf 'failed: %s\n' "${LG_FAILURES[@]}"
fi
lg_say "took $((SECONDS - START))s"
print_summary
((LG_FAILED == 0))
