"""Boot benchmark: ember against QEMU (microvm on x86_64, virt on aarch64), same host,
same kernel and initramfs, interleaved. Registered as the `bench_boot` case of the e2e harness (suite `bench`), so it
runs wherever guest tests run (directly on hardware KVM, or inside the emulated KVM host)."""

from __future__ import annotations

import os
import re
import statistics
import time

from framework.vm import (READY, ember_guest_ranges, rss_excluding_guest_kib, start_ember,
                   start_qemu_reference, vm_config)
from harness import ALL_ARCHES, case, log

RUNS = int(os.environ.get("EMBER_BENCH_RUNS", "10"))


def _boot_once(ctx, vmm: str, i: int) -> dict:
    if vmm == "ember":
        vm = start_ember(ctx, vm_config(ctx), name=f"ember-{i}", extra_flags=["--level", "Info"])
    else:
        vm = start_qemu_reference(ctx, name=f"qemu-{i}")
    m = vm.wait_for(READY + r".*uptime_ms=(\d+)", timeout=300)
    ready = vm.matched_at - vm.t_exec
    guest_ms = int(m.group(1))
    rc = vm.wait_exit(timeout=120)
    assert vm.t_exited is not None
    out = {"ready_ms": ready * 1000, "exit_ms": (vm.t_exited - vm.t_exec) * 1000, "rc": rc,
           "guest_ms": guest_ms, "vmm_ms": ready * 1000 - guest_ms}
    if vmm == "ember":
        m = re.search(r"exec to first KVM_RUN: (\d+) us", vm.stderr())
        if m:
            out["first_run_ms"] = int(m.group(1)) / 1000
    return out


def _stats(xs: list[float]) -> str:
    if not xs:
        return "n/a"
    return f"{statistics.median(xs):8.1f} {min(xs):8.1f} {max(xs):8.1f}"


def _idle_rss(ctx, vmm: str) -> int:
    if vmm == "ember":
        vm = start_ember(ctx, vm_config(ctx, mode="stay"), name="ember-idle",
                         extra_flags=["--level", "Debug"])
    else:
        vm = start_qemu_reference(ctx, mode="stay", name="qemu-idle")
    vm.wait_for(READY, timeout=300)
    time.sleep(2)
    if vmm == "ember":
        ranges = ember_guest_ranges(vm)
        assert ranges, "ember did not log its guest RAM ranges"
        rss = rss_excluding_guest_kib(vm.proc.pid, guest_ranges=ranges)
    else:
        rss = rss_excluding_guest_kib(vm.proc.pid, guest_mib=128)
    vm.kill()
    return rss


@case("bench_boot", timeout=3600, suite="bench", arches=ALL_ARCHES)
def _(ctx):
    samples: dict[str, list[dict]] = {"ember": [], "qemu": []}
    for i in range(RUNS):
        # Alternate who goes first so drift in the host's load hits both alike.
        order = ["ember", "qemu"] if i % 2 == 0 else ["qemu", "ember"]
        for vmm in order:
            s = _boot_once(ctx, vmm, i)
            samples[vmm].append(s)
    rss = {vmm: _idle_rss(ctx, vmm) for vmm in ("ember", "qemu")}

    def col(vmm, key):
        return [s[key] for s in samples[vmm] if key in s]

    if not ctx.emulated:
        where = "hardware KVM"
    elif ctx.arch == "aarch64":
        where = "emulated aarch64 KVM host (QEMU TCG, virt with EL2)"
    else:
        where = "emulated KVM host (QEMU TCG + nested SVM)"
    kernel = "Image" if ctx.arch == "aarch64" else "vmlinux"
    qemu = "qemu virt" if ctx.arch == "aarch64" else "qemu microvm"
    log(f"boot benchmark, {RUNS} interleaved runs each, {where}; guest: 1 vCPU, 128 MiB, "
        f"{kernel} + initramfs, quiet")
    log(f"{'metric (ms)':34} {'median':>8} {'min':>8} {'max':>8}")
    for vmm in ("ember", "qemu"):
        label = "ember" if vmm == "ember" else qemu
        log(f"{label + ': exec -> ready marker':34} {_stats(col(vmm, 'ready_ms'))}")
        log(f"{label + ': exec -> exit':34} {_stats(col(vmm, 'exit_ms'))}")
    # The guest's own clock at the marker (kvm-clock) is reported for ember only: under
    # QEMU in the emulated host it visibly stalls, so it cannot be compared.
    log(f"{'ember: guest kernel clock at ready':34} {_stats(col('ember', 'guest_ms'))}")
    log(f"{'ember: exec -> first KVM_RUN':34} {_stats(col('ember', 'first_run_ms'))}")
    ratio = statistics.median(col("ember", "ready_ms")) / statistics.median(col("qemu", "ready_ms"))
    log(f"ember/qemu median exec -> ready: {ratio:.2f}x")
    log(f"RSS excluding guest memory, guest idle: ember {rss['ember']} KiB, "
        f"{qemu} {rss['qemu']} KiB")
    bad = [s for v in samples.values() for s in v if s["rc"] != 0]
    ctx.data(samples=samples, rss_kib=rss, ratio_ready=ratio, nonzero_exits=len(bad))
