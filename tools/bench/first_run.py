#!/usr/bin/env python3
"""exec -> first KVM_RUN on this machine's own /dev/kvm, whatever kind it is.

The guest does not need to be able to run for this: the VMM is killed as soon as one of its
threads has called KVM_RUN. That moment is the host kernel's system-call tracepoint
(kvm_trace.py), the same for every VMM; for ember its own log line ("exec to first
KVM_RUN", from `--start-time-us`, just before the call) is shown beside it as a check of
the method. Prints
median/min/max over N runs (default 30). With EMBER_BASELINE=PATH another ember build, and
with FIRECRACKER=PATH Firecracker (the same configuration file), run in the same rounds,
interleaved (who goes first rotates)."""

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
sys.path.insert(0, str(Path(__file__).resolve().parent))
from framework.build import build_all  # noqa: E402
import kvm_trace  # noqa: E402

RUNS = int(sys.argv[1]) if len(sys.argv) > 1 else 30


def first_run_ms(vmm: str, binary: str, config: str,
                 traced: bool) -> tuple[float | None, float | None]:
    """(ms from exec to the first guest entry by the tracepoint, ms by ember's own log line)
    for one start of `binary`; None where a figure is not there."""
    tracer = kvm_trace.FirstEntry() if traced else None
    t0 = time.monotonic()
    argv = [binary, "--no-api", "--config-file", config]
    if vmm != "firecracker":
        argv += ["--level", "Info", "--start-time-us", str(int(t0 * 1_000_000))]
    traced_ms = None
    try:
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
        if tracer is not None:
            t = tracer.wait(p, timeout=30)
            traced_ms = (t - t0) * 1000 if t is not None else None
    finally:
        if tracer is not None:
            tracer.close()
    assert p.stderr is not None
    logged_ms = None
    if vmm != "firecracker":
        # Other Info lines may come first; the figure is on the first-KVM_RUN line.
        for n, line in enumerate(p.stderr):
            m = re.search(r"exec to first KVM_RUN: (\d+) us", line)
            if m:
                logged_ms = int(m.group(1)) / 1000
            if m or n >= 50:
                break
    p.kill()
    p.wait()
    return traced_ms, logged_ms


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
    if os.environ.get("FIRECRACKER"):
        builds["firecracker"] = os.environ["FIRECRACKER"]
        # Firecracker's file format wants the key even when empty; ember takes it too.
        cfg["drives"] = []
        with open(f.name, "w") as g:
            json.dump(cfg, g)
    why = kvm_trace.available()
    if why is not None:
        print(f"first_run: the KVM_RUN tracepoint is not usable here ({why}); "
              "ember's own log figure only")
        # Firecracker logs no such line: without the tracepoint it cannot be measured.
        builds.pop("firecracker", None)
    samples: dict[str, list[float]] = {k: [] for k in builds}
    logged: dict[str, list[float]] = {k: [] for k in builds}
    names = list(builds)
    for i in range(RUNS):
        for name in names[i % len(names):] + names[:i % len(names)]:
            traced_ms, logged_ms = first_run_ms(name, builds[name], f.name, why is None)
            ms = traced_ms if why is None else logged_ms
            if ms is None:
                print(f"first_run: {name} did not reach KVM_RUN here")
                return 0
            samples[name].append(ms)
            if logged_ms is not None:
                logged[name].append(logged_ms)
    how = "sys_enter_ioctl tracepoint" if why is None else "ember's log"
    print(f"exec -> first KVM_RUN on this host's /dev/kvm, {RUNS} interleaved runs (ms, {how})")
    print(f"{'build':<16} {'median':>8} {'min':>8} {'max':>8} {'own log':>8}  binary")
    for name, xs in samples.items():
        own = f"{statistics.median(logged[name]):8.2f}" if logged[name] else f"{'':8}"
        print(f"{name:<16} {statistics.median(xs):>8.2f} {min(xs):>8.2f} {max(xs):>8.2f} "
              f"{own}  {builds[name]}")
    for other in ("baseline", "firecracker"):
        if other in samples:
            r = statistics.median(samples["ember"]) / statistics.median(samples[other])
            print(f"ember/{other} median: {r:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
