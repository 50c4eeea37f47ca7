"""The pytest plugin of the real-guest suite (loaded by tests/e2e/conftest.py).

Options: `--arch` (the guests' architecture; tests marked for others are deselected),
`--cases a,b` (select by case name), and, from tests/e2e/run.py, the built artefacts
(`--ember`, `--kernel-dir`, `--rootfs-dir`), `--emulated`, `--work` (where each test's
files are kept), `--scratch` (where tests run, when not `--work`) and `--results` (one JSON
line per test, the emulated host's way of reporting).

Markers:
  - `arch("x86_64", reason=...)`: the architectures a test runs on. Without it, a test runs
    on every architecture (framework.common.ALL_ARCHES).
  - `emulated_flaky`: under emulation only, a test that failed while the emulated KVM host's
    known fault shows in its files (build.EMULATION_FAULTS) runs again, at most 3 times in
    all, through pytest-rerunfailures; a plain failure is never retried, nor is anything on
    hardware KVM. The failed attempt's files are kept beside the retry's
    (`<case>.attempt<N>`).
  - `timeout(seconds)`: pytest-timeout's, on the test function (ini default: 180 s).

Fixtures: `artifacts`, `ctx` (framework.common.Ctx with the test's scratch directory as
`work`), `scratch`, `microvm` (a MicroVM factory), `netns`, `emberd` / `emberd_factory`.

Each test's case name (its id in results and logs) is its function name without `test_`,
or, for a parametrized test, its parameter id.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from pathlib import Path

import pytest

from . import build
from .agent import Emberd
from .common import ALL_ARCHES, ARCH, Ctx, EmulatedHostFault
from .emuhost import record
from .net import netns as _netns
from .vm import MicroVM, reap_all

# Run order of the test modules (the old harness's order: cheap boots first).
MODULE_ORDER = ("test_boot", "test_bad_config", "test_block", "test_net", "test_api", "test_seccomp",
                "test_jailer",
                "test_agent", "test_meter")
FAULT_TAG = "EMULATED-HOST-FAULT"
# The run's config, for the hooks that are not given it (logstart, logreport, logfinish).
_CONFIG: list = []


def case_name(item) -> str:
    """A test's case name: its parameter id if parametrized, else its name minus `test_`."""
    callspec = getattr(item, "callspec", None)
    if callspec is not None:
        return callspec.id
    return item.name[5:] if item.name.startswith("test_") else item.name


def pytest_addoption(parser):
    g = parser.getgroup("ember", "Ember end-to-end")
    g.addoption("--arch", default=ARCH, choices=ALL_ARCHES,
                help="guest architecture (default: the host's)")
    g.addoption("--cases", default="", help="comma-separated case names to run")
    g.addoption("--ember", default="", help="built ember (emberd, emberctl beside it)")
    g.addoption("--kernel-dir", default="", help="built guest kernel directory")
    g.addoption("--rootfs-dir", default="", help="built guest root filesystem directory")
    g.addoption("--emulated", action="store_true", help="running inside the emulated KVM host")
    g.addoption("--work", default="", help="where each test's files are kept")
    g.addoption("--scratch", default="", help="where tests run (default: --work)")
    g.addoption("--results", default="", help="append one JSON line per test here")


def pytest_configure(config):
    config.addinivalue_line("markers", "arch(*arches, reason=None): the guest architectures "
                            "the test runs on (default: all)")
    config.addinivalue_line("markers", "emulated_flaky: under emulation, retry when the "
                            "emulated host's known fault signature is found")
    if config.getoption("emulated"):
        # pytest-rerunfailures reruns only failures whose message carries the tag, which
        # pytest_runtest_makereport below adds when it finds the fault's signature.
        config.option.only_rerun = (config.option.only_rerun or []) + [FAULT_TAG]
    config._ember = {"items": {}, "t0": {}, "failed": {}, "rerun": set()}
    _CONFIG[:] = [config]


def pytest_collection_modifyitems(session, config, items):
    arch = config.getoption("arch")
    wanted = [c for c in config.getoption("cases").split(",") if c]
    keep, drop = [], []
    for item in items:
        marker = item.get_closest_marker("arch")
        arches = marker.args if marker else ALL_ARCHES
        name = case_name(item)
        if arch in arches and (not wanted or name in wanted):
            keep.append(item)
        else:
            drop.append(item)
    if wanted:
        unknown = set(wanted) - {case_name(i) for i in keep}
        if unknown:
            raise pytest.UsageError(f"unknown cases (for {arch}): {', '.join(sorted(unknown))}")
    order = {m: i for i, m in enumerate(MODULE_ORDER)}
    keep.sort(key=lambda i: order.get(Path(str(i.fspath)).stem, len(order)))
    if drop:
        config.hook.pytest_deselected(items=drop)
    items[:] = keep
    for item in keep:
        config._ember["items"][item.nodeid] = item
        if config.getoption("emulated") and item.get_closest_marker("emulated_flaky"):
            item.add_marker(pytest.mark.flaky(reruns=2))


def _emit(config, msg: str) -> None:
    """A log line at the start of a line of its own (the emulated host's watcher reads them)."""
    capman = config.pluginmanager.getplugin("capturemanager")
    tr = config.pluginmanager.getplugin("terminalreporter")
    with capman.global_and_fixture_disabled() if capman else contextlib.nullcontext():
        if tr is not None:
            # After pytest's progress characters, on a line of its own.
            if tr._tw.width_of_current_line:
                tr._tw.line()
            tr._tw.line(msg)
            tr._tw.flush()
        else:
            print(msg, flush=True)


def _timeout(item) -> int:
    m = item.get_closest_marker("timeout")
    if m and m.args:
        return int(m.args[0])
    return int(float(item.config.getini("timeout") or 0))


def pytest_runtest_logstart(nodeid, location):
    cfg = _CONFIG[0]
    item = cfg._ember["items"].get(nodeid)
    if item is None:
        return
    cfg._ember["t0"].setdefault(nodeid, time.monotonic())
    _emit(cfg, f"e2e: START {case_name(item)} (timeout {_timeout(item)} s)")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if not rep.failed or call.excinfo is None:
        return
    work: Path | None = getattr(item, "_ember_scratch", None)
    if work is None:
        return
    if call.excinfo.errisinstance(EmulatedHostFault):
        (work / "emulated-host.fault").write_text(str(call.excinfo.value).strip() + "\n")
    if not item.config.getoption("emulated"):
        return
    reap_all()  # consoles and logs complete before they are read
    fault = build.emulation_fault(work)
    crash = getattr(rep.longrepr, "reprcrash", None)
    if fault and crash is not None:
        crash.message = f"{crash.message}\n{FAULT_TAG}: {fault}"
        item._ember_fault = fault


def pytest_runtest_logreport(report):
    cfg = _CONFIG[0]
    st = cfg._ember
    item = st["items"].get(report.nodeid)
    if item is None:
        return
    if report.outcome == "rerun":
        st["rerun"].add(report.nodeid)
        _emit(cfg, f"e2e: RETRY {case_name(item)}: a guest died of a fault of the emulated "
                   f"host ({getattr(item, '_ember_fault', '?')}); attempt "
                   f"{getattr(item, 'execution_count', 1)}'s files kept as "
                   f"{case_name(item)}.attempt{getattr(item, 'execution_count', 1)}")
    elif report.failed:
        st["failed"].setdefault(report.nodeid, f"({report.when}) " + report.longreprtext)


def pytest_runtest_logfinish(nodeid, location):
    cfg = _CONFIG[0]
    st = cfg._ember
    item = st["items"].get(nodeid)
    if item is None:
        return
    if nodeid in st["rerun"]:
        st["rerun"].discard(nodeid)
        st["failed"].pop(nodeid, None)
        return
    name = case_name(item)
    secs = time.monotonic() - st["t0"].pop(nodeid, time.monotonic())
    detail = st["failed"].pop(nodeid, None)
    ok = detail is None
    if cfg.getoption("results"):
        record(Path(cfg.getoption("results")), name, ok, detail or "", seconds=secs)
    _emit(cfg, f"e2e: {'PASS' if ok else 'FAIL'} {name} ({secs:.1f}s)")
    for line in (detail or "").splitlines():
        _emit(cfg, f"e2e:   | {line}")


# --------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="session")
def artifacts(pytestconfig) -> dict[str, Path]:
    """ember and the guest images: given by run.py, else built here (on hardware KVM)."""
    opt = pytestconfig.getoption
    arch = opt("arch")
    if opt("ember"):
        return {"ember": Path(opt("ember")), "kernel_dir": Path(opt("kernel_dir")),
                "rootfs_dir": Path(opt("rootfs_dir"))}
    mode, why = build.detect_mode()
    cross = build.emulated_arch_reason(arch)
    if mode == "emulated" or cross:
        pytest.exit(f"guests of {arch} cannot run on this machine directly ({cross or why}): "
                    f"run the tests through tests/e2e/run.py, which takes the same "
                    f"arguments and runs pytest inside an emulated KVM host", returncode=2)
    return build.build_all(arch)


@pytest.fixture(scope="session")
def work_dir(pytestconfig) -> Path:
    """Where each test's files are kept (build/test-XXXX unless given)."""
    w = pytestconfig.getoption("work")
    path = Path(w) if w else build.new_work_dir("test")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def scratch(request, work_dir) -> Path:
    """The test's own scratch directory, `<scratch>/cases/<case>`. Its small files
    (consoles, logs, configurations) are kept under `--work` after the test; a retried
    test's earlier attempt is kept as `<case>.attempt<N>`."""
    name = case_name(request.node)
    root = Path(request.config.getoption("scratch") or work_dir)
    case_work = root / "cases" / name
    keep = work_dir / "cases" / name
    if case_work.exists():
        n = 1
        while case_work.with_name(f"{name}.attempt{n}").exists():
            n += 1
        case_work.rename(case_work.with_name(f"{name}.attempt{n}"))
        if keep != case_work and keep.exists():
            keep.rename(keep.with_name(f"{name}.attempt{n}"))
    case_work.mkdir(parents=True)
    request.node._ember_scratch = case_work
    yield case_work
    reap_all()
    if keep != case_work:
        keep.mkdir(parents=True, exist_ok=True)
        for f in case_work.iterdir():
            if f.is_file() and f.stat().st_size <= (1 << 20):
                shutil.copy2(f, keep / f.name)
        # emberd's instances: their consoles and VMM logs, named by instance.
        for f in case_work.glob("state/instances/*/*.log"):
            if f.stat().st_size <= (1 << 20):
                shutil.copy2(f, keep / f"{f.parent.name}.{f.name}")


@pytest.fixture
def ctx(pytestconfig, artifacts, scratch) -> Ctx:
    """What the helpers take: artefacts, the scratch directory (`ctx.work`), the
    architecture and whether the KVM host is emulated."""
    return Ctx(ember=artifacts["ember"], kernel_dir=artifacts["kernel_dir"],
               rootfs_dir=artifacts["rootfs_dir"], work=scratch,
               emulated=pytestconfig.getoption("emulated"), arch=pytestconfig.getoption("arch"))


@pytest.fixture
def microvm(ctx):
    """A factory of test guests: `microvm(name="ember", kernel=None, vcpus=1, mem_mib=128,
    mode="reboot", extra_args="", initrd=True, reboot="k")` returns an unstarted MicroVM
    (see framework.vm); every one still running is killed after the test."""
    made: list[MicroVM] = []

    def make(name: str = "ember", **cfg) -> MicroVM:
        vm = MicroVM(ctx, name=name, **cfg)
        made.append(vm)
        return vm

    yield make
    for vm in made:
        if vm.process is not None:
            vm.process.kill()


@pytest.fixture
def netns(request):
    """A fresh network namespace (its name), deleted with everything in it after the test."""
    with _netns(case_name(request.node)[:10]) as ns:
        yield ns


@pytest.fixture
def emberd_factory(ctx):
    """`emberd_factory(extra=(flags...))`: emberd running in a network namespace of its own
    with its state under the test's scratch directory; stopped (with every VMM it started)
    and its namespace removed after the test."""
    with contextlib.ExitStack() as stack:
        def make(extra: tuple[str, ...] = (), tag: str = "agent") -> Emberd:
            ns = stack.enter_context(_netns(tag))
            agent = Emberd(ctx, ns, extra=extra)
            stack.callback(agent.stop_all)
            return agent

        yield make


@pytest.fixture
def emberd(emberd_factory) -> Emberd:
    """emberd with default flags (see emberd_factory); `emberd.ctl(...)` runs emberctl."""
    return emberd_factory()
