#!/usr/bin/env bash
# Runs every cargo-fuzz target in tests/fuzz for a bounded time (default 60 s each),
# starting from the committed seed corpus (copied, so the checkout is not modified).
# Usage: tools/ci/fuzz.sh [SECONDS]
# The machine has only a stable toolchain; RUSTC_BOOTSTRAP=1 lets it accept the -Z
# sanitizer flags cargo-fuzz passes (the sanitizer runtimes ship with stable's std).
set -euo pipefail
cd "$(dirname "$0")/../.."
secs=${1:-60}
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked >&2
export RUSTC_BOOTSTRAP=1
for target in $(cargo fuzz list --fuzz-dir tests/fuzz); do
  corpus=$(mktemp -d)
  cp -r "tests/fuzz/corpus/$target/." "$corpus/" 2>/dev/null || true
  echo "fuzz: $target for ${secs}s"
  log=$(mktemp)
  status=0
  cargo fuzz run --fuzz-dir tests/fuzz -O "$target" "$corpus" -- \
    -max_total_time="$secs" -max_len=4096 -print_final_stats=1 > "$log" 2>&1 || status=$?
  rm -rf "$corpus"
  if [ "$status" != 0 ]; then
    tail -40 "$log" >&2
    rm -f "$log"
    echo "fuzz: $target found a failure (status $status); reproducer in tests/fuzz/artifacts/$target/" >&2
    exit 1
  fi
  grep -E "^(Done|stat::number_of_executed_units)" "$log" || true
  rm -f "$log"
done
