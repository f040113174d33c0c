#!/usr/bin/env bash
# Captures the OCI specs a real dockerd hands its runtime, as test fixtures.
#
# A private dockerd gets a runtime named `capture` whose path is a small shell wrapper: on
# `create` it copies <bundle>/config.json to $OUT/<fixture.name>.json (the name comes from the
# container's `fixture.name` label in <data-root>/containers/<ID>/config.v2.json), on `exec` it
# copies the --process file to $OUT/exec-<name>.json, logs every argv, then execs runc.
#
#   integration/capture-fixtures.sh [OUT]     (default OUT: tests/fixtures/docker20)
#
# A re-capture changes the temp dir (/tmp/labgpu-cap.XXXX) and container ids inside every
# file; tests/docker_fixtures.rs names the temp dir of the committed capture. Capture into a
# scratch OUT to compare before replacing the committed fixtures.
set -euo pipefail

# shellcheck source=integration/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

OUT="$(realpath -m "${1:-$LG_REPO/tests/fixtures/docker20}")"

cap_teardown() {
    local rc=$?
    trap - EXIT INT TERM
    if [[ -n $LG_TMP && -d $LG_TMP ]]; then
        lg_stop_dockerd
        lg_unmount_all
        if [[ ${LABGPU_E2E_KEEP:-0} == 1 ]]; then
            lg_say "kept $LG_TMP"
        elif ! awk -v t="$LG_TMP" 'index($2, t) == 1 { f = 1 } END { exit !f }' /proc/mounts; then
            rm -rf "$LG_TMP"
        fi
    fi
    exit "$rc"
}

lg_require_root
trap cap_teardown EXIT
trap 'exit 130' INT TERM
lg_install_packages
lg_mktmp /tmp/labgpu-cap
lg_make_fake_gpus "$LG_TMP/dev"
mkdir -p "$OUT" "$LG_TMP/capture" "$LG_TMP/x"

RUNC="$(command -v runc)" || lg_die "runc not found"

lg_make_fake_hook

CAP="$LG_TMP/capture"
cat >"$LG_TMP/capture-runtime" <<EOF
#!/bin/sh
# The capture runtime: copy what runc is given, then run runc.
out='$CAP'
data='$LG_TMP/docker'
echo "\$*" >>"\$out/argv.log"
sub='' bundle='' process='' prev='' last=''
for a in "\$@"; do
    case "\$prev" in
    --bundle | -b) bundle=\$a ;;
    --process | -p) process=\$a ;;
    esac
    case "\$a" in
    --bundle=*) bundle=\${a#--bundle=} ;;
    --process=*) process=\${a#--process=} ;;
    esac
    if [ -z "\$sub" ]; then
        case "\$a" in
        create | exec | run | start | delete | kill | state | pause | resume | update | ps | features) sub=\$a ;;
        esac
    fi
    prev=\$a
    last=\$a
done
case "\$sub" in
create)
    cfg="\$data/containers/\$last/config.v2.json"
    name=\$(grep -o '"fixture.name":"[^"]*"' "\$cfg" 2>/dev/null | head -n 1 | sed 's/^"fixture.name":"//; s/"\$//')
    if [ -n "\$name" ]; then
        cp "\$bundle/config.json" "\$out/\$name.json"
        cp "\$cfg" "\$out/\$name.config.v2.json"
        echo "\$name \$*" >>"\$out/argv-create.log"
        echo "\$name cwd=\$(pwd)" >>"\$out/cwd.log"
        ls -la "\$bundle" >"\$out/\$name.bundle-ls" 2>&1
    fi
    ;;
exec)
    name=\$(cat "\$out/exec-name" 2>/dev/null || true)
    if [ -n "\$name" ]; then
        cp "\$process" "\$out/\$name.json"
        echo "\$name \$*" >>"\$out/argv-exec.log"
    fi
    ;;
esac
exec '$RUNC' "\$@"
EOF
chmod 755 "$LG_TMP/capture-runtime"
lg_write_daemon_json capture "$LG_TMP/capture-runtime"

lg_start_dockerd "$LG_TMP/hookbin"
lg_make_image
docker() { lg_docker "$@"; }

run_fixture() { # name, docker run args...
    local name="$1"
    shift
    lg_say "capturing $name"
    # runc may then fail (this host's bounding set can lack a capability --privileged asks
    # for): the spec is captured before runc runs, so only a missing copy is fatal.
    if ! docker run --rm --runtime capture --label "fixture.name=$name" "$@" >/dev/null 2>"$CAP/err"; then
        lg_say "  (runc failed after the capture: $(tail -n 1 "$CAP/err"))"
    fi
    [[ -s $CAP/$name.json ]] || lg_die "no spec captured for $name: $(cat "$CAP/err")"
}

I="$LG_IMAGE"
run_fixture plain "$I" true
run_fixture privileged --privileged "$I" true
run_fixture device --device "$LG_TMP/dev/nvidia2:/dev/nvidia2" "$I" true
run_fixture cgroup-rule --device-cgroup-rule 'c 195:* rwm' "$I" true
run_fixture gpus-hook --gpus all "$I" true
run_fixture caps-all --cap-add ALL --security-opt no-new-privileges=false "$I" true
run_fixture binds -v "$LG_TMP/x:/x" -v /:/host --tmpfs /t "$I" true
run_fixture hostns --pid host --ipc host --uts host --network host \
    --security-opt seccomp=unconfined --security-opt systempaths=unconfined "$I" true
run_fixture labels --label labgpu.user=alice -e NVIDIA_VISIBLE_DEVICES=all "$I" true
run_fixture user -u 1000:1000 "$I" true
run_fixture volume -v labgpu-fixture-vol:/vol "$I" true
run_fixture init --init "$I" true

# exec: a running container (no fixture.name, so its create is not captured), then execs.
target="$(docker run -d --runtime capture --ipc shareable "$I" sleep 1000)"
run_fixture netcontainer --network "container:$target" --ipc "container:$target" "$I" true
echo exec-privileged >"$CAP/exec-name"
docker exec --privileged "$target" true >"$CAP/err" 2>&1 \
    || lg_say "  (runc failed after the capture: $(tail -n 1 "$CAP/err"))"
echo exec-plain >"$CAP/exec-name"
docker exec -u 0 "$target" true || lg_die "docker exec -u 0 failed"
rm -f "$CAP/exec-name"
docker rm -f "$target" >/dev/null
docker volume rm labgpu-fixture-vol >/dev/null || true
for n in exec-privileged exec-plain; do
    [[ -s $CAP/$n.json ]] || lg_die "no process file captured for $n"
done

# Install into $OUT: the specs, one config.v2.json (the labelled container's), and argv.txt
# recording how the shim called the runtime.
for f in "$CAP"/*.json; do
    case "$f" in
    *.config.v2.json) continue ;;
    esac
    cp "$f" "$OUT/"
done
cp "$CAP/labels.config.v2.json" "$OUT/config.v2.json"
{
    echo "# How containerd-shim-runc-v2 (containerd $(containerd --version | awk '{print $3}'),"
    echo "# dockerd $(dockerd --version | awk '{print $3}' | tr -d ,)) called the runtime while these fixtures were captured."
    echo "# Temp dir: $LG_TMP (data root $LG_TMP/docker, exec root $LG_TMP/exec)."
    echo "# create (fixture name, then argv after the program name):"
    sed 's/^/create: /' "$CAP/argv-create.log"
    echo "# exec:"
    sed 's/^/exec: /' "$CAP/argv-exec.log"
    echo "# runtime cwd at create:"
    sed 's/^/cwd: /' "$CAP/cwd.log"
    echo "# every call, in order:"
    sed 's/^/call: /' "$CAP/argv.log"
} >"$OUT/argv.txt"

chmod 644 "$OUT"/*
if command -v python3 >/dev/null 2>&1; then
    for f in "$OUT"/*.json; do
        python3 -m json.tool "$f" >/dev/null || lg_die "$f is not valid JSON"
    done
else
    lg_say "python3 missing: JSON validity not checked"
fi
lg_say "fixtures in $OUT:"
ls -1 "$OUT" >&2
