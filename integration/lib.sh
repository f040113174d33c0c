# shellcheck shell=bash
# integration/lib.sh: helpers sourced by e2e.sh, proxy.sh, shell.sh, demo.sh and capture-fixtures.sh.
#
# Everything a run creates lives in one temp dir, $LG_TMP (/tmp/labgpu-e2e.XXXX), served by a
# private dockerd (own data root, exec root, socket, pid file, containerd) in a network
# namespace of its own. Nothing here reads or writes /var/lib/docker, /etc/docker or
# /var/run/docker.sock, talks to a system dockerd, or touches the host's docker0 and iptables.
# Host state that outlives a run: packages installed if missing. The policy users alice, bob
# and carol are host accounts made for the run (lg_user) and removed with their homes at its end.
#
# Knobs (environment):
#   LABGPU_E2E_SKIP_BUILD=1  use the existing target/release/labgpu instead of `cargo build`
#   LABGPU_E2E_BIN=/usr/bin/labgpu  run this labgpu binary (the installed one); implies no build
#   LABGPU_E2E_KEEP=1        keep $LG_TMP (dockerd.log, labgpu.log, ...) after the run
#   LABGPU_E2E_OWN_CONTAINERD=1  start a private containerd even if no system one is running
#   LABGPU_E2E_TIMEOUT=60    seconds each docker command may take
#   LABGPU_E2E_RUNTIME=runc  run the e2e cases under another runtime (to test the harness)
#   LABGPU_E2E_SYSTEM_DOCKER=1  use the machine's own dockerd (/var/run/docker.sock) and the
#                            installed /usr/bin/labgpu, registered as runtime "labgpu" (the .deb
#                            does that), instead of a private dockerd. For throwaway machines (the
#                            VM lane): the test policy replaces /etc/labgpu/policy.toml for the
#                            run. Containers, images and volumes the run made are removed at the
#                            end; the policy file is put back.
#   LABGPU_E2E_EXEC_ROOT=/run/docker   that dockerd's exec root (runc state under runtime-runc)
#   LABGPU_E2E_HOOK_LOG=FILE the file a fake nvidia-container-runtime-hook on that dockerd's PATH
#                            appends to (`--gpus` needs one; the VM lane installs it)

LG_REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LG_SYSTEM_DOCKER="${LABGPU_E2E_SYSTEM_DOCKER:-0}"
if [[ $LG_SYSTEM_DOCKER == 1 ]]; then
    LG_BIN="${LABGPU_E2E_BIN:-/usr/bin/labgpu}"
else
    LG_BIN="${LABGPU_E2E_BIN:-$LG_REPO/target/release/labgpu}"
fi
LG_IMAGE="labgpu-test:latest"
LG_RUNTIME="${LABGPU_E2E_RUNTIME:-labgpu}"
LG_TIMEOUT="${LABGPU_E2E_TIMEOUT:-60}"
LG_TMP=""
LG_RUN_ID=""
LG_SOCK=""
LG_POLICY=""    # the policy file the runtime (and the proxy) read
LG_DATA_ROOT="" # dockerd's data root (containers/<id>/...)
LG_EXEC_ROOT="" # dockerd's exec root (runtime-runc/moby: runc's state)
LG_HOOK_LOG=""  # what the fake nvidia-container-runtime-hook appends to
LG_DOCKERD_PID=""
LG_CONTAINERD_PID=""
LG_NETNS_PID=""
LG_DOCKER_CLI=""
LG_RUN_DOCKER_EXISTED=1
LG_CDI_FILE="" # e2e.sh docker_cdi: its CDI spec in Docker's spec directory, removed at teardown
LG_SYS_PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Extra NAME=value pairs for the private dockerd's and containerd's environment, which the
# shims and so the runtimes inherit (bench.sh: LABGPU_POLICY, with labgpu registered directly).
LG_DAEMON_ENV=()

lg_say() { printf '[e2e] %s\n' "$*" >&2; }
lg_die() {
    printf '[e2e] FATAL: %s\n' "$*" >&2
    exit 1
}

# ---------------------------------------------------------------------------------------------
# Host preparation

lg_require_root() {
    [[ $(id -u) -eq 0 ]] || lg_die "must run as root (needs dockerd, mknod, useradd)"
}

lg_pkg_installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'ok installed'
}

# apt-get installs docker.io, runc and busybox-static, each only if missing.
lg_install_packages() {
    local need=()
    command -v dockerd >/dev/null 2>&1 || need+=(docker.io)
    command -v runc >/dev/null 2>&1 || need+=(runc)
    # The test image is one static busybox: the dynamic `busybox` package will not do.
    lg_pkg_installed busybox-static || need+=(busybox-static)
    # proxy.sh: curl for raw API calls, script for a pty; the Rust tests compile a fake
    # libnvidia-ml.so with cc.
    command -v curl >/dev/null 2>&1 || need+=(curl)
    command -v script >/dev/null 2>&1 || need+=(bsdutils)
    command -v cc >/dev/null 2>&1 || need+=(gcc libc6-dev)
    if ((${#need[@]})); then
        lg_say "installing ${need[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >/dev/null
        apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    fi
    command -v dockerd >/dev/null 2>&1 || lg_die "dockerd still missing after apt-get"
    if [[ -x /usr/bin/docker ]]; then
        # Debian's client, the same version as its dockerd (a newer client on PATH would do,
        # but the matching one keeps error texts as users of this dockerd see them).
        LG_DOCKER_CLI=/usr/bin/docker
    else
        LG_DOCKER_CLI="$(command -v docker)" || lg_die "no docker client"
    fi
}

# The system-docker mode installs nothing (the VM lane has no network): it checks.
lg_check_tools() {
    local t
    for t in docker runc busybox curl script runuser unshare; do
        command -v "$t" >/dev/null 2>&1 || lg_die "$t is missing"
    done
    [[ $(ldd /bin/busybox 2>&1) == *"not a dynamic"* ]] || lg_die "/bin/busybox is not static (busybox-static)"
}

lg_find_cargo() {
    command -v cargo >/dev/null 2>&1 && return 0
    # rustup installs put cargo here; a non-login root shell may not have it on PATH.
    if [[ -x "${CARGO_HOME:-$HOME/.cargo}/bin/cargo" ]]; then
        PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
        export PATH
        return 0
    fi
    return 1
}

# The one command that installs a current Rust toolchain (rustup, as root's).
LG_RUSTUP_CMD="curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal -c rustfmt -c clippy"

# Dies, naming the one command that fixes it, unless cargo is there and its rustc is at least
# Cargo.toml's rust-version (Debian 12's cargo is older: the build would fail part-way).
lg_check_toolchain() {
    local need have="no cargo" dir
    need="$(sed -n 's/^rust-version *= *"\([0-9.]*\)".*/\1/p' "$LG_REPO/Cargo.toml" | head -n 1)"
    lg_find_cargo || true
    # The cargo on PATH first, then rustup's (a Debian cargo may shadow a newer rustup one).
    for dir in "$(dirname "$(command -v cargo 2>/dev/null || echo /nonexistent/cargo)")" \
        "${CARGO_HOME:-$HOME/.cargo}/bin"; do
        [[ -x $dir/cargo ]] || continue
        have="$("$dir/rustc" --version 2>/dev/null || rustc --version 2>/dev/null)"
        have="$(awk '{ print $2 }' <<<"$have")"
        if [[ -n $have ]] && printf '%s\n%s\n' "$need" "${have%%-*}" | sort -V -C; then
            [[ $(command -v cargo) == "$dir/cargo" ]] || export PATH="$dir:$PATH"
            return 0
        fi
        have="rustc ${have:-missing} (in $dir)"
    done
    lg_die "labgpu needs Rust >= $need (Cargo.toml rust-version); this machine has $have.
Install a current toolchain with rustup, then run this command again:
    $LG_RUSTUP_CMD"
}

lg_build() {
    if [[ ${LABGPU_E2E_SKIP_BUILD:-0} == 1 || -n ${LABGPU_E2E_BIN:-} || $LG_SYSTEM_DOCKER == 1 ]]; then
        [[ -x $LG_BIN ]] || lg_say "warning: LABGPU_E2E_SKIP_BUILD=1 but $LG_BIN is missing"
        return 0
    fi
    lg_check_toolchain
    lg_say "cargo build --release"
    (cd "$LG_REPO" && cargo build --release --quiet) || lg_die "cargo build --release failed"
    [[ -x $LG_BIN ]] || lg_die "$LG_BIN was not built"
}

# ---------------------------------------------------------------------------------------------
# The temp dir and what goes in it

lg_mktmp() {
    LG_TMP="$(mktemp -d "${1:-/tmp/labgpu-e2e}.XXXX")"
    chmod 755 "$LG_TMP"
    # Lower-case hex: part of the host account names (useradd's default NAME_REGEX).
    LG_RUN_ID="$(printf '%s' "$LG_TMP" | sha256sum | cut -c1-6)"
    if [[ $LG_SYSTEM_DOCKER == 1 ]]; then
        LG_SOCK=/var/run/docker.sock
        LG_POLICY=/etc/labgpu/policy.toml
        LG_EXEC_ROOT="${LABGPU_E2E_EXEC_ROOT:-/run/docker}"
        LG_HOOK_LOG="${LABGPU_E2E_HOOK_LOG:-}"
        # LG_DATA_ROOT: from docker info, in lg_use_system_docker.
    else
        LG_SOCK="$LG_TMP/docker.sock"
        LG_POLICY="$LG_TMP/policy.toml"
        LG_DATA_ROOT="$LG_TMP/docker"
        LG_EXEC_ROOT="$LG_TMP/exec"
        LG_HOOK_LOG="$LG_TMP/hook-ran"
    fi
    # The client's own config (credential helpers, contexts) stays out of the way.
    export DOCKER_CONFIG="$LG_TMP/cli"
    export DOCKER_HOST="unix://$LG_SOCK"
    mkdir -p "$DOCKER_CONFIG"
}

# Fake GPUs (design §6): character nodes with the real numbers and no driver behind them.
lg_make_fake_gpus() {
    local d="$1" i
    mkdir -p "$d"
    # userns = "owner": runc binds the nodes inside the container's user namespace, where a
    # source mount's nodev is locked and the bind's remount fails with EPERM. A real /dev is
    # not nodev, a systemd host's /tmp is: the fake nodes get a tmpfs of their own there
    # (teardown_all's lg_unmount_all takes it away).
    if findmnt -no OPTIONS --target "$d" | tr ',' '\n' | grep -qx nodev; then
        mount -t tmpfs -o mode=0755,size=1m labgpu-fake-dev "$d" || return 1
    fi
    for i in 0 1 2 3; do
        mknod -m 666 "$d/nvidia$i" c 195 "$i"
    done
    mknod -m 666 "$d/nvidiactl" c 195 255
    mknod -m 666 "$d/nvidia-uvm" c 511 0
    mknod -m 666 "$d/nvidia-uvm-tools" c 511 1
}

# The policy users alice, bob and carol (labels labgpu.user=alice, ...) are host accounts made
# for this run, lgt-<run>-alice and so on: a real account that happens to be called alice is
# never touched, and concurrent runs do not share (or delete) each other's. The policy pins
# their uid/gid. Any other name (nobody) is the host account of that name.
LG_TEST_USERS="alice bob carol"
lg_user() {
    case $1 in
    alice | bob | carol)
        [[ -n $LG_RUN_ID ]] || lg_die "lg_user $1 before lg_mktmp"
        printf 'lgt-%s-%s\n' "$LG_RUN_ID" "$1"
        ;;
    *) printf '%s\n' "$1" ;;
    esac
}
lg_uid() { id -u "$(lg_user "$1")"; }
lg_gid() { id -g "$(lg_user "$1")"; }
lg_home() { getent passwd "$(lg_user "$1")" | cut -d: -f6; }

# The GECOS field of the accounts this run makes: how teardown (and a later run, for a run
# that was killed) tells them from anyone else's.
lg_user_mark() { printf 'labgpu-test %s' "$1"; }

# Test accounts whose run's temp dir is gone (a run killed with SIGKILL): removed.
lg_reap_stale_users() {
    local name gecos dir
    while IFS=: read -r name gecos; do
        [[ $name == lgt-* && $gecos == "labgpu-test /tmp/"* ]] || continue
        dir="${gecos#labgpu-test }"
        [[ -d $dir ]] && continue
        lg_say "removing stale test account $name (its run $dir is gone)"
        userdel -r "$name" >/dev/null 2>&1 || true
    done < <(getent passwd | cut -d: -f1,5)
}

# useradd takes /etc/passwd's lock: a concurrent run may hold it for a moment.
lg_useradd() {
    local name="$1" i
    for ((i = 0; i < 20; i++)); do
        useradd -m -s /bin/sh -c "$(lg_user_mark "$LG_TMP")" "$name" 2>"$LG_TMP/useradd.err" && return 0
        getent passwd "$name" >/dev/null && return 1
        sleep 0.5
    done
    cat "$LG_TMP/useradd.err" >&2
    return 1
}

# Subordinate uid and gid ranges (65536 ids) for account $1, unless useradd gave it some
# (login.defs SUB_UID_COUNT): after every existing range, under a lock so that concurrent
# runs never pick the same one. userdel removes them with the account.
lg_ensure_subids() {
    local name="$1" start
    grep -q "^$name:" /etc/subuid 2>/dev/null && grep -q "^$name:" /etc/subgid 2>/dev/null && return 0
    (
        flock 9
        start="$(cat /etc/subuid /etc/subgid 2>/dev/null |
            awk -F: 'NF == 3 { e = $2 + $3; if (e > m) m = e } END { if (m < 100000) m = 100000; print int((m + 65535) / 65536) * 65536 }')"
        usermod --add-subuids "$start-$((start + 65535))" --add-subgids "$start-$((start + 65535))" "$name"
    ) 9>/run/labgpu-e2e-subid.lock || lg_die "could not give $name subordinate ids"
}

# The first subordinate uid (or gid, $2 = gid) range of policy user $1's account.
lg_subid_start() {
    local file=/etc/subuid
    [[ ${2:-uid} == gid ]] && file=/etc/subgid
    awk -F: -v n="$(lg_user "$1")" '$1 == n && $3 >= 65535 { print $2; exit }' "$file"
}

# Host groups a run makes (`lg_group lab`: lgt-<run>-lab), removed by lg_remove_users.
LG_TEST_GROUPS="lab ml"
lg_group() { printf 'lgt-%s-%s\n' "$LG_RUN_ID" "$1"; }

# Accounts a case makes beyond alice, bob and carol, for policy users known by their host
# name alone (group members): `lg_make_extra_users dave erin` makes lgt-<run>-dave and
# lgt-<run>-erin, and `lg_extra dave` names one. lg_remove_users removes them (by mark).
lg_extra() { printf 'lgt-%s-%s\n' "$LG_RUN_ID" "$1"; }
lg_make_extra_users() {
    local u name
    for u in "$@"; do
        name="$(lg_extra "$u")"
        getent passwd "$name" >/dev/null && continue
        lg_useradd "$name" || return 1
        mkdir -p "$LG_TMP/cli-$name"
        chown "$name" "$LG_TMP/cli-$name"
    done
}

# alice, bob, carol: fresh host accounts, homes 0700; data dirs under $LG_TMP.
lg_make_users() {
    local u name home
    lg_reap_stale_users
    for u in $LG_TEST_USERS; do
        name="$(lg_user "$u")"
        getent passwd "$name" >/dev/null && lg_die "host account $name exists and was not made by this run"
        lg_useradd "$name" || lg_die "useradd $name failed"
        home="$(lg_home "$u")"
        [[ -n $home && $home != / && -d $home ]] || lg_die "account $name has no usable home ($home)"
        chmod 700 "$home"
        lg_ensure_subids "$name"
    done
    for u in alice bob; do
        mkdir -p "$LG_TMP/data/$u"
        chown "$(lg_uid "$u"):$(lg_gid "$u")" "$LG_TMP/data/$u"
        chmod 700 "$LG_TMP/data/$u"
    done
    chmod 755 "$LG_TMP/data"
}

# The accounts lg_make_users made, homes included; only those carrying this run's mark.
lg_remove_users() {
    [[ -n $LG_RUN_ID ]] || return 0
    local u name
    for u in $LG_TEST_USERS; do
        name="$(lg_user "$u")"
        [[ $(getent passwd "$name" | cut -d: -f5) == "$(lg_user_mark "$LG_TMP")" ]] || continue
        userdel -r "$name" >/dev/null 2>&1 || lg_say "warning: userdel -r $name failed"
    done
    # lg_make_extra_users's accounts: this run's prefix and mark.
    while IFS=: read -r name u; do
        [[ $name == "lgt-$LG_RUN_ID-"* && $u == "$(lg_user_mark "$LG_TMP")" ]] || continue
        userdel -r "$name" >/dev/null 2>&1 || lg_say "warning: userdel -r $name failed"
    done < <(getent passwd | cut -d: -f1,5)
    for u in $LG_TEST_GROUPS; do
        getent group "$(lg_group "$u")" >/dev/null && groupdel "$(lg_group "$u")" 2>/dev/null
    done
    return 0
}

# The test image: static busybox, one symlink per applet, passwd with root and the test users.
lg_make_image() {
    local root="$LG_TMP/rootfs" a u
    rm -rf "$root"
    mkdir -p "$root"/{bin,etc,tmp,dev,proc,sys,root,workspace}
    chmod 1777 "$root/tmp"
    chmod 700 "$root/root"
    cp /bin/busybox "$root/bin/busybox"
    for a in $(/bin/busybox --list); do
        [[ $a == busybox ]] && continue
        ln -s busybox "$root/bin/$a"
    done
    {
        echo "root:x:0:0:root:/root:/bin/sh"
        echo "nobody:x:65534:65534:nobody:/:/bin/false"
    } >"$root/etc/passwd"
    {
        echo "root:x:0:"
        echo "nogroup:x:65534:"
    } >"$root/etc/group"
    # Inside the image the accounts have their policy names, with the host ids.
    for u in $LG_TEST_USERS; do
        echo "$u:x:$(lg_uid "$u"):$(lg_gid "$u")::/tmp:/bin/sh" >>"$root/etc/passwd"
        echo "$u:x:$(lg_gid "$u"):" >>"$root/etc/group"
    done
    tar -C "$root" --numeric-owner --owner=0 --group=0 -cf "$LG_TMP/rootfs.tar" . \
        || lg_die "tar of the test rootfs failed"
    lg_docker import --change 'ENV PATH=/bin' "$LG_TMP/rootfs.tar" "$LG_IMAGE" >/dev/null \
        || lg_die "docker import of $LG_IMAGE failed"
    rm -rf "$root" "$LG_TMP/rootfs.tar"
}

# The test policy (schema v1). Extra TOML lines may be appended to [defaults] via $1.
lg_policy_text() {
    cat <<EOF
version = 1

[runtime]
owner_label = "labgpu.user"
unlabeled = "${LG_POLICY_UNLABELED:-deny}"
log = "$LG_TMP/labgpu.log"
docker_root = "$LG_DATA_ROOT"

[gpus]
dev_root = "$LG_TMP/dev"
${LG_POLICY_GPUS_EXTRA:-}

[defaults]
capabilities = ["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL",
                "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
                "CAP_SYS_CHROOT", "CAP_AUDIT_WRITE"]
no_new_privileges = true
run_as = "image"

[users.alice]
uid = $(lg_uid alice)
gid = $(lg_gid alice)
gpus = [0, 1]
run_as = "owner"
mounts = [
  { source = "$(lg_home alice)", destination = "/workspace" },
  { source = "$LG_TMP/data/alice", destination = "/workspace/data" },
]

[users.bob]
uid = $(lg_uid bob)
gid = $(lg_gid bob)
gpus = [2]
mounts = [ { source = "$LG_TMP/data/bob", destination = "/data" } ]

[users.carol]
uid = $(lg_uid carol)
gid = $(lg_gid carol)
gpus = []
EOF
    # proxy.sh: with [proxy] the runtime believes only the proxy's records of who owns what.
    if [[ ${LG_POLICY_PROXY:-0} == 1 ]]; then
        printf '\n[proxy]\nstate_dir = "%s"\n' "$LG_TMP/state"
    fi
}

lg_write_policy() {
    lg_policy_text >"$LG_POLICY.new"
    chmod 644 "$LG_POLICY.new"
    mv "$LG_POLICY.new" "$LG_POLICY"
}

# The runtime docker is told about: labgpu with the test policy.
lg_make_wrapper() {
    cat >"$LG_TMP/labgpu-wrapper" <<EOF
#!/bin/sh
export LABGPU_POLICY=$LG_POLICY
exec $LG_BIN "\$@"
EOF
    chmod 755 "$LG_TMP/labgpu-wrapper"
    lg_write_daemon_json labgpu "$LG_TMP/labgpu-wrapper"
}

# daemon.json registering runtime $1 at path $2. Docker 20.10 also writes a trust key to
# /etc/docker/key.json unless told otherwise: keep it in $LG_TMP (newer dockerds, which have
# no trust key, reject the option, hence the probe).
lg_write_daemon_json() {
    local key=""
    if grep -qa 'deprecated-key-path' "$(command -v dockerd)"; then
        key=", \"deprecated-key-path\": \"$LG_TMP/key.json\""
    fi
    # Docker 25+ applies CDI devices itself when asked to (e2e.sh's docker_cdi case).
    if grep -qa 'cdi-spec-dirs' "$(command -v dockerd)"; then
        key+=', "features": {"cdi": true}'
    fi
    # LG_DEFAULT_RUNTIME: dockerd's default runtime (proxy.sh: builds need labgpu's).
    if [[ -n ${LG_DEFAULT_RUNTIME:-} ]]; then
        key+=", \"default-runtime\": \"$LG_DEFAULT_RUNTIME\""
    fi
    printf '{"runtimes": {"%s": {"path": "%s"}}%s}\n' "$1" "$2" "$key" >"$LG_TMP/daemon.json"
}

# `--gpus` on docker 20.10 needs nvidia-container-runtime-hook on dockerd's PATH (looked up at
# dockerd start, then added as a prestart hook). This one records each run in FILE ($2).
lg_write_fake_hook() { # path, log file
    cat >"$1" <<EOF
#!/bin/sh
echo "\$*" >>'$2'
cat >/dev/null
exit 0
EOF
    chmod 755 "$1"
}

lg_make_fake_hook() {
    mkdir -p "$LG_TMP/hookbin"
    lg_write_fake_hook "$LG_TMP/hookbin/nvidia-container-runtime-hook" "$LG_HOOK_LOG"
}

# ---------------------------------------------------------------------------------------------
# The private dockerd

lg_docker() { timeout "$LG_TIMEOUT" "$LG_DOCKER_CLI" "$@"; }

# overlay2 when the kernel mounts overlayfs on this file system, vfs otherwise.
lg_storage_driver() {
    local p="$LG_TMP/ovl-probe" driver=vfs
    mkdir -p "$p"/{l,u,w,m}
    if mount -t overlay overlay -o "lowerdir=$p/l,upperdir=$p/u,workdir=$p/w" "$p/m" 2>/dev/null; then
        umount "$p/m"
        driver=overlay2
    fi
    rm -rf "$p"
    echo "$driver"
}

# The private daemons' network namespace. dockerd with --bridge=none deletes any "docker0"
# it sees at start-up: in the host's namespace that would be a live system Docker's bridge.
# The first daemon started gets a new namespace (loopback up), the second joins it; both exec,
# so the pid is the daemon's. Nothing is mounted: the namespace goes with its last process.
lg_netns_prefix() {
    if [[ -n $LG_NETNS_PID ]] && kill -0 "$LG_NETNS_PID" 2>/dev/null; then
        LG_NETNS_CMD=(nsenter "--net=/proc/$LG_NETNS_PID/ns/net" --)
    else
        # shellcheck disable=SC2016 # expanded by the inner sh
        LG_NETNS_CMD=(unshare --net -- sh -c 'ip link set lo up 2>/dev/null; exec "$@"' sh)
    fi
}

# A containerd of our own, for hosts where a system containerd listens on the default socket
# (dockerd 20.10 would otherwise share it instead of supervising a private one).
lg_start_containerd() {
    local c="$LG_TMP/ctd"
    mkdir -p "$c"
    cat >"$c/config.toml" <<EOF
version = 2
root = "$c/root"
state = "$c/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$c/containerd.sock"
[ttrpc]
  address = "$c/containerd.sock.ttrpc"
[debug]
  address = "$c/debug.sock"
EOF
    lg_netns_prefix
    "${LG_NETNS_CMD[@]}" env -i PATH="$LG_SYS_PATH" HOME=/root ${LG_DAEMON_ENV[@]+"${LG_DAEMON_ENV[@]}"} \
        containerd --config "$c/config.toml" \
        >"$LG_TMP/containerd.log" 2>&1 &
    LG_CONTAINERD_PID=$!
    LG_NETNS_PID=$LG_CONTAINERD_PID
    local i
    for ((i = 0; i < 100; i++)); do
        [[ -S $c/containerd.sock ]] && return 0
        kill -0 "$LG_CONTAINERD_PID" 2>/dev/null || break
        sleep 0.2
    done
    cat "$LG_TMP/containerd.log" >&2
    lg_die "private containerd did not start"
}

# Starts dockerd with $LG_TMP/daemon.json; $1 (optional) is prepended to dockerd's PATH.
lg_start_dockerd() {
    local extra_path="${1:-}" driver args i
    driver="$(lg_storage_driver)"
    args=(--config-file "$LG_TMP/daemon.json"
        --data-root "$LG_TMP/docker" --exec-root "$LG_TMP/exec"
        --pidfile "$LG_TMP/docker.pid" -H "unix://$LG_SOCK"
        --bridge=none --iptables=false --ip6tables=false --ip-masq=false
        --userland-proxy=false --storage-driver="$driver")
    if [[ -n $LG_CONTAINERD_PID ]] && kill -0 "$LG_CONTAINERD_PID" 2>/dev/null; then
        # A restart (lg_restart_dockerd): the private containerd, and its shims, carry on.
        args+=(--containerd "$LG_TMP/ctd/containerd.sock")
    elif [[ -S /run/containerd/containerd.sock || ${LABGPU_E2E_OWN_CONTAINERD:-0} == 1 ]]; then
        lg_start_containerd
        args+=(--containerd "$LG_TMP/ctd/containerd.sock")
    fi
    # dockerd creates /run/docker/plugins (plugin discovery, not configurable): remember
    # whether it was there, so teardown removes only what this run made.
    if [[ -z ${LG_DOCKERD_STARTED:-} ]]; then
        [[ -e /run/docker ]] && LG_RUN_DOCKER_EXISTED=1 || LG_RUN_DOCKER_EXISTED=0
        LG_DOCKERD_STARTED=1
    fi
    lg_say "starting dockerd (storage driver $driver) on $LG_SOCK"
    # A clean environment: dockerd copies its own into hooks it adds (--gpus), and nothing of
    # the caller's (DOCKER_HOST, proxies, ...) should reach containerd or the runtime.
    lg_netns_prefix
    "${LG_NETNS_CMD[@]}" env -i PATH="${extra_path:+$extra_path:}$LG_SYS_PATH" HOME=/root LANG=C.UTF-8 \
        ${LG_DAEMON_ENV[@]+"${LG_DAEMON_ENV[@]}"} dockerd "${args[@]}" >"$LG_TMP/dockerd.log" 2>&1 &
    LG_DOCKERD_PID=$!
    LG_NETNS_PID=$LG_DOCKERD_PID
    for ((i = 0; i < 120; i++)); do
        if timeout 5 "$LG_DOCKER_CLI" info >/dev/null 2>&1; then
            [[ $(readlink "/proc/$LG_DOCKERD_PID/ns/net") != "$(readlink /proc/self/ns/net)" ]] ||
                lg_die "the private dockerd runs in the host's network namespace"
            return 0
        fi
        kill -0 "$LG_DOCKERD_PID" 2>/dev/null || break
        sleep 0.5
    done
    lg_say "dockerd did not answer within 60s; its log:"
    tail -n 50 "$LG_TMP/dockerd.log" >&2
    lg_die "private dockerd failed to start"
}

# ---------------------------------------------------------------------------------------------
# The machine's own dockerd (LABGPU_E2E_SYSTEM_DOCKER=1)

# What exists before the run, so that teardown removes only what the run made.
lg_system_inventory() { # containers|images|volumes
    case $1 in
    containers) lg_docker ps -aq --no-trunc ;;
    images) lg_docker image ls -aq --no-trunc ;;
    volumes) lg_docker volume ls -q ;;
    esac 2>/dev/null | LC_ALL=C sort -u
}

lg_use_system_docker() {
    LG_DOCKER_CLI="$(command -v docker)" || lg_die "no docker client"
    lg_docker info >/dev/null 2>&1 || lg_die "the system dockerd does not answer on $LG_SOCK"
    LG_DATA_ROOT="$(lg_docker info --format '{{.DockerRootDir}}')"
    local path
    path="$(lg_docker info --format '{{with index .Runtimes "labgpu"}}{{.Path}}{{end}}')"
    [[ -n $path ]] || lg_die "runtime labgpu is not registered with the system dockerd (install the .deb)"
    [[ $path -ef $LG_BIN ]] || lg_die "runtime labgpu is $path, not $LG_BIN"
    [[ -d $LG_EXEC_ROOT/runtime-runc ]] || lg_say "warning: no $LG_EXEC_ROOT/runtime-runc (LABGPU_E2E_EXEC_ROOT?)"
    local what
    for what in containers images volumes; do
        lg_system_inventory "$what" >"$LG_TMP/before-$what"
    done
    mkdir -p "$(dirname "$LG_POLICY")"
    if [[ -e $LG_POLICY ]]; then
        cp -p "$LG_POLICY" "$LG_TMP/policy.orig"
    fi
    lg_say "system dockerd $(lg_docker version --format '{{.Server.Version}}'), data root $LG_DATA_ROOT, cgroup $(lg_docker info --format '{{.CgroupDriver}} v{{.CgroupVersion}}'), policy $LG_POLICY"
}

# The containers, images and volumes that were not there before the run; the policy file back.
lg_release_system_docker() {
    local what new
    if [[ -f $LG_TMP/before-containers ]]; then
        new="$(lg_system_inventory containers | LC_ALL=C comm -13 "$LG_TMP/before-containers" -)"
        # shellcheck disable=SC2086 # one id per word
        [[ -z $new ]] || timeout 120 "$LG_DOCKER_CLI" rm -f $new >/dev/null 2>&1 || true
        for what in images volumes; do
            new="$(lg_system_inventory "$what" | LC_ALL=C comm -13 "$LG_TMP/before-$what" -)"
            [[ -n $new ]] || continue
            if [[ $what == images ]]; then
                # shellcheck disable=SC2086
                timeout 120 "$LG_DOCKER_CLI" rmi -f $new >/dev/null 2>&1 || true
            else
                # shellcheck disable=SC2086
                timeout 120 "$LG_DOCKER_CLI" volume rm -f $new >/dev/null 2>&1 || true
            fi
        done
    fi
    if [[ -f $LG_TMP/policy.orig ]]; then
        mv "$LG_TMP/policy.orig" "$LG_POLICY"
    elif [[ -n $LG_POLICY ]]; then
        rm -f "$LG_POLICY"
    fi
}

# Pids of processes (containerd, shims) whose command line names our temp dir.
lg_our_pids() {
    [[ -n $LG_TMP ]] || return 0
    local pid args
    while read -r pid args; do
        [[ $pid == "$$" || $pid == "$BASHPID" ]] && continue
        case "$args" in
        *"$LG_TMP/"*) echo "$pid" ;;
        esac
    done < <(ps -eo pid=,args=)
}

lg_stop_pid() { # pid, seconds to wait before SIGKILL
    local pid="$1" wait="${2:-20}" i
    [[ -n $pid ]] || return 0
    kill -TERM "$pid" 2>/dev/null || return 0
    for ((i = 0; i < wait * 5; i++)); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.2
    done
    kill -KILL "$pid" 2>/dev/null || true
}

lg_stop_dockerd() {
    if [[ -n $LG_DOCKERD_PID ]] && kill -0 "$LG_DOCKERD_PID" 2>/dev/null; then
        local ids
        ids="$(timeout 20 "$LG_DOCKER_CLI" ps -aq 2>/dev/null || true)"
        if [[ -n $ids ]]; then
            # shellcheck disable=SC2086 # one id per word
            timeout 60 "$LG_DOCKER_CLI" rm -f $ids >/dev/null 2>&1 || true
        fi
        lg_stop_pid "$LG_DOCKERD_PID" 30
        wait "$LG_DOCKERD_PID" 2>/dev/null || true
    fi
    LG_DOCKERD_PID=""
    if [[ -n $LG_CONTAINERD_PID ]]; then
        lg_stop_pid "$LG_CONTAINERD_PID" 10
        wait "$LG_CONTAINERD_PID" 2>/dev/null || true
        LG_CONTAINERD_PID=""
    fi
    LG_NETNS_PID=""
    # Shims (and a supervised containerd) that outlived dockerd: only those naming $LG_TMP.
    local pid
    for pid in $(lg_our_pids); do
        kill -KILL "$pid" 2>/dev/null || true
    done
    if [[ $LG_RUN_DOCKER_EXISTED == 0 ]]; then
        rmdir /run/docker/plugins /run/docker 2>/dev/null || true
        LG_RUN_DOCKER_EXISTED=1
    fi
}

# Restarts the dockerd the run uses, its running containers with it (live-restore is off:
# dockerd stops them at shutdown; --restart always brings them back).
lg_restart_dockerd() {
    if [[ $LG_SYSTEM_DOCKER == 1 ]]; then
        systemctl restart docker || return 1
        local i
        for ((i = 0; i < 60; i++)); do
            lg_docker info >/dev/null 2>&1 && return 0
            sleep 1
        done
        return 1
    fi
    lg_stop_pid "$LG_DOCKERD_PID" 60
    wait "$LG_DOCKERD_PID" 2>/dev/null
    # The netns goes with dockerd unless a private containerd holds it.
    [[ -n $LG_CONTAINERD_PID ]] || LG_NETNS_PID=""
    lg_start_dockerd "$LG_TMP/hookbin"
}

lg_unmount_all() {
    [[ -n $LG_TMP ]] || return 0
    local mp
    awk -v t="$LG_TMP" 'index($2, t) == 1 { print $2 }' /proc/mounts | sort -r | while read -r mp; do
        umount -l "$mp" 2>/dev/null || true
    done
}

# ---------------------------------------------------------------------------------------------
# labgpu proxy in front of the private dockerd (proxy.sh, slurm.sh, shell.sh)

LG_PSOCK=""
LG_PROXY_PID=""
LG_PROXY_EXTRA=() # more `labgpu proxy` arguments (top.sh: --metrics, --root)

# Starts `labgpu proxy` on $LG_TMP/proxy/docker.sock (LG_PSOCK), logging to $LG_TMP/proxy.log;
# arguments, if any, are a command prefix to start it under (slurm.sh: nsenter).
lg_start_own_proxy() {
    LG_PSOCK="$LG_TMP/proxy/docker.sock"
    "$@" "$LG_BIN" proxy --listen "$LG_PSOCK" --upstream "$LG_SOCK" --policy "$LG_POLICY" \
        ${LG_PROXY_EXTRA[@]+"${LG_PROXY_EXTRA[@]}"} >"$LG_TMP/proxy.log" 2>&1 &
    LG_PROXY_PID=$!
    local i
    for ((i = 0; i < 50; i++)); do
        [[ -S $LG_PSOCK ]] && break
        kill -0 "$LG_PROXY_PID" 2>/dev/null || break
        sleep 0.1
    done
    [[ -S $LG_PSOCK ]] || {
        cat "$LG_TMP/proxy.log" >&2
        lg_die "labgpu proxy did not start"
    }
}

# Stops the proxy lg_start_own_proxy started; it must take its socket with it.
lg_stop_own_proxy() {
    [[ -n $LG_PROXY_PID ]] || return 0
    kill -TERM "$LG_PROXY_PID" 2>/dev/null || true
    wait "$LG_PROXY_PID" 2>/dev/null || true
    if [[ -e $LG_PSOCK ]]; then
        lg_say "warning: the proxy left its socket $LG_PSOCK behind"
    fi
    LG_PROXY_PID=""
}

# A per-user DOCKER_CONFIG under $LG_TMP for each test user (the CLI writes there).
lg_make_cli_dirs() {
    local u
    for u in $LG_TEST_USERS; do
        mkdir -p "$LG_TMP/cli-$u"
        chown "$(lg_user "$u")" "$LG_TMP/cli-$u"
    done
}

# ---------------------------------------------------------------------------------------------
# The whole environment

setup_all() {
    lg_require_root
    trap teardown_all EXIT
    trap 'exit 130' INT TERM
    if [[ $LG_SYSTEM_DOCKER == 1 ]]; then
        lg_check_tools
    else
        lg_install_packages
    fi
    lg_build
    lg_mktmp /tmp/labgpu-e2e
    lg_say "temp dir $LG_TMP"
    lg_make_fake_gpus "$LG_TMP/dev"
    lg_make_users
    if [[ $LG_SYSTEM_DOCKER == 1 ]]; then
        lg_use_system_docker
        lg_write_policy
    else
        lg_write_policy
        lg_make_wrapper
        lg_make_fake_hook
        lg_start_dockerd "$LG_TMP/hookbin"
    fi
    lg_make_image
}

teardown_all() {
    local rc=$?
    trap - EXIT INT TERM
    [[ -n $LG_TMP && -d $LG_TMP ]] || exit "$rc"
    # e2e.sh's docker_cdi case: a CDI spec in Docker's spec directory.
    [[ -n ${LG_CDI_FILE:-} ]] && rm -f "$LG_CDI_FILE"
    if [[ $LG_SYSTEM_DOCKER == 1 ]]; then
        lg_release_system_docker
    else
        lg_stop_dockerd
    fi
    lg_unmount_all
    if [[ $LG_SYSTEM_DOCKER != 1 && -f $LG_POLICY ]]; then
        lg_write_policy # a case may have left it broken
    fi
    lg_remove_users
    if [[ ${LABGPU_E2E_KEEP:-0} == 1 ]]; then
        lg_say "kept $LG_TMP (LABGPU_E2E_KEEP=1)"
    elif awk -v t="$LG_TMP" 'index($2, t) == 1 { found = 1 } END { exit !found }' /proc/mounts; then
        # Never rm -rf through a mount that is still there (it could be a user's home).
        lg_say "warning: mounts remain under $LG_TMP; not removing it"
    else
        rm -rf "$LG_TMP"
    fi
    exit "$rc"
}

# ---------------------------------------------------------------------------------------------
# Test helpers (e2e.sh)

LG_PASSED=0
LG_FAILED=0
LG_FAILURES=()

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

pass() {
    LG_PASSED=$((LG_PASSED + 1))
    printf 'ok   %s\n' "$1"
}

fail() {
    LG_FAILED=$((LG_FAILED + 1))
    LG_FAILURES+=("$1")
    printf 'FAIL %s\n' "$1"
    [[ -n ${2:-} ]] && printf '%s\n' "$2" | sed 's/^/     | /'
    return 0
}

# run_ctr ARGS...: `docker run --rm --runtime labgpu ARGS` with a timeout.
# Sets RUN_OUT, RUN_ERR, RUN_RC.
run_ctr() {
    local o e
    o="$(mktemp "$LG_TMP/out.XXXX")"
    e="$(mktemp "$LG_TMP/err.XXXX")"
    RUN_RC=0
    lg_docker run --rm --runtime "$LG_RUNTIME" "$@" >"$o" 2>"$e" || RUN_RC=$?
    RUN_OUT="$(cat "$o")"
    RUN_ERR="$(cat "$e")"
    rm -f "$o" "$e"
}

# expect_run_ok NAME ARGS...: the container must run and exit 0; on failure records NAME as
# failed and returns 1 (the caller then skips its own output checks).
expect_run_ok() {
    local name="$1"
    shift
    run_ctr "$@"
    if [[ $RUN_RC -ne 0 ]]; then
        fail "$name" "docker run exited $RUN_RC
stdout: $RUN_OUT
stderr: $RUN_ERR"
        return 1
    fi
    return 0
}

# expect_refused NAME PATTERN ARGS...: docker run must fail at create with labgpu's refusal,
# and the message must contain PATTERN (fixed string).
expect_refused() {
    local name="$1" pattern="$2"
    shift 2
    run_ctr "$@"
    local why=""
    if [[ $RUN_RC -eq 0 ]]; then
        why="container ran (exit 0), expected a refusal"
    elif [[ $RUN_ERR != *"OCI runtime create failed"* ]]; then
        why="no 'OCI runtime create failed' in stderr"
    elif [[ $RUN_ERR != *"labgpu:"* ]]; then
        why="no 'labgpu:' in stderr"
    elif [[ $RUN_ERR != *"$pattern"* ]]; then
        why="stderr lacks '$pattern'"
    fi
    if [[ -n $why ]]; then
        fail "$name" "$why
stdout: $RUN_OUT
stderr: $RUN_ERR"
        return 1
    fi
    pass "$name"
}

# expect_eq NAME EXPECTED ACTUAL [CONTEXT]
expect_eq() {
    if [[ $2 == "$3" ]]; then
        pass "$1"
    else
        fail "$1" "expected: $(printf '%q' "$2")
actual:   $(printf '%q' "$3")${4:+
$4}"
    fi
}

print_summary() {
    echo "$LG_PASSED passed, $LG_FAILED failed"
}

# The fake libnvidia-ml.so.1 (tests/fixtures/fake_nvml.c), built into $NVML_DIR and answering
# from $NVML_DIR/fixture (empty until lg_nvml_fixture writes it).
NVML_DIR=""
lg_build_fake_nvml() {
    NVML_DIR="$LG_TMP/nvml"
    mkdir -p "$NVML_DIR"
    : >"$NVML_DIR/fixture"
    cc -shared -fPIC -o "$NVML_DIR/libnvidia-ml.so.1" "$LG_REPO/tests/fixtures/fake_nvml.c" \
        -DFIXTURE="\"$NVML_DIR/fixture\"" || lg_die "cc of the fake NVML library failed"
}
# lg_nvml_fixture LINES: the four fake GPUs (NVML index = minor) plus LINES (load, proc),
# replaced atomically.
lg_nvml_fixture() {
    {
        local i
        for i in 0 1 2 3; do echo "gpu $i $i GPU-000$i FakeGPU"; done
        printf '%s\n' "$1"
    } >"$NVML_DIR/fixture.new"
    mv "$NVML_DIR/fixture.new" "$NVML_DIR/fixture"
}
