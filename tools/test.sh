#!/usr/bin/env bash
# The test command: on a fresh machine, install what is needed, then run every test:
# formatting, clippy (warnings are errors), unit tests, the cargo-fuzz targets for a bounded
# time, and the end-to-end cases that boot
# real guests (directly on hardware KVM, else inside the emulated KVM host).
# Prints 'N passed, N failed' last; exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/guest/install-deps.sh all
tools/ci/ensure-rust.sh
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy (-D warnings)"
cargo clippy --workspace --all-targets -q -- -D warnings
echo "== unit tests"
cargo test --workspace -q 2>&1 | grep -v '^$'
echo "== fuzzing (bounded)"
tools/ci/fuzz.sh 60
echo "== end-to-end"
python3 tests/e2e/run.py "$@"
