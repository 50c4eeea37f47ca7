"""Guest services benchmark (issue 19): vsock stream throughput host -> guest and guest ->
host, and MMDS request latency from the guest, for ember and, with FIRECRACKER=PATH
(x86_64), Firecracker, in interleaved rounds with the same guest (the ext4 test image,
1 vCPU, 256 MiB, its tools `vsock` and `httplat`) and the same configuration keys
(`vsock`, `mmds-config` V1 on `eth0`, data from `--metadata`). Per round and VMM: the host
sends N MiB to the guest's listener through `CONNECT 5000` (timed from the `OK` to the
guest's byte count on its console); the guest sends N MiB to `<uds>_6000` (timed by the
host from accept to end of stream); then the guest times 1000 GETs of
`/latest/meta-data/instance-id`, each on a new TCP connection, and prints p50/p99. QEMU's
vhost-vsock-device needs the emulated host's `vhost_vsock` module, which it does not
have: it is left out and said so, and the same streams over virtio-net TCP (busybox `nc`
on the same guest, to and from the host's tap address) are measured beside vsock instead. Prints medians and ember against Firecracker; no
pass/fail. Registered as the `bench_services` case (suite `bench`)."""

from __future__ import annotations

import json
import os
import socket
import statistics
import time

from framework.build import peer
from framework.common import CaseFailed
from framework.net import GUEST_IP, HOST_IP, in_netns, netns, netns_exec, tap
from framework.vm import READY, VmProcess, drive, vm_config
from harness import ALL_ARCHES, case, log

RUNS = int(os.environ.get("EMBER_BENCH_RUNS", "3"))
MIB = 1 << 20
N_MIB = int(os.environ.get("EMBER_BENCH_VSOCK_MIB", "64"))
REQUESTS = 1000
METADATA = {"latest": {"meta-data": {"instance-id": "i-0123456789abcdef0"}}}
# No double quotes: the kernel command line cannot carry them inside ember_cmd.
# The same streams over virtio-net TCP (busybox nc) are the yardstick the issue asks for
# where QEMU's vhost-vsock-device cannot run.
GUEST = (f"vsock listen 5000 </dev/null | wc -c | sed s/^/RX-BYTES-/; "
         "nc -l -p 5001 </dev/null | wc -c | sed s/^/TCP-RX-BYTES-/; "
         "ip route add 169.254.169.254 dev eth0; "
         f"httplat 169.254.169.254 80 /latest/meta-data/instance-id {REQUESTS}; "
         f"head -c {N_MIB * MIB} /dev/zero | vsock connect 2 6000 >/dev/null; "
         f"head -c {N_MIB * MIB} /dev/zero | nc {HOST_IP} 6001 >/dev/null; sleep 600")
ROWS = (("h2g_mib_s", "vsock host -> guest (MiB/s)"),
        ("g2h_mib_s", "vsock guest -> host (MiB/s)"),
        ("tcp_h2g_mib_s", "virtio-net TCP host -> guest (MiB/s)"),
        ("tcp_g2h_mib_s", "virtio-net TCP guest -> host (MiB/s)"),
        ("mmds_p50_us", "MMDS GET, new connection: p50 (us)"),
        ("mmds_p99_us", "MMDS GET, new connection: p99 (us)"))


def _binary(ctx, vmm: str) -> str:
    return str(ctx.ember if vmm == "ember" else peer(ctx.ember, "firecracker"))


def _round(ctx, vmm: str, i: int, ns: str, attempt: int = 1) -> dict:
    name = f"{vmm}-svc-{i}-{attempt}"
    d = ctx.work / name
    d.mkdir(exist_ok=True)
    uds = str(d / "v.sock")
    cfg = vm_config(ctx, initrd=False, mode="run", mem_mib=256, extra_args=(
        f'ip={GUEST_IP}::{HOST_IP}:255.255.255.0::eth0:off ember_cmd="{GUEST}"'))
    cfg["drives"] = [drive("rootfs", ctx.rootfs_dir / "rootfs.ext4", root=True, ro=True)]
    cfg["network-interfaces"] = [{"iface_id": "eth0", "host_dev_name": "tap0",
                                  "guest_mac": "06:00:ac:1e:00:02"}]
    cfg["vsock"] = {"guest_cid": 3, "uds_path": uds}
    cfg["mmds-config"] = {"version": "V1", "network_interfaces": ["eth0"]}
    (d / "vm.json").write_text(json.dumps(cfg))
    (d / "meta.json").write_text(json.dumps(METADATA))
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    if os.path.exists(f"{uds}_6000"):
        os.unlink(f"{uds}_6000")
    listener.bind(f"{uds}_6000")
    listener.listen(1)
    # The guest connects as soon as the step before ends (the MMDS probe's 1000 requests
    # for the first, the first stream for the second).
    listener.settimeout(300)
    with in_netns(ns):
        tcp_listener = socket.create_server((HOST_IP, 6001))
    tcp_listener.settimeout(120)
    vm = VmProcess(name, [_binary(ctx, vmm), "--no-api", "--config-file", str(d / "vm.json"),
                          "--metadata", str(d / "meta.json")], ctx.work, pre=netns_exec(ns))
    out: dict = {}
    try:
        vm.wait_for(READY, timeout=300)
        out["h2g_mib_s"] = _to_guest(vm, _connect(vm, uds, 5000), "RX-BYTES")
        out["tcp_h2g_mib_s"] = _to_guest(vm, _tcp_connect(vm, ns, 5001), "TCP-RX-BYTES")
        m = vm.wait_for(r"HTTPLAT n=(\d+) ok=(\d+) p50_us=(\d+) p99_us=(\d+)", timeout=600)
        if m.group(1) != m.group(2):
            raise CaseFailed(f"{name}: {m.group(2)} of {m.group(1)} MMDS requests answered 200")
        out["mmds_p50_us"], out["mmds_p99_us"] = int(m.group(3)), int(m.group(4))
        # Last, in the guest's order: a stream that stalls (the guest's script waits on
        # it) costs only its own row and the ones after it.
        if _from_guest(name, listener, "g2h", out):
            _from_guest(name, tcp_listener, "tcp_g2h", out)
    except (OSError, ValueError) as e:
        raise CaseFailed(f"{name}: {e!r}\n{vm.tail()}")
    finally:
        vm.kill()
        listener.close()
        tcp_listener.close()
    return out


def _from_guest(name: str, listener: socket.socket, key: str, out: dict) -> bool:
    """Takes the guest's N MiB stream on `listener`: `out[key + "_mib_s"]`, timed to its
    last byte, or `out[key + "_stalled_at_mib"]` after 120 s without a byte. Returns
    whether the stream completed."""
    try:
        c, _ = listener.accept()
    except TimeoutError:
        out[f"{key}_stalled_at_mib"] = 0.0
        log(f"{name}: {key}: the guest never connected")
        return False
    c.settimeout(120)
    t0, got, want = time.monotonic(), 0, N_MIB * MIB
    try:
        while got < want and (b := c.recv(MIB)):
            got += len(b)
    except TimeoutError:
        out[f"{key}_stalled_at_mib"] = got / MIB
        log(f"{name}: {key} stalled after {got / MIB:.1f} of {N_MIB} MiB")
    else:
        if got < want:
            # Seen with both VMMs under emulation; not yet explained.
            out[f"{key}_short_at_mib"] = got / MIB
            log(f"{name}: {key} ended (EOF) after {got / MIB:.2f} of {N_MIB} MiB")
    if got == want:
        # Timed to the last byte: the close that follows is another matter (seen:
        # Firecracker's host end gets every byte but no EOF within 120 s).
        out[f"{key}_mib_s"] = N_MIB / (time.monotonic() - t0)
        c.settimeout(10)
        try:
            if c.recv(1) != b"":
                raise CaseFailed(f"{name}: the guest sent more than {N_MIB} MiB")
        except TimeoutError:
            out[f"{key}_no_eof"] = True
            log(f"{name}: {key}: every byte arrived, but no EOF within 10 s")
    c.close()
    return got == want


def _to_guest(vm: VmProcess, s: socket.socket, marker: str) -> float:
    """Sends N MiB on `s` and closes it; MiB/s to the guest's `<marker>-<count>` line."""
    chunk = bytes(MIB)
    t0 = time.monotonic()
    for _ in range(N_MIB):
        s.sendall(chunk)
    s.shutdown(socket.SHUT_WR)
    m = vm.wait_for(rf"(?<![A-Z-]){marker}-(\d+)", timeout=600)
    s.close()
    if int(m.group(1)) != N_MIB * MIB:
        raise CaseFailed(f"{vm.name}: the guest got {m.group(1)} of {N_MIB * MIB} bytes "
                         f"({marker})")
    return N_MIB / (vm.matched_at - t0)


def _tcp_connect(vm: VmProcess, ns: str, port: int) -> socket.socket:
    """A TCP stream to the guest's `port` (in namespace `ns`) once its listener is up."""
    deadline = time.monotonic() + 120
    while True:
        try:
            with in_netns(ns):
                return socket.create_connection((GUEST_IP, port), timeout=30)
        except OSError:
            if vm.proc.poll() is not None or time.monotonic() > deadline:
                raise CaseFailed(f"{vm.name}: the guest never listened on TCP {port}\n"
                                 f"{vm.tail()}")
            time.sleep(0.2)


def _connect(vm: VmProcess, uds: str, port: int) -> socket.socket:
    """A stream to the guest's `port` once its listener answers."""
    deadline = time.monotonic() + 120
    while True:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(60)
        try:
            s.connect(uds)
            s.sendall(f"CONNECT {port}\n".encode())
            line = b""
            while not line.endswith(b"\n") and (b := s.recv(1)):
                line += b
            if line.startswith(b"OK "):
                return s
        except OSError:
            pass
        s.close()
        if vm.proc.poll() is not None or time.monotonic() > deadline:
            raise CaseFailed(f"{vm.name}: the guest never accepted on {port}\n{vm.tail()}")
        time.sleep(0.2)


@case("bench_services", timeout=3600, suite="bench", arches=ALL_ARCHES)
def _(ctx):
    vmms = ["ember"]
    if ctx.arch == "x86_64" and peer(ctx.ember, "firecracker") is not None:
        vmms.append("firecracker")
    samples: dict[str, list[dict]] = {v: [] for v in vmms}
    with netns("svc") as ns:
        tap(ns, "tap0", f"{HOST_IP}/24")
        for i in range(RUNS):
            for v in vmms[i % len(vmms):] + vmms[:i % len(vmms)]:
                try:
                    samples[v].append(_round(ctx, v, i, ns))
                except CaseFailed as e:
                    if not ctx.emulated:
                        raise
                    # The emulated host's own faults kill a guest now and then: once more.
                    log(f"{v} run {i}: {str(e).splitlines()[0]}; once more")
                    samples[v].append(_round(ctx, v, i, ns, attempt=2))

    def med(v, key):
        xs = [s[key] for s in samples[v] if key in s]
        return statistics.median(xs) if xs else float("nan")

    where = "hardware KVM" if not ctx.emulated else "emulated KVM host"
    others = [v for v in vmms if v != "ember"]
    log(f"guest services benchmark, {RUNS} interleaved rounds, {where}; guest: ext4 root, "
        f"1 vCPU, 256 MiB; vsock {N_MIB} MiB each way; MMDS {REQUESTS} GETs")
    log(f"{'median':40}" + "".join(f"{v:>14}" for v in vmms)
        + "".join(f"{'ember/' + v:>19}" for v in others))
    for v in vmms:
        for key, what in (("g2h", "vsock guest -> host"), ("tcp_g2h", "TCP guest -> host")):
            stalls = [s[f"{key}_stalled_at_mib"] for s in samples[v]
                      if f"{key}_stalled_at_mib" in s]
            if stalls:
                log(f"{v}: {what} stalled in {len(stalls)} of {len(samples[v])} rounds (after "
                    f"{', '.join(f'{x:.1f}' for x in stalls)} MiB; 120 s without a byte)")
            short = [s[f"{key}_short_at_mib"] for s in samples[v]
                     if f"{key}_short_at_mib" in s]
            if short:
                log(f"{v}: {what} ended early (EOF) in {len(short)} of {len(samples[v])} "
                    f"rounds (after {', '.join(f'{x:.2f}' for x in short)} MiB)")
            no_eof = sum(1 for s in samples[v] if s.get(f"{key}_no_eof"))
            if no_eof:
                log(f"{v}: {what}: every byte but no EOF within 10 s in {no_eof} of "
                    f"{len(samples[v])} rounds (the row is timed to the last byte)")
    for key, what in ROWS:
        cells = "".join(f"{med(v, key):14.1f}" for v in vmms)
        ratios = "".join(f"{med('ember', key) / med(v, key):18.2f}x" for v in others)
        log(f"{what:40}{cells}{ratios}")
    log("QEMU's vhost-vsock-device: not measured (the emulated host has no vhost_vsock "
        "module); the virtio-net TCP rows are the same streams on the same guest instead")
    ctx.data(samples=samples)
