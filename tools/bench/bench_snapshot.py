"""Snapshot benchmark (issue 18): cold boot, snapshot create and restore for ember, with
FIRECRACKER=PATH (x86_64) for Firecracker, and for QEMU (microvm; aarch64: virt), in
interleaved rounds, same guest (vmlinux or Image, 1 vCPU, 128 MiB, initramfs) whose command
echoes each console line back as ECHO-line. Per round and VMM: boot from a configuration
file with the API socket open (exec -> ready marker), one echo, `PATCH /vm` Paused and
`PUT /snapshot/create` Full (timed request -> 204), kill; then a new process (`--api-sock S
--id N`, nothing configured) gets `PUT /snapshot/load` (File backend, resume_vm), timed from
its exec to the load's 204 and to the echo of a line written to its stdin. QEMU: `stop`,
`migrate "exec:cat > FILE"` over QMP (no bandwidth cap) timed to the file being whole, then
`-incoming "exec:cat FILE"` and `cont`. Files stay in the case's directory (tmpfs in the
emulated host): restores read the page cache. Prints medians, ember against each VMM and
restore against cold boot; no pass/fail. Registered as the `bench_snapshot` case (suite
`bench`)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import statistics
import time
from pathlib import Path

from framework.api import UnixHTTP, call
from framework.build import peer
from framework.common import CaseFailed
from framework.vm import READY, VmProcess, default_kernel, guest_cmdline, vm_config
from harness import ALL_ARCHES, case, log

RUNS = int(os.environ.get("EMBER_BENCH_RUNS", "8"))
# One line at a time with `head` (one read per line from the tty), not a shell `read` loop,
# which reads byte by byte: see test_boot.py's console input test. No double quotes: the
# kernel command line cannot carry them inside ember_cmd.
ECHO = "stty -echo; while :; do l=$(head -n 1); echo ECHO-$l; done"
QEMU = {"x86_64": ["qemu-system-x86_64", "-M", "microvm,acpi=off"],
        "aarch64": ["qemu-system-aarch64", "-M", "virt,gic-version=host"]}
ROWS = (("boot_ms", "cold boot: exec -> ready marker (ms)"),
        ("echo_booted_ms", "booted guest: console echo (ms)"),
        ("create_ms", "create: request -> 204 (ms)"),
        ("api_ms", "restore: exec -> API ready (ms)"),
        ("load_ms", "restore: exec -> load 204 (ms)"),
        ("echo_ms", "restore: exec -> echo (ms)"),
        ("faults", "restore: VMM page faults, load -> echo"),
        ("snap_kib", "snapshot file (KiB)"),
        ("mem_disk_kib", "memory file on disk (KiB)"),
        ("mem_size_kib", "memory file, apparent size (KiB)"))


def _ms(t0: float, t1: float) -> float:
    return (t1 - t0) * 1000


def _faults(pid: int) -> int:
    """The process's minor + major page faults so far (all its threads)."""
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(f[7]) + int(f[9])


def _api_ready(vm: VmProcess, sock: str, timeout: float = 60) -> float:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if call(sock, "GET", "/")[0] == 200:
                return time.monotonic()
        except OSError:
            pass
        if vm.proc.poll() is not None or time.monotonic() > deadline:
            raise CaseFailed(f"{vm.name}: the API never answered\n{vm.tail()}")
        time.sleep(0.002)


def _req(vm: VmProcess, sock: str, method: str, path: str, body: dict) -> None:
    conn = UnixHTTP(sock, timeout=300)
    try:
        code, reply = call(sock, method, path, body, conn=conn)
    finally:
        conn.close()
    if code != 204:
        raise CaseFailed(f"{vm.name}: {method} {path}: {code} {reply}\n{vm.tail()}")


class _Qmp:
    """A QMP connection to QEMU (events are skipped)."""

    def __init__(self, path: Path, vm: VmProcess, timeout: float = 60):
        deadline = time.monotonic() + timeout
        while True:
            self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                self.s.connect(str(path))
                break
            except OSError:
                self.s.close()
                if vm.proc.poll() is not None or time.monotonic() > deadline:
                    raise CaseFailed(f"{vm.name}: QMP never answered\n{vm.tail()}")
                time.sleep(0.002)
        self.s.settimeout(300)
        self.vm = vm
        self.f = self.s.makefile("rw")
        self.f.readline()  # the greeting
        self.cmd("qmp_capabilities")

    def cmd(self, name: str, **args):
        self.f.write(json.dumps({"execute": name, "arguments": args}) + "\n")
        self.f.flush()
        while True:
            line = self.f.readline()
            if not line:
                raise CaseFailed(f"{self.vm.name}: QEMU closed QMP during {name}\n"
                                 f"{self.vm.tail()}")
            r = json.loads(line)
            if "error" in r:
                raise CaseFailed(f"{self.vm.name}: QMP {name}: {r['error']}")
            if "return" in r:
                return r["return"]

    def close(self) -> None:
        self.f.close()
        self.s.close()


def _qemu(ctx, name: str, qmp: Path, incoming: Path | None = None) -> VmProcess:
    """QEMU as bench_boot runs it (framework.vm's start_qemu_*), with QMP and stdin."""
    args = guest_cmdline(ctx, "run", f'ember_cmd="{ECHO}"', reboot="t")
    if ctx.arch == "aarch64":
        args = args.replace("console=ttyS0", "console=ttyAMA0")
    argv = QEMU[ctx.arch] + [
        "-accel", "kvm", "-cpu", "host", "-smp", "1", "-m", "128M", "-nodefaults",
        "-no-user-config", "-nographic", "-no-reboot", "-serial", "stdio",
        "-kernel", str(ctx.kernel_dir / default_kernel(ctx)), "-initrd", str(ctx.initramfs),
        "-append", args, "-qmp", f"unix:{qmp},server=on,wait=off"]
    if incoming is not None:
        argv += ["-incoming", f"exec:cat {incoming}"]
    return VmProcess(name, argv, ctx.work, stdin_pipe=True)


def _binary(ctx, vmm: str) -> str:
    return str(ctx.ember if vmm == "ember" else peer(ctx.ember, "firecracker"))


def _echo(vm: VmProcess, tag: str) -> float:
    """Types `tag` into the console; returns when the guest's ECHO-tag line came."""
    vm.send(f"{tag}\n".encode())
    vm.wait_for(rf"ECHO-{tag}$", timeout=120)
    return vm.matched_at


def _save(vmm: str, vm: VmProcess, d: Path, snap: Path, mem: Path) -> float:
    """Pauses the booted guest and snapshots it; returns the create time in ms."""
    if vmm == "qemu":
        q = _Qmp(d / "src.qmp", vm)
        q.cmd("stop")
        q.cmd("migrate-set-parameters", **{"max-bandwidth": 1 << 40})
        part = snap.with_suffix(".part")
        t0 = time.monotonic()
        # The rename tells when cat has written everything (QEMU's "completed" comes before
        # it closes the pipe).
        q.cmd("migrate", uri=f"exec:cat > {part} && mv {part} {snap}")
        while not snap.exists():
            if q.cmd("query-migrate").get("status") in ("failed", "cancelled"):
                raise CaseFailed(f"{vm.name}: migration failed\n{vm.tail()}")
            if time.monotonic() - t0 > 300:
                raise CaseFailed(f"{vm.name}: migration not done in 300 s")
            time.sleep(0.005)
        t1 = time.monotonic()
        q.close()
        return _ms(t0, t1)
    sock = str(d / "src.sock")
    _api_ready(vm, sock)
    _req(vm, sock, "PATCH", "/vm", {"state": "Paused"})
    t0 = time.monotonic()
    _req(vm, sock, "PUT", "/snapshot/create", {
        "snapshot_type": "Full", "snapshot_path": str(snap), "mem_file_path": str(mem)})
    return _ms(t0, time.monotonic())


def _restore(ctx, vmm: str, name: str, d: Path, snap: Path, mem: Path):
    """A new VMM process on the snapshot, resumed: (process, API ready, load done)."""
    if vmm == "qemu":
        vm = _qemu(ctx, name, d / "dst.qmp", incoming=snap)
        q = _Qmp(d / "dst.qmp", vm)
        t_api = time.monotonic()
        while (state := q.cmd("query-status")["status"]) == "inmigrate":
            time.sleep(0.002)
        if state != "running":
            q.cmd("cont")
        t_load = time.monotonic()
        q.close()
        return vm, t_api, t_load
    sock = str(d / "dst.sock")
    vm = VmProcess(name, [_binary(ctx, vmm), "--api-sock", sock, "--id", name], ctx.work,
                   stdin_pipe=True)
    t_api = _api_ready(vm, sock)
    _req(vm, sock, "PUT", "/snapshot/load", {
        "snapshot_path": str(snap),
        "mem_backend": {"backend_type": "File", "backend_path": str(mem)}, "resume_vm": True})
    return vm, t_api, time.monotonic()


def _round(ctx, vmm: str, i: int) -> dict:
    d = ctx.work / f"{vmm}-{i}"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir()
    snap, mem = d / "vm.snap", d / "vm.mem"
    out: dict = {}
    try:
        if vmm == "qemu":
            src = _qemu(ctx, f"{vmm}-boot-{i}", d / "src.qmp")
        else:
            cfg = vm_config(ctx, kernel=default_kernel(ctx), mode="run",
                            extra_args=f'ember_cmd="{ECHO}"')
            if vmm == "firecracker":
                cfg["drives"] = []
            (d / "vm.json").write_text(json.dumps(cfg))
            src = VmProcess(f"{vmm}-boot-{i}", [
                _binary(ctx, vmm), "--api-sock", str(d / "src.sock"), "--id", f"{vmm}-boot-{i}",
                "--config-file", str(d / "vm.json")], ctx.work, stdin_pipe=True)
        try:
            src.wait_for(READY, timeout=300)
            out["boot_ms"] = _ms(src.t_exec, src.matched_at)
            t0 = time.monotonic()
            out["echo_booted_ms"] = _ms(t0, _echo(src, f"pre-{i}"))
            time.sleep(0.2)  # the console quiet, the guest in its read
            out["create_ms"] = _save(vmm, src, d, snap, mem)
        finally:
            src.kill()
        st = snap.stat()
        out["snap_kib"] = st.st_size / 1024
        if vmm != "qemu":
            st = mem.stat()
            out["mem_disk_kib"] = st.st_blocks * 512 / 1024
            out["mem_size_kib"] = st.st_size / 1024
        dst, t_api, t_load = _restore(ctx, vmm, f"{vmm}-restore-{i}", d, snap, mem)
        try:
            f0 = _faults(dst.proc.pid)
            t_echo = _echo(dst, f"ping-{i}")
            out["faults"] = _faults(dst.proc.pid) - f0
            out.update(api_ms=_ms(dst.t_exec, t_api), load_ms=_ms(dst.t_exec, t_load),
                       echo_ms=_ms(dst.t_exec, t_echo))
        finally:
            dst.kill()
    except (OSError, ValueError) as e:  # a socket's timeout, a file not written, bad JSON
        raise CaseFailed(f"{vmm} run {i}: {e!r}")
    finally:
        shutil.rmtree(d, ignore_errors=True)
    return out


@case("bench_snapshot", timeout=3600, suite="bench", arches=ALL_ARCHES)
def _(ctx):
    vmms = ["ember"]
    if ctx.arch == "x86_64" and peer(ctx.ember, "firecracker") is not None:
        vmms.append("firecracker")
    vmms.append("qemu")
    samples: dict[str, list[dict]] = {v: [] for v in vmms}
    failed: dict[str, str] = {}
    for i in range(RUNS):
        order = vmms[i % len(vmms):] + vmms[:i % len(vmms)]
        for v in order:
            if v in failed:
                continue
            for attempt in (1, 2):
                try:
                    samples[v].append(_round(ctx, v, i))
                    break
                except CaseFailed as e:
                    why = str(e).splitlines()[0]
                    if attempt == 1 and ctx.emulated:
                        # The emulated host's own faults kill a guest now and then
                        # (tests/framework/build.py, EMULATION_FAULTS): once more.
                        log(f"{v} run {i}: {why}; once more")
                        continue
                    if not samples[v] and v != "ember":
                        # A VMM that cannot do this here at all: reported, the others go on.
                        failed[v] = why
                        log(f"{v}: {why}")
                        break
                    raise

    def med(v, key):
        xs = [s[key] for s in samples[v] if key in s]
        return statistics.median(xs) if xs else float("nan")

    where = "hardware KVM" if not ctx.emulated else "emulated KVM host"
    labels = {"ember": "ember", "firecracker": "firecracker",
              "qemu": "qemu virt" if ctx.arch == "aarch64" else "qemu microvm"}
    ran = [v for v in vmms if samples[v]]
    others = [v for v in ran if v != "ember"]
    log(f"snapshot benchmark, {RUNS} interleaved rounds, {where}; guest: "
        f"{default_kernel(ctx)}, 1 vCPU, 128 MiB, initramfs, quiet, console echo loop")
    log(f"{'median':42}" + "".join(f"{labels[v]:>14}" for v in ran)
        + "".join(f"{'ember/' + v:>19}" for v in others))
    def cell(x, w, fmt=".1f", unit=""):
        return f"{'n/a':>{w}}" if x != x else f"{x:{w - len(unit)}{fmt}}{unit}"

    for key, what in ROWS:
        cells = "".join(cell(med(v, key), 14) for v in ran)
        ratios = "".join(cell(med("ember", key) / (med(v, key) or float("nan")), 19, ".2f", "x")
                         for v in others)
        log(f"{what:42}{cells}{ratios}")
    for v in ran:
        boot = med(v, "boot_ms")
        log(f"{labels[v]}: restore against cold boot: exec -> echo {med(v, 'echo_ms') / boot:.2f}, "
            f"exec -> load {med(v, 'load_ms') / boot:.2f} of exec -> ready")
    if "qemu" in ran:
        log("qemu: create = stop + migrate to exec:cat (state and memory in one stream: the "
            "snapshot file row); API ready = QMP's greeting; load = -incoming until running")
    log("restore under emulation is bounded by page faults: ember and Firecracker map the "
        "memory file, and the guest's first touch of each page after resume is a "
        "nested-paging exit and a fault on the file (the faults row counts the VMM's); QEMU "
        "reads its whole stream before it runs")
    for v, why in failed.items():
        log(f"{labels[v]}: not measured: {why}")
    ctx.data(samples=samples, failed=failed)
