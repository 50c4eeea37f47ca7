"""Running the suite inside the emulated KVM host (L1): one QEMU TCG machine boots,
mounts this machine's root read-only over 9p (x86_64: chrooted into it; aarch64: its own
arm64 Debian user space with the paths the job needs bound in), and runs the job
`tests/e2e/run.py --inner ...` there; results come back through a shared work directory.

If the emulated host itself stops responding (no test finishes within its timeout plus
90 s, or its user space goes silent: its console pulse and the job's lines stop, whatever
its kernel still prints) or resets before its job ends, a new one runs the tests
not yet done; a test during which that happens twice fails.

The job tells the watcher here what it is doing with lines on the emulated host's console:
`e2e: START <name> (timeout <s> s)`, `e2e: RETRY <name>: ...`, `e2e: PASS|FAIL <name> ...`.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable

from .build import sh
from .common import ARCH, ROOT, log

KERNEL_LINE_RX = re.compile(r"^\s*\[\s*\d+\.\d+\]")
START_RX = re.compile(r"^e2e: (START|RETRY) (\S+?):?(?: \(timeout (\d+) s\))?(?: |$)")


def build_emuhost(arch: str = ARCH) -> Path:
    """Builds (or finds cached) the emulated host's kernel and initramfs."""
    return Path(sh([str(ROOT / f"tools/emuhost/build-{arch}.sh")]))


def emuhost_command(emuhost: Path, work: Path, keep: list[Path], arch: str = ARCH,
                    mem_mib: int = 4096) -> list[str]:
    """The QEMU command line of the emulated KVM host. `keep`: host paths the job needs even
    if they lie under /tmp or /run (which the emulated host replaces with tmpfs)."""
    append = (f"quiet panic=-1 emuhost_work={work} "
              f"emuhost_keep={','.join(str(p) for p in keep)}")
    virtfs = [
        "-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
        "-virtfs", f"local,path={work},mount_tag=work,security_model=none",
    ]
    if arch == "aarch64":
        # Arm's virt machine with EL2 (KVM inside), a GICv3 (or, with EMBER_EMUHOST_GIC=2, a
        # GICv2: the host ember falls back on) and the most capable CPU TCG emulates; its
        # user space is an arm64 Debian initramfs (tools/emuhost).
        gic = os.environ.get("EMBER_EMUHOST_GIC", "3")
        return [
            "qemu-system-aarch64", "-M", f"virt,virtualization=on,gic-version={gic}",
            # Pointer authentication the QEMU way is several times cheaper to emulate
            # than the architected algorithm (L1 boot ~8 s instead of ~37 s).
            "-cpu", "max,pauth-impdef=on",
            "-smp", "2", "-m", str(mem_mib), "-nographic", "-no-reboot", "-nodefaults",
            "-serial", "stdio", "-kernel", str(emuhost / "Image"),
            "-initrd", str(emuhost / "initramfs.cpio"),
            "-append", "console=ttyAMA0 " + append,
        ] + virtfs
    if arch != "x86_64":
        raise RuntimeError(f"no emulated host for {arch}")
    return [
        "qemu-system-x86_64", "-accel", "tcg", "-cpu", "EPYC,+svm", "-smp", "2",
        "-m", str(mem_mib), "-nographic", "-no-reboot", "-nodefaults", "-serial", "stdio",
        "-kernel", str(emuhost / "vmlinuz"), "-initrd", str(emuhost / "initramfs.cpio"),
        "-append", "console=ttyS0 " + append,
    ] + virtfs


def run_emulated(names: list[str], inner: Callable[[list[str]], list[str]], work: Path,
                 results: Path, total_timeout: float, keep: list[Path],
                 echo_console: bool = False, arch: str = ARCH) -> None:
    """Runs the tests `names` in emulated KVM hosts, as few as possible: one boot runs them
    all, unless the emulated host itself stops responding (TCG's nested SVM can wedge the
    whole L1 kernel). Then a new host runs the tests not yet done. A test during which the
    host hangs twice is recorded as failed; it is not run a third time. `inner(names)` is
    the job's command line for the given tests."""
    emuhost = build_emuhost(arch)
    deadline = time.monotonic() + total_timeout
    remaining = list(names)
    hung_once: set[str] = set()
    boot = 0
    while remaining and time.monotonic() < deadline:
        boot += 1
        hung = _emulated_boot(emuhost, inner(remaining), work, boot, deadline, echo_console,
                              keep, arch)
        done = read_results(results)
        if hung and hung not in done:
            if hung in hung_once:
                record(results, hung, False,
                       "the emulated KVM host hung or reset twice during this test")
            else:
                hung_once.add(hung)
        remaining = [n for n in remaining if n not in read_results(results)]
        if not hung:
            break  # the host finished its job; whatever is missing did not run
    if remaining and time.monotonic() >= deadline:
        log(f"the run's timeout ({total_timeout:.0f}s) ended the emulated hosts")


def record(results: Path, name: str, ok: bool, detail: str, seconds: float = 0,
           data: dict | None = None) -> None:
    """Appends one test's result to the results file (one JSON object a line), durably:
    the emulated host may die right after."""
    with open(results, "a") as f:
        f.write(json.dumps({"name": name, "ok": ok, "seconds": round(seconds, 2),
                            "detail": detail, "data": data or {}}) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_results(results: Path) -> dict[str, dict]:
    """The results file as {test name: record}."""
    out: dict[str, dict] = {}
    if results.exists():
        for line in results.read_text().splitlines():
            try:
                rec = json.loads(line)
                out[rec["name"]] = rec
            except (ValueError, KeyError):
                continue
    return out


def _emulated_boot(emuhost: Path, inner: list[str], work: Path, boot: int, deadline: float,
                   echo_console: bool, keep: list[Path], arch: str) -> str | None:
    """One emulated host running the job `inner`. Returns the test in flight if the host
    stopped responding (no test finished within its timeout plus a margin), else None."""
    job = work / "job.sh"
    # The job runs under the emulated host's init: carry over our EMBER_* settings.
    env = "".join(f"export {k}={_q(v)}\n" for k, v in os.environ.items() if k.startswith("EMBER_"))
    job.write_text(env + "cd " + _q(str(ROOT)) + " && exec " + " ".join(_q(a) for a in inner) + "\n")
    console = work / f"emuhost-console-{boot}.log"
    cmd = emuhost_command(emuhost, work, keep, arch)
    log(f"booting emulated KVM host #{boot}: {' '.join(cmd[:8])} ...")
    t0 = time.monotonic()
    state = {"case": None, "since": time.monotonic(), "job_done": False,
             "heard": time.monotonic()}
    timeouts: dict[str, int] = {}
    with open(console, "w") as con:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, text=True, errors="replace")

        def pump():
            assert proc.stdout is not None
            for line in proc.stdout:
                con.write(line)
                con.flush()
                s = line.rstrip("\r\n")
                # Only user space's lines (the pulse, the job's) say the host still runs:
                # a kernel whose CPUs are all stuck still prints its own soft-lockup and
                # RCU-stall reports ("[ 453.13] watchdog: ..."), for as long as it likes.
                if not KERNEL_LINE_RX.match(s):
                    state["heard"] = time.monotonic()
                if s == "emuhost: alive":
                    continue
                m = START_RX.match(s)
                if m:
                    # A retried test gets its whole timeout again.
                    if m.group(3):
                        timeouts[m.group(2)] = int(m.group(3))
                    state["case"], state["since"] = m.group(2), time.monotonic()
                    if m.group(1) == "START":
                        continue
                if s.startswith("e2e: PASS ") or s.startswith("e2e: FAIL "):
                    state["case"], state["since"] = None, time.monotonic()
                if s.startswith("emuhost: job exited"):
                    state["job_done"] = True
                if s.startswith("e2e:") or s.startswith("emuhost:") or echo_console:
                    print(s, flush=True)

        t = threading.Thread(target=pump, daemon=True)
        t.start()
        hung = None
        while proc.poll() is None:
            time.sleep(1)
            now = time.monotonic()
            case_now = state["case"]
            if case_now is not None:
                limit = timeouts.get(case_now, 510) + 90
                if now - state["since"] > limit:
                    hung = case_now
                    log(f"emulated host #{boot} stopped responding during {case_now}; "
                        "stopping it")
            elif now - state["since"] > 300:
                hung = "(between cases)"
                log(f"emulated host #{boot} made no progress for 300s; stopping it")
            if not hung and now - state["heard"] > 120:
                # Its init prints a pulse every 20 s: its kernel has wedged.
                hung = case_now or "(between cases)"
                log(f"emulated host #{boot} has been silent for 120s (no pulse) during "
                    f"{hung}; stopping it")
            if hung or now > deadline:
                proc.kill()
                break
        proc.wait()
        t.join(timeout=5)
    if not hung and not state["job_done"] and time.monotonic() < deadline:
        # The emulated host reset or died under the job (TCG's nested SVM can triple-fault
        # the whole L1 kernel): treat it like a hang of the test in flight.
        hung = state["case"] or "(between cases)"
        log(f"emulated host #{boot} ended unexpectedly during {hung}")
    log(f"emulated host #{boot} finished in {time.monotonic() - t0:.1f}s (console: {console})")
    return hung


def _q(s: str) -> str:
    return "'" + s.replace("'", "'\\''") + "'"
