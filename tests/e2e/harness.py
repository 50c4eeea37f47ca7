"""End-to-end harness: runs cases that boot real guests, where a stock guest can run.

A *case* is a Python function taking a `Ctx` (paths to ember, the guest kernel and root
filesystems, a scratch directory, whether we are emulated). It launches guests through
`guest.py` and raises `CaseFailed` (or any exception) when the guest does not print or do
what it must. Cases register themselves with `@case(...)` in the `cases_*.py` modules.

Where the cases run is decided once per run and printed first:
  - direct: /dev/kvm is hardware KVM (vmx/svm in /proc/cpuinfo, not kvm_pvm);
  - emulated: otherwise. One QEMU TCG machine with AMD SVM (the emulated KVM host, "L1")
    boots, mounts this machine's root read-only over 9p, and runs this same runner inside
    with `--inner`; results come back through a shared work directory.
EMBER_E2E_MODE=direct|emulated overrides the choice.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[2]
ARCH = platform.machine()


class CaseFailed(AssertionError):
    """A case's expectation was not met."""


class CaseTimeout(Exception):
    """A case ran past its timeout."""


class EmulatedHostFault(CaseFailed):
    """A case failed because the emulated KVM host stopped delivering the guest's
    interrupts (see EMULATION_FAULTS); raised by cases that can tell, only under emulation."""


@dataclasses.dataclass
class Ctx:
    """What a case gets: built artefacts and a scratch directory of its own."""

    ember: Path
    kernel_dir: Path
    rootfs_dir: Path
    work: Path
    emulated: bool
    arch: str = ARCH

    @property
    def initramfs(self) -> Path:
        return self.rootfs_dir / "initramfs.cpio"

    def data(self, **kv) -> None:
        """Records measurements for the run's report (benchmarks use this)."""
        self._data.update(kv)

    _data: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Case:
    name: str
    fn: Callable[[Ctx], None]
    timeout: float
    suite: str
    arches: tuple[str, ...]


REGISTRY: dict[str, Case] = {}


# The guest architectures a case runs on.
X86_ONLY = ("x86_64",)
ALL_ARCHES = ("x86_64", "aarch64")


def case(name: str, timeout: float = 180, suite: str = "test",
         arches: tuple[str, ...] = X86_ONLY):
    """Registers a case. `timeout` is in seconds of wall time (generous: emulation is slow).
    `arches`: the guest architectures it applies to (ALL_ARCHES unless it tests something
    only one architecture has, such as the i8042 or the PVH entry)."""

    def wrap(fn):
        if name in REGISTRY:
            raise RuntimeError(f"duplicate case {name}")
        REGISTRY[name] = Case(name, fn, timeout, suite, arches)
        return fn

    return wrap


def log(msg: str) -> None:
    print(f"e2e: {msg}", flush=True)


# ---------------------------------------------------------------------------------------
# Where to run


def detect_mode() -> tuple[str, str]:
    forced = os.environ.get("EMBER_E2E_MODE")
    if forced in ("direct", "emulated"):
        return forced, "EMBER_E2E_MODE"
    if not os.path.exists("/dev/kvm"):
        return "emulated", "no /dev/kvm"
    if os.path.exists("/sys/module/kvm_pvm"):
        return "emulated", "/dev/kvm is kvm_pvm, a paravirtual nested hypervisor that cannot run stock guests"
    flags = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("flags") or line.startswith("Features"):
                flags = line
                break
    except OSError:
        pass
    if ARCH == "x86_64" and not ({"vmx", "svm"} & set(flags.split())):
        return "emulated", "the CPU has no vmx/svm flag: /dev/kvm is not hardware virtualization"
    return "direct", "/dev/kvm is hardware KVM"


# ---------------------------------------------------------------------------------------
# Building what the cases need


def sh(cmd: list[str], **kw) -> str:
    res = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True, **kw)
    return res.stdout.strip().splitlines()[-1] if res.stdout.strip() else ""


# How to cross-build for each guest architecture that is not the host's, and where the
# build lands (tools/ci/cargo-aarch64 picks rustup's or Debian's toolchain).
CROSS_CARGO = {"aarch64": (ROOT / "tools/ci/cargo-aarch64",
                           ROOT / "target/cross/aarch64-unknown-linux-gnu/release")}


def build_all(arch: str = ARCH) -> dict[str, Path]:
    """Builds ember, emberd and emberctl (release) and the guest images for `arch`; returns
    their locations (emberd and emberctl are beside ember). For another architecture than
    the host's, ember is cross-built (statically linked: see tools/ci/cargo-aarch64)."""
    t0 = time.monotonic()
    if arch == ARCH:
        subprocess.run(["cargo", "build", "--release", "-q", "-p", "ember", "-p", "agent",
                        "-p", "cli"], check=True, cwd=ROOT)
        ember = ROOT / "target/release/ember"
    else:
        cargo, out = CROSS_CARGO[arch]
        subprocess.run([str(cargo), "build", "--release", "-q", "-p", "ember"], check=True,
                       cwd=ROOT)
        ember = out / "ember"
    kernel_dir = Path(sh([str(ROOT / "tools/guest/build-kernel.sh"), arch]))
    rootfs_dir = Path(sh([str(ROOT / "tools/guest/build-rootfs.sh"), arch]))
    log(f"built ember and guest images ({arch}) in {time.monotonic() - t0:.1f}s")
    return {
        "ember": ember,
        "kernel_dir": kernel_dir,
        "rootfs_dir": rootfs_dir,
    }


# ---------------------------------------------------------------------------------------
# Running cases in this process


class _Alarm:
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


def stage_artifacts(paths: dict[str, Path], stage: Path) -> dict[str, Path]:
    """Copies ember and the guest images into `stage` (the emulated host's tmpfs), so no
    guest boot reads through 9p: that would time 9p, not the VMM, and 9p is the part of the
    emulated host we trust least."""
    out = {}
    for key in ("kernel_dir", "rootfs_dir"):
        dst = stage / key
        dst.mkdir(parents=True, exist_ok=True)
        for f in paths[key].iterdir():
            if f.is_file() and not f.name.startswith("."):
                shutil.copy2(f, dst / f.name)
        out[key] = dst
    out["ember"] = stage / "ember"
    shutil.copy2(paths["ember"], out["ember"])
    for sibling in ("emberd", "emberctl"):
        src = paths["ember"].parent / sibling
        if src.exists():
            shutil.copy2(src, stage / sibling)
    return out


# What TCG's nested SVM does to an L2 guest now and then (seen with QEMU's guests as well as
# ember's, never on hardware KVM): it delivers an interrupt right after SYSCALL, while IF is
# still clear and RSP is the user stack, and the guest dies of a double fault at the first
# instruction of its syscall entry, or of a triple fault with nothing on its console (ember
# logs KVM_EXIT_SHUTDOWN), or it stops taking interrupts altogether (its network stalls and
# its console heartbeat stops with it; QEMU's guests do the same). Each entry: the files to look in, and the lines that must all
# be in one of them.
EMULATION_FAULTS = (
    ("*.console", ("PANIC: double fault", "RIP: 0010:entry_SYSCALL_64+0x0/")),
    ("*.stderr", ("the guest triple-faulted (KVM_EXIT_SHUTDOWN)",)),
    # The same, for guests emberd ran (each instance's directory under the agent's state).
    ("state/instances/*/console.log", ("PANIC: double fault", "RIP: 0010:entry_SYSCALL_64+0x0/")),
    ("state/instances/*/ember.log", ("the guest triple-faulted (KVM_EXIT_SHUTDOWN)",)),
    # Written by a case that raised EmulatedHostFault: the guest's console heartbeat (the
    # serial port's interrupt, not the device under test) stopped together with its I/O.
    ("emulated-host.fault", ("",)),
)


def _emulation_fault(case_work: Path) -> str | None:
    """The known emulated-host fault, if a guest's console or ember's log shows it."""
    for pattern, signature in EMULATION_FAULTS:
        for f in sorted(case_work.glob(pattern)):
            text = f.read_text(errors="replace")
            if all(sig in text for sig in signature):
                return f"{signature[-1]!r} in {f.name}"
    return None


def _run_case(c, ctx) -> tuple[bool, str]:
    """Runs one case; returns whether it passed and, if not, why."""
    from guest import reap_all  # noqa: E402  (guest imports harness)

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
    scratch, each case's small files (consoles, logs, configs) are copied to `work` after it.
    Under emulation, a case whose guest died of the emulated host's known fault
    (EMULATION_FAULTS) is run again, at most 3 times in all; on hardware KVM a case runs once."""
    scratch = scratch or work
    for name in names:
        c = REGISTRY[name]
        case_work = scratch / "cases" / name
        shutil.rmtree(case_work, ignore_errors=True)
        case_work.mkdir(parents=True)
        ctx = Ctx(ember=paths["ember"], kernel_dir=paths["kernel_dir"],
                  rootfs_dir=paths["rootfs_dir"], work=case_work, emulated=emulated,
                  arch=arch)
        log(f"START {name}")
        t0 = time.monotonic()
        for attempt in (1, 2, 3):
            ok, detail = _run_case(c, ctx)
            fault = _emulation_fault(case_work) if emulated and not ok else None
            if not fault or attempt == 3:
                break
            # Kept beside the retry's files, so the first attempt's consoles stay readable.
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
            # emberd's instances: their consoles and VMM logs, named by instance.
            for f in case_work.glob("state/instances/*/*.log"):
                if f.stat().st_size <= (1 << 20):
                    shutil.copy2(f, keep / f"{f.parent.name}.{f.name}")
        rec = {"name": name, "ok": ok, "seconds": round(secs, 2), "detail": detail,
               "data": ctx._data}
        with open(results, "a") as f:
            f.write(json.dumps(rec) + "\n")
            f.flush()
            os.fsync(f.fileno())
        log(f"{'PASS' if ok else 'FAIL'} {name} ({secs:.1f}s)")
        if not ok:
            for line in detail.splitlines():
                print(f"e2e:   | {line}", flush=True)


# ---------------------------------------------------------------------------------------
# Running cases inside the emulated KVM host


def build_emuhost(arch: str = ARCH) -> Path:
    script = ROOT / f"tools/emuhost/build-{arch}.sh"
    return Path(sh([str(script)]))


def emulated_arch_reason(arch: str) -> str | None:
    """Why guests of `arch` must run in an emulated host here, if they must."""
    if arch != ARCH:
        return f"{arch} guests need an {arch} KVM host; this machine is {ARCH}"
    return None


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


def run_emulated(names: list[str], paths: dict[str, Path], work: Path, results: Path,
                 total_timeout: float, echo_console: bool = False,
                 modules: list[str] | None = None, arch: str = ARCH) -> None:
    """Runs the cases in emulated KVM hosts, as few as possible: one boot runs them all,
    unless the emulated host itself stops responding (TCG's nested SVM can wedge the whole
    L1 kernel). Then a new host runs the cases not yet done. A case during which the host
    hangs twice is recorded as failed; it is not run a third time."""
    emuhost = build_emuhost(arch)
    deadline = time.monotonic() + total_timeout
    remaining = list(names)
    hung_once: set[str] = set()
    boot = 0
    while remaining and time.monotonic() < deadline:
        boot += 1
        hung = _emulated_boot(emuhost, remaining, paths, work, results, boot,
                              deadline, echo_console, modules, arch)
        done = read_results(results)
        if hung and hung not in done:
            if hung in hung_once:
                _record(results, hung, False,
                        "the emulated KVM host hung or reset twice during this case")
            else:
                hung_once.add(hung)
        remaining = [n for n in remaining if n not in read_results(results)]
        if not hung:
            break  # the host finished its job; whatever is missing did not run
    if remaining and time.monotonic() >= deadline:
        log(f"the run's timeout ({total_timeout:.0f}s) ended the emulated hosts")


def _record(results: Path, name: str, ok: bool, detail: str) -> None:
    with open(results, "a") as f:
        f.write(json.dumps({"name": name, "ok": ok, "seconds": 0, "detail": detail,
                            "data": {}}) + "\n")
    log(f"{'PASS' if ok else 'FAIL'} {name}: {detail}")


def _emulated_boot(emuhost: Path, names: list[str], paths: dict[str, Path], work: Path,
                   results: Path, boot: int, deadline: float, echo_console: bool,
                   modules: list[str] | None, arch: str) -> str | None:
    """One emulated host running `names`. Returns the case in flight if the host stopped
    responding (no case finished within its timeout plus a margin), else None."""
    job = work / "job.sh"
    # Another architecture's emulated host has its own Python (tools/emuhost).
    python = sys.executable if arch == ARCH else "python3"
    inner = [python, str(Path(__file__).resolve().parent / "run.py"), "--inner", "--arch", arch,
             "--work", str(work), "--results", str(results),
             "--ember", str(paths["ember"]), "--kernel-dir", str(paths["kernel_dir"]),
             "--rootfs-dir", str(paths["rootfs_dir"]), "--cases", ",".join(names)]
    if modules:
        inner += ["--modules", ",".join(modules)]
    # The job runs under the emulated host's init: carry over our EMBER_* settings.
    env = "".join(f"export {k}={_q(v)}\n" for k, v in os.environ.items() if k.startswith("EMBER_"))
    job.write_text(env + "cd " + _q(str(ROOT)) + " && exec " + " ".join(_q(a) for a in inner) + "\n")
    console = work / f"emuhost-console-{boot}.log"
    keep = [ROOT, paths["kernel_dir"], paths["rootfs_dir"], paths["ember"].parent]
    keep += [Path(m).parent for m in modules or []]
    cmd = emuhost_command(emuhost, work, keep, arch)
    log(f"booting emulated KVM host #{boot}: {' '.join(cmd[:8])} ...")
    t0 = time.monotonic()
    state = {"case": None, "since": time.monotonic(), "job_done": False,
             "heard": time.monotonic()}
    with open(console, "w") as con:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, text=True, errors="replace")

        def pump():
            assert proc.stdout is not None
            for line in proc.stdout:
                con.write(line)
                con.flush()
                s = line.rstrip("\r\n")
                state["heard"] = time.monotonic()
                if s == "emuhost: alive":
                    continue
                if s.startswith("e2e: START ") or s.startswith("e2e: RETRY "):
                    # A retried case gets its whole timeout again.
                    state["case"] = s.split()[2].rstrip(":")
                    state["since"] = time.monotonic()
                    if s.startswith("e2e: START "):
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
                limit = REGISTRY[case_now].timeout + 90 if case_now in REGISTRY else 600
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
        # the whole L1 kernel): treat it like a hang of the case in flight.
        hung = state["case"] or "(between cases)"
        log(f"emulated host #{boot} ended unexpectedly during {hung}")
    log(f"emulated host #{boot} finished in {time.monotonic() - t0:.1f}s (console: {console})")
    return hung


def _q(s: str) -> str:
    return "'" + s.replace("'", "'\\''") + "'"


# ---------------------------------------------------------------------------------------
# Reporting


def read_results(results: Path) -> dict[str, dict]:
    out: dict[str, dict] = {}
    if results.exists():
        for line in results.read_text().splitlines():
            try:
                rec = json.loads(line)
                out[rec["name"]] = rec
            except (ValueError, KeyError):
                continue
    return out


def new_work_dir(prefix: str = "e2e") -> Path:
    base = ROOT / "build"
    base.mkdir(exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"{prefix}-", dir=base))
