#!/usr/bin/env bash
# The main job: on a fresh machine, install what is needed, build ember and the guest
# images, and boot a guest (2 vCPUs, 256 MiB) with its console shown.
# Where /dev/kvm cannot run a stock guest, the guest boots inside the emulated KVM host.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/guest/install-deps.sh all
tools/ci/ensure-rust.sh
tools/ci/python-deps.sh
exec python3 tests/e2e/run.py --suite demo "$@"
