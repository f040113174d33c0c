#!/usr/bin/env bash
# The fuzz suite: every cargo-fuzz target in fuzz/ (fuzz/fuzz_targets/*.rs) runs for
# LABGPU_FUZZ_SECONDS from its committed corpus (fuzz/corpus/<target>), on a copy, so the
# repository is not written to. A target passes when it ran its time without a crash: a
# panic (rules that panic, or an invariant the target checks), an abort, a timeout of one
# input or running out of memory. Prints `N passed, N failed`; exits 1 if any failed, with
# each crash's input under fuzz/artifacts/<target>/ and the first lines of its panic.
# fuzz/dict/<target>.dict, where there is one, gives libFuzzer the tokens of the format.
#
#   bash integration/fuzz.sh
#
# Knobs (environment):
#   LABGPU_FUZZ_SECONDS=60    seconds per target
#   LABGPU_FUZZ_JOBS=N        targets run side by side (default: the number of CPUs); each
#                             still runs its full LABGPU_FUZZ_SECONDS
#   LABGPU_FUZZ_TARGETS="policy runtime_argv"   only these targets (default: all)
#   LABGPU_FUZZ_MERGE=1       afterwards merge what the runs found into fuzz/corpus/<target>
#                             (libFuzzer's -merge=1 keeps only inputs that add coverage)
#   LABGPU_FUZZ_SANITIZER=address|none   default address (cargo-fuzz's default)
#   LABGPU_FUZZ_NIGHTLY=0     build with the default toolchain even if nightly is installed
#                             (the path a stable-only CI machine takes)
#
# Toolchain: cargo-fuzz builds with nightly-only flags (-Zsanitizer, -Cpasses=sancov-module).
# With a rustup `nightly` toolchain installed the targets are built with `cargo +nightly
# fuzz`; otherwise (a CI machine with only stable, which cannot download toolchains) with
# the default toolchain and RUSTC_BOOTSTRAP=1, which lets stable rustc accept those flags
# (stable ships the same sanitizer runtimes). The line "fuzz: toolchain …" says which.
# cargo-fuzz itself is installed with `cargo install cargo-fuzz --locked` if missing.
set -uo pipefail

# shellcheck source=integration/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SECONDS_PER_TARGET="${LABGPU_FUZZ_SECONDS:-60}"
SANITIZER="${LABGPU_FUZZ_SANITIZER:-address}"
FUZZ_DIR="$LG_REPO/fuzz"
say() { printf '[fuzz] %s\n' "$*" >&2; }

lg_find_cargo || lg_die "cargo not found (install Rust >= 1.85 with rustup)"
if ! cargo fuzz --version >/dev/null 2>&1; then
    say "cargo install cargo-fuzz --locked"
    cargo install cargo-fuzz --locked --quiet || lg_die "cannot install cargo-fuzz"
fi

TOOLCHAIN=()
if [[ ${LABGPU_FUZZ_NIGHTLY:-1} == 1 ]] && cargo +nightly --version >/dev/null 2>&1; then
    TOOLCHAIN=(+nightly)
    say "toolchain: nightly ($(cargo +nightly --version))"
else
    export RUSTC_BOOTSTRAP=1
    say "toolchain: $(cargo --version) with RUSTC_BOOTSTRAP=1 (no rustup nightly, or LABGPU_FUZZ_NIGHTLY=0)"
fi

ALL_TARGETS=()
for f in "$FUZZ_DIR"/fuzz_targets/*.rs; do
    ALL_TARGETS+=("$(basename "$f" .rs)")
done
read -r -a TARGETS <<<"${LABGPU_FUZZ_TARGETS:-${ALL_TARGETS[*]}}"

# Release with debug assertions and overflow checks: an overflow that release builds would
# wrap silently is a crash here.
WORK="$(mktemp -d /tmp/labgpu-fuzz.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT
say "cargo fuzz build -O -a --sanitizer $SANITIZER (minutes the first time)"
if ! (cd "$LG_REPO" && cargo "${TOOLCHAIN[@]}" fuzz build -O -a --sanitizer "$SANITIZER") \
    >"$WORK/build.log" 2>&1; then
    tail -n 30 "$WORK/build.log"
    say "the fuzz targets did not build"
    echo "0 passed, ${#TARGETS[@]} failed"
    exit 1
fi
HOST="$(rustc -vV | sed -n 's/^host: //p')"
BIN_DIR="$FUZZ_DIR/target/$HOST/release"

passed=0
failed=0
failures=()

# One finished run's totals: executions, executions per second, inputs in its corpus.
stats() { # log corpus-dir
    local runs rate corpus
    runs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$1" | tail -n 1)"
    rate="$(sed -n 's/^stat::average_exec_per_sec: *//p' "$1" | tail -n 1)"
    corpus="$(find "$2" -type f | wc -l)"
    printf '%s runs, %s/s, corpus %s inputs' "${runs:-?}" "${rate:-?}" "$corpus"
}

# One target's run: prints its verdict lines; exit 0 when it passed. Runs in the background,
# so it only writes to its own files.
run_target() { # target
    local t="$1" bin="$BIN_DIR/$1" corpus="$WORK/corpus/$1" log="$WORK/$1.log" rc dict=()
    if [[ ! -x $bin ]]; then
        printf 'FAIL %s: not built (%s missing)\n' "$t" "$bin"
        return 1
    fi
    mkdir -p "$corpus" "$FUZZ_DIR/artifacts/$t"
    [[ -d $FUZZ_DIR/corpus/$t ]] && cp -r "$FUZZ_DIR/corpus/$t/." "$corpus/"
    [[ -f $FUZZ_DIR/dict/$t.dict ]] && dict=(-dict="$FUZZ_DIR/dict/$t.dict")
    # -timeout: one input taking 10 s is a hang; -rss_limit_mb: libFuzzer's default, said.
    # Seeds the targets' invariants reject would be crashes too: they run first.
    "$bin" "$corpus" -max_total_time="$SECONDS_PER_TARGET" -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 -artifact_prefix="$FUZZ_DIR/artifacts/$t/" "${dict[@]}" >"$log" 2>&1
    rc=$?
    if ((rc == 0)); then
        printf 'ok   %s: %s\n' "$t" "$(stats "$log" "$corpus")"
    else
        printf 'FAIL %s (exit %s): %s\n' "$t" "$rc" "$(stats "$log" "$corpus")"
        sed -n 's/.*Test unit written to /    crash input: /p' "$log"
        grep -m 1 -A 8 -E "panicked at|ERROR: libFuzzer|ERROR: AddressSanitizer" "$log" \
            | sed 's/^/    /'
        printf '    reproduce: %s %s\n' "$bin" "$(sed -n 's/.*Test unit written to //p' "$log" \
            | head -n 1)"
    fi
    if [[ ${LABGPU_FUZZ_MERGE:-0} == 1 ]]; then
        mkdir -p "$FUZZ_DIR/corpus/$t"
        "$bin" -merge=1 "$FUZZ_DIR/corpus/$t" "$corpus" >"$WORK/$t.merge.log" 2>&1 \
            || say "merging $t's finds into fuzz/corpus/$t failed: $(tail -n 1 "$WORK/$t.merge.log")"
    fi
    return "$rc"
}

# Side by side, JOBS at a time: the wall time is a third of one-after-another on 2 CPUs,
# and each target still gets its full time.
JOBS="${LABGPU_FUZZ_JOBS:-$(nproc)}"
running=0
for t in "${TARGETS[@]}"; do
    if ((running >= JOBS)); then
        wait -n
        running=$((running - 1))
    fi
    (run_target "$t" >"$WORK/$t.verdict" 2>&1; echo $? >"$WORK/$t.rc") &
    running=$((running + 1))
done
wait
for t in "${TARGETS[@]}"; do
    cat "$WORK/$t.verdict"
    if [[ $(cat "$WORK/$t.rc" 2>/dev/null) == 0 ]]; then
        passed=$((passed + 1))
    else
        failed=$((failed + 1))
        failures+=("$t")
    fi
done

if ((failed)); then
    say "failed: ${failures[*]}"
fi
echo "$passed passed, $failed failed"
((failed == 0))
