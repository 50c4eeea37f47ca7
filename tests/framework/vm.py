"""Launching guests: ember (and QEMU, the reference VMM) with its console captured line by
line, Firecracker-format configurations for the test guests, the `MicroVM` builder that the
`microvm` fixture hands out, and expectations on what the guest prints and how the VMM
exits."""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
import time
from pathlib import Path

from . import stall
from .common import CaseFailed, Ctx, EmulatedHostFault

READY = "EMBER-GUEST-READY"
# How long a test waits for READY. A test guest boots in 1-3 s in the emulated KVM host
# (well under 1 s on hardware KVM) and a slow emulated host doubles that; a guest that has
# not booted in 120 s never does, and a longer wait only delays the failure's report.
BOOT_TIMEOUT_S = 120
_LIVE: list["VmProcess"] = []


def reap_all() -> None:
    """Kills every VM process a test left running (called after each test)."""
    for vm in list(_LIVE):
        vm.kill()
    _LIVE.clear()


def guest_cmdline(ctx: Ctx, mode: str = "reboot", extra: str = "", reboot: str = "k") -> str:
    """The test guests' kernel command line. `quiet` because every console byte is a VM
    exit. On x86_64: `noxsave` only under emulation (TCG's SVM does not intercept XSETBV,
    see shared notes); `reboot=k` resets through the i8042 (ember); QEMU's microvm has no
    i8042, so it is given `reboot=t` (triple fault); the i8042 options are Firecracker's
    defaults: ember's keyboard controller has no mouse port and a keyboard that is not
    probed (SendCtrlAltDel types into it). On aarch64 the guest resets and powers off
    through PSCI, and finds its UART in the device tree."""
    if ctx.arch == "aarch64":
        args = "console=ttyS0 panic=1 quiet"
    else:
        args = (f"console=ttyS0 reboot={reboot} panic=1 pci=off quiet "
                "i8042.noaux i8042.nomux i8042.dumbkbd")
        if ctx.emulated:
            args += " noxsave"
    args += f" ember_mode={mode}"
    if extra:
        args += " " + extra
    return args


def default_kernel(ctx: Ctx) -> str:
    """The kernel file the guest image build makes for the case's architecture."""
    return "Image" if ctx.arch == "aarch64" else "vmlinux"


def vm_config(ctx: Ctx, kernel: str | None = None, initrd: bool = True, vcpus: int = 1,
              mem_mib: int = 128, mode: str = "reboot", extra_args: str = "",
              reboot: str = "k") -> dict:
    """A Firecracker-format configuration for a test guest."""
    boot = {
        "kernel_image_path": str(ctx.kernel_dir / (kernel or default_kernel(ctx))),
        "boot_args": guest_cmdline(ctx, mode, extra_args, reboot=reboot),
    }
    if initrd:
        boot["initrd_path"] = str(ctx.initramfs)
    return {"boot-source": boot,
            "machine-config": {"vcpu_count": vcpus, "mem_size_mib": mem_mib}}


# A console silent this long in the middle of a line: the guest stopped taking interrupts.
MID_LINE_SILENCE_S = 60
# A console silent this long when a marker is missed: the VMM's threads are looked at
# (framework.stall) to tell the emulated host's stall from a bug.
SILENCE_S = 30


class VmProcess:
    """A VMM process whose stdout is the guest console, read by a background thread."""

    def __init__(self, name: str, argv: list[str], work: Path, env: dict | None = None,
                 pre: list[str] | None = None, echo: bool = False, stdin_pipe: bool = False):
        self.name = name
        self.echo = echo
        self.console_path = work / f"{name}.console"
        self.stderr_path = work / f"{name}.stderr"
        self.lines: list[str] = []
        self._cv = threading.Condition()
        self.t_exec = time.monotonic()
        self.line_times: list[float] = []
        # The bytes after the last newline, and when the console last moved.
        self.partial = b""
        self.last_output = self.t_exec
        self._stderr = open(self.stderr_path, "w")
        self.proc = subprocess.Popen((pre or []) + argv, stdout=subprocess.PIPE,
                                     stderr=self._stderr,
                                     stdin=subprocess.PIPE if stdin_pipe else subprocess.DEVNULL,
                                     env=env, start_new_session=True)
        self.t_exited: float | None = None
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        _LIVE.append(self)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        with open(self.console_path, "wb") as con:
            buf = b""
            while True:
                chunk = self.proc.stdout.read1(65536) if hasattr(self.proc.stdout, "read1") \
                    else self.proc.stdout.read(1)
                if not chunk:
                    break
                now = time.monotonic()
                con.write(chunk)
                con.flush()
                buf += chunk
                *complete, buf = buf.split(b"\n")
                with self._cv:
                    self.partial = buf
                    self.last_output = now
                    for line in complete:
                        text = line.decode(errors="replace").rstrip("\r")
                        self.lines.append(text)
                        self.line_times.append(now)
                        if self.echo:
                            print(f"e2e: console| {text}", flush=True)
                    self._cv.notify_all()
            with self._cv:
                if buf:
                    self.lines.append(buf.decode(errors="replace"))
                    self.line_times.append(time.monotonic())
                self._cv.notify_all()

    def wait_for(self, pattern: str, timeout: float = 120) -> re.Match:
        """Waits until a console line matches `pattern` (a regex); returns the match."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        seen = 0
        with self._cv:
            while True:
                for i in range(seen, len(self.lines)):
                    m = rx.search(self.lines[i])
                    if m:
                        self.matched_at = self.line_times[i]
                        return m
                seen = len(self.lines)
                if self.proc.poll() is not None and not self._reader.is_alive():
                    raise CaseFailed(f"{self.name} exited ({self.proc.returncode}) before "
                                     f"printing /{pattern}/\n{self.tail()}")
                left = deadline - time.monotonic()
                if left <= 0:
                    msg = f"{self.name}: no /{pattern}/ within {timeout:.0f}s\n{self.tail()}"
                    silent = time.monotonic() - self.last_output
                    if silent >= SILENCE_S and self.proc.poll() is None:
                        # Whether the guest still runs (its timer wakes its vCPUs) tells a
                        # lost UART interrupt from a guest the host stopped running.
                        self._cv.release()
                        try:
                            frozen, report = stall.probe(self.proc.pid)
                        finally:
                            self._cv.acquire()
                        msg += f"\nthe console has been silent for {silent:.0f} s; {report}"
                        if frozen:
                            raise EmulatedHostFault(msg)
                    if self.partial.strip() and silent >= MID_LINE_SILENCE_S:
                        # The guest's UART stopped in the middle of a line it was given
                        # whole (a tty drains it by the THR-empty interrupt): the guest
                        # stopped taking interrupts, the emulated host's stall
                        # (build.EMULATION_FAULTS). On hardware KVM this fails as usual.
                        raise EmulatedHostFault(
                            f"{msg}\nthe console stopped mid-line "
                            f"({self.partial[-60:]!r}) {silent:.0f} s ago")
                    raise CaseFailed(msg)
                self._cv.wait(min(left, 0.5))

    def send(self, data: bytes) -> None:
        """Writes `data` to the VMM's stdin (the guest console's input)."""
        assert self.proc.stdin is not None, "started without stdin_pipe"
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def wait_exit(self, timeout: float = 120) -> int:
        """Waits for the VMM to exit; returns its exit status."""
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise CaseFailed(f"{self.name} still running after {timeout:.0f}s\n{self.tail()}")
        self.t_exited = time.monotonic()
        self._reader.join(timeout=5)
        if self in _LIVE:
            _LIVE.remove(self)
        return rc

    def kill(self) -> None:
        """SIGKILLs the VMM's process group (idempotent)."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, 9)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                # Unkillable (stuck in the kernel): leave it rather than hang the run.
                print(f"e2e: {self.name} (pid {self.proc.pid}) did not die on SIGKILL", flush=True)
        self._stderr.close()

    def stderr(self) -> str:
        """Everything the VMM wrote to stderr so far."""
        self._stderr.flush()
        return self.stderr_path.read_text(errors="replace")

    def tail(self, n: int = 40) -> str:
        """The console's last lines and stderr's, for failure messages."""
        with self._cv:
            lines = self.lines[-n:]
        err = self.stderr().strip().splitlines()[-10:]
        return ("--- guest console (last lines) ---\n" + "\n".join(lines) +
                "\n--- VMM stderr ---\n" + "\n".join(err))


def start_ember(ctx: Ctx, config: dict, name: str = "ember", extra_flags: list[str] | None = None,
                pre: list[str] | None = None, echo: bool = False,
                stdin_pipe: bool = False, binary: Path | None = None) -> VmProcess:
    """ember with `config` as its configuration file (no API), console captured. `pre`: a
    command prefix (such as `ip netns exec NS`); `binary`: another ember build (a
    benchmark's baseline) instead of the one under test."""
    cfg = ctx.work / f"{name}.json"
    cfg.write_text(json.dumps(config, indent=1))
    argv = [str(binary or ctx.ember), "--no-api", "--config-file", str(cfg)] + (extra_flags or [])
    # Lets ember report exec -> first KVM_RUN against our clock (CLOCK_MONOTONIC).
    argv += ["--start-time-us", str(int(time.monotonic() * 1_000_000))]
    return VmProcess(name, argv, ctx.work, pre=pre, echo=echo, stdin_pipe=stdin_pipe)


def run_ember_expecting_error(ctx: Ctx, config: dict | str, name: str = "ember",
                              pre: list[str] | None = None, timeout: float = 60) -> str:
    """Runs ember on a bad input; asserts a non-zero exit, exactly one stderr line starting
    with 'ember: error:', no panic; returns that line."""
    cfg = ctx.work / f"{name}.json"
    cfg.write_text(config if isinstance(config, str) else json.dumps(config))
    argv = (pre or []) + [str(ctx.ember), "--no-api", "--config-file", str(cfg)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL)
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        raise CaseFailed(f"ember hung on bad input for {timeout}s")
    res = proc
    err = err.strip()
    if res.returncode == 0:
        raise CaseFailed(f"ember accepted bad input (exit 0); stderr: {err!r}")
    if res.returncode < 0:
        raise CaseFailed(f"ember died of signal {-res.returncode}; stderr: {err!r}")
    if "panicked" in err or "RUST_BACKTRACE" in err:
        raise CaseFailed(f"ember panicked: {err}")
    lines = err.splitlines()
    if len(lines) != 1 or not lines[0].startswith("ember: error: "):
        raise CaseFailed(f"expected one 'ember: error:' line, got: {err!r}")
    return lines[0]


# A console heartbeat for long guest commands: it tells a stalled device (a bug: the
# heartbeat goes on) from a guest that stopped taking interrupts altogether (the emulated
# host's fault: the serial port stops too). Prefix a command with it.
# The loop is a grandchild (the subshell that starts it exits at once), so a `wait` in the
# command does not wait for it.
def heartbeat(extra: str = "") -> str:
    """A guest command prefix printing `EMBER-BEAT` every 5 s in the background, followed
    on the same line by what the shell command substitutions in `extra` give (a case's
    own counters); `heartbeat_stopped` looks for the word."""
    beat = f"echo EMBER-BEAT {extra}".rstrip()
    return f"( (while sleep 5; do {beat}; done) & ); "


HEARTBEAT = heartbeat()


def heartbeat_stopped(vm: "VmProcess", silent_s: float = 60) -> float | None:
    """Seconds since the guest's last heartbeat (or its start), if over `silent_s`."""
    with vm._cv:
        beats = [t for t, line in zip(vm.line_times, vm.lines) if "EMBER-BEAT" in line]
    last = beats[-1] if beats else vm.t_exec
    silent = time.monotonic() - last
    return silent if silent > silent_s else None


def wait_or_stall(ctx: Ctx, vm: "VmProcess", pattern: str, timeout: float):
    """`vm.wait_for(pattern)` for a guest that prints HEARTBEAT: under emulation a miss
    with the heartbeat silent too is the emulated host's stall (EmulatedHostFault, run
    again), not the device's."""
    try:
        return vm.wait_for(pattern, timeout=timeout)
    except CaseFailed as e:
        silent = heartbeat_stopped(vm) if ctx.emulated else None
        if silent is not None:
            raise EmulatedHostFault(f"{e}\nthe guest's console heartbeat stopped too "
                                    f"({silent:.0f} s without one)")
        raise


def parse_ready(m_line: str) -> dict[str, int]:
    """The ready marker's `key=value` numbers (cpus, mem_kib, uptime_ms)."""
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", m_line)}


def rss_excluding_guest_kib(pid: int, guest_ranges: list[tuple[int, int]] | None = None,
                            guest_mib: int = 0) -> int:
    """Resident memory of `pid` outside guest RAM. Guest RAM is given as host address ranges
    (ember logs them at Debug level), or else taken to be every mapping at least 90% of the
    guest's size (QEMU keeps guest RAM in one such block)."""
    total = 0
    counted = True
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            head = line.split(" ", 1)[0]
            if "-" in head and not line.startswith(("Rss", "Pss")):
                lo, hi = (int(x, 16) for x in head.split("-"))
                if guest_ranges is not None:
                    inside = any(lo >= s and hi <= s + n for s, n in guest_ranges)
                else:
                    inside = (hi - lo) >= 0.9 * guest_mib * 1024 * 1024
                counted = not inside
            elif line.startswith("Rss:") and counted:
                total += int(line.split()[1])
    return total


def ember_guest_ranges(vm: "VmProcess") -> list[tuple[int, int]]:
    """Host address ranges of guest RAM, from ember's Debug log."""
    return [(int(h, 16), int(n, 16)) for n, h in
            re.findall(r"guest RAM slot \d+: guest 0x[0-9a-f]+\+(0x[0-9a-f]+) at host (0x[0-9a-f]+)",
                       vm.stderr())]


def start_qemu_microvm(ctx: Ctx, kernel: str = "vmlinux", vcpus: int = 1, mem_mib: int = 128,
                       mode: str = "reboot", name: str = "qemu") -> VmProcess:
    """QEMU's microvm machine on KVM with the same kernel, initramfs and command line."""
    argv = ["qemu-system-x86_64", "-M", "microvm,acpi=off", "-accel", "kvm", "-cpu", "host",
            "-smp", str(vcpus), "-m", f"{mem_mib}M", "-nodefaults", "-no-user-config",
            "-nographic", "-no-reboot", "-serial", "stdio",
            "-kernel", str(ctx.kernel_dir / kernel), "-initrd", str(ctx.initramfs),
            "-append", guest_cmdline(ctx, mode, reboot="t")]
    return VmProcess(name, argv, ctx.work)


def start_qemu_virt(ctx: Ctx, vcpus: int = 1, mem_mib: int = 128, mode: str = "reboot",
                    name: str = "qemu") -> VmProcess:
    """QEMU's Arm `virt` machine on KVM with the same Image, initramfs and command line
    (its PL011 is ttyAMA0; PSCI resets it, and -no-reboot turns that into an exit)."""
    args = guest_cmdline(ctx, mode).replace("console=ttyS0", "console=ttyAMA0")
    argv = ["qemu-system-aarch64", "-M", "virt,gic-version=host", "-accel", "kvm",
            "-cpu", "host", "-smp", str(vcpus), "-m", f"{mem_mib}M", "-nodefaults",
            "-no-user-config", "-nographic", "-no-reboot", "-serial", "stdio",
            "-kernel", str(ctx.kernel_dir / "Image"), "-initrd", str(ctx.initramfs),
            "-append", args]
    return VmProcess(name, argv, ctx.work)


def start_qemu_reference(ctx: Ctx, vcpus: int = 1, mem_mib: int = 128, mode: str = "reboot",
                         name: str = "qemu") -> VmProcess:
    """The reference VMM for the case's architecture: QEMU microvm on x86_64, QEMU virt on
    aarch64."""
    if ctx.arch == "aarch64":
        return start_qemu_virt(ctx, vcpus=vcpus, mem_mib=mem_mib, mode=mode, name=name)
    return start_qemu_microvm(ctx, vcpus=vcpus, mem_mib=mem_mib, mode=mode, name=name)


class Console:
    """A started guest's console: `expect(pattern)` waits for a line matching it."""

    def __init__(self, proc: VmProcess):
        self._proc = proc

    def expect(self, pattern: str, timeout: float = 120) -> re.Match:
        """Waits until a console line matches the regex `pattern`; returns the match."""
        return self._proc.wait_for(pattern, timeout=timeout)

    def send(self, data: bytes) -> None:
        """Types `data` into the guest's console (needs `start(stdin_pipe=True)`)."""
        self._proc.send(data)

    @property
    def lines(self) -> list[str]:
        """Every console line so far."""
        return self._proc.lines


class MicroVM:
    """A test guest being put together, then running: what the `microvm` fixture returns.

        vm = microvm(vcpus=2)
        vm.add_drive("data", path)
        vm.start()
        vm.console.expect(READY)

    Before `start()`, `config` is the Firecracker-format configuration (edit it freely);
    after, the VmProcess's attributes (`lines`, `proc`, `wait_exit`, `stderr`, `tail`,
    `kill`, ...) are reachable on the MicroVM itself."""

    def __init__(self, ctx: Ctx, name: str = "ember", **cfg):
        self.ctx = ctx
        self.name = name
        self.config = vm_config(ctx, **cfg)
        self.process: VmProcess | None = None
        self.console: Console | None = None

    def add_drive(self, drive_id: str, path, root: bool = False, ro: bool = False,
                  cache: str = "Unsafe", **extra) -> dict:
        """Adds a virtio-blk drive backed by the host file `path`; returns its entry."""
        d = drive(drive_id, path, root=root, ro=ro, cache=cache, **extra)
        self.config.setdefault("drives", []).append(d)
        return d

    def add_net(self, tap: str, mac: str = "06:00:ac:1e:00:02", iface_id: str = "eth0") -> dict:
        """Adds a virtio-net interface on the host tap `tap` (which must exist where ember
        runs: see `start(pre=netns_exec(ns))`)."""
        n = {"iface_id": iface_id, "host_dev_name": tap, "guest_mac": mac}
        self.config.setdefault("network-interfaces", []).append(n)
        return n

    def start(self, extra_flags: list[str] | None = None, pre: list[str] | None = None,
              stdin_pipe: bool = False, echo: bool = False) -> "MicroVM":
        """Starts ember on the configuration; the test's teardown kills it if still running."""
        self.process = start_ember(self.ctx, self.config, name=self.name,
                                   extra_flags=extra_flags, pre=pre, echo=echo,
                                   stdin_pipe=stdin_pipe)
        self.console = Console(self.process)
        return self

    def __getattr__(self, attr):
        proc = self.__dict__.get("process")
        if proc is None:
            raise AttributeError(f"{attr} (the MicroVM has not been started)")
        return getattr(proc, attr)


def drive(drive_id: str, path, root: bool = False, ro: bool = False,
          cache: str = "Unsafe", **extra) -> dict:
    """A `drives` entry of the configuration."""
    d = {"drive_id": drive_id, "path_on_host": str(path), "is_root_device": root,
         "is_read_only": ro, "cache_type": cache}
    d.update(extra)
    return d
