"""Network benchmark: TCP throughput through ember's virtio-net against QEMU microvm's
`virtio-net-device` (tap backend, `vhost=off`: both VMMs move every packet in user space)
and, with FIRECRACKER=PATH, Firecracker's (the same configuration file as ember's), same
host, same kernel and initramfs, interleaved. Registered as the `bench_net` case of
the e2e harness (suite `bench`), like bench_blk.

Each run gets a network namespace of its own (framework.net.netns: deleted at the end of the
run, and with it the tap) holding a tap `tap0` with HOST_IP/24 and two one-off iperf3
servers (Debian's, port 5201 for guest -> host, 5202 for host -> guest). The VMM is
started inside the namespace (`ip netns exec`) on that tap; the guest (1 vCPU, MEM_MIB MiB)
configures eth0 from the kernel command line (`ip=GUEST_IP::HOST_IP:...`), mounts the bench
tools image (tools/bench/benchfs.py) read-only from a drive, and runs
`sh /mnt/bench_net.sh`: the same iperf3 from the image as the client, one TCP stream for
RUNTIME_S seconds each way (host -> guest with `-R`). The guest prints the totals of
iperf3's JSON report for each job on one console line.

A job's figure is iperf3's receiver throughput (bytes received over the receiver's own
time, in Mbit/s): guest -> host is timed by the host, host -> guest by the guest, whose
clock is checked against the host's from the two sides' durations of the same test.
Every job of a run stands alone: a job that fails or stalls (the guest stops it after
RUNTIME_S + 60 s) keeps its error, and the other job and the other VMM still run; the case
fails after printing the table if some VMM produced no figure at all. Whatever either VMM
printed on stderr is logged with its run, and so is a run that went wrong after its jobs
(a VMM that did not exit, or exited non-zero). So are, per run, the packet counters that
tell where frames were lost: the tap's (read in the namespace after the run) and the
guest's eth0 (printed by the guest after the jobs).
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

from framework.build import peer
from framework.net import GUEST_IP, HOST_IP, netns, tap
from framework.vm import VmProcess, guest_cmdline, start_ember, vm_config
from harness import CaseFailed, case, log

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchfs import tools_image  # noqa: E402  (tools/bench, beside this file)

RUNS = int(os.environ.get("EMBER_BENCH_RUNS", "3"))
RUNTIME_S = 10
MEM_MIB = 256
TAP = "tap0"
MAC = "06:00:ac:1e:00:02"
# (job name in bench_net.sh, iperf3 server port, row label)
JOBS = (("g2h", 5201, "guest -> host TCP, Mbit/s"),
        ("h2g", 5202, "host -> guest TCP, Mbit/s"))
# A run is a boot (5-30 s under emulation) and the two jobs (RUNTIME_S plus a few seconds
# each). Each job stops itself in the guest after RUNTIME_S + 60 s; a guest that has not
# finished after RUN_TIMEOUT_S is given up. The case's timeout allows every run about
# twice its usual time; it is also how long the harness waits before it takes the
# emulated host itself as hung (plus 90 s).
RUN_TIMEOUT_S = 2 * (RUNTIME_S + 60) + 120
CASE_TIMEOUT_S = 300 + RUNS * 3 * (2 * RUNTIME_S + 80)  # up to three VMMs
GUEST_ARGS = (f"ip={GUEST_IP}::{HOST_IP}:255.255.255.0::eth0:off "
              f'ember_cmd="mount -o ro $(findfs LABEL=ember-bench) /mnt && '
              f'sh /mnt/bench_net.sh {HOST_IP} {RUNTIME_S}"')


def _start_servers(ctx, ns: str, name: str) -> list[subprocess.Popen]:
    """One one-off iperf3 server per job in the namespace, each logging its per-second
    intervals to `<name>-iperf3-<job>.log` in the case's directory; returns once both
    listen."""
    servers = []
    for job, port, _ in JOBS:
        with open(ctx.work / f"{name}-iperf3-{job}.log", "w") as out:
            servers.append(subprocess.Popen(
                ["ip", "netns", "exec", ns, "iperf3", "-s", "-1", "-p", str(port),
                 "--forceflush"],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True))
    deadline = time.monotonic() + 30
    while True:
        ss = subprocess.run(["ip", "netns", "exec", ns, "ss", "-Hltn"], check=True,
                            capture_output=True, text=True).stdout
        if all(f":{port} " in ss for _, port, _ in JOBS):
            return servers
        if time.monotonic() > deadline or any(s.poll() is not None for s in servers):
            _stop(servers)
            raise CaseFailed(f"iperf3 servers not listening in {ns} after 30 s: {ss!r}")
        time.sleep(0.1)


def _stop(servers: list[subprocess.Popen]) -> None:
    """Kills the iperf3 servers still running (each its own process group) and reaps them."""
    for s in servers:
        if s.poll() is None:
            try:
                os.killpg(s.pid, 9)
            except ProcessLookupError:  # it exited just now
                pass
        s.wait(timeout=10)


def _tap_counters(ns: str) -> dict:
    """The tap's packet counters, from the host's side, as `tap_<rx|tx>_<counter>`: `tx`
    is towards the guest (the VMM reads it), `rx` from the guest; `tap_tx_dropped` counts
    frames the tap dropped because the VMM did not take them in time."""
    link = json.loads(subprocess.run(["ip", "-j", "-s", "-n", ns, "link", "show", TAP],
                                     check=True, capture_output=True, text=True).stdout)[0]
    st = link["stats64"]
    return {f"tap_{d}_{k}": st[d][k] for d in ("rx", "tx") for k in ("packets", "dropped")}


def _eth0_counters(vm: VmProcess) -> dict:
    """The guest's eth0 counters (its EMBER-NET-ETH0 line) as `eth0_<counter>`; empty if
    the guest did not get that far."""
    for line in vm.lines:
        if "EMBER-NET-ETH0 " in line:
            return {f"eth0_{k}": int(v) for k, v in re.findall(r"(\w+)=(\d+)", line)}
    return {}


def _start_ember(ctx, ns: str, name: str, tools: Path, binary: Path | None = None
                 ) -> VmProcess:
    """ember (or `binary`: Firecracker) in the namespace with the tools drive (read-only)
    and the tap."""
    cfg = vm_config(ctx, mem_mib=MEM_MIB, mode="run", extra_args=GUEST_ARGS)
    cfg["drives"] = [{"drive_id": "tools", "path_on_host": str(tools),
                      "is_root_device": False, "is_read_only": True}]
    cfg["network-interfaces"] = [{"iface_id": "eth0", "host_dev_name": TAP,
                                  "guest_mac": MAC}]
    return start_ember(ctx, cfg, name=name, pre=["ip", "netns", "exec", ns], binary=binary)


def _start_qemu(ctx, ns: str, name: str, tools: Path) -> VmProcess:
    """guest.start_qemu_microvm's command line plus the tools drive and the tap, each on a
    virtio-mmio transport; microvm adds the transports to the kernel command line."""
    argv = ["qemu-system-x86_64", "-M", "microvm,acpi=off", "-accel", "kvm", "-cpu", "host",
            "-smp", "1", "-m", f"{MEM_MIB}M", "-nodefaults", "-no-user-config",
            "-nographic", "-no-reboot", "-serial", "stdio",
            "-kernel", str(ctx.kernel_dir / "vmlinux"), "-initrd", str(ctx.initramfs),
            "-append", guest_cmdline(ctx, "run", extra=GUEST_ARGS, reboot="t"),
            "-drive", f"id=tools,file={tools},format=raw,if=none,readonly=on",
            "-device", "virtio-blk-device,drive=tools",
            "-netdev", f"tap,id=n0,ifname={TAP},script=no,downscript=no,vhost=off",
            "-device", f"virtio-net-device,netdev=n0,mac={MAC}"]
    return VmProcess(name, argv, ctx.work, pre=["ip", "netns", "exec", ns])


def _run_once(ctx, vmm: str, i: int, tools: Path) -> dict:
    """One guest running both jobs in a namespace of its own. Returns `jobs`: {job:
    figures (see _figures) or why it has none}, `failure`: what went wrong with the run
    after its jobs ("" if nothing did), `stderr`: what the VMM printed there, and `counters`:
    the tap's and the guest's eth0 packet counters over the run."""
    name = f"{vmm}-{i}"
    with netns("bench-net") as ns:
        tap(ns, TAP, f"{HOST_IP}/24")
        servers = _start_servers(ctx, ns, name)
        vm = None
        try:
            if vmm == "qemu":
                vm = _start_qemu(ctx, ns, name, tools)
            else:
                vm = _start_ember(ctx, ns, name, tools, binary=(
                    peer(ctx.ember, "firecracker") if vmm == "firecracker" else None))
            failure = ""
            try:
                vm.wait_for(r"EMBER-CMD-EXIT status=\d+", timeout=RUN_TIMEOUT_S)
                rc = vm.wait_exit(timeout=60)
                if rc != 0:
                    failure = f"{name} exited {rc} after the jobs\n{vm.tail(15)}"
            except CaseFailed as e:
                failure = str(e).strip()
            jobs = _jobs(vm)
            for job, _, _ in JOBS:
                jobs.setdefault(job, failure or f"no EMBER-NET-END job={job}\n{vm.tail(15)}")
            if failure in jobs.values():
                failure = ""  # told with the jobs it cost
            return {"jobs": jobs, "failure": failure, "stderr": vm.stderr().strip(),
                    "counters": _tap_counters(ns) | _eth0_counters(vm)}
        finally:
            if vm:
                vm.kill()
            _stop(servers)


def _jobs(vm: VmProcess) -> dict:
    """{job: figures or error} for every job whose EMBER-NET-END the guest printed."""
    out: dict = {}
    job, result, output = None, None, []
    for line in list(vm.lines):
        if (m := re.search(r"EMBER-NET-START job=(\w+)", line)):
            job, result, output = m.group(1), None, []
        elif "EMBER-NET-RESULT " in line:
            result = {k: float(v) for k, v in re.findall(r"([\w.]+)=([-+.\deE]+)", line)}
        elif (m := re.search(r"EMBER-NET-END job=(\w+) status=(\d+)", line)) and job:
            try:
                out[job] = _figures(job, result) if result else _error(output, m.group(2))
            except KeyError as e:  # a garbled console line
                out[job] = f"no {e} in the guest's EMBER-NET-RESULT line"
            job = None
        elif job:
            output.append(line)
    return out


def _figures(job: str, r: dict) -> dict:
    """From a job's EMBER-NET-RESULT fields: receiver Mbit/s, bytes received, the sender's
    TCP retransmissions, the guest's and the host's CPU use (iperf3's own figure, % of one
    CPU) and `clock`, the guest's duration of the test over the host's (about 1 when the
    guest's clock is honest)."""
    # The guest is the client: it sends in g2h and receives in h2g (-R).
    guest, host = ("sum_sent", "sum_received") if job == "g2h" else ("sum_received", "sum_sent")
    return {"mbps": r["sum_received.bits_per_second"] / 1e6,
            "bytes": int(r["sum_received.bytes"]),
            "retransmits": int(r.get("sum_sent.retransmits", 0)),
            "guest_cpu": r["cpu_utilization_percent.host_total"],
            "host_cpu": r["cpu_utilization_percent.remote_total"],
            "clock": r[f"{guest}.seconds"] / r[f"{host}.seconds"]}


def _error(output: list[str], status: str) -> str:
    """Why a job gave no figures: the `error` of iperf3's JSON report, else the end of
    what it printed."""
    text = "\n".join(output)
    try:
        error = json.loads(text[text.index("{"):text.rindex("}") + 1])["error"]
    except (ValueError, KeyError):
        error = repr(text.strip()[-300:])
    return f"iperf3 exited {status}: {error}"


def _log_text(title: str, text: str, last: int = 25) -> None:
    """Logs `title`, then the first line of `text` and at most its `last` last lines."""
    log(title)
    first, *rest = text.splitlines() or [""]
    log(f"  | {first}")
    if len(rest) > last:
        log(f"  | ... ({len(rest) - last} lines)")
    for line in rest[-last:]:
        log(f"  | {line}")


def _per_run(counters: list[dict], key: str) -> str:
    """One counter over the runs, `-` for a run that did not report it."""
    return "[" + " ".join(str(c.get(key, "-")) for c in counters) + "]"


def _stats(xs: list[float]) -> str:
    """median, min, max and how many runs gave a figure."""
    return f"{statistics.median(xs):9.1f} {min(xs):9.1f} {max(xs):9.1f} {len(xs):>4}"


@case("bench_net", timeout=CASE_TIMEOUT_S, suite="bench", arches=("x86_64",))
def _(ctx):
    tools = tools_image(ctx)
    vmms = ["ember", "qemu"]
    if peer(ctx.ember, "firecracker") is not None:
        vmms.insert(1, "firecracker")
    samples: dict = {v: {job: [] for job, _, _ in JOBS} for v in vmms}
    errors: dict = {v: {job: [] for job, _, _ in JOBS} for v in vmms}
    # Per VMM: [run, "failure" or "stderr", text] (see _run_once)
    notes: dict = {v: [] for v in vmms}
    counters: dict = {v: [] for v in vmms}  # per VMM: each run's packet counters
    for i in range(RUNS):
        # Rotate who goes first so drift in the host's load hits all alike.
        for vmm in vmms[i % len(vmms):] + vmms[:i % len(vmms)]:
            try:
                run = _run_once(ctx, vmm, i, tools)
            except Exception as e:  # a broken run must not hide the other VMMs' figures
                run = {"jobs": {job: str(e).strip() for job, _, _ in JOBS},
                       "failure": "", "stderr": "", "counters": {}}
            for job, r in run["jobs"].items():
                if isinstance(r, dict):
                    samples[vmm][job].append(r)
                else:
                    errors[vmm][job].append(f"run {i}: {r}")
                    log(f"{vmm} run {i} {job} failed: {r.splitlines()[0]}")
            counters[vmm].append(run["counters"])
            for what in ("failure", "stderr"):
                if run[what]:
                    notes[vmm].append([i, what, run[what]])
                    log(f"{vmm} run {i} {what}: {run[what].splitlines()[0]}")

    where = "emulated KVM host (QEMU TCG + nested SVM)" if ctx.emulated else "hardware KVM"
    log(f"network benchmark, {RUNS} interleaved runs each, {where}; guest: 1 vCPU, "
        f"{MEM_MIB} MiB, virtio-net on a tap in a namespace (QEMU: vhost=off); "
        f"iperf3, 1 TCP stream, {RUNTIME_S} s per direction")
    log(f"{'metric':48} {'median':>9} {'min':>9} {'max':>9} {'runs':>4}")
    names = {"ember": "ember", "qemu": "qemu microvm", "firecracker": "firecracker"}
    ratios: dict = {}
    for job, _, label in JOBS:
        for vmm in vmms:
            xs = [s["mbps"] for s in samples[vmm][job]]
            row = _stats(xs) if xs else "error: " + errors[vmm][job][0].splitlines()[0]
            log(f"{names[vmm] + ': ' + label:48} {row}")
        for other in vmms[1:]:
            if samples["ember"][job] and samples[other][job]:
                ratios.setdefault(other, {})[job] = (
                    statistics.median(s["mbps"] for s in samples["ember"][job]) /
                    statistics.median(s["mbps"] for s in samples[other][job]))
    for other, rs in ratios.items():
        log(f"ember/{other} medians (higher is better for ember): " +
            ", ".join(f"{job} {r:.2f}x" for job, r in rs.items()))
    for vmm in vmms:
        for job, _, _ in JOBS:
            if (got := samples[vmm][job]):
                med = {k: statistics.median(s[k] for s in got)
                       for k in ("retransmits", "guest_cpu", "host_cpu")}
                clocks = [s["clock"] for s in got]
                log(f"{vmm} {job}: medians: retransmits {med['retransmits']:.0f}, "
                    f"guest CPU {med['guest_cpu']:.0f}%, host iperf3 CPU "
                    f"{med['host_cpu']:.0f}%; guest clock / host clock "
                    f"{min(clocks):.3f}-{max(clocks):.3f}")
            if errors[vmm][job]:
                _log_text(f"{vmm} {job}: {len(errors[vmm][job])} of {RUNS} runs failed; "
                          "first error:", errors[vmm][job][0])
        c = counters[vmm]
        log(f"{vmm}: drops per run: tap towards the guest {_per_run(c, 'tap_tx_dropped')} of "
            f"{_per_run(c, 'tap_tx_packets')} frames, from the guest "
            f"{_per_run(c, 'tap_rx_dropped')} of {_per_run(c, 'tap_rx_packets')}; guest eth0 "
            f"rx_dropped {_per_run(c, 'eth0_rx_dropped')} (rx_length_errors "
            f"{_per_run(c, 'eth0_rx_length_errors')}) of {_per_run(c, 'eth0_rx_packets')} "
            f"packets, tx_dropped {_per_run(c, 'eth0_tx_dropped')}")
        for i, what, text in notes[vmm]:
            _log_text(f"{vmm} run {i}, {what}:", text)
    ctx.data(samples=samples, errors=errors, notes=notes, counters=counters, ratios=ratios)
    missing = [v for v in vmms if not any(samples[v].values())]
    if missing:
        raise CaseFailed("no figures for " + " and ".join(missing))
