"""Boot benchmark: ember against QEMU (microvm on x86_64, virt on aarch64), same host,
same kernel and initramfs, interleaved. With EMBER_BASELINE=PATH, another ember build (an
older commit, say) runs beside them in the same rounds, so a change is judged against its
parent in one run. With FIRECRACKER=PATH (x86_64), Firecracker runs in the same rounds too,
with the same configuration file. Three guest configurations (x86_64): vmlinux with 1 and
with 2 vCPUs, bzImage with 1 (aarch64: Image with 1 and 2); EMBER_BENCH_CONFIGS picks some
(`vmlinux-1,bzImage-1`). Registered as the `bench_boot` case of the e2e harness (suite `bench`), so it
runs wherever guest tests run (directly on hardware KVM, or inside the emulated KVM host)."""

from __future__ import annotations

import os
import re
import statistics
import sys
import time
from pathlib import Path

from framework.vm import (READY, ember_guest_ranges, rss_excluding_guest_kib, start_ember,
                          start_qemu_microvm, start_qemu_reference, vm_config)
from framework.build import peer
from framework.common import CaseFailed
from harness import ALL_ARCHES, case, log

sys.path.insert(0, str(Path(__file__).resolve().parent))
import kvm_trace  # noqa: E402

RUNS = int(os.environ.get("EMBER_BENCH_RUNS", "10"))


def _configs(arch: str) -> list[tuple[str, int]]:
    """The (kernel file, vCPUs) configurations to run, EMBER_BENCH_CONFIGS's if given."""
    kernel = "Image" if arch == "aarch64" else "vmlinux"
    default = [(kernel, 1), (kernel, 2)] + ([("bzImage", 1)] if arch == "x86_64" else [])
    wanted = os.environ.get("EMBER_BENCH_CONFIGS", "")
    if not wanted:
        return default
    out = []
    for item in wanted.split(","):
        k, _, n = item.partition("-")
        out.append((k, int(n or "1")))
    return out


def _ember_binary(ctx, vmm: str):
    """The binary for `vmm` ("ember" or "baseline"), None for QEMU."""
    if vmm == "ember":
        return ctx.ember
    if vmm == "baseline":
        return peer(ctx.ember, "ember-baseline")
    if vmm == "firecracker":
        return peer(ctx.ember, "firecracker")
    return None


def _config(ctx, vmm: str, **kw) -> dict:
    """The guest's configuration file: the same for every VMM that reads one (Firecracker's
    file format wants the `drives` key even when empty)."""
    cfg = vm_config(ctx, **kw)
    if vmm == "firecracker":
        cfg["drives"] = []
    return cfg


def _start_qemu(ctx, kernel: str, vcpus: int, name: str, mode: str = "reboot"):
    if ctx.arch == "aarch64":
        return start_qemu_reference(ctx, vcpus=vcpus, mode=mode, name=name)
    return start_qemu_microvm(ctx, kernel=kernel, vcpus=vcpus, mode=mode, name=name)


def _boot_once(ctx, vmm: str, i: int, kernel: str, vcpus: int, traced: bool) -> dict:
    binary = _ember_binary(ctx, vmm)
    name = f"{vmm}-{kernel}-{vcpus}-{i}"
    tracer = kvm_trace.FirstEntry() if traced else None
    try:
        if binary is not None:
            vm = start_ember(ctx, _config(ctx, vmm, kernel=kernel, vcpus=vcpus), name=name,
                             extra_flags=["--level", "Info"], binary=binary)
        else:
            vm = _start_qemu(ctx, kernel, vcpus, name)
        entered = tracer.wait(vm.proc, timeout=300) if tracer is not None else None
    finally:
        if tracer is not None:
            tracer.close()
    m = vm.wait_for(READY + r".*uptime_ms=(\d+)", timeout=300)
    ready = vm.matched_at - vm.t_exec
    guest_ms = int(m.group(1))
    rc = vm.wait_exit(timeout=120)
    assert vm.t_exited is not None
    out = {"ready_ms": ready * 1000, "exit_ms": (vm.t_exited - vm.t_exec) * 1000, "rc": rc,
           "guest_ms": guest_ms, "vmm_ms": ready * 1000 - guest_ms}
    if entered is not None:
        out["first_entry_ms"] = (entered - vm.t_exec) * 1000
    if binary is not None and vmm != "firecracker":
        m = re.search(r"exec to first KVM_RUN: (\d+) us", vm.stderr())
        if m:
            out["first_run_ms"] = int(m.group(1)) / 1000
    return out


def _stats(xs: list[float]) -> str:
    if not xs:
        return "n/a"
    return f"{statistics.median(xs):8.1f} {min(xs):8.1f} {max(xs):8.1f}"


def _idle_rss(ctx, vmm: str) -> tuple[int, int]:
    """(RSS outside guest RAM, whole-process RSS) in KiB of an idle guest, 2 s after its
    marker."""
    binary = _ember_binary(ctx, vmm)
    if binary is not None:
        vm = start_ember(ctx, _config(ctx, vmm, mode="stay"), name=f"{vmm}-idle",
                         extra_flags=["--level", "Debug"], binary=binary)
    else:
        vm = _start_qemu(ctx, "vmlinux", 1, "qemu-idle", mode="stay")
    vm.wait_for(READY, timeout=300)
    time.sleep(2)
    if vmm in ("ember", "baseline"):
        ranges = ember_guest_ranges(vm)
        assert ranges, "ember did not log its guest RAM ranges"
        rss = rss_excluding_guest_kib(vm.proc.pid, guest_ranges=ranges)
    else:
        rss = rss_excluding_guest_kib(vm.proc.pid, guest_mib=128)
    whole = _whole_rss_kib(vm.proc.pid)
    vm.kill()
    return rss, whole


def _whole_rss_kib(pid: int) -> int:
    """The process's whole resident set (guest RAM it touched included), /proc's VmRSS."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


@case("bench_boot", timeout=3600, suite="bench", arches=ALL_ARCHES)
def _(ctx):
    vmms = ["ember", "qemu"]
    if peer(ctx.ember, "ember-baseline") is not None:
        vmms.insert(1, "baseline")
    if peer(ctx.ember, "firecracker") is not None and ctx.arch == "x86_64":
        vmms.insert(1, "firecracker")
    configs = _configs(ctx.arch)
    samples: dict[tuple, list[dict]] = {(c, v): [] for c in configs for v in vmms}
    lost: dict[str, int] = {}
    why = kvm_trace.available()
    if why is not None:
        log(f"exec -> first KVM_RUN: the KVM_RUN tracepoint is not usable ({why})")
    for i in range(RUNS):
        for c in configs:
            # Rotate who goes first so drift in the host's load hits all alike.
            order = vmms[i % len(vmms):] + vmms[:i % len(vmms)]
            for vmm in order:
                try:
                    s = _boot_once(ctx, vmm, i, *c, traced=why is None)
                except CaseFailed as e:
                    # Under emulation any VMM's guest now and then dies of the emulated
                    # host's own fault (tests/framework/build.py, EMULATION_FAULTS); one new
                    # try, logged.
                    if not ctx.emulated:
                        raise
                    log(f"{vmm} {c} run {i}: guest died before its marker "
                        f"({str(e).splitlines()[0]}); once more")
                    lost[vmm] = lost.get(vmm, 0) + 1
                    s = _boot_once(ctx, vmm, i, *c, traced=why is None)
                samples[(c, vmm)].append(s)
    rss = {vmm: _idle_rss(ctx, vmm) for vmm in vmms}

    def col(c, vmm, key):
        return [s[key] for s in samples[(c, vmm)] if key in s]

    def med(c, vmm, key):
        xs = col(c, vmm, key)
        return statistics.median(xs) if xs else float("nan")

    if not ctx.emulated:
        where = "hardware KVM"
    elif ctx.arch == "aarch64":
        where = "emulated aarch64 KVM host (QEMU TCG, virt with EL2)"
    else:
        where = "emulated KVM host (QEMU TCG + nested SVM)"
    qemu = "qemu virt" if ctx.arch == "aarch64" else "qemu microvm"
    labels = {"ember": "ember", "baseline": "ember baseline", "firecracker": "firecracker",
              "qemu": qemu}
    log(f"boot benchmark, {RUNS} interleaved runs per VMM and configuration, {where}; "
        "guest: 128 MiB + initramfs, quiet")
    for c in configs:
        log(f"-- {c[0]}, {c[1]} vCPU{'s' if c[1] > 1 else ''}")
        log(f"{'metric (ms)':44} {'median':>8} {'min':>8} {'max':>8}")
        for vmm in vmms:
            label = labels[vmm]
            log(f"{label + ': exec -> ready marker':44} {_stats(col(c, vmm, 'ready_ms'))}")
        # The guest's own clock at the marker (kvm-clock) is reported for every VMM but
        # QEMU: under QEMU in the emulated host it visibly stalls, so it cannot be compared.
        for vmm in [v for v in vmms if v != "qemu"]:
            label = labels[vmm]
            log(f"{label + ': guest kernel clock at ready':44} {_stats(col(c, vmm, 'guest_ms'))}")
        # The first KVM_RUN by the host's system-call tracepoint, for every VMM alike;
        # ember's own log line beside it checks the method.
        for vmm in vmms:
            label = labels[vmm]
            log(f"{label + ': exec -> first KVM_RUN':44} "
                f"{_stats(col(c, vmm, 'first_entry_ms'))}")
        for vmm in [v for v in vmms if v in ("ember", "baseline")]:
            label = labels[vmm]
            log(f"{label + ': exec -> first KVM_RUN (own log)':44} "
                f"{_stats(col(c, vmm, 'first_run_ms'))}")
        log(f"ember/qemu median exec -> ready: "
            f"{med(c, 'ember', 'ready_ms') / med(c, 'qemu', 'ready_ms'):.2f}x")
        for other in ("firecracker", "baseline"):
            if other in vmms:
                for key, what in (("ready_ms", "exec -> ready"),
                                  ("guest_ms", "guest clock at ready"),
                                  ("first_entry_ms", "exec -> first KVM_RUN")):
                    r = med(c, "ember", key) / med(c, other, key)
                    log(f"ember/{other} median {what}: {r:.2f}x")
    if lost:
        log("boots lost to the emulated host and run again: "
            + ", ".join(f"{labels[v]} {n}" for v, n in lost.items()))
    log("idle guest (vmlinux, 1 vCPU, 128 MiB), RSS outside guest RAM / whole process: "
        + ", ".join(f"{labels[v]} {rss[v][0]} / {rss[v][1]} KiB" for v in vmms))
    if "firecracker" in vmms:
        log(f"ember/firecracker RSS outside guest RAM: "
            f"{rss['ember'][0] / rss['firecracker'][0]:.2f}x, whole process: "
            f"{rss['ember'][1] / rss['firecracker'][1]:.2f}x")
    first = configs[0]
    ratio = med(first, "ember", "ready_ms") / med(first, "qemu", "ready_ms")
    bad = [s for v in samples.values() for s in v if s["rc"] != 0]
    ctx.data(samples={f"{c[0]}-{c[1]}/{v}": xs for (c, v), xs in samples.items()},
             rss_kib=rss, ratio_ready=ratio, nonzero_exits=len(bad))
