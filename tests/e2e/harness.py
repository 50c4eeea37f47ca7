"""The case registry of the benchmarks (tools/bench, suite `bench`) and the demo (suite
`demo`): a *case* is a function taking a framework.common.Ctx, registered with
`@case(...)`, run one after another by `run_inline` (directly, or inside the emulated KVM
host by `run.py --inner`). The test suite itself is on pytest (test_*.py, conftest.py);
this stays for measurements, which report data rather than pass or fail.

Re-exports what the benchmark modules take from here (Ctx, CaseFailed, log, ...).
"""

from __future__ import annotations

import dataclasses
import shutil
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from framework.build import emulation_fault  # noqa: E402
from framework.common import (ALL_ARCHES, ARCH, ROOT, CaseFailed, Ctx,  # noqa: E402,F401
                              EmulatedHostFault, log)
from framework.emuhost import record  # noqa: E402

X86_ONLY = ("x86_64",)


class CaseTimeout(Exception):
    """A case ran past its timeout."""


@dataclasses.dataclass
class Case:
    name: str
    fn: Callable[[Ctx], None]
    timeout: float
    suite: str
    arches: tuple[str, ...]


REGISTRY: dict[str, Case] = {}


def case(name: str, timeout: float = 180, suite: str = "bench",
         arches: tuple[str, ...] = ALL_ARCHES):
    """Registers a case. `timeout` is in seconds of wall time (generous: emulation is slow).
    `arches`: the guest architectures it applies to (default: all)."""

    def wrap(fn):
        if name in REGISTRY:
            raise RuntimeError(f"duplicate case {name}")
        REGISTRY[name] = Case(name, fn, timeout, suite, arches)
        return fn

    return wrap


class _Alarm:
    # The benchmarks run outside pytest, so their timeout is a plain SIGALRM.
    def __init__(self, seconds: float):
        self.seconds = seconds

    def _fire(self, *_):
        raise CaseTimeout(f"case timed out after {self.seconds:.0f}s")

    def __enter__(self):
        self.old = signal.signal(signal.SIGALRM, self._fire)
        signal.setitimer(signal.ITIMER_REAL, self.seconds)

    def __exit__(self, *exc):
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, self.old)
        return False


def _run_case(c: Case, ctx: Ctx) -> tuple[bool, str]:
    """Runs one case; returns whether it passed and, if not, why."""
    from framework.vm import reap_all

    ok, detail = True, ""
    try:
        with _Alarm(c.timeout):
            c.fn(ctx)
    except EmulatedHostFault as e:
        ok = False
        detail = str(e).strip()
        (ctx.work / "emulated-host.fault").write_text(detail + "\n")
    except Exception as e:  # a case's failure is data, not a crash of the runner
        ok = False
        detail = "".join(traceback.format_exception_only(type(e), e)).strip()
        if not isinstance(e, (CaseFailed, CaseTimeout)):
            detail += "\n" + traceback.format_exc()
    finally:
        reap_all()
    return ok, detail


def run_inline(names: list[str], paths: dict[str, Path], work: Path, emulated: bool,
               results: Path, scratch: Path | None = None, arch: str = ARCH) -> None:
    """Runs cases one after another here, appending one JSON line per case to `results`.
    Cases get scratch directories under `scratch` (default: `work`); with a separate
    scratch, each case's small files are copied to `work` after it. Under emulation, a
    case whose guest died of the emulated host's known fault is run again, at most 3 times
    in all; on hardware KVM a case runs once."""
    scratch = scratch or work
    for name in names:
        c = REGISTRY[name]
        case_work = scratch / "cases" / name
        shutil.rmtree(case_work, ignore_errors=True)
        case_work.mkdir(parents=True)
        ctx = Ctx(ember=paths["ember"], kernel_dir=paths["kernel_dir"],
                  rootfs_dir=paths["rootfs_dir"], work=case_work, emulated=emulated,
                  arch=arch)
        log(f"START {name} (timeout {c.timeout:.0f} s)")
        t0 = time.monotonic()
        for attempt in (1, 2, 3):
            ok, detail = _run_case(c, ctx)
            fault = emulation_fault(case_work) if emulated and not ok else None
            if not fault or attempt == 3:
                break
            first = case_work.with_name(f"{name}.attempt{attempt}")
            shutil.rmtree(first, ignore_errors=True)
            case_work.rename(first)
            case_work.mkdir(parents=True)
            log(f"RETRY {name}: a guest died of a fault of the emulated host ({fault}); "
                f"attempt {attempt}'s files in {first}")
        secs = time.monotonic() - t0
        if scratch != work:
            keep = work / "cases" / name
            keep.mkdir(parents=True, exist_ok=True)
            for f in case_work.iterdir():
                if f.is_file() and f.stat().st_size <= (1 << 20):
                    shutil.copy2(f, keep / f.name)
        record(results, name, ok, detail, seconds=secs, data=ctx._data)
        log(f"{'PASS' if ok else 'FAIL'} {name} ({secs:.1f}s)")
        if not ok:
            for line in detail.splitlines():
                print(f"e2e:   | {line}", flush=True)
