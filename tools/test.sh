#!/usr/bin/env bash
# The test command: on a fresh machine, install what is needed, then run every test:
# formatting, clippy (warnings are errors) for x86_64 and aarch64, unit tests (aarch64's
# under qemu-aarch64-static), the cargo-fuzz targets for a bounded time, and the
# end-to-end cases that boot real guests: x86_64 guests (directly on hardware KVM, else
# inside the emulated KVM host) and aarch64 guests (inside an emulated aarch64 KVM host,
# unless this machine is an aarch64 KVM host).
# Prints 'N passed, N failed' last; exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/guest/install-deps.sh all
tools/ci/ensure-rust.sh
tools/ci/python-deps.sh
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy (-D warnings)"
cargo clippy --workspace --all-targets -q -- -D warnings
cross=no; [ "$(uname -m)" = x86_64 ] && cross=yes
if [ "$cross" = yes ]; then
  echo "== cargo clippy --target aarch64-unknown-linux-gnu (-D warnings)"
  tools/ci/cargo-aarch64 clippy --workspace --all-targets -q -- -D warnings
fi
echo "== unit tests"
cargo test --workspace -q 2>&1 | grep -v '^$'
if [ "$cross" = yes ]; then
  echo "== unit tests (aarch64-unknown-linux-gnu, under qemu-aarch64-static)"
  tools/ci/cargo-aarch64 test --workspace -q 2>&1 | grep -v '^$'
fi
echo "== fuzzing (bounded)"
# 30 s a target (over a million inputs each): eight targets, ~4 minutes of fuzzing after
# their ~4 minute build, inside the run's 45-minute budget.
tools/ci/fuzz.sh 30
# The end-to-end tests are pytest's (tests/e2e, tests/README.md); run.py picks hardware KVM or
# the emulated KVM host and prints 'N passed, N failed' for its run.
# Each run: guest architecture, then extra arguments. On x86_64 the aarch64 guests also get
# a second, short run in an emulated host with a GICv2, the controller ember falls back on.
runs=("$(uname -m)")
if [ "$cross" = yes ]; then
  runs+=("aarch64" "aarch64 gicv2")
fi
total_pass=0; total_fail=0; status=0
for run in "${runs[@]}"; do
  read -r guests variant <<< "$run"
  args=(--arch "$guests")
  # Bounds for a wedged emulated host; the aarch64 runs take ~5 and ~1.5 minutes.
  [ "$guests" = aarch64 ] && args+=(--timeout 1200)
  if [ "${variant:-}" = gicv2 ]; then
    export EMBER_EMUHOST_GIC=2
    args=(--arch aarch64 --timeout 600 --cases gic_is_the_one_the_host_offers,boot_two_vcpus,net_ping_both_ways,block_64mib_guest_write_matches_host_file,snapshot_restore_continues_and_bad_loads_fail)
  else
    unset EMBER_EMUHOST_GIC
  fi
  echo "== end-to-end ($run guests)"
  log=$(mktemp)
  python3 tests/e2e/run.py "${args[@]}" "$@" | tee "$log" || status=1
  p=""; f=""
  read -r p f < <(awk '/^[0-9]+ passed, [0-9]+ failed$/ {print $1, $3}' "$log" | tail -1)  || true
  total_pass=$((total_pass + ${p:-0})); total_fail=$((total_fail + ${f:-1}))
  rm -f "$log"
done
echo "$total_pass passed, $total_fail failed"
exit $status
