"""Where guests run, building what the tests need, staging it, and the emulated KVM host's
known faults.

Where the tests run is decided once per run:
  - direct: /dev/kvm is hardware KVM (vmx/svm in /proc/cpuinfo, not kvm_pvm);
  - emulated: otherwise. One QEMU TCG machine (the emulated KVM host, "L1") boots and runs
    the suite inside it (see emuhost.py).
EMBER_E2E_MODE=direct|emulated overrides the choice.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from .common import ARCH, ROOT, log


def detect_mode() -> tuple[str, str]:
    """('direct' or 'emulated', why)."""
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


def emulated_arch_reason(arch: str) -> str | None:
    """Why guests of `arch` must run in an emulated host here, if they must."""
    if arch != ARCH:
        return f"{arch} guests need an {arch} KVM host; this machine is {ARCH}"
    return None


def sh(cmd: list[str], **kw) -> str:
    """Runs `cmd`; returns the last line of its output (the build scripts print their
    output directory last)."""
    res = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True, **kw)
    return res.stdout.strip().splitlines()[-1] if res.stdout.strip() else ""


# How to cross-build for each guest architecture that is not the host's, and where the
# build lands under the checkout (tools/ci/cargo-aarch64 picks rustup's or Debian's
# toolchain).
CROSS_CARGO = {"aarch64": ("tools/ci/cargo-aarch64", "target/cross/aarch64-unknown-linux-gnu/release")}


def cargo_root() -> Path:
    """The checkout ember is built from: this one, or EMBER_CARGO_DIR (another checkout,
    such as a clean `git worktree` of a commit while this tree's Rust is mid-change)."""
    return Path(os.environ.get("EMBER_CARGO_DIR") or ROOT).resolve()


# Benchmark peers given by the environment, each copied to `<ember's dir>/peers/<name>` so
# it is staged into the emulated host with ember (the benchmarks look for it there).
PEERS = (("EMBER_BASELINE", "ember-baseline"), ("FIRECRACKER", "firecracker"),
         ("FIRECRACKER_JAILER", "firecracker-jailer"))


def sync_peers(ember: Path) -> None:
    """Makes `<ember's dir>/peers/` hold exactly the peers named in the environment (a peer
    from an earlier run must not be benchmarked by mistake)."""
    peers = ember.parent / "peers"
    shutil.rmtree(peers, ignore_errors=True)
    for var, name in PEERS:
        src = os.environ.get(var)
        if not src:
            continue
        if not Path(src).is_file():
            raise SystemExit(f"{var}={src}: no such file")
        peers.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, peers / name)


def peer(ember: Path, name: str) -> Path | None:
    """The staged peer `name` (see PEERS) beside `ember`, if one was given."""
    p = ember.parent / "peers" / name
    return p if p.is_file() else None


def build_all(arch: str = ARCH) -> dict[str, Path]:
    """Builds ember, emberd, emberctl and ember-jailer (release, statically linked:
    tools/build.sh) and the guest images for `arch`; returns their locations (the others are
    beside ember). For another architecture than the host's, ember and ember-jailer are
    cross-built (statically linked too: see tools/ci/cargo-aarch64)."""
    t0 = time.monotonic()
    src = cargo_root()
    if arch == ARCH:
        out = sh([str(ROOT / "tools/build.sh"), "-q"], env=dict(os.environ, EMBER_CARGO_DIR=str(src)))
        ember = Path(out) / "ember"
    else:
        cargo, out = CROSS_CARGO[arch]
        subprocess.run([str(src / cargo), "build", "--release", "-q", "-p", "ember", "-p", "jailer"],
                       check=True, cwd=src)
        ember = src / out / "ember"
    kernel_dir = Path(sh([str(ROOT / "tools/guest/build-kernel.sh"), arch]))
    rootfs_dir = Path(sh([str(ROOT / "tools/guest/build-rootfs.sh"), arch]))
    sync_peers(ember)
    log(f"built ember and guest images ({arch}) in {time.monotonic() - t0:.1f}s")
    return {"ember": ember, "kernel_dir": kernel_dir, "rootfs_dir": rootfs_dir}


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
    for sibling in ("emberd", "emberctl", "ember-jailer"):
        src = paths["ember"].parent / sibling
        if src.exists():
            shutil.copy2(src, stage / sibling)
    peers = paths["ember"].parent / "peers"
    if peers.is_dir():
        shutil.copytree(peers, stage / "peers", dirs_exist_ok=True)
    return out


def new_work_dir(prefix: str = "e2e") -> Path:
    """A fresh results directory, build/<prefix>-XXXX (each test's files go in cases/)."""
    base = ROOT / "build"
    base.mkdir(exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"{prefix}-", dir=base))


# What TCG's nested SVM does to an L2 guest now and then (seen with QEMU's guests as well as
# ember's, never on hardware KVM): it delivers an interrupt right after SYSCALL, while IF is
# still clear and RSP is the user stack, and the guest dies of a double fault at the first
# instruction of its syscall entry, or of a triple fault with nothing on its console (ember
# logs KVM_EXIT_SHUTDOWN), or it stops taking interrupts altogether (its network stalls and
# its console heartbeat stops with it; QEMU's guests do the same). Each entry: the files to
# look in (under a test's scratch directory), and the lines that must all be in one of them.
EMULATION_FAULTS = (
    ("*.console", ("PANIC: double fault", "RIP: 0010:entry_SYSCALL_64+0x0/")),
    # The stall, seen from inside: a vCPU the emulated host stopped running while the
    # guest's other CPU goes on reports it (seen once after the ready marker, 2 vCPUs).
    ("*.console", ("rcu: INFO: rcu_sched detected stalls on CPUs",)),
    ("*.stderr", ("the guest triple-faulted (KVM_EXIT_SHUTDOWN)",)),
    # The same, for guests emberd ran (each instance's directory under the agent's state).
    ("state/instances/*/console.log", ("PANIC: double fault", "RIP: 0010:entry_SYSCALL_64+0x0/")),
    ("state/instances/*/console.log", ("rcu: INFO: rcu_sched detected stalls on CPUs",)),
    ("state/instances/*/ember.log", ("the guest triple-faulted (KVM_EXIT_SHUTDOWN)",)),
    # Written for a test that raised EmulatedHostFault: the guest's console heartbeat (the
    # serial port's interrupt, not the device under test) stopped together with its I/O.
    ("emulated-host.fault", ("",)),
)


def emulation_fault(case_work: Path) -> str | None:
    """The known emulated-host fault, if a guest's console or ember's log under
    `case_work` shows it."""
    for pattern, signature in EMULATION_FAULTS:
        for f in sorted(case_work.glob(pattern)):
            text = f.read_text(errors="replace")
            if all(sig in text for sig in signature):
                return f"{signature[-1]!r} in {f.name}"
    return None
