#!/usr/bin/env python3
"""Runs the end-to-end tests: `tests/e2e/run.py [--arch A] [--cases a,b] [pytest args]`.

The suite (`--suite test`, the default) is pytest's (test_*.py here, with the fixtures of
tests/framework); this entry picks where it runs: directly on hardware KVM, else inside the
emulated KVM host (framework.emuhost), which runs `run.py --inner` and through it pytest.
Arguments it does not know (`-k block`, `-x`, ...) go to pytest. `--suite bench|demo` and
`--modules` run the benchmark and demo cases of harness.py instead.

Prints where the tests run, one START and one PASS/FAIL line per test (with the failure on
FAIL), and finally 'N passed, N failed'. Exit status 0 only if every selected test passed.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from framework import build, emuhost  # noqa: E402
from framework.common import ARCH, log  # noqa: E402

# Debian's python3, which has Debian's pytest and its plugins (tools/guest/install-deps.sh);
# the python3 first on PATH may be another (pyenv's) that does not see them. In both
# emulated hosts /usr/bin/python3 is Debian's too (x86_64: this machine's, over 9p;
# aarch64: the arm64 user space's own).
PYTHON = os.environ.get("EMBER_PYTEST_PYTHON", "/usr/bin/python3")
# The pinned PyPI packages' directory (tools/ci/python-deps.sh); an EMBER_ variable, so the
# emulated host's job gets it too (x86_64 sees this machine's files over 9p).
os.environ.setdefault("EMBER_PYDEPS", str(Path.home() / ".cache" / "ember" / "python"))


def load_extra_modules(paths: list[str]) -> None:
    """Imports case modules given by file path (benchmarks live under tools/bench)."""
    import importlib.util

    for p in paths:
        path = Path(p).resolve()
        spec = importlib.util.spec_from_file_location(path.stem, path)
        if spec is None or spec.loader is None:
            raise SystemExit(f"cannot import case module {p}")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)


def pytest_argv(arch: str, cases: list[str], extra: list[str]) -> list[str]:
    """pytest's arguments: test files given among `extra` (else this directory), then the
    selection."""
    files = [a for a in extra if not a.startswith("-") and Path(a.split("::")[0]).is_file()]
    rest = [a for a in extra if a not in files]
    argv = [str(Path(f).resolve()) if "::" not in f else f for f in files] or [str(HERE)]
    argv += ["--arch", arch] + rest
    if cases:
        argv += ["--cases", ",".join(cases)]
    return argv


def collect(arch: str, cases: list[str], extra: list[str]) -> list[str] | None:
    """The case names pytest selects (in run order), or None if it refused the selection."""
    from framework.common import case_name_of_nodeid

    r = subprocess.run([PYTHON, "-m", "pytest", "--collect-only", "-q"]
                       + pytest_argv(arch, cases, extra), capture_output=True, text=True)
    if r.returncode not in (0, 5):  # 5: nothing selected
        sys.stderr.write(r.stderr[-3000:] or r.stdout[-3000:])
        return None
    return [case_name_of_nodeid(line) for line in r.stdout.splitlines() if "::" in line]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--suite", default="test", help="test (default), bench or demo")
    ap.add_argument("--cases", default="", help="comma-separated case names (default: whole suite)")
    ap.add_argument("--modules", default="", help="extra case modules to import, by path (benchmarks)")
    ap.add_argument("--timeout", type=float, default=1500, help="whole run timeout, seconds")
    ap.add_argument("--echo-console", action="store_true", help="show the emulated host's whole console")
    ap.add_argument("--arch", default=ARCH,
                    help="guest architecture: x86_64 or aarch64 (default: the host's)")
    ap.add_argument("--list", action="store_true", help="list the selected case names")
    # Used inside the emulated host.
    ap.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    ap.add_argument("--results", help=argparse.SUPPRESS)
    ap.add_argument("--ember", help=argparse.SUPPRESS)
    ap.add_argument("--kernel-dir", help=argparse.SUPPRESS)
    ap.add_argument("--rootfs-dir", help=argparse.SUPPRESS)
    args, extra = ap.parse_known_args()
    legacy = args.suite != "test" or bool(args.modules)
    if legacy:
        import harness
        import demo  # noqa: F401  (registers the demo case)
        if args.modules:
            load_extra_modules(args.modules.split(","))
        if extra:
            ap.error(f"unknown arguments: {' '.join(extra)}")
    cases = [c for c in args.cases.split(",") if c]

    if legacy:
        reg = harness.REGISTRY
        if cases:
            unknown = [n for n in cases if n not in reg or args.arch not in reg[n].arches]
            if unknown:
                print(f"unknown cases (for {args.arch}): {', '.join(unknown)}", file=sys.stderr)
                return 2
            names = cases
        else:
            names = [n for n, c in reg.items() if c.suite == args.suite and args.arch in c.arches]
    elif not args.inner:
        got = collect(args.arch, cases, extra)
        if got is None:
            return 2
        names = got
    else:
        names = cases
    if args.list:
        print("\n".join(names))
        return 0

    if args.inner:
        paths = {"ember": Path(args.ember), "kernel_dir": Path(args.kernel_dir),
                 "rootfs_dir": Path(args.rootfs_dir)}
        # The emulated host's /tmp is a tmpfs: artefacts and test scratch live there.
        stage = Path(tempfile.mkdtemp(prefix="ember-e2e-", dir="/tmp"))
        paths = build.stage_artifacts(paths, stage)
        if legacy:
            harness.run_inline(names, paths, Path(args.work), emulated=True,
                               results=Path(args.results), scratch=stage, arch=args.arch)
            return 0
        import pytest
        return pytest.main(["-q", "-s", "--tb=short", "--color=no"] + pytest_argv(args.arch, names, extra) + [
            "--emulated", "--ember", str(paths["ember"]), "--kernel-dir", str(paths["kernel_dir"]),
            "--rootfs-dir", str(paths["rootfs_dir"]), "--work", args.work,
            "--scratch", str(stage), "--results", args.results])

    mode, why = build.detect_mode()
    cross = build.emulated_arch_reason(args.arch)
    if cross:
        mode, why = "emulated", cross
    log(f"mode: {mode} ({why}); guests: {args.arch}")
    t0 = time.monotonic()
    paths = build.build_all(args.arch)
    work = build.new_work_dir(args.suite)
    results = work / "results.jsonl"
    log(f"{len(names)} cases, work directory {work}")
    if mode == "direct" and legacy:
        harness.run_inline(names, paths, work, emulated=False, results=results, arch=args.arch)
    elif mode == "direct":
        subprocess.run([PYTHON, "-m", "pytest", "-q", "-s", "--tb=short", "--color=no"]
                       + pytest_argv(args.arch, names, extra)
                       + ["--ember", str(paths["ember"]), "--kernel-dir", str(paths["kernel_dir"]),
                          "--rootfs-dir", str(paths["rootfs_dir"]), "--work", str(work),
                          "--results", str(results)])
    else:
        modules = [str(Path(m).resolve()) for m in args.modules.split(",") if m]

        def inner(remaining: list[str]) -> list[str]:
            argv = [PYTHON, str(HERE / "run.py"), "--inner", "--arch", args.arch,
                    "--suite", args.suite, "--work", str(work), "--results", str(results),
                    "--ember", str(paths["ember"]), "--kernel-dir", str(paths["kernel_dir"]),
                    "--rootfs-dir", str(paths["rootfs_dir"]), "--cases", ",".join(remaining)]
            if modules:
                argv += ["--modules", ",".join(modules)]
            return argv + extra

        keep = [build.ROOT, paths["kernel_dir"], paths["rootfs_dir"], paths["ember"].parent]
        keep += [Path(m).parent for m in modules]
        emuhost.run_emulated(names, inner, work, results, total_timeout=args.timeout,
                             keep=keep, echo_console=args.echo_console, arch=args.arch)
    got = emuhost.read_results(results)
    passed = sum(1 for n in names if got.get(n, {}).get("ok"))
    missing = [n for n in names if n not in got]
    for n in missing:
        log(f"FAIL {n} (did not run: the run ended or timed out before it)")
    failed = len(names) - passed
    log(f"finished in {time.monotonic() - t0:.1f}s")
    print(f"{passed} passed, {failed} failed", flush=True)
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
