#!/usr/bin/env bash
# Slurm on one node, against real Docker: Debian's munge, slurmctld and slurmd (installed if
# missing, started by hand, no systemd), a cluster of one node whose gres.conf names lib.sh's
# fake GPUs, the private dockerd with the labgpu runtime, `labgpu proxy` in front of it, and
# the test users running srun/salloc and the docker CLI through the proxy. The epilog is
# `labgpu slurm epilog`. Prints `N passed, N failed`; exits 1 if any failed.
#
#   bash integration/slurm.sh        (as root; see lib.sh for the LABGPU_E2E_* knobs)
#   LABGPU_E2E_ONLY='one two' bash integration/slurm.sh    run only these case groups
#
# The cluster lives in the private dockerd's network namespace, with the proxy and every
# srun, so that the runtime (dockerd's grandchild, in that namespace) reaches slurmctld on its
# loopback, and no port of the host is used. munged's socket is a file, reachable from both.
#
# Host lane only: slurmd 22.05 on cgroup v2 wants systemd's dbus, and the VM lane has no
# network to install Slurm from. Slurm's cgroups (/sys/fs/cgroup/*/slurm_<host>) are removed
# at the end; two runs at once on one host would share them, so do not.
set -uo pipefail

# shellcheck source=integration/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

I="$LG_IMAGE"
LG_POLICY_PROXY=1
LG_POLICY_UNLABELED=no-gpu
SL=""        # $LG_TMP/slurm: configuration, state, logs, munge
NODE=""      # this host's short name: the node's name in Slurm (and labgpu's default)
NS=()        # the command prefix that enters the private dockerd's network namespace

# A command in the cluster's network namespace.
ns() { "${NS[@]}" "$@"; }

# ---------------------------------------------------------------------------------------------
# Slurm

sl_install() {
    local need=()
    command -v slurmctld >/dev/null || need+=(slurmctld)
    command -v slurmd >/dev/null || need+=(slurmd)
    command -v munged >/dev/null || need+=(munge)
    command -v srun >/dev/null || need+=(slurm-client)
    ((${#need[@]})) || return 0
    lg_say "installing ${need[*]}"
    # The packages' maintainer scripts would start the daemons with the system's
    # configuration: a policy-rc.d of our own (when there is none) keeps them down.
    local rcd=/usr/sbin/policy-rc.d made=0
    if [[ ! -e $rcd ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$rcd" && chmod 755 "$rcd" && made=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" \
        >"$LG_TMP/apt.log" 2>&1 || {
        tail -n 20 "$LG_TMP/apt.log" >&2
        ((made)) && rm -f "$rcd"
        lg_die "apt-get install ${need[*]} failed"
    }
    ((made)) && rm -f "$rcd"
    return 0
}

sl_write_config() {
    # Slurm's default ports, on the namespace's own loopback.
    cat >"$SL/slurm.conf" <<EOF
ClusterName=labgpu-test
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$SL/munge/munge.socket
CredType=cred/munge
StateSaveLocation=$SL/ctld
SlurmdSpoolDir=$SL/slurmd
SlurmctldPidFile=$SL/slurmctld.pid
SlurmdPidFile=$SL/slurmd.pid
SlurmctldLogFile=$SL/slurmctld.log
SlurmdLogFile=$SL/slurmd.log
ProctrackType=proctrack/cgroup
TaskPlugin=task/cgroup
GresTypes=gpu
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
ReturnToService=2
KillWait=2
MailProg=/bin/true
Epilog=$SL/epilog
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=4 Gres=gpu:4 State=UNKNOWN
PartitionName=lg Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
    # Slurm's GPU index i is the i-th File= device: listed out of minor order on purpose,
    # so index 0 is nvidia2.
    cat >"$SL/gres.conf" <<EOF
# the fake GPUs of $LG_TMP/dev
NodeName=$NODE Name=gpu File=$LG_TMP/dev/nvidia[2-3]
NodeName=$NODE Name=gpu File=$LG_TMP/dev/nvidia0,$LG_TMP/dev/nvidia1
EOF
    echo "ConstrainDevices=yes" >"$SL/cgroup.conf"
    # slurmd runs the epilog as root with no PATH. $SL/epilog-off stands for a node where it
    # is not installed; $SL/epilog-docker for one whose Docker does not answer.
    cat >"$SL/epilog" <<EOF
#!/bin/sh
[ -e $SL/epilog-off ] && exit 0
docker=$LG_SOCK
[ -e $SL/epilog-docker ] && docker=\$(/bin/cat $SL/epilog-docker)
LABGPU_POLICY=$LG_POLICY exec $LG_BIN slurm epilog --docker "\$docker" 2>>$SL/epilog.log
EOF
    chmod 755 "$SL/epilog"
    chmod 644 "$SL"/*.conf
}

sl_start() {
    SL="$LG_TMP/slurm"
    NODE="$(hostname -s)"
    mkdir -p "$SL"/{munge,ctld,slurmd}
    chmod 755 "$SL" "$SL/munge"
    dd if=/dev/urandom of="$SL/munge/munge.key" bs=1024 count=1 status=none
    chmod 400 "$SL/munge/munge.key"
    sl_write_config
    export SLURM_CONF="$SL/slurm.conf"
    local t0=$SECONDS
    munged -f --socket="$SL/munge/munge.socket" --key-file="$SL/munge/munge.key" \
        --pid-file="$SL/munge/munged.pid" --log-file="$SL/munged.log" \
        --seed-file="$SL/munge/seed" || lg_die "munged did not start: $(tail -n 5 "$SL/munged.log")"
    ns slurmctld -f "$SL/slurm.conf" || lg_die "slurmctld did not start"
    ns slurmd -f "$SL/slurm.conf" || lg_die "slurmd did not start"
    sl_wait_state IDLE 100 || {
        tail -n 20 "$SL/slurmctld.log" "$SL/slurmd.log" >&2
        lg_die "node $NODE is not idle in Slurm: $(ns sinfo 2>&1)"
    }
    lg_say "Slurm $(scontrol --version | cut -d' ' -f2) up on node $NODE in $((SECONDS - t0))s"
}

sl_stop() {
    [[ -n $SL ]] || return 0
    ns scancel --full --quiet --partition=lg 2>/dev/null || true
    # Jobs end (epilogs included) before their daemon goes.
    local i f
    for ((i = 0; i < 50; i++)); do
        [[ -z $(ns squeue -h 2>/dev/null) ]] && break
        sleep 0.2
    done
    # The daemons this run started, by the pid files they wrote under $SL.
    for f in slurmd.pid slurmctld.pid munge/munged.pid; do
        [[ -s $SL/$f ]] && lg_stop_pid "$(cat "$SL/$f")" 10
    done
    # slurmd's cgroups outlive it; only this node's, which this run made.
    local d
    for d in /sys/fs/cgroup/*/slurm_"$NODE" /sys/fs/cgroup/*/slurm /sys/fs/cgroup/system.slice/slurmstepd.scope; do
        [[ -d $d ]] || continue
        find "$d" -depth -type d -exec rmdir {} + 2>/dev/null || true
    done
    SL=""
}

slurm_teardown() {
    local rc=$?
    sl_stop
    lg_stop_own_proxy
    (exit "$rc")
    teardown_all
}

# The node's state as slurmctld has it (IDLE, MIXED, IDLE+DRAIN, …). Not sinfo's: it can
# show a node "mix" for seconds after its last job, while polled.
sl_state() {
    ns scontrol show node "$NODE" 2>/dev/null | sed -n 's/^ *State=\([^ ]*\).*/\1/p'
}

# Waits up to $2 tenths of a second for the node's state to match the pattern $1.
sl_wait_state() {
    local i
    for ((i = 0; i < $2; i++)); do
        # shellcheck disable=SC2053 # $1 is a pattern
        [[ $(sl_state) == $1 ]] && return 0
        sleep 0.1
    done
    return 1
}

# The test policy with alice and bob on Slurm (`gpus = "slurm"`), carol on her static
# empty list, and $1 as [slurm]'s outside_job.
sl_policy() {
    lg_policy_text |
        sed -e '/^\[users\.\(alice\|bob\)\]$/a capabilities = ["CAP_MKNOD"]' \
            -e 's/^gpus = \[0, 1\]$/gpus = "slurm"/' -e 's/^gpus = \[2\]$/gpus = "slurm"/' \
            -e 's/^run_as = "owner"$/run_as = "image"/' >"$LG_POLICY.new"
    printf '\n[slurm]\nscontrol = "%s"\nslurm_conf = "%s"\noutside_job = "%s"\nstop_timeout = 2\n' \
        "$(command -v scontrol)" "$SL/slurm.conf" "${1:-no-gpu}" >>"$LG_POLICY.new"
    chmod 644 "$LG_POLICY.new"
    mv "$LG_POLICY.new" "$LG_POLICY"
}

# ---------------------------------------------------------------------------------------------
# Running things as the test users

# as USER CMD...: CMD as USER from /tmp, with a clean environment pointed at the proxy and at
# the test cluster.
as() {
    local u="$1"
    shift
    (cd /tmp && timeout "$LG_TIMEOUT" "${NS[@]}" runuser -u "$(lg_user "$u")" -- env -i PATH="$LG_SYS_PATH" \
        HOME="$(lg_home "$u")" LANG=C.UTF-8 DOCKER_HOST="unix://$LG_PSOCK" \
        DOCKER_CONFIG="$LG_TMP/cli-$u" SLURM_CONF="$SL/slurm.conf" "$@")
}
real() { lg_docker "$@"; }

# What a process may open of 195:0-3, asked of the kernel: a node made with mknod opens up to
# the absent driver (ENXIO) when allowed and stops at the device cgroup (EPERM) when not.
# shellcheck disable=SC2016 # expanded by the container's shell
PROBE='for n in 0 1 2 3; do
    mknod /tmp/n c 195 "$n" 2>/dev/null || { echo "195:$n mknod-failed"; continue; }
    case "$(cat /tmp/n 2>&1 >/dev/null)" in
    *"No such device or address"*) echo "195:$n allowed" ;;
    *) echo "195:$n denied" ;;
    esac
    rm -f /tmp/n
done'

# The same question asked of Slurm's own device cgroup, in the job step (the nodes exist).
# shellcheck disable=SC2016
STEP_PROBE='for n in 0 1 2 3; do
    case "$(cat "$DEV/nvidia$n" 2>&1 >/dev/null)" in
    *"No such device or address"*) echo "step 195:$n allowed" ;;
    *) echo "step 195:$n denied" ;;
    esac
done'

# The container run for a probe: root in the container with CAP_MKNOD (the policy grants it)
# and a rule asking for every GPU, which the runtime cuts to the job's.
probe_ctr() { # extra docker run args...
    printf '%s' "docker run --rm --cap-add MKNOD --device-cgroup-rule 'c 195:* rwm' $* $I sh -c '$PROBE; ls -1d /dev/nvidia[0-9]*'"
}

# The allowed minors in probe output ("195:2 allowed" lines), as "2 3"; $2 the prefix.
allowed() {
    printf '%s\n' "$1" | sed -n "s/^${2:-}195:\([0-9]\) allowed$/\1/p" | sort | tr '\n' ' ' | sed 's/ $//'
}
# The /dev/nvidiaN nodes the container has, as "2 3".
nodes() {
    printf '%s\n' "$1" | sed -n 's|^/dev/nvidia\([0-9]\)$|\1|p' | sort | tr '\n' ' ' | sed 's/ $//'
}

# The job a user's single allocation has (salloc --no-shell); $2 its name.
salloc_job() {
    local out
    out="$(as "$1" salloc --no-shell -J "$2" "${@:3}" 2>&1)"
    sed -n 's/.*Granted job allocation \([0-9]*\).*/\1/p' <<<"$out"
}

# Waits up to $2 seconds for container $1 to be gone; prints the seconds it took, or FAILS.
gone_within() {
    local t0 i
    t0="$(date +%s.%N)"
    for ((i = 0; i < $2 * 10; i++)); do
        if ! real inspect "$1" >/dev/null 2>&1; then
            awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'
            return 0
        fi
        sleep 0.1
    done
    echo FAILS
    return 1
}

# ---------------------------------------------------------------------------------------------
# Cases

# srun --gres=gpu:N docker run: the container can open exactly what Slurm's own cgroup lets
# the step open, no more; and has exactly those nodes.
case_one() {
    local out step ctr rc=0
    out="$(as alice srun --gres=gpu:1 sh -c "DEV=$LG_TMP/dev; $STEP_PROBE; $(probe_ctr)" 2>&1)"
    step="$(allowed "$out" "step ")"
    ctr="$(allowed "$out")"
    if [[ $step =~ ^[0-3]$ ]]; then pass "gpu1-slurm-allocates-one ($step)"; else
        fail gpu1-slurm-allocates-one "$out"
    fi
    expect_eq gpu1-container-opens-the-jobs-gpu "$step" "$ctr" "$out"
    expect_eq gpu1-container-has-the-jobs-node "$step" "$(nodes "$out")" "$out"
    # Slurm's first GPU is the first File= of gres.conf: nvidia2, not nvidia0.
    expect_eq gpu1-first-index-is-first-file 2 "$ctr"
    out="$(ns "$LG_BIN" policy check "$LG_POLICY" --docker "$LG_SOCK" 2>&1)" || rc=$?
    if [[ $rc == 0 && $out == *", 0 errors, 0 warnings"* ]]; then pass policy-check-gres-mapping; else
        fail policy-check-gres-mapping "exit $rc: $out"
    fi
    out="$(as bob srun --gres=gpu:2 sh -c "DEV=$LG_TMP/dev; $STEP_PROBE; $(probe_ctr)" 2>&1)"
    step="$(allowed "$out" "step ")"
    if [[ $step =~ ^[0-3]\ [0-3]$ ]]; then pass "gpu2-slurm-allocates-two ($step)"; else
        fail gpu2-slurm-allocates-two "$out"
    fi
    expect_eq gpu2-container-opens-the-jobs-gpus "$step" "$(allowed "$out")" "$out"
    expect_eq gpu2-container-has-the-jobs-nodes "$step" "$(nodes "$out")" "$out"
    # carol's GPUs are her static list (none), job or no job.
    out="$(as carol srun --gres=gpu:1 sh -c "$(probe_ctr --cap-drop ALL)" 2>&1)"
    expect_eq static-user-in-a-job-keeps-her-list "" "$(nodes "$out")" "$out"
}

# Two jobs at once, alice's and bob's: disjoint GPUs, each the job's own.
case_concurrent() {
    local a="$LG_TMP/conc-a" b="$LG_TMP/conc-b"
    as alice srun --gres=gpu:1 sh -c "DEV=$LG_TMP/dev; $STEP_PROBE; $(probe_ctr); sleep 4" >"$a" 2>&1 &
    local pa=$!
    as bob srun --gres=gpu:1 sh -c "DEV=$LG_TMP/dev; $STEP_PROBE; $(probe_ctr); sleep 4" >"$b" 2>&1 &
    local pb=$!
    wait "$pa" "$pb"
    local ga gb
    ga="$(allowed "$(cat "$a")")"
    gb="$(allowed "$(cat "$b")")"
    expect_eq concurrent-alice-gets-her-jobs "$(allowed "$(cat "$a")" "step ")" "$ga" "$(cat "$a")"
    expect_eq concurrent-bob-gets-his-jobs "$(allowed "$(cat "$b")" "step ")" "$gb" "$(cat "$b")"
    if [[ $ga =~ ^[0-3]$ && $gb =~ ^[0-3]$ && $ga != "$gb" ]]; then
        pass "concurrent-jobs-disjoint (alice $ga, bob $gb)"
    else
        fail concurrent-jobs-disjoint "alice: $(cat "$a")
bob: $(cat "$b")"
    fi
}

# salloc, then srun … docker run -d in the allocation; scancel ends the job and the epilog
# removes the container. A job that ends by itself, likewise.
case_epilog() {
    local job id label t
    job="$(salloc_job alice lgt-alloc --gres=gpu:1)"
    if [[ -z $job ]]; then
        fail salloc-granted "no allocation"
        return
    fi
    if as alice srun --jobid="$job" docker run -d --name sa1 "$I" sleep 300 >/dev/null 2>&1; then
        label="$(real inspect -f '{{index .Config.Labels "labgpu.slurm.job"}}' sa1 2>&1)"
        expect_eq salloc-container-labelled-with-job "$job" "$label"
        id="$(real inspect -f '{{.Id}}' sa1)"
        expect_eq salloc-container-recorded-with-job "{\"owner\":\"alice\",\"slurm_job\":$job}" \
            "$(cat "$LG_TMP/state/containers/$id" 2>&1)"
    else
        fail salloc-srun-docker-run-d "$(as alice srun --jobid="$job" docker run -d "$I" true 2>&1)"
    fi
    # What an administrator sees of the job from this node.
    out="$(ns "$LG_BIN" slurm job "$job" --policy "$LG_POLICY" 2>&1)"
    if [[ $out == *"RUNNING, uid $(lg_uid alice) (policy user alice), node $NODE"* &&
        $out == *"GPUs on $NODE (Slurm's [0], through $SL/gres.conf): nvidia2"* ]]; then
        pass slurm-job-shows-the-mapping
    else
        fail slurm-job-shows-the-mapping "$out"
    fi
    # The salloc shell (here: anything outside a step, SLURM_JOB_ID or not) is not in the job.
    local out
    out="$(as alice env SLURM_JOB_ID="$job" SLURM_JOBID="$job" docker run --rm "$I" sh -c 'ls -1d /dev/nvidia[0-9]* 2>/dev/null; true' 2>&1)"
    expect_eq outside-step-with-SLURM_JOB_ID-no-gpu "" "$(nodes "$out")" "$out"
    as alice scancel "$job"
    t="$(gone_within sa1 15)"
    if [[ $t != FAILS ]]; then pass "scancel-epilog-removes-container (${t}s)"; else
        fail scancel-epilog-removes-container "sa1 still there: $(real ps -a --filter name=sa1); epilog log: $(tail -n 5 "$SL/epilog.log")"
    fi
    if grep -q "job $job: container .* (alice) stopped and removed" "$SL/epilog.log"; then
        pass epilog-logs-per-container
    else
        fail epilog-logs-per-container "$(tail -n 5 "$SL/epilog.log")"
    fi
    # A job that ends normally: srun returns once docker run -d has.
    if as alice srun --gres=gpu:1 docker run -d --name sn1 "$I" sleep 300 >/dev/null 2>&1; then
        t="$(gone_within sn1 15)"
        if [[ $t != FAILS ]]; then pass "job-end-epilog-removes-container (${t}s)"; else
            fail job-end-epilog-removes-container "sn1 still there; epilog log: $(tail -n 5 "$SL/epilog.log")"
        fi
    else
        fail job-end-docker-run-d "srun docker run -d failed"
    fi
    # The epilogs exit 0 and the jobs finish: nothing left on the node (the job whose
    # epilog just removed sn1 may take a moment to leave COMPLETING).
    if sl_wait_state IDLE 50; then pass node-idle-after-epilogs; else
        fail node-idle-after-epilogs "$(sl_state); $(ns squeue 2>&1)"
    fi
}

# Outside a job: no GPU under outside_job = "no-gpu", a refusal under "deny".
case_outside() {
    local out
    out="$(as alice docker run --rm "$I" sh -c 'ls -1d /dev/nvidia* 2>/dev/null; true' 2>&1)"
    expect_eq outside-job-no-gpu "" "$(nodes "$out")" "$out"
    if [[ $out == */dev/nvidiactl* ]]; then fail outside-job-no-control-nodes "$out"; else
        pass outside-job-no-control-nodes
    fi
    sl_policy deny
    # shellcheck disable=SC2016 # backquotes of the message, not a command
    expect_fail outside-job-deny 'not created from inside a Slurm job (run it as `srun --gres=gpu:N docker run …`) and' \
        as alice docker run --rm "$I" true
    expect_fail outside-job-deny-names-key '[slurm] outside_job = "deny"' as alice docker run --rm "$I" true
    if as alice srun --gres=gpu:1 docker run --rm "$I" true >/dev/null 2>&1; then
        pass inside-job-under-deny
    else
        fail inside-job-under-deny "$(as alice srun --gres=gpu:1 docker run --rm "$I" true 2>&1)"
    fi
    sl_policy no-gpu
}

# What a user might try to get a job's GPUs that are not theirs, or not from Slurm.
case_forgery() {
    expect_fail forged-job-label-in-job 'label = "labgpu.slurm.job" is not allowed' \
        as alice srun --gres=gpu:1 docker run --rm --label labgpu.slurm.job=1 "$I" true
    expect_fail forged-job-label-outside 'label = "labgpu.slurm.job" is not allowed' \
        as alice docker run --rm --label labgpu.slurm.job=1 "$I" true
    local job out
    job="$(salloc_job bob lgt-bobs --gres=gpu:1)"
    if [[ -z $job ]]; then
        fail forgery-bob-allocation "no allocation"
        return
    fi
    # alice cannot step into bob's job; Slurm refuses her.
    expect_fail others-job-srun-refused "Access/permission denied" \
        as alice srun --jobid="$job" docker run --rm "$I" true
    # Bob's job id in alice's environment, outside any job: nothing of it.
    out="$(as alice env SLURM_JOB_ID="$job" SLURM_STEP_GPUS=0 CUDA_VISIBLE_DEVICES=0 \
        docker run --rm "$I" sh -c 'ls -1d /dev/nvidia[0-9]* 2>/dev/null; true' 2>&1)"
    expect_eq others-job-id-in-env-no-gpu "" "$(nodes "$out")" "$out"
    # ... nor inside a job of her own: her job's GPU, not his.
    local bobs
    bobs="$(as bob srun --jobid="$job" --overlap sh -c "DEV=$LG_TMP/dev; $STEP_PROBE" 2>&1)"
    out="$(as alice srun --gres=gpu:1 env SLURM_JOB_ID="$job" sh -c "$(probe_ctr)" 2>&1)"
    if [[ -n $(allowed "$out") && $(allowed "$out") != "$(allowed "$bobs" "step ")" ]]; then
        pass "own-job-with-others-id-in-env ($(allowed "$out"), bob's $(allowed "$bobs" "step "))"
    else
        fail own-job-with-others-id-in-env "alice: $out
bob's: $bobs"
    fi
    as bob scancel "$job"
    # A job name written to look like scontrol's allocation line for all four GPUs.
    expect_fail job-name-forging-allocation "more than one allocation line" \
        as alice srun -J $'x\n     Nodes='"$NODE"' CPU_IDs=0 Mem=0 GRES=gpu:4(IDX:0-3)' \
        --gres=gpu:1 docker run --rm "$I" true
}

# The runtime asks Slurm again at every start; verify finds a container that outlived its
# job (epilog not installed); gres.conf that leaves the numbering to AutoDetect is refused.
case_orphan() {
    touch "$SL/epilog-off"
    local job out rc=0
    job="$(salloc_job alice lgt-orphan --gres=gpu:1)"
    if [[ -z $job ]] || ! as alice srun --jobid="$job" docker run -d --name so1 "$I" sleep 300 >/dev/null 2>&1; then
        fail orphan-setup "job $job: $(as alice srun --jobid="$job" docker run -d "$I" true 2>&1)"
        rm -f "$SL/epilog-off"
        return
    fi
    as alice docker stop -t 0 so1 >/dev/null 2>&1
    as alice scancel "$job"
    sleep 1
    expect_fail restart-after-job-ended "Slurm job $job is" as alice docker start so1
    rm -f "$SL/epilog-off"
    # An orphan that kept running: created, its job cancelled with the epilog off.
    touch "$SL/epilog-off"
    job="$(salloc_job alice lgt-orphan2 --gres=gpu:1)"
    as alice srun --jobid="$job" docker run -d --name so2 "$I" sleep 300 >/dev/null 2>&1
    as alice scancel "$job"
    sleep 1
    rm -f "$SL/epilog-off"
    out="$(ns "$LG_BIN" verify --policy "$LG_POLICY" --root "$LG_EXEC_ROOT/runtime-runc/moby" 2>&1)" || rc=$?
    if [[ $rc == 1 && $out == *"its Slurm job $job is "*", not running"* ]]; then
        pass verify-orphaned-job-container
    else
        fail verify-orphaned-job-container "exit $rc: $out"
    fi
    # The epilog run by hand afterwards (as an administrator would) removes it.
    out="$(LABGPU_POLICY="$LG_POLICY" SLURM_JOB_ID="$job" ns "$LG_BIN" slurm epilog --docker "$LG_SOCK" 2>&1)" || true
    if [[ $(gone_within so2 5) != FAILS ]]; then pass epilog-by-hand-removes-orphan; else
        fail epilog-by-hand-removes-orphan "$out"
    fi
    real rm -f so1 >/dev/null 2>&1
    # GPUs numbered by AutoDetect cannot be mapped: refused with the reason.
    cp "$SL/gres.conf" "$SL/gres.conf.orig"
    echo "AutoDetect=nvml" >>"$SL/gres.conf"
    expect_fail gres-autodetect-refused "has AutoDetect=nvml, which numbers its GPUs by Slurm's own detection" \
        as alice srun --gres=gpu:1 docker run --rm "$I" true
    mv "$SL/gres.conf.orig" "$SL/gres.conf"
}

# A container the epilog cannot remove (Docker does not answer it): exit 1, and Slurm drains
# the node, so that no job gets the GPUs the container may still hold.
case_drain() {
    local job reason
    job="$(salloc_job alice lgt-drain --gres=gpu:1)"
    as alice srun --jobid="$job" docker run -d --name sd1 "$I" sleep 300 >/dev/null 2>&1 ||
        fail drain-setup "no container"
    echo "$LG_TMP/no-docker.sock" >"$SL/epilog-docker"
    as alice scancel "$job"
    sl_wait_state '*DRAIN*' 100
    reason="$(sl_state) ($(ns sinfo -h -n "$NODE" -o %E))"
    if [[ $reason == *DRAIN* ]]; then pass "survivor-drains-node: $reason"; else
        fail survivor-drains-node "$reason; $(tail -n 3 "$SL/epilog.log")"
    fi
    if grep -q "job $job: container .* SURVIVES" "$SL/epilog.log"; then pass epilog-logs-survivor; else
        fail epilog-logs-survivor "$(tail -n 3 "$SL/epilog.log")"
    fi
    rm -f "$SL/epilog-docker"
    # Cleanup as an administrator would: the epilog again, then resume.
    if LABGPU_POLICY="$LG_POLICY" SLURM_JOB_ID="$job" ns "$LG_BIN" slurm epilog --docker "$LG_SOCK" 2>/dev/null &&
        ! real inspect sd1 >/dev/null 2>&1; then
        pass epilog-rerun-cleans-up
    else
        fail epilog-rerun-cleans-up "$(real ps -a)"
    fi
    ns scontrol update nodename="$NODE" state=resume
    if sl_wait_state IDLE 50; then pass resume-undrains; else
        fail resume-undrains "$(sl_state)"
    fi
}

# ---------------------------------------------------------------------------------------------

ALL_CASES="one concurrent epilog outside forgery orphan drain"
START=$SECONDS
[[ $LG_SYSTEM_DOCKER != 1 ]] || lg_die "slurm.sh runs with lib.sh's private dockerd only"
setup_all
trap slurm_teardown EXIT
sl_install
[[ -n $LG_NETNS_PID ]] || lg_die "the private dockerd has no network namespace"
NS=(nsenter "--net=/proc/$LG_NETNS_PID/ns/net" --)
# Slurm resolves its listening address with AI_ADDRCONFIG, which finds nothing where the only
# IPv4 address is 127.0.0.1: one more on lo (TEST-NET-1, in this namespace only).
ns ip addr add 192.0.2.1/32 dev lo || lg_die "cannot add an address to the namespace's lo"
sl_start
sl_policy no-gpu
lg_start_own_proxy "${NS[@]}"
lg_make_cli_dirs
lg_say "suite starts ($((SECONDS - START))s setup); proxy pid $LG_PROXY_PID on $LG_PSOCK"
for c in ${LABGPU_E2E_ONLY:-$ALL_CASES}; do
    printf -- '--- %s\n' "$c"
    "case_$c"
done
if ((LG_FAILED)); then
    printf 'failed: %s\n' "${LG_FAILURES[@]}"
    tail -n 20 "$LG_TMP/proxy.log" | sed 's/^/     | proxy: /'
    tail -n 10 "$SL/epilog.log" 2>/dev/null | sed 's/^/     | epilog: /'
fi
lg_say "took $((SECONDS - START))s"
print_summary
((LG_FAILED == 0))
