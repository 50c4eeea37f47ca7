"""Block-device benchmark: ember's virtio-blk against QEMU microvm's `virtio-blk-device`
and, with FIRECRACKER=PATH, Firecracker's (the same configuration file as ember's), same
host, same kernel, initramfs and data file, interleaved. Registered as the `bench_blk`
case of the e2e harness (suite `bench`), like bench_boot.

Each guest gets two drives:
  - the bench tools image (tools/guest/build-benchfs.sh: blkbench, a static fio-like load
    from tools/bench/blkbench.c, and tools/bench/bench_blk.sh), read-only, mounted by label
    at /mnt;
  - the data drive: a raw file of DATA_MIB MiB in the case's scratch directory (the
    emulated host's tmpfs when emulated), filled by the host before the first run.
The guest runs `sh /mnt/bench_blk.sh` (see that script for the jobs: 1 MiB sequential write
and read, 4 KiB random read, O_DIRECT with native AIO, RUNTIME_S seconds each) and prints
one `EMBER-BLK-RESULT` line per job. Both VMMs go through the host's page cache: ember with
`cache_type: Writeback`, QEMU with its defaults (cache=writeback, aio=threads). The jobs
issue no flushes.

The tools image is found and copied into the case's scratch directory by
tools/bench/benchfs.py.
A VMM that fails keeps its rows (with its first error) and the other VMM still runs; the
case fails after printing the table if some VMM produced no figures at all.
"""

from __future__ import annotations

import os
import re
import statistics
import sys
from pathlib import Path

from framework.build import peer
from framework.vm import VmProcess, guest_cmdline, start_ember, vm_config
from harness import CaseFailed, case, log

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchfs import tools_image  # noqa: E402  (tools/bench, beside this file)

RUNS = int(os.environ.get("EMBER_BENCH_RUNS", "3"))
DATA_MIB = 256
RUNTIME_S = 10
MEM_MIB = 128
# A run takes about 3 * RUNTIME_S + 5 s under emulation. Now and then a guest hangs there
# (QEMU's as well as ember's: the emulated host's nested SVM): such a run is given up after
# RUN_TIMEOUT_S. The case's timeout allows each run 2.5 times its usual time; it is also how
# long the harness waits before it takes the emulated host itself as hung (plus 90 s).
RUN_TIMEOUT_S = 3 * RUNTIME_S + 120
CASE_TIMEOUT_S = 300 + RUNS * 3 * (3 * RUNTIME_S + 60)  # up to three VMMs
# (job name in bench_blk.sh, row label, the figure from the job's result fields)
METRICS = (
    ("seqwrite", "seq write 1 MiB QD4, MB/s", lambda r: r["bytes"] / r["usecs"]),
    ("seqread", "seq read 1 MiB QD4, MB/s", lambda r: r["bytes"] / r["usecs"]),
    ("randread", "rand read 4 KiB QD16, IOPS", lambda r: r["ios"] * 1e6 / r["usecs"]),
)
GUEST_CMD = (f"mount -o ro $(findfs LABEL=ember-bench) /mnt && "
             f"sh /mnt/bench_blk.sh {DATA_MIB << 20} {RUNTIME_S}")


def _data_file(ctx) -> Path:
    """The data drive's backing file, fully allocated (a 1 MiB random block repeated), so
    that reads before the guest's first write do not hit holes."""
    path = ctx.work / "data.raw"
    block = os.urandom(1 << 20)
    with open(path, "wb") as f:
        for _ in range(DATA_MIB):
            f.write(block)
        f.flush()
        os.fsync(f.fileno())
    return path


def _start_ember(ctx, name: str, tools: Path, data: Path, binary: Path | None = None
                 ) -> VmProcess:
    cfg = vm_config(ctx, mem_mib=MEM_MIB, mode="run", extra_args=f'ember_cmd="{GUEST_CMD}"')
    cfg["drives"] = [
        {"drive_id": "tools", "path_on_host": str(tools), "is_root_device": False,
         "is_read_only": True, "cache_type": "Writeback"},
        {"drive_id": "data", "path_on_host": str(data), "is_root_device": False,
         "is_read_only": False, "cache_type": "Writeback"},
    ]
    return start_ember(ctx, cfg, name=name, binary=binary)


def _start_qemu(ctx, name: str, tools: Path, data: Path) -> VmProcess:
    """guest.start_qemu_microvm's command line plus the two drives, each on a virtio-mmio
    transport (`virtio-blk-device`); microvm adds the transports to the kernel command line."""
    argv = ["qemu-system-x86_64", "-M", "microvm,acpi=off", "-accel", "kvm", "-cpu", "host",
            "-smp", "1", "-m", f"{MEM_MIB}M", "-nodefaults", "-no-user-config",
            "-nographic", "-no-reboot", "-serial", "stdio",
            "-kernel", str(ctx.kernel_dir / "vmlinux"), "-initrd", str(ctx.initramfs),
            "-append", guest_cmdline(ctx, "run", extra=f'ember_cmd="{GUEST_CMD}"', reboot="t"),
            "-drive", f"id=tools,file={tools},format=raw,if=none,readonly=on",
            "-device", "virtio-blk-device,drive=tools",
            "-drive", f"id=d0,file={data},format=raw,if=none",
            "-device", "virtio-blk-device,drive=d0"]
    return VmProcess(name, argv, ctx.work)


def _run_once(ctx, vmm: str, i: int, tools: Path, data: Path) -> dict:
    """One guest running the three jobs; see _results for what it returns."""
    name = f"{vmm}-{i}"
    if vmm == "qemu":
        vm = _start_qemu(ctx, name, tools, data)
    else:
        vm = _start_ember(ctx, name, tools, data,
                          binary=peer(ctx.ember, "firecracker") if vmm == "firecracker" else None)
    try:
        m = vm.wait_for(r"EMBER-CMD-EXIT status=(\d+)", timeout=RUN_TIMEOUT_S)
        vm.wait_exit(timeout=120)
        return _results(vm, m.group(1))
    finally:
        vm.kill()


def _results(vm: VmProcess, status: str) -> dict:
    """The guest's figures: {job: result fields} plus `devices` (the names the guest found
    its drives under) and `clock`, the guest's clock over the jobs divided by ours (about 1
    when the guest's clock is honest). Raises CaseFailed with the guest's own error line
    when it printed one, else with the console's tail."""
    out: dict = {}
    starts: dict[str, tuple[int, float]] = {}
    guest_s = host_s = 0.0
    for line, t in zip(vm.lines, vm.line_times):
        if "EMBER-BLK-ERROR" in line:
            raise CaseFailed(line.strip())
        if (d := re.search(r"EMBER-BLK-DEVICES data=(\S+) tools=(\S+)", line)):
            out["devices"] = {"data": d.group(1), "tools": d.group(2)}
        fields = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", line)}
        job = re.search(r"job=(\w+)", line)
        if "EMBER-BLK-START" in line and job:
            starts[job.group(1)] = (fields["uptime_ms"], t)
        elif "EMBER-BLK-RESULT" in line and job and job.group(1) in starts:
            out[job.group(1)] = fields
            up0, t0 = starts[job.group(1)]
            guest_s += (fields["uptime_ms"] - up0) / 1000
            host_s += t - t0
    missing = [j for j, _, _ in METRICS if j not in out]
    if status != "0" or missing:
        raise CaseFailed(f"guest command exited {status}, no result for "
                         f"{', '.join(missing) or '-'}\n{vm.tail(15)}")
    out["clock"] = guest_s / host_s if host_s else 0.0
    return out


def _stats(xs: list[float]) -> str:
    """median, min, max and how many runs gave a figure."""
    return f"{statistics.median(xs):9.1f} {min(xs):9.1f} {max(xs):9.1f} {len(xs):>4}"


@case("bench_blk", timeout=CASE_TIMEOUT_S, suite="bench", arches=("x86_64",))
def _(ctx):
    tools, data = tools_image(ctx), _data_file(ctx)
    vmms = ["ember", "qemu"]
    if peer(ctx.ember, "firecracker") is not None:
        vmms.insert(1, "firecracker")
    samples: dict[str, list[dict]] = {v: [] for v in vmms}
    errors: dict[str, list[str]] = {v: [] for v in vmms}
    for i in range(RUNS):
        # Rotate who goes first so drift in the host's load hits all alike.
        for vmm in vmms[i % len(vmms):] + vmms[:i % len(vmms)]:
            try:
                samples[vmm].append(_run_once(ctx, vmm, i, tools, data))
            except Exception as e:  # one VMM's failure must not hide the others' figures
                errors[vmm].append(str(e).strip())
                log(f"{vmm} run {i} failed: {str(e).strip().splitlines()[0]}")

    where = "emulated KVM host (QEMU TCG + nested SVM)" if ctx.emulated else "hardware KVM"
    log(f"block benchmark, {RUNS} interleaved runs each, {where}; guest: 1 vCPU, {MEM_MIB} MiB; "
        f"data drive: {DATA_MIB} MiB raw file in {'tmpfs' if ctx.emulated else ctx.work}; "
        f"O_DIRECT, native AIO, {RUNTIME_S} s per job")
    log(f"{'metric':48} {'median':>9} {'min':>9} {'max':>9} {'runs':>4}")
    names = {"ember": "ember", "qemu": "qemu microvm", "firecracker": "firecracker"}
    ratios: dict[str, dict[str, float]] = {}
    for job, label, figure in METRICS:
        for vmm in vmms:
            xs = [figure(s[job]) for s in samples[vmm]]
            row = _stats(xs) if xs else "error: " + errors[vmm][0].splitlines()[0]
            log(f"{names[vmm] + ': ' + label:48} {row}")
        for other in vmms[1:]:
            if samples["ember"] and samples[other]:
                ratios.setdefault(other, {})[job] = (
                    statistics.median(figure(s[job]) for s in samples["ember"]) /
                    statistics.median(figure(s[job]) for s in samples[other]))
    for other, rs in ratios.items():
        log(f"ember/{other} medians (higher is better for ember): " +
            ", ".join(f"{job} {r:.2f}x" for job, r in rs.items()))
    for vmm in vmms:
        if samples[vmm]:
            clocks = [s["clock"] for s in samples[vmm]]
            dev = samples[vmm][0]["devices"]
            log(f"{vmm}: guest clock / host clock over the jobs {min(clocks):.2f}-"
                f"{max(clocks):.2f}; guest saw data {dev['data']}, tools {dev['tools']}")
        if errors[vmm]:
            log(f"{vmm}: {len(errors[vmm])} of {RUNS} runs failed; first error:")
            for line in errors[vmm][0].splitlines():
                log(f"  | {line}")
    ctx.data(samples=samples, errors=errors, ratios=ratios)
    if not all(samples[v] for v in vmms):
        raise CaseFailed("no figures for " + " and ".join(v for v in vmms if not samples[v]))
