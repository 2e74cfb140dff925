#!/usr/bin/env bash
# Runs every fuzz target of logitkit for a fixed time; exits non-zero if any target finds a crash
# (panic, failed property, sanitizer report, timeout or out-of-memory).
#
#   fuzz/ci.sh [SECONDS_PER_TARGET]          (default 20)
#
# Environment:
#   LOGITKIT_FUZZ_SANITIZER   address (default) or none (faster, no ASan)
#   LOGITKIT_FUZZ_TARGET_DIR  build/corpus/artifact folder (default: <repo>/target/fuzz, ignored by git)
#
# Works on a stable toolchain: cargo-fuzz passes nightly-only flags (-Zsanitizer, -Cpasses), which
# RUSTC_BOOTSTRAP=1 allows.
set -euo pipefail

secs="${1:-20}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
tdir="${LOGITKIT_FUZZ_TARGET_DIR:-$root/target/fuzz}"
san="${LOGITKIT_FUZZ_SANITIZER:-address}"
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

cd "$root"
echo "== building the fuzz targets (sanitizer: $san)"
cargo fuzz build --fuzz-dir fuzz --target-dir "$tdir" -s "$san"

status=0
for t in $(cargo fuzz list --fuzz-dir fuzz); do
    corpus="$tdir/corpus/$t"
    art="$tdir/artifacts/$t"
    log="$tdir/logs/$t.log"
    mkdir -p "$corpus" "$art" "$(dirname "$log")"
    if cargo fuzz run --fuzz-dir fuzz --target-dir "$tdir" -s "$san" "$t" "$corpus" -- \
        -max_total_time="$secs" -max_len=2048 -len_control=0 -timeout=10 -rss_limit_mb=4096 \
        -artifact_prefix="$art/" -print_final_stats=1 >"$log" 2>&1; then
        runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || true)
        cov=$(grep -o 'DONE *cov: *[0-9]*' "$log" | grep -o '[0-9]*$' || true)
        echo "ok   $t: ${runs:-?} runs, cov ${cov:-?}"
    else
        status=1
        echo "FAIL $t (log: $log, inputs: $art)"
        grep -E -A3 "panicked at|ERROR: (libFuzzer|AddressSanitizer)|Test unit written|Base64" "$log" | head -40 || tail -40 "$log"
    fi
done
exit $status
