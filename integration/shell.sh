#!/usr/bin/env bash
# The admin's and the user's day against real components: `labgpu user add/set/rm/list` on a
# commented policy file, then logins through a real sshd (Debian's openssh-server, on a
# loopback port with its own host keys and config, no systemd) into each user's login
# container, made and entered by labgpu-shell through `labgpu proxy` in front of lib.sh's
# private dockerd. The users are lib.sh's per-run host accounts (alice, bob, carol), with ssh
# keys made for the run. Prints `N passed, N failed`; exits 1 if any failed.
#
#   bash integration/shell.sh              (as root; see lib.sh for the LABGPU_E2E_* knobs)
#   LABGPU_E2E_ONLY='admin logins' bash integration/shell.sh     run only these case groups
#
# Installs openssh-server (its service is kept from starting) and tmux when missing.
set -uo pipefail

# shellcheck source=integration/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

I="$LG_IMAGE"
LG_POLICY_PROXY=1
SSH_DIR=""
SSH_PORT=""
SSHD_PID=""
TMUX_SOCK=""
ADMIN_DONE=0
SHELL_BIN="" # labgpu-shell as the accounts get it: a copy of labgpu any user can run

[[ $LG_SYSTEM_DOCKER == 1 ]] && {
    echo "shell.sh runs on the private dockerd only (host lane)" >&2
    exit 2
}

# ---------------------------------------------------------------------------------------------
# Helpers

lgu() { timeout "$LG_TIMEOUT" "$LG_BIN" user "$@" --policy "$LG_POLICY" --docker "$LG_SOCK"; }
real() { lg_docker "$@"; }

# The policy's diff, as `diff` prints it, since the last snapshot.
snap() { cp -p "$LG_POLICY" "$LG_TMP/policy.snap"; }
# Only the changed lines (< removed, > added), without diff's line numbers.
policy_diff() { diff "$LG_TMP/policy.snap" "$LG_POLICY" | grep '^[<>]'; }

# expect_unchanged NAME PATTERN CMD...: CMD is refused with PATTERN and the file's bytes stay.
expect_unchanged() {
    local name="$1" pattern="$2" before
    shift 2
    before="$(sha256sum <"$LG_POLICY")"
    expect_fail "$name" "$pattern" "$@"
    expect_eq "$name-file-unchanged" "$before" "$(sha256sum <"$LG_POLICY")"
}

# ssh_as USER [ssh options] CMD...: a non-interactive login (no pty).
ssh_cmd() {
    local u="$1"
    printf '%s\n' ssh -F /dev/null -i "$SSH_DIR/id_$u" -p "$SSH_PORT" \
        -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes \
        -o LogLevel=ERROR -o ConnectTimeout=10 "$(lg_user "$u")@127.0.0.1"
}
ssh_as() {
    local u="$1"
    shift
    local cmd
    mapfile -t cmd < <(ssh_cmd "$u")
    timeout "$LG_TIMEOUT" "${cmd[@]}" -T "$@"
}

# The running session container of USER, as dockerd has it (label set by the proxy).
session_of() {
    real ps -a --no-trunc --filter "label=labgpu.session=$1" --format '{{.ID}} {{.State}} {{.Names}} {{.Label "labgpu.user"}}'
}

# A login with a pseudo-terminal, in a tmux pane: tmux_login NAME USER.
tmux_login() {
    local cmd q
    mapfile -t cmd < <(ssh_cmd "$2")
    printf -v q '%q ' "${cmd[@]}"
    tmux -S "$TMUX_SOCK" new-session -d -s "$1" -x 160 -y 50 \
        "TERM=xterm $q -tt; echo SSH-EXIT=\$?; sleep 120"
}
pane() { tmux -S "$TMUX_SOCK" capture-pane -p -J -S -200 -t "$1" 2>/dev/null; }
# wait_pane NAME TEXT [SECONDS]: until the pane shows TEXT.
wait_pane() {
    local i n=$((${3:-30} * 5))
    for ((i = 0; i < n; i++)); do
        [[ $(pane "$1") == *"$2"* ]] && return 0
        sleep 0.2
    done
    return 1
}
keys() { tmux -S "$TMUX_SOCK" send-keys -t "$1" "$2" Enter; }

# ---------------------------------------------------------------------------------------------
# Setup

install_tools() {
    local need=()
    [[ -x /usr/sbin/sshd ]] || need+=(openssh-server)
    command -v ssh >/dev/null || need+=(openssh-client)
    command -v tmux >/dev/null || need+=(tmux)
    ((${#need[@]})) || return 0
    lg_say "installing ${need[*]}"
    # The package's service must not start (no systemd here; on a sysvinit machine it would
    # listen on port 22): a policy-rc.d that refuses, only for this install.
    local made_policy=0
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        made_policy=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" \
        >"$LG_TMP/apt.log" 2>&1 || {
        apt-get update -qq >/dev/null 2>&1
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" \
            >"$LG_TMP/apt.log" 2>&1
    }
    ((made_policy)) && rm -f /usr/sbin/policy-rc.d
    [[ -x /usr/sbin/sshd ]] && command -v tmux >/dev/null || {
        cat "$LG_TMP/apt.log" >&2
        lg_die "openssh-server or tmux could not be installed"
    }
}

# The suite's policy: commented, with [proxy] and the login image, and no users yet (the
# admin cases add them with labgpu user add).
write_base_policy() {
    cat >"$LG_POLICY" <<EOF
# The shell suite's policy. Users are added with labgpu user add.
version = 1

[runtime]
owner_label = "labgpu.user"
unlabeled = "deny"          # containers without an owner are refused
log = "$LG_TMP/labgpu.log"
docker_root = "$LG_DATA_ROOT"

[gpus]
dev_root = "$LG_TMP/dev"    # fake GPUs 0-3

[defaults]
run_as = "image"
# Where logins land (labgpu-shell):
session = { image = "$I" }

# The proxy: users reach Docker only through it.
[proxy]
state_dir = "$LG_TMP/state"

# --- the lab's people (labgpu user add) ---
EOF
    # Not the usual 0644 root:root: user edits must keep the mode and owner.
    chgrp "$(lg_gid carol)" "$LG_POLICY"
    chmod 640 "$LG_POLICY"
    cp -p "$LG_POLICY" "$LG_TMP/policy.base"
}

# labgpu-shell where every account can run it (the build tree may not be readable to them).
install_shell() {
    mkdir -p "$LG_TMP/bin"
    cp "$LG_BIN" "$LG_TMP/bin/labgpu"
    ln -sf labgpu "$LG_TMP/bin/labgpu-shell"
    chmod 755 "$LG_TMP/bin" "$LG_TMP/bin/labgpu"
    SHELL_BIN="$LG_TMP/bin/labgpu-shell"
}

free_port() {
    local p
    for ((p = 20000 + RANDOM % 30000; ; p++)); do
        ss -ltnH "sport = :$p" 2>/dev/null | grep -q . || {
            echo "$p"
            return
        }
    done
}

# sshd on 127.0.0.1:PORT with its own host key and config; keys of the test accounts in
# $SSH_DIR/keys/<account>; every session gets LABGPU_PROXY_SOCKET (SetEnv), which is how
# labgpu-shell finds this run's proxy instead of /run/labgpu/docker.sock.
start_sshd() {
    SSH_DIR="$LG_TMP/ssh"
    mkdir -p "$SSH_DIR/keys"
    chmod 755 "$SSH_DIR" "$SSH_DIR/keys"
    ssh-keygen -q -t ed25519 -N '' -f "$SSH_DIR/host_ed25519" || lg_die "ssh-keygen failed"
    local u account
    for u in alice bob carol; do
        account="$(lg_user "$u")"
        ssh-keygen -q -t ed25519 -N '' -C "$u" -f "$SSH_DIR/id_$u"
        cp "$SSH_DIR/id_$u.pub" "$SSH_DIR/keys/$account"
        chmod 644 "$SSH_DIR/keys/$account"
        # useradd leaves the password locked ('!'), which sshd without PAM refuses even for
        # keys; '*' is "no password" without the lock.
        usermod -p '*' "$account"
    done
    SSH_PORT="$(free_port)"
    cat >"$SSH_DIR/sshd_config" <<EOF
ListenAddress 127.0.0.1
Port $SSH_PORT
HostKey $SSH_DIR/host_ed25519
PidFile $SSH_DIR/sshd.pid
AuthorizedKeysFile $SSH_DIR/keys/%u
StrictModes no
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
PermitRootLogin no
AllowUsers $(lg_user alice) $(lg_user bob) $(lg_user carol)
SetEnv LABGPU_PROXY_SOCKET=$LG_PSOCK
Subsystem sftp /usr/lib/openssh/sftp-server
LogLevel VERBOSE
# What docs/users.md tells the admin to set for labgpu-shell users (PermitUserRC is left at
# its default: the case sshd shows that ~/.ssh/rc does not run on the host either way).
Match User $(lg_user alice),$(lg_user bob),$(lg_user carol)
    DisableForwarding yes
    PermitTunnel no
EOF
    # sshd's privilege separation directory (Debian's init script makes it).
    mkdir -p /run/sshd
    chmod 755 /run/sshd
    /usr/sbin/sshd -D -e -f "$SSH_DIR/sshd_config" >"$LG_TMP/sshd.log" 2>&1 &
    SSHD_PID=$!
    local i
    for ((i = 0; i < 50; i++)); do
        ss -ltnH "sport = :$SSH_PORT" 2>/dev/null | grep -q . && return 0
        kill -0 "$SSHD_PID" 2>/dev/null || break
        sleep 0.1
    done
    cat "$LG_TMP/sshd.log" >&2
    lg_die "sshd did not start"
}

shell_teardown() {
    local rc=$?
    [[ -n $TMUX_SOCK ]] && tmux -S "$TMUX_SOCK" kill-server 2>/dev/null
    if [[ -n $SSHD_PID ]]; then
        kill -TERM "$SSHD_PID" 2>/dev/null
        wait "$SSHD_PID" 2>/dev/null
    fi
    lg_stop_own_proxy
    (exit "$rc")
    teardown_all
}

# ---------------------------------------------------------------------------------------------
# Cases: the admin

case_admin() {
    local a b
    a="$(lg_uid alice)"
    b="$(lg_uid bob)"
    snap
    if expect_ok user-add-alice lgu add alice --uid "$a" --gid "$(lg_gid alice)" --gpus 0,1 \
        --mount "$LG_TMP/data/ws/alice:/workspace" --make-dirs --login --shell-path "$SHELL_BIN"; then
        local want
        want="$(printf '%s\n' "> " "> [users.alice]" "> uid = $a" "> gid = $(lg_gid alice)" \
            "> gpus = [0, 1]" "> mounts = [{ source = \"$LG_TMP/data/ws/alice\", destination = \"/workspace\" }]")"
        expect_eq user-add-diff-is-the-table "$want" "$(policy_diff)"
        expect_eq user-add-make-dirs "$a $(lg_gid alice) 700" "$(stat -c '%u %g %a' "$LG_TMP/data/ws/alice" 2>&1)"
        expect_eq user-add-login-shell "$SHELL_BIN" "$(getent passwd "$(lg_user alice)" | cut -d: -f7)"
    fi
    expect_eq user-add-keeps-mode-owner "640 $(lg_gid carol)" "$(stat -c '%a %g' "$LG_POLICY")"
    snap
    if expect_ok user-add-bob lgu add bob --uid "$b" --gid "$(lg_gid bob)" --gpus 2 \
        --mount "$LG_TMP/data/ws/bob:/workspace" --make-dirs --login --shell-path "$SHELL_BIN"; then
        [[ $(policy_diff | grep -c '^[<>]') == 6 && -z $(policy_diff | grep '^<') ]] &&
            pass user-add-bob-diff || fail user-add-bob-diff "$(policy_diff)"
    fi
    # Invalid input changes nothing and says why.
    expect_unchanged user-add-unknown-gpu "GPU 7 is not present on this host" \
        lgu add dave --uid 61001 --gid 61001 --gpus 0,7
    expect_unchanged user-add-bad-gpu "\"gpu1\"" lgu add dave --uid 61001 --gid 61001 --gpus gpu1
    expect_unchanged user-add-uid-taken "uid $a is already [users.alice]'s" \
        lgu add dave --uid "$a" --gid "$a"
    expect_unchanged user-add-name-taken "[users.alice] is already in the policy" \
        lgu add alice --uid 61002 --gid 61002
    expect_unchanged user-add-relative-mount "must be absolute" \
        lgu add dave --uid 61001 --gid 61001 --mount data/dave:/workspace
    expect_unchanged user-add-missing-source "does not exist (--make-dirs creates it)" \
        lgu add dave --uid 61001 --gid 61001 --mount "$LG_TMP/nonexistent:/workspace"
    expect_unchanged user-add-mount-over-proc "cover the container's /proc" \
        lgu add dave --uid 61001 --gid 61001 --mount "$LG_TMP/data:/proc/x"
    expect_unchanged user-add-no-account "is not an account on this host" lgu add nobody-here-xyz
    expect_unchanged user-set-unknown-key "unknown field \`gpuz\`" lgu set alice --set gpuz=1
    expect_unchanged user-set-unknown-gpu "GPU 9 is not present" lgu set alice --add-gpus 9
    expect_unchanged user-set-no-user "[users.dave] is not in the policy" lgu set dave --gpus 0
    expect_unchanged user-rm-no-user "[users.dave] is not in the policy" lgu rm dave
    [[ ! -e $LG_TMP/data/dave ]] && pass user-add-refused-made-no-dir || fail user-add-refused-made-no-dir
    # alice may make device nodes (to show the device cgroup's EPERM on bob's GPU below).
    snap
    if expect_ok user-set-capability lgu set alice --set 'capabilities=["CAP_MKNOD"]'; then
        expect_eq user-set-diff-one-line '> capabilities = ["CAP_MKNOD"]' \
            "$(policy_diff)"
    fi
    # Move GPU 1 from alice to carol's would-be list and back: only the gpus line changes.
    snap
    if expect_ok user-set-remove-gpu lgu set alice --remove-gpus 1; then
        expect_eq user-set-gpus-line "$(printf '%s\n' "< gpus = [0, 1]" "> gpus = [0]")" "$(policy_diff)"
    fi
    expect_ok user-set-add-gpu lgu set alice --add-gpus 1 && pass user-set-add-gpu
    expect_eq user-set-round-trip "" "$(policy_diff)"
    expect_eq user-set-keeps-mode-owner "640 $(lg_gid carol)" "$(stat -c '%a %g' "$LG_POLICY")"
    if expect_ok user-list lgu list; then
        [[ $OUT == *"alice "*"$a "*"0,1 "*"labgpu-shell"* ]] && pass user-list-alice || fail user-list-alice "$OUT"
    fi
    case_concurrent
    ADMIN_DONE=1
}

# 20 `user add` at once on one file: all 20 land, and the file loads.
case_concurrent() {
    local f="$LG_TMP/concurrent.toml" i pids=() failed=0
    cp "$LG_TMP/policy.base" "$f"
    for ((i = 1; i <= 20; i++)); do
        "$LG_BIN" user add "u$i" --uid $((62000 + i)) --gid $((62000 + i)) --gpus $((i % 4)) \
            --policy "$f" >"$LG_TMP/conc.$i" 2>&1 &
        pids+=($!)
    done
    for i in "${pids[@]}"; do wait "$i" || failed=$((failed + 1)); done
    expect_eq user-add-concurrent-all-ok 0 "$failed" "$(cat "$LG_TMP"/conc.* | grep -v '^added\|^note' | head -5)"
    expect_eq user-add-concurrent-20-tables 20 "$(grep -c '^\[users\.u[0-9]*\]$' "$f")"
    local listed
    listed="$("$LG_BIN" user list --json --policy "$f" --docker "$LG_SOCK" 2>&1 | grep -c '"user": "u')"
    expect_eq user-add-concurrent-loads 20 "$listed"
    # labgpu user's temporary files are .<file>.labgpu-<pid> beside the policy.
    expect_eq user-add-concurrent-no-temp-files "" "$(compgen -G "$LG_TMP/.*.labgpu-[0-9]*")"
}

# ---------------------------------------------------------------------------------------------
# Cases: logins

case_logins() {
    local out rc
    # The logins are those of the users the admin cases added.
    ((ADMIN_DONE)) || case_admin
    # ssh host CMD: no pty, CMD's exit status, stdout and stderr apart.
    rc=0
    out="$(ssh_as alice 'id; hostname; ls /dev; cat /dev/nvidia0 2>&1; echo to-stderr >&2; exit 3' 2>"$LG_TMP/ssh.err")" || rc=$?
    expect_eq login-cmd-exit-status 3 "$rc" "$out $(cat "$LG_TMP/ssh.err")"
    [[ $out == *"uid=0(root)"* ]] && pass login-cmd-id || fail login-cmd-id "$out"
    [[ $out == *"alice-"* ]] && pass login-cmd-hostname-names-user || fail login-cmd-hostname-names-user "$out"
    [[ $out == *$'\nnvidia0\n'*"nvidia1"* && $out != *nvidia2* && $out != *nvidia3* ]] &&
        pass login-cmd-own-gpus || fail login-cmd-own-gpus "$out"
    [[ $out == *"No such device or address"* ]] && pass login-cmd-gpu-enxio || fail login-cmd-gpu-enxio "$out"
    expect_eq login-cmd-stderr to-stderr "$(cat "$LG_TMP/ssh.err")"
    local s
    s="$(session_of alice)"
    [[ $s == *" running session-alice alice" && $(wc -l <<<"$s") == 1 ]] &&
        pass login-made-session-container || fail login-made-session-container "$s"
    # stdin in, stdout out, byte for byte (what scp and rsync need).
    head -c 300000 /dev/urandom >"$LG_TMP/blob"
    expect_eq login-cmd-binary-stdio "$(sha256sum <"$LG_TMP/blob")" \
        "$(ssh_as alice 'cat' <"$LG_TMP/blob" | sha256sum)"
    expect_eq login-cmd-false 1 "$(ssh_as alice false >/dev/null 2>&1; echo $?)"

    # A login with a pty: the user's GPU opens as far as the driver (ENXIO), bob's is
    # refused by the device cgroup (EPERM); state is written for the next login.
    TMUX_SOCK="$LG_TMP/tmux.sock"
    tmux_login a1 alice
    if wait_pane a1 "/workspace #" 60; then
        keys a1 'echo MARK-$((6*7)); tty; cat /dev/nvidia0; mknod /tmp/n2 c 195 2 && cat /tmp/n2; echo installed > /root/pkg; echo notes > /workspace/notes; echo DONE-$((1+1))'
        if wait_pane a1 "DONE-2" 30; then
            out="$(pane a1)"
            [[ $out == *"MARK-42"*"/dev/pts/"* ]] && pass login-pty-has-tty || fail login-pty-has-tty "$out"
            [[ $out == *"/dev/nvidia0': No such device or address"* ]] && pass login-pty-own-gpu-enxio || fail login-pty-own-gpu-enxio "$out"
            [[ $out == *"/tmp/n2': Operation not permitted"* ]] && pass login-pty-other-gpu-eperm || fail login-pty-other-gpu-eperm "$out"
        else
            fail login-pty-commands "$(pane a1)"
        fi
        keys a1 exit
        wait_pane a1 "SSH-EXIT=0" 30 && pass login-pty-exit || fail login-pty-exit "$(pane a1)"
    else
        fail login-pty-prompt "$(pane a1) $(tail -n 5 "$LG_TMP/sshd.log")"
    fi
    # The next login finds what the last one left, in the same container.
    out="$(ssh_as alice 'cat /root/pkg /workspace/notes' 2>&1)"
    expect_eq login-state-persists "$(printf 'installed\nnotes')" "$out"
    expect_eq login-same-container 1 "$(session_of alice | wc -l)"
    [[ -f $LG_TMP/data/ws/alice/notes ]] && pass login-workspace-is-mount || fail login-workspace-is-mount

    # bob lands in his own container.
    out="$(ssh_as bob 'hostname; ls /dev; cat /root/pkg 2>&1; cat /dev/nvidia2 2>&1; echo bob-was-here > /root/bob' 2>&1)"
    [[ $out == *"bob-"* && $out == *nvidia2* && $out != *nvidia0* && $out != *installed* ]] &&
        pass login-bob-own-container || fail login-bob-own-container "$out"
    s="$(session_of bob)"
    [[ $s == *" running session-bob bob" && $s != "$(session_of alice)" ]] && pass login-bob-session ||
        fail login-bob-session "$s"
    # A user's session label cannot be forged: the proxy refuses it.
    out="$(runuser -u "$(lg_user bob)" -- env -i PATH="$LG_SYS_PATH" HOME="$(lg_home bob)" \
        DOCKER_HOST="unix://$LG_PSOCK" DOCKER_CONFIG="$LG_TMP/cli-bob" \
        "$LG_DOCKER_CLI" create --label labgpu.session=alice "$I" true 2>&1)"
    [[ $out == *"labgpu.session"*"only the proxy sets it"* ]] && pass session-label-refused ||
        fail session-label-refused "$out"
    case_sshd
    case_refusals
    case_stop_on_exit
    case_list_rm
}

# What sshd does besides running the shell: sftp goes through the shell into the container,
# forwarding is refused, ~/.ssh/rc and the login's environment do not run anything on the host.
case_sshd() {
    local out rc cmd a
    a="$(lg_user alice)"
    mapfile -t cmd < <(ssh_cmd alice)
    # An sftp-server of alice's own in her container: the subsystem is run there.
    local made
    made="$(ssh_as alice 'mkdir -p /usr/lib/openssh && printf "#!/bin/sh\nhostname >/tmp/sftp-ran\nexit 9\n" >/usr/lib/openssh/sftp-server && chmod 755 /usr/lib/openssh/sftp-server && echo made' 2>&1)"
    rc=0
    out="$(timeout "$LG_TIMEOUT" sftp -b - -F /dev/null -i "$SSH_DIR/id_alice" -P "$SSH_PORT" \
        -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes \
        -o LogLevel=ERROR "$a@127.0.0.1" <<<'ls /' 2>&1)" || rc=$?
    local ran
    ran="$(ssh_as alice 'cat /tmp/sftp-ran; rm -rf /usr/lib/openssh /tmp/sftp-ran' 2>&1)"
    [[ $made == made && $rc != 0 && $ran == alice-* ]] && pass sftp-runs-in-container ||
        fail sftp-runs-in-container "made: $made; sftp exit $rc: $out; in the container: $ran"
    # -W (stdio forwarding) to sshd's own port: the banner would come back if it were allowed.
    rc=0
    out="$(timeout 20 "${cmd[@]:0:${#cmd[@]}-1}" -W "127.0.0.1:$SSH_PORT" "${cmd[-1]}" </dev/null 2>&1)" || rc=$?
    [[ $rc != 0 && $out != *SSH-2.0* ]] && pass forwarding-refused || fail forwarding-refused "exit $rc: $out"
    # ~/.ssh/rc in the host home: sshd runs it through the login shell, so not on the host.
    local home marker="$LG_TMP/rc-ran-on-host"
    home="$(lg_home alice)"
    mkdir -p "$home/.ssh"
    printf 'touch %q\n' "$marker" >"$home/.ssh/rc"
    chmod 755 "$home/.ssh"
    chmod 644 "$home/.ssh/rc"
    out="$(ssh_as alice 'echo after-rc' 2>&1)"
    rm -rf "$home/.ssh"
    [[ ! -e $marker && $out == *after-rc* ]] && pass user-rc-not-on-host || fail user-rc-not-on-host "$out"
    # The login's own environment and PATH cannot make labgpu-shell run something of the
    # user's on the host (a docker in PATH, DOCKER_HOST, DOCKER_CONFIG).
    local evil="$LG_TMP/evil"
    mkdir -p "$evil/cfg"
    printf '#!/bin/sh\ntouch %q\nexec /bin/sh\n' "$evil/ran" >"$evil/docker"
    printf '{"cliPluginsExtraDirs": ["%s"]}\n' "$evil" >"$evil/cfg/config.json"
    chmod -R a+rX "$evil"
    chmod 755 "$evil/docker"
    out="$(runuser -u "$a" -- env -i PATH="$evil:$LG_SYS_PATH" HOME="$(lg_home alice)" \
        DOCKER_HOST=unix:///nonexistent.sock DOCKER_CONFIG="$evil/cfg" DOCKER_CONTEXT=evil \
        LABGPU_PROXY_SOCKET="$LG_PSOCK" "$SHELL_BIN" -c hostname 2>&1)"
    [[ ! -e $evil/ran && $out == alice-* ]] && pass login-env-not-followed ||
        fail login-env-not-followed "$out $(ls "$evil")"
}

case_refusals() {
    local out rc c
    c="$(lg_user carol)"
    usermod -s "$SHELL_BIN" "$c"
    # carol is not in the policy: one sentence, no shell, nothing left running.
    rc=0
    out="$(ssh_as carol 'id' 2>&1)" || rc=$?
    [[ $rc != 0 && $out == *"labgpu-shell: uid $(lg_uid carol) ($c) is not a user in $LG_POLICY [users]"* ]] &&
        pass login-unknown-user-refused || fail login-unknown-user-refused "exit $rc: $out"
    tmux_login c1 carol
    if wait_pane c1 "SSH-EXIT=" 30; then
        out="$(pane c1)"
        [[ $out == *"is not a user in"* && $out == *"SSH-EXIT=1"* ]] && pass login-pty-unknown-user-refused ||
            fail login-pty-unknown-user-refused "$out"
    else
        fail login-pty-unknown-user-refused "$(pane c1)"
    fi
    # What sshd ran for her is gone (its own exited children may stay zombies a moment).
    local i left
    for ((i = 0; i < 25; i++)); do
        left="$(ps -u "$c" -o stat=,pid=,args= | awk '$1 !~ /^Z/')"
        [[ -z $left ]] && break
        sleep 0.2
    done
    expect_eq login-unknown-user-no-process "" "$left"
    expect_eq login-unknown-user-no-container "" "$(real ps -aq --filter "label=labgpu.user=carol")"
    # In the policy, but the login image is not on this host.
    lgu add carol --uid "$(lg_uid carol)" --gid "$(lg_gid carol)" >/dev/null
    lgu set carol --set 'session.image=labgpu-missing:1' >/dev/null
    rc=0
    out="$(ssh_as carol 'id' 2>&1)" || rc=$?
    [[ $rc == 1 && $out == *'labgpu-shell: the login image "labgpu-missing:1"'*"is not on this host"* ]] &&
        pass login-missing-image || fail login-missing-image "exit $rc: $out"
    lgu rm carol >/dev/null
    # The proxy is down (another socket): a sentence, not a shell.
    rc=0
    out="$(runuser -u "$(lg_user alice)" -- env -i PATH="$LG_SYS_PATH" \
        LABGPU_PROXY_SOCKET="$LG_TMP/no-proxy.sock" "$SHELL_BIN" -c id 2>&1)" || rc=$?
    [[ $rc == 1 && $out == "labgpu-shell: cannot reach the labgpu proxy at $LG_TMP/no-proxy.sock: it is not running;"* ]] &&
        pass login-proxy-down || fail login-proxy-down "exit $rc: $out"
    rc=0
    out="$("$SHELL_BIN" -c id 2>&1)" || rc=$?
    [[ $rc == 1 && $out == *"root is the administrator"* ]] && pass login-root-refused || fail login-root-refused "$out"
    expect_fail login-bad-option "not an option of labgpu-shell" "$SHELL_BIN" --rcfile x
}

# stop_on_exit: the container stops when the login leaves, and the next login starts it.
case_stop_on_exit() {
    lgu set bob --set session.stop_on_exit=true >/dev/null
    local out
    out="$(ssh_as bob 'echo hi' 2>&1)"
    expect_eq stop-on-exit-ran hi "$out"
    [[ $(session_of bob) == *" exited session-bob bob" ]] && pass stop-on-exit-stopped || fail stop-on-exit-stopped "$(session_of bob)"
    out="$(ssh_as bob 'cat /root/bob' 2>&1)"
    expect_eq stop-on-exit-state-kept bob-was-here "$out"
}

case_list_rm() {
    local out
    if expect_ok user-list-running lgu list; then
        expect_eq user-list-counts "alice 1 bob 0" "$(awk '$1 == "alice" || $1 == "bob" { printf "%s%s %s", sep, $1, $5; sep = " " }' <<<"$OUT")" "$OUT"
    fi
    # bob goes, with his containers; his data directory stays; his logins are refused.
    snap
    if expect_ok user-rm-bob lgu rm bob --containers remove; then
        local want
        want="$(awk '/^\[users\.bob\]$/ { on = 1; print "< " prev; } on && /^$/ { on = 0 } on { print "< " $0 } { prev = $0 }' \
            "$LG_TMP/policy.snap")"
        expect_eq user-rm-diff-is-the-table "$want" "$(policy_diff)"
        expect_eq user-rm-removed-containers "" "$(session_of bob)"
        [[ -d $LG_TMP/data/ws/bob ]] && pass user-rm-keeps-data || fail user-rm-keeps-data
        [[ $OUT == *"removed bob's containers: session-bob"* ]] && pass user-rm-says || fail user-rm-says "$OUT"
        expect_fail user-rm-login-refused "is not a user in" ssh_as bob true
    fi
    # alice's container is stopped, not removed.
    if expect_ok user-rm-alice lgu rm alice; then
        [[ $(session_of alice) == *" exited session-alice alice" ]] && pass user-rm-stops || fail user-rm-stops "$(session_of alice)"
    fi
    # A new alice would own the old one's stopped containers: add says so.
    if expect_ok user-readd lgu add alice --uid "$(lg_uid alice)" --gid "$(lg_gid alice)"; then
        [[ $OUT == *"containers of an earlier alice"*"session-alice"* ]] && pass user-readd-notes-leftovers ||
            fail user-readd-notes-leftovers "$OUT"
        lgu rm alice --containers remove >/dev/null
        expect_eq user-rm-remove-alice "" "$(session_of alice)"
    fi
    expect_eq user-rm-all-round-trip "" "$(diff "$LG_TMP/policy.base" "$LG_POLICY")"
}

# ---------------------------------------------------------------------------------------------

ALL_CASES="admin logins"
START=$SECONDS
setup_all
install_tools
trap shell_teardown EXIT
write_base_policy
install_shell
lg_start_own_proxy
start_sshd
lg_make_cli_dirs
lg_say "suite starts ($((SECONDS - START))s setup); proxy on $LG_PSOCK, sshd on 127.0.0.1:$SSH_PORT"
for c in ${LABGPU_E2E_ONLY:-$ALL_CASES}; do
    printf -- '--- %s\n' "$c"
    "case_$c"
done
if ((LG_FAILED)); then
    printf 'failed: %s\n' "${LG_FAILURES[@]}"
    tail -n 15 "$LG_TMP/proxy.log" | sed 's/^/     | proxy: /'
    tail -n 15 "$LG_TMP/sshd.log" | sed 's/^/     | sshd: /'
fi
lg_say "took $((SECONDS - START))s"
print_summary
((LG_FAILED == 0))
