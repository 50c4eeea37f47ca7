"""Shared basics: paths, the per-test context, failures and `expect`."""

from __future__ import annotations

import dataclasses
import platform
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ARCH = platform.machine()
# The guest architectures the suite knows.
ALL_ARCHES = ("x86_64", "aarch64")


class CaseFailed(AssertionError):
    """A test's expectation was not met."""


class EmulatedHostFault(CaseFailed):
    """A test failed because the emulated KVM host stopped delivering the guest's
    interrupts (see build.EMULATION_FAULTS); raised by tests that can tell, only under
    emulation. The plugin records it in the test's scratch directory, where the
    `emulated_flaky` retry finds it."""


@dataclasses.dataclass
class Ctx:
    """What a test gets: built artefacts and a scratch directory of its own (`work`)."""

    ember: Path
    kernel_dir: Path
    rootfs_dir: Path
    work: Path
    emulated: bool
    arch: str = ARCH

    @property
    def initramfs(self) -> Path:
        """The test guests' initramfs (busybox and the test init)."""
        return self.rootfs_dir / "initramfs.cpio"

    def data(self, **kv) -> None:
        """Records measurements for the run's report (benchmarks use this)."""
        self._data.update(kv)

    _data: dict = dataclasses.field(default_factory=dict)


def expect(cond: bool, msg: str) -> None:
    """Fails the test with `msg` unless `cond` (messages carry the evidence, such as the
    guest's console, which a bare assert would not)."""
    if not cond:
        raise CaseFailed(msg)


def log(msg: str) -> None:
    """One line of the run's log, prefixed so the emulated host's watcher echoes it."""
    print(f"e2e: {msg}", flush=True)


def case_name_of_nodeid(nodeid: str) -> str:
    """A pytest node id's case name: `f.py::test_x[p]` -> `p`, `f.py::test_x` -> `x`
    (plugin.case_name, from the id alone)."""
    last = nodeid.strip().split("::")[-1]
    if last.endswith("]") and "[" in last:
        return last[last.index("[") + 1:-1]
    return last[5:] if last.startswith("test_") else last
