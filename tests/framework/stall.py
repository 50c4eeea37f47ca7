"""Telling the emulated host's stall from a guest or VMM bug when a guest goes silent.

Under TCG's nested SVM the emulated host sometimes stops delivering a guest's interrupts
(build.EMULATION_FAULTS). A guest's local APIC timer lives in the host kernel's KVM, not in
ember: a vCPU thread that stays blocked in KVM_RUN, not woken once over a whole window,
is a guest that receives no interrupt at all, not even its own timer. The other signature:
a vCPU thread busy in the host kernel over the window with not one tick in the guest or
in ember's own code (seen in boots, the console stopped early, the thread never switched
out): KVM there loops without entering the guest, such as a nested page fault that never
resolves; nothing ember does keeps a thread inside KVM_RUN like that (a loop of ember's
around KVM_RUN shows user time). Everything else (a vCPU spinning in the guest, a VMM thread
stuck in a lock) stays an ordinary failure, and the thread states go into its message
either way."""

from __future__ import annotations

import os
import time
from pathlib import Path

# Long enough for a booting or idle Linux guest's timers to wake its vCPU many times.
WINDOW_S = 5.0


def _threads(pid: int) -> dict[str, tuple[str, str, tuple[int, int, int], int, str]]:
    """tid -> (name, state, (user, system, guest) cpu ticks, context switches, wchan) of
    each thread of `pid`. A vCPU's time in the guest is counted in its user time and
    again as guest time, so user - guest is the VMM's own code."""
    out = {}
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return out
    for t in tasks:
        try:
            name = (t / "comm").read_text().strip()
            fields = (t / "stat").read_text().rsplit(")", 1)[1].split()
            status = (t / "status").read_text()
            switches = sum(int(line.split()[1]) for line in status.splitlines()
                           if "ctxt_switches:" in line)
            wchan = (t / "wchan").read_text().strip() or "-"
            # stat fields 14, 15 and 43 (utime, stime, guest_time), counted from `state`.
            ticks = (int(fields[11]), int(fields[12]), int(fields[40]))
        except (OSError, ValueError, IndexError):
            continue
        out[t.name] = (name, fields[0], ticks, switches, wchan)
    return out


def _kernel_stack(pid: int, tid: str, frames: int = 6) -> str:
    """The top of a thread's kernel stack (root only; empty where the kernel hides it)."""
    try:
        lines = Path(f"/proc/{pid}/task/{tid}/stack").read_text().split("\n")
    except OSError:
        return ""
    names = [ln.split("] ", 1)[-1].split("+")[0] for ln in lines if ln.strip()]
    return " < ".join(names[:frames])


def probe(pid: int | None, window: float = WINDOW_S) -> tuple[bool, str]:
    """Samples the VMM `pid`'s threads over `window` seconds. Returns (frozen, report):
    `frozen` when it has vCPU threads and every one stayed asleep, never scheduled, over
    the whole window, or one stayed inside the host kernel (see above); `report` is one
    line per thread for the failure message."""
    if pid is None:
        return False, "(no VMM process to look at)"
    before = _threads(pid)
    time.sleep(window)
    after = _threads(pid)
    if not after:
        return False, f"(VMM {pid} is gone)"
    lines, vcpus, frozen, livelocked = [], 0, True, []
    window_ticks = window * os.sysconf("SC_CLK_TCK")
    for tid, (name, state, ticks, sw, wchan) in sorted(after.items()):
        b = before.get(tid)
        dcpu = dsw = None
        split = ""
        du = ds = dg = 0
        if b:
            du, ds, dg = (a - c for a, c in zip(ticks, b[2]))
            dcpu, dsw = du + ds, sw - b[3]
            if dcpu:
                # Where a busy thread's time went: the guest, the VMM's code, the kernel.
                split = f" (guest +{dg}, VMM user +{du - dg}, kernel +{ds})"
        stack = _kernel_stack(pid, tid) if state == "R" else ""
        lines.append(f"  {name} (tid {tid}): state {state}, wchan {wchan}, "
                     f"cpu ticks +{dcpu}{split}, context switches +{dsw} over {window:.0f} s"
                     + (f"; kernel stack {stack}" if stack else ""))
        if name.startswith("ember_vcpu"):
            vcpus += 1
            if not (b and state == "S" and dcpu == 0 and dsw == 0):
                frozen = False
            # Half the window at least, for a host busy enough to preempt it.
            if b and du == 0 and dg == 0 and ds >= 0.5 * window_ticks:
                livelocked.append(name)
    frozen = frozen and vcpus > 0
    if frozen:
        head = (f"VMM {pid}: every vCPU thread blocked and never woken for {window:.0f} s "
                "(the guest gets no interrupt, not even its timer)")
    elif livelocked:
        head = (f"VMM {pid}: {', '.join(livelocked)} stayed in the host kernel for "
                f"{window:.0f} s without entering the guest (KVM loops there)")
    else:
        head = f"VMM {pid}'s threads:"
    return frozen or bool(livelocked), head + "\n" + "\n".join(lines)
