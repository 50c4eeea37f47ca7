#!/usr/bin/env python3
"""API benchmark: how soon a fresh ember answers on its socket, and how long requests take.

- exec -> API ready: the time from spawning `ember --api-sock S` (posix_spawn, from a
  monotonic timestamp taken just before) to the first `GET /` answered with 200, polled
  as fast as the client can; also ember's own figure for exec -> socket listening (it logs
  `exec to API ready: N us` at Info when given `--start-time-us`). Median/min/max of RUNS.
- Latency of `GET /` and `PUT /machine-config` on one keep-alive connection, REQUESTS of
  each after a warm-up: p50, p99, max.

No guest is started, so this runs on this machine directly whatever its /dev/kvm is.
ember is the build users run (tools/build.sh: release, static). With EMBER_BASELINE=PATH,
that other ember build is measured the same way, its exec -> API ready runs interleaved
with this build's, and the table has both; with FIRECRACKER=PATH, Firecracker too (its
seccomp filters on, as ember's are).
Usage: tools/bench/bench_api.py [RUNS] [REQUESTS]   (default 30 and 2000)"""

from __future__ import annotations

import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RUNS = int(sys.argv[1]) if len(sys.argv) > 1 else 30
REQUESTS = int(sys.argv[2]) if len(sys.argv) > 2 else 2000


def request(s: socket.socket, method: str, path: str, body: bytes = b"") -> int:
    head = f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n"
    s.sendall(head.encode() + body)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(4096)
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    head, rest = data.split(b"\r\n\r\n", 1)
    m = re.search(rb"Content-Length: (\d+)", head)
    need = int(m.group(1)) if m else 0
    while len(rest) < need:
        rest += s.recv(4096)
    return int(head.split()[1])


def ready_once(ember: str, sock: str) -> tuple[float, float | None]:
    """(ms from spawn to the first 200 to GET /, ember's own exec -> listening in ms)."""
    log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)
    t0 = time.monotonic()
    pid = os.posix_spawn(ember, [ember, "--api-sock", sock, "--level", "Info",
                                 "--log-path", log.name,
                                 "--start-time-us", str(int(t0 * 1_000_000))], os.environ)
    try:
        while True:
            s = socket.socket(socket.AF_UNIX)
            try:
                s.connect(sock)
                if request(s, "GET", "/") == 200:
                    took = (time.monotonic() - t0) * 1000
                    break
            except OSError:
                pass
            finally:
                s.close()
            if time.monotonic() - t0 > 10:
                raise RuntimeError(f"{ember} did not answer within 10 s")
    finally:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        # Firecracker refuses a socket path that exists; ember replaces it.
        Path(sock).unlink(missing_ok=True)
    m = re.search(r"exec to API ready: (\d+) us", Path(log.name).read_text())
    os.unlink(log.name)
    return took, (int(m.group(1)) / 1000 if m else None)


def latencies(sock: str, method: str, path: str, body: bytes) -> list[float]:
    s = socket.socket(socket.AF_UNIX)
    s.connect(sock)
    for _ in range(100):
        request(s, method, path, body)
    out = []
    for _ in range(REQUESTS):
        t = time.perf_counter()
        status = request(s, method, path, body)
        out.append((time.perf_counter() - t) * 1e6)
        if status not in (200, 204):
            raise RuntimeError(f"{method} {path}: {status}")
    s.close()
    return out


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))]


def measure_latencies(ember: str, sock: str) -> tuple[list[float], list[float]]:
    """GET / and PUT /machine-config latencies (us) on one keep-alive connection."""
    p = subprocess.Popen([ember, "--api-sock", sock], stdout=subprocess.DEVNULL)
    while not os.path.exists(sock):
        time.sleep(0.001)
    time.sleep(0.05)
    get = latencies(sock, "GET", "/", b"")
    put = latencies(sock, "PUT", "/machine-config", b'{"vcpu_count": 2, "mem_size_mib": 256}')
    p.kill()
    p.wait()
    Path(sock).unlink(missing_ok=True)
    return get, put


def main() -> int:
    out = subprocess.run([str(ROOT / "tools/build.sh"), "-q"], check=True, cwd=ROOT,
                         capture_output=True, text=True).stdout.strip()
    builds = {"ember": str(Path(out) / "ember")}
    if os.environ.get("EMBER_BASELINE"):
        builds["baseline"] = os.environ["EMBER_BASELINE"]
    if os.environ.get("FIRECRACKER"):
        builds["firecracker"] = os.environ["FIRECRACKER"]
    names = list(builds)
    work = Path(tempfile.mkdtemp(prefix="ember-bench-api-"))
    sock = str(work / "api.sock")
    client: dict[str, list[float]] = {n: [] for n in names}
    own: dict[str, list[float]] = {n: [] for n in names}
    for i in range(RUNS):
        for name in names[i % len(names):] + names[:i % len(names)]:
            c, o = ready_once(builds[name], sock)
            client[name].append(c)
            if o is not None:
                own[name].append(o)
    lat = {name: measure_latencies(builds[name], sock) for name in names}
    print(f"API benchmark on this machine ({RUNS} interleaved runs, {REQUESTS} requests)")
    for name in names:
        print(f"  {name}: {builds[name]}")
    print(f"{'metric':<52} {'build':<9} {'median':>9} {'min':>9} {'max':>9}")
    for name in names:
        xs = client[name]
        print(f"{'exec -> GET / answered (client), ms':<52} {name:<9} {statistics.median(xs):>9.2f} "
              f"{min(xs):>9.2f} {max(xs):>9.2f}")
    for name in names:
        xs = own[name]
        if xs:
            print(f"{'exec -> socket listening (ember log), ms':<52} {name:<9} "
                  f"{statistics.median(xs):>9.2f} {min(xs):>9.2f} {max(xs):>9.2f}")
    print(f"{'metric':<52} {'build':<9} {'p50':>9} {'p99':>9} {'max':>9}")
    for i, label in enumerate(("GET / latency, us", "PUT /machine-config latency, us")):
        for name in names:
            xs = lat[name][i]
            print(f"{label:<52} {name:<9} {pct(xs, .5):>9.1f} {pct(xs, .99):>9.1f} "
                  f"{max(xs):>9.1f}")
    for peer in ("baseline", "firecracker"):
        if peer in names:
            r = statistics.median(client["ember"]) / statistics.median(client[peer])
            print(f"ember/{peer} median exec -> GET / answered: {r:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
