#!/usr/bin/env bash
# The test command: formatting, clippy, the Rust tests, the real-Docker e2e, proxy,
# fair-share, Slurm, shell (sshd logins, labgpu user), seccomp and top (labgpu top and the
# metrics) suites, the fuzz targets (integration/fuzz.sh, 60 s each), then the VM lane
# (integration/vm/lane.sh: the .deb installed on systemd + cgroup v2 + Docker 26). Every
# step runs even if an earlier one failed; exits non-zero if any failed. Ends with one line
# per step: minutes, and its "N passed, N failed" where it has one.
#
#   bash integration/run-tests.sh            (as root, for the e2e suites and the VM)
#   LABGPU_SKIP_VM=1 bash integration/run-tests.sh    without the VM lane (quick local runs)
#
# LABGPU_SUMMARY_FILE=F appends each step's row to F (name|seconds|passed|failed|status; the
# counts empty when the step has none), for .ci/run's table.
set -uo pipefail

# shellcheck source=integration/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$LG_REPO" || exit 1
lg_check_toolchain
# Before the Rust tests: they run real runc and compile a fake libnvidia-ml.so.
if ((EUID == 0)); then lg_install_packages; fi

failed=()
rows=()
# Each step's whole output goes to its own log here; the terminal gets what a reader needs.
LOGS="$(mktemp -d /tmp/labgpu-run-tests.XXXX)"
# counts LOG: "passed failed" from a step's output: the sum of cargo's "test result:" lines, or
# the last "[word: ]N passed, N failed" line of a suite; nothing when there is neither.
counts() {
    if grep -q '^test result: ' "$1"; then
        sed -n 's/^test result: [a-zA-Z]*\. \([0-9]*\) passed; \([0-9]*\) failed.*/\1 \2/p' "$1" |
            awk '{ p += $1; f += $2 } END { print p, f }'
    else
        sed -nE 's/^([a-z-]+: )?([0-9]+) passed, ([0-9]+) failed.*/\2 \3/p' "$1" | tail -n 1
    fi
}
# What the terminal does not need: cargo's progress (Compiling, Checking, Running, ...),
# each passing Rust test and suite case, cargo test's per-binary headers and results
# (summed up in the step's line), blank lines. Failures, warnings, skips, the suites'
# progress and summaries stay.
NOISE='^ *(Compiling|Checking|Finished|Running|Fresh|Downloading|Downloaded|Updating|Locking|Adding|Blocking|Doc-tests|Installing|Installed|Replacing|Packaging|Building|Waiting) |^test .* \.\.\. ok$|^running [0-9]+ tests?$|^test result: ok\.|^ok +|^$'
quiet() { grep -Ev "$NOISE" || true; }
step() { # name, command...
    local name="$1" t0=$SECONDS log status rc
    shift
    printf '\n=== %s: %s\n' "$name" "$*"
    log="$LOGS/$name.log"
    "$@" 2>&1 | tee "$log" | quiet
    rc=${PIPESTATUS[0]}
    local p f
    read -r p f < <(counts "$log"; echo)
    if ((rc == 0)); then status=ok; else
        status=FAILED
        failed+=("$name")
    fi
    printf '=== %s: %s%s\n' "$name" "$status" "${p:+ ($p passed, $f failed)}"
    ((rc == 0)) || printf '    its whole output: %s\n' "$log"
    rows+=("$name|$((SECONDS - t0))|${p:-}|${f:-}|$status")
}
skip() { # name, why
    printf '\n=== %s: skipped (%s)\n' "$1" "$2"
    rows+=("$1|0|||skipped")
}

if cargo fmt --version >/dev/null 2>&1; then
    step fmt cargo fmt --all -- --check
else
    skip fmt "rustfmt not installed"
fi
if cargo clippy --version >/dev/null 2>&1; then
    step clippy cargo clippy --release --all-targets -- -D warnings
else
    skip clippy "clippy not installed"
fi
step cargo-test cargo test --release
step e2e timeout 600 bash "$LG_REPO/integration/e2e.sh"
step proxy timeout 600 bash "$LG_REPO/integration/proxy.sh"
step fairshare timeout 600 bash "$LG_REPO/integration/fairshare.sh"
step pools timeout 600 bash "$LG_REPO/integration/pools.sh"
# Host lane only: a one-node Slurm (Debian's packages) in front of the private dockerd.
step slurm timeout 600 bash "$LG_REPO/integration/slurm.sh"
step shell timeout 600 bash "$LG_REPO/integration/shell.sh"
step seccomp-docker timeout 600 bash "$LG_REPO/integration/seccomp-docker.sh"
# Host lane only: compiles the fake NVML library; installs prometheus, tmux and jq if missing.
step top timeout 600 bash "$LG_REPO/integration/top.sh"
# Builds cargo-fuzz and the targets first (several minutes on 2 cores), then 6 x 60 s.
step fuzz timeout 1800 bash "$LG_REPO/integration/fuzz.sh"
if [[ ${LABGPU_SKIP_VM:-0} == 1 ]]; then
    skip vm "LABGPU_SKIP_VM=1"
else
    step vm timeout 2700 bash "$LG_REPO/integration/vm/lane.sh"
fi

echo
echo "=== summary"
for row in "${rows[@]}"; do
    IFS='|' read -r name secs p f status <<<"$row"
    if [[ -n $p ]]; then result="$p passed, $f failed"; else result="$status"; fi
    printf '  %-11s %5s min  %s\n' "$name" "$(awk -v s="$secs" 'BEGIN { printf "%.1f", s / 60 }')" "$result"
    [[ -n ${LABGPU_SUMMARY_FILE:-} ]] && printf '%s\n' "$row" >>"$LABGPU_SUMMARY_FILE"
done
if ((${#failed[@]})); then
    echo "run-tests: FAILED: ${failed[*]} (logs in $LOGS)"
    exit 1
fi
rm -rf "$LOGS"
echo "run-tests: all passed"
