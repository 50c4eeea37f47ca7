"""When a VMM first called KVM_RUN, taken from the host kernel's `syscalls:sys_enter_ioctl`
tracepoint (filtered to the KVM_RUN request) rather than from the VMM's own log, so any VMM
is measured the same way: Firecracker and QEMU log no such line. (`kvm:kvm_entry` would be
the guest entry itself, but not every KVM implementation fires it: our machines' kvm_pvm
does not; the system call is the same everywhere.)

A private tracing instance (`/sys/kernel/tracing/instances/ember-bench`) with the `mono`
trace clock, so its timestamps are CLOCK_MONOTONIC like `time.monotonic()` taken before the
spawn. The event is enabled for one process at a time and disabled at the first hit, so the
guest's later exits cost nothing. Needs root and tracefs; without them `available()` says
why and callers print "n/a"."""

from __future__ import annotations

import os
import re
import select
import subprocess
import time
from pathlib import Path

TRACEFS = Path("/sys/kernel/tracing")
INSTANCE = TRACEFS / "instances" / "ember-bench"
EVENT = Path("events") / "syscalls" / "sys_enter_ioctl"
# _IO(KVMIO, 0x80)
KVM_RUN = 0xAE80
# "  fc_vcpu 0-1234    [001] .....  5012.345678: sys_ioctl(fd: 0x0000000c, cmd: 0x0000ae80, ..."
LINE = re.compile(r"-(\d+)\s+\[\d+\].*?\s(\d+\.\d+): sys_ioctl\(")


def available() -> str | None:
    """None if the tracepoint can be used here, else the reason it cannot."""
    if os.geteuid() != 0:
        return "not root"
    if not (TRACEFS / "events").is_dir():
        subprocess.run(["mount", "-t", "tracefs", "nodev", str(TRACEFS)],
                       capture_output=True, check=False)
    if not (TRACEFS / EVENT).is_dir():
        return "no syscalls:sys_enter_ioctl tracepoint (tracefs or CONFIG_FTRACE_SYSCALLS)"
    try:
        INSTANCE.mkdir(exist_ok=True)
        (INSTANCE / "trace_clock").write_text("mono")
        (INSTANCE / EVENT / "filter").write_text(f"cmd == {KVM_RUN:#x}")
    except OSError as e:
        return f"cannot set up a tracing instance: {e}"
    return None


class FirstEntry:
    """Arms the tracepoint before a VMM is spawned; `wait(proc)` then gives the monotonic
    time of the first KVM_RUN by any thread of that process."""

    def __init__(self) -> None:
        self.enable = INSTANCE / EVENT / "enable"
        self.enable.write_text("0")
        (INSTANCE / "trace").write_text("")
        self.pipe = open(INSTANCE / "trace_pipe", "rb", buffering=0)
        self.enable.write_text("1")

    def wait(self, proc: subprocess.Popen, timeout: float = 60) -> float | None:
        """Monotonic seconds of `proc`'s first KVM_RUN; None if it exited first or none
        came in `timeout`."""
        pid = proc.pid
        deadline = time.monotonic() + timeout
        buf = b""
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                ready, _, _ = select.select([self.pipe], [], [], min(left, 0.5))
                if not ready:
                    if proc.poll() is not None:
                        return None
                    continue
                buf += self.pipe.read(65536) or b""
                *lines, buf = buf.split(b"\n")
                for raw in lines:
                    m = LINE.search(raw.decode(errors="replace"))
                    # Another VM on this host may call KVM_RUN too: only this process's
                    # threads count (the VMM is alive, so its task list is still there).
                    if m and Path(f"/proc/{pid}/task/{m.group(1)}").exists():
                        return float(m.group(2))
        finally:
            self.close()

    def close(self) -> None:
        """Disables the event and closes the pipe (idempotent)."""
        if not self.pipe.closed:
            self.enable.write_text("0")
            self.pipe.close()
