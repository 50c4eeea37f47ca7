"""Confinement benchmark (issue 17): exec -> guest ready for ember with no seccomp, with its
seccomp filters (the default), jailed (ember-jailer, then ember with its filters) with a
cgroup, and jailed without one (to show what joining a cgroup costs), in interleaved
rounds, same guest (vmlinux, 1 vCPU, 128 MiB, initramfs); with FIRECRACKER=PATH
and FIRECRACKER_JAILER=PATH the same three for Firecracker (its own jailer) in the same
rounds. A jailed boot's time runs from the jailer's exec, and includes making the jail, the
cgroup, the copy of the binary and the pivot. Prints the overhead of each layer in ms and
as a ratio; no pass/fail. Registered as the `bench_confine` case (suite `bench`)."""

from __future__ import annotations

import json
import os
import shutil
import statistics
import tempfile
from pathlib import Path

from framework.build import peer
from framework.common import CaseFailed
from framework.vm import READY, VmProcess, start_ember, vm_config
from harness import ALL_ARCHES, case, log

RUNS = int(os.environ.get("EMBER_BENCH_RUNS", "8"))
UID = 12345
VARIANTS = ("bare", "seccomp", "jailed", "jailed-nocgroup")
CGROUPS = Path("/sys/fs/cgroup")


def _place(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _boot(ctx, vmm: str, variant: str, i: int, base: Path) -> dict:
    binary = ctx.ember if vmm == "ember" else peer(ctx.ember, "firecracker")
    kernel = "Image" if ctx.arch == "aarch64" else "vmlinux"
    cfg = vm_config(ctx, kernel=kernel)
    if vmm == "firecracker":
        cfg["drives"] = []
    name = f"{vmm}-{variant}-{i}"
    level = ["--level", "Info"] if vmm == "ember" else []
    jail = None
    if variant.startswith("jailed"):
        jailer = (ctx.ember.parent / "ember-jailer" if vmm == "ember"
                  else peer(ctx.ember, "firecracker-jailer"))
        jid = f"bench-{vmm}-{i}-{os.getpid()}"
        jail = base / binary.name / jid
        root = jail / "root"
        root.mkdir(parents=True)
        _place(Path(cfg["boot-source"]["kernel_image_path"]), root / kernel)
        _place(Path(cfg["boot-source"]["initrd_path"]), root / "initramfs.cpio")
        cfg["boot-source"]["kernel_image_path"] = f"/{kernel}"
        cfg["boot-source"]["initrd_path"] = "/initramfs.cpio"
        (root / "vm.json").write_text(json.dumps(cfg))
        argv = [str(jailer), "--id", jid, "--exec-file", str(binary), "--uid", str(UID),
                "--gid", str(UID), "--chroot-base-dir", str(base), "--cgroup-version", "2"]
        if variant == "jailed":
            argv += ["--cgroup", "pids.max=64"]
        argv += ["--", "--no-api", "--config-file", "/vm.json"] + level
        vm = VmProcess(name, argv, ctx.work)
    else:
        flags = level + (["--no-seccomp"] if variant == "bare" else [])
        vm = start_ember(ctx, cfg, name=name, extra_flags=flags, binary=binary)
    try:
        m = vm.wait_for(READY + r".*uptime_ms=(\d+)", timeout=300)
        ready_ms = (vm.matched_at - vm.t_exec) * 1000
        vm.wait_exit(timeout=120)
    finally:
        vm.kill()
        if jail is not None:
            shutil.rmtree(jail, ignore_errors=True)
            try:
                (CGROUPS / binary.name / jail.name).rmdir()
            except OSError:
                pass
    return {"ready_ms": ready_ms, "guest_ms": int(m.group(1))}


def _stats(xs: list[float]) -> str:
    if not xs:
        return "n/a"
    return f"{statistics.median(xs):8.1f} {min(xs):8.1f} {max(xs):8.1f}"


@case("bench_confine", timeout=3600, suite="bench", arches=ALL_ARCHES)
def _(ctx):
    vmms = ["ember"]
    if (ctx.arch == "x86_64" and peer(ctx.ember, "firecracker") is not None
            and peer(ctx.ember, "firecracker-jailer") is not None):
        vmms.append("firecracker")
    runs = [(v, var) for v in vmms for var in VARIANTS]
    samples: dict[tuple, list[dict]] = {r: [] for r in runs}
    failed: dict[tuple, str] = {}
    base = Path(tempfile.mkdtemp(prefix="bench-jails-", dir="/tmp"))
    for i in range(RUNS):
        order = runs[i % len(runs):] + runs[:i % len(runs)]
        for r in order:
            if r in failed:
                continue
            for attempt in (1, 2):
                try:
                    samples[r].append(_boot(ctx, *r, i, base))
                    break
                except CaseFailed as e:
                    why = str(e).splitlines()[0]
                    if attempt == 1 and ctx.emulated:
                        # The emulated host's own faults kill a guest now and then
                        # (tests/framework/build.py, EMULATION_FAULTS): once more.
                        log(f"{r[0]} {r[1]} run {i}: {why}; once more")
                        continue
                    if not samples[r]:
                        # A variant that cannot run here at all (no jailer, say): reported,
                        # the others go on.
                        failed[r] = why
                        log(f"{r[0]} {r[1]}: {why}")
                        break
                    raise
    shutil.rmtree(base, ignore_errors=True)

    def med(r, key):
        xs = [s[key] for s in samples[r]]
        return statistics.median(xs) if xs else float("nan")

    where = "hardware KVM" if not ctx.emulated else "emulated KVM host"
    log(f"confinement benchmark, {RUNS} interleaved rounds, {where}; guest: 128 MiB, 1 vCPU, "
        "initramfs, quiet")
    log(f"{'exec -> ready marker (ms)':44} {'median':>8} {'min':>8} {'max':>8}")
    for r in runs:
        log(f"{r[0] + ' ' + r[1]:44} {_stats([s['ready_ms'] for s in samples[r]])}")
    log(f"{'guest clock at ready (ms)':44}")
    for r in runs:
        log(f"{r[0] + ' ' + r[1]:44} {_stats([s['guest_ms'] for s in samples[r]])}")
    for v in vmms:
        bare = med((v, "bare"), "ready_ms")
        for var in VARIANTS[1:]:
            m = med((v, var), "ready_ms")
            log(f"{v}: {var} against no seccomp: {m - bare:+.1f} ms, {m / bare:.3f}x")
    ctx.data(samples={f"{v}/{var}": xs for (v, var), xs in samples.items()}, failed=failed)
