#!/usr/bin/env python3
"""exec -> first KVM_RUN of ember on this machine's own /dev/kvm, whatever kind it is.

The guest does not need to be able to run for this: ember is killed as soon as it reports
its first KVM_RUN. Prints median/min/max over N runs (default 30)."""

from __future__ import annotations

import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests/e2e"))
import harness  # noqa: E402

RUNS = int(sys.argv[1]) if len(sys.argv) > 1 else 30


def main() -> int:
    paths = harness.build_all()
    cfg = {"boot-source": {"kernel_image_path": str(paths["kernel_dir"] / "vmlinux"),
                           "initrd_path": str(paths["rootfs_dir"] / "initramfs.cpio"),
                           "boot_args": "console=ttyS0 reboot=k panic=1 pci=off quiet"},
           "machine-config": {"vcpu_count": 1, "mem_size_mib": 128}}
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(cfg, f)
    samples = []
    for _ in range(RUNS):
        t0 = int(time.monotonic() * 1_000_000)
        p = subprocess.Popen([str(paths["ember"]), "--no-api", "--config-file", f.name,
                              "--level", "Info", "--start-time-us", str(t0)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        assert p.stderr is not None
        line = p.stderr.readline()
        p.kill()
        p.wait()
        m = re.search(r"exec to first KVM_RUN: (\d+) us", line)
        if not m:
            print(f"first_run: ember did not reach KVM_RUN here: {line.strip()!r}")
            return 0
        samples.append(int(m.group(1)) / 1000)
    print(f"ember exec -> first KVM_RUN on this host's /dev/kvm, {RUNS} runs (ms): "
          f"median {statistics.median(samples):.2f} min {min(samples):.2f} max {max(samples):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
