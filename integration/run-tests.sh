#!/usr/bin/env bash
# The test command: formatting, clippy, the Rust tests, then the real-Docker e2e, proxy and
# seccomp suites, and the fuzz targets (integration/fuzz.sh, 60 s each).
# Every step runs even if an earlier one failed; exits non-zero if any failed.
#
#   bash integration/run-tests.sh     (as root, for the e2e suite)
set -uo pipefail

# shellcheck source=integration/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$LG_REPO" || exit 1
lg_find_cargo || lg_die "cargo not found (install Rust >= 1.85 with rustup)"
# Before the Rust tests: they run real runc and compile a fake libnvidia-ml.so.
if ((EUID == 0)); then lg_install_packages; fi

failed=()
step() { # name, command...
    local name="$1"
    shift
    printf '\n=== %s: %s\n' "$name" "$*"
    if "$@"; then
        printf '=== %s: ok\n' "$name"
    else
        printf '=== %s: FAILED\n' "$name"
        failed+=("$name")
    fi
}

if cargo fmt --version >/dev/null 2>&1; then
    step fmt cargo fmt --all -- --check
else
    echo "=== fmt: skipped (rustfmt not installed)"
fi
if cargo clippy --version >/dev/null 2>&1; then
    step clippy cargo clippy --release --all-targets -- -D warnings
else
    echo "=== clippy: skipped (clippy not installed)"
fi
step cargo-test cargo test --release
step e2e timeout 600 bash "$LG_REPO/integration/e2e.sh"
step proxy timeout 600 bash "$LG_REPO/integration/proxy.sh"
step seccomp-docker timeout 600 bash "$LG_REPO/integration/seccomp-docker.sh"
# Builds cargo-fuzz and the targets first (several minutes on 2 cores), then 6 x 60 s.
step fuzz timeout 1800 bash "$LG_REPO/integration/fuzz.sh"

echo
if ((${#failed[@]})); then
    echo "run-tests: FAILED: ${failed[*]}"
    exit 1
fi
echo "run-tests: all passed"
