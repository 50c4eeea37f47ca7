#!/usr/bin/env python3
"""exec -> first KVM_RUN of ember on this machine's own /dev/kvm, whatever kind it is.

The guest does not need to be able to run for this: ember is killed as soon as it reports
its first KVM_RUN. Prints median/min/max over N runs (default 30). With
EMBER_BASELINE=PATH, that other ember build runs in the same rounds, interleaved (who goes
first alternates), and the table has both."""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
from framework.build import build_all  # noqa: E402

RUNS = int(sys.argv[1]) if len(sys.argv) > 1 else 30


def first_run_ms(ember: str, config: str) -> float | None:
    """ms from exec to ember's first KVM_RUN (its own log line), None if it never got there."""
    t0 = int(time.monotonic() * 1_000_000)
    p = subprocess.Popen([ember, "--no-api", "--config-file", config,
                          "--level", "Info", "--start-time-us", str(t0)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert p.stderr is not None
    # Other Info lines may come first; the figure is on the first-KVM_RUN line.
    m = None
    lines = []
    for line in p.stderr:
        lines.append(line.strip())
        m = re.search(r"exec to first KVM_RUN: (\d+) us", line)
        if m or len(lines) >= 50:
            break
    p.kill()
    p.wait()
    if not m:
        print(f"first_run: {ember} did not reach KVM_RUN here: {lines[-3:]!r}")
        return None
    return int(m.group(1)) / 1000


def main() -> int:
    paths = build_all()
    cfg = {"boot-source": {"kernel_image_path": str(paths["kernel_dir"] / "vmlinux"),
                           "initrd_path": str(paths["rootfs_dir"] / "initramfs.cpio"),
                           "boot_args": "console=ttyS0 reboot=k panic=1 pci=off quiet"},
           "machine-config": {"vcpu_count": 1, "mem_size_mib": 128}}
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(cfg, f)
    builds = {"ember": str(paths["ember"])}
    if os.environ.get("EMBER_BASELINE"):
        builds["baseline"] = os.environ["EMBER_BASELINE"]
    samples: dict[str, list[float]] = {k: [] for k in builds}
    names = list(builds)
    for i in range(RUNS):
        for name in names[i % len(names):] + names[:i % len(names)]:
            ms = first_run_ms(builds[name], f.name)
            if ms is None:
                return 0
            samples[name].append(ms)
    print(f"exec -> first KVM_RUN on this host's /dev/kvm, {RUNS} interleaved runs (ms)")
    print(f"{'build':<16} {'median':>8} {'min':>8} {'max':>8}  binary")
    for name, xs in samples.items():
        print(f"{name:<16} {statistics.median(xs):>8.2f} {min(xs):>8.2f} {max(xs):>8.2f}  "
              f"{builds[name]}")
    if "baseline" in samples:
        r = statistics.median(samples["ember"]) / statistics.median(samples["baseline"])
        print(f"ember/baseline median: {r:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
