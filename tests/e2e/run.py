#!/usr/bin/env python3
"""Runs the end-to-end cases: `tests/e2e/run.py [--suite test|bench|demo] [--cases a,b]`.

Prints where the cases run (directly on /dev/kvm or inside the emulated KVM host), one
PASS/FAIL line per case with the guest's console on failure, and finally
'N passed, N failed'. Exit status 0 only if every selected case passed.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402
from harness import REGISTRY, log  # noqa: E402

import cases_boot  # noqa: E402,F401  (registers cases)
import cases_block  # noqa: E402,F401
import cases_net  # noqa: E402,F401
import cases_api  # noqa: E402,F401
import cases_agent  # noqa: E402,F401
import cases_meter  # noqa: E402,F401


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


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--suite", default="test", help="test (default), bench or demo")
    ap.add_argument("--cases", default="", help="comma-separated case names (default: whole suite)")
    ap.add_argument("--modules", default="", help="extra case modules to import, by path (benchmarks)")
    ap.add_argument("--timeout", type=float, default=1500, help="whole run timeout, seconds")
    ap.add_argument("--echo-console", action="store_true", help="show the emulated host's whole console")
    ap.add_argument("--arch", default=harness.ARCH,
                    help="guest architecture: x86_64 or aarch64 (default: the host's)")
    ap.add_argument("--list", action="store_true")
    # Used inside the emulated host.
    ap.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    ap.add_argument("--results", help=argparse.SUPPRESS)
    ap.add_argument("--ember", help=argparse.SUPPRESS)
    ap.add_argument("--kernel-dir", help=argparse.SUPPRESS)
    ap.add_argument("--rootfs-dir", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.modules:
        load_extra_modules(args.modules.split(","))

    if args.cases:
        names = args.cases.split(",")
        unknown = [n for n in names if n not in REGISTRY or args.arch not in REGISTRY[n].arches]
        if unknown:
            print(f"unknown cases (for {args.arch}): {', '.join(unknown)}", file=sys.stderr)
            return 2
    else:
        names = [n for n, c in REGISTRY.items() if c.suite == args.suite and args.arch in c.arches]
    if args.list:
        print("\n".join(names))
        return 0

    if args.inner:
        paths = {"ember": Path(args.ember), "kernel_dir": Path(args.kernel_dir),
                 "rootfs_dir": Path(args.rootfs_dir)}
        # The emulated host's /tmp is a tmpfs: artefacts and case scratch live there.
        stage = Path(tempfile.mkdtemp(prefix="ember-e2e-", dir="/tmp"))
        paths = harness.stage_artifacts(paths, stage)
        harness.run_inline(names, paths, Path(args.work), emulated=True,
                           results=Path(args.results), scratch=stage, arch=args.arch)
        return 0

    mode, why = harness.detect_mode()
    cross = harness.emulated_arch_reason(args.arch)
    if cross:
        mode, why = "emulated", cross
    log(f"mode: {mode} ({why}); guests: {args.arch}")
    t0 = time.monotonic()
    paths = harness.build_all(args.arch)
    work = harness.new_work_dir(args.suite)
    results = work / "results.jsonl"
    log(f"{len(names)} cases, work directory {work}")
    if mode == "direct":
        harness.run_inline(names, paths, work, emulated=False, results=results, arch=args.arch)
    else:
        modules = [str(Path(m).resolve()) for m in args.modules.split(",") if m]
        harness.run_emulated(names, paths, work, results, total_timeout=args.timeout,
                             echo_console=args.echo_console, modules=modules, arch=args.arch)
    got = harness.read_results(results)
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
