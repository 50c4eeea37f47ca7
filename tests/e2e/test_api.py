"""API cases (issue 5): ember driven over its Unix socket by a real HTTP client
(Python's http.client on an AF_UNIX socket), the way Firecracker's SDKs drive it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time

import pytest

from framework.api import UnixHTTP, call, expect_status, start_api_ember
from framework.common import CaseFailed, EmulatedHostFault, expect
from framework.net import GUEST_IP, HOST_IP, netns_exec, tap
from framework.vm import BOOT_TIMEOUT_S, READY, VmProcess, default_kernel, guest_cmdline

pytestmark = pytest.mark.emulated_flaky


@pytest.mark.timeout(300)
def test_api_whole_life_start_pause_resume_patch_drive_metrics_ctrl_alt_del(ctx, netns):
    disk = ctx.work / "data.img"
    with open(disk, "wb") as f:
        f.truncate(16 << 20)
    metrics = ctx.work / "metrics.jsonl"
    # The guest writes 4 MiB to its data drive, pings the host, then ticks on the console
    # (0.2 s apart) until SendCtrlAltDel reboots it, which ends ember with status 0. While it ticks
    # it watches the drive's size: when it changes (PATCH /drives swapped the file), it
    # prints the new size and the first bytes read from the drive, and stops if they say
    # EMBER-STOP (how the aarch64 guest, which has no Ctrl-Alt-Del, is ended).
    cmd = ("dd if=/dev/urandom of=/dev/vda bs=1M count=4 conv=fsync 2>/dev/null && "
           f"echo WROTE-4MIB; ping -c 3 -W 5 {HOST_IP} >/dev/null && echo PINGED; "
           "old=$(cat /sys/block/vda/size); i=0; while [ $i -lt 1500 ]; do echo TICK $i; "
           "i=$((i+1)); sleep 0.2; s=$(cat /sys/block/vda/size); if [ $s != $old ]; then "
           "echo 3 > /proc/sys/vm/drop_caches; h=$(head -c 18 /dev/vda); echo NEWDISK size=$s head=$h; "
           "old=$s; case $h in EMBER-STOP*) break;; esac; fi; done")
    args = guest_cmdline(ctx, "run", f"ip={GUEST_IP}::{HOST_IP}:255.255.255.0::eth0:off "
                                     f'ember_cmd="{cmd}"')
    ns = netns
    tap(ns, "tap0", f"{HOST_IP}/24")
    vm, sock = start_api_ember(ctx, "api", pre=netns_exec(ns))
    code, info = call(sock, "GET", "/")
    expect(info["state"] == "Not started" and info["id"] == "api", f"GET /: {info}")
    expect_status(call(sock, "PUT", "/boot-source", {
        "kernel_image_path": str(ctx.kernel_dir / default_kernel(ctx)),
        "initrd_path": str(ctx.initramfs), "boot_args": args}), 204)
    expect_status(call(sock, "PUT", "/machine-config",
                       {"vcpu_count": 2, "mem_size_mib": 256}), 204)
    expect_status(call(sock, "PATCH", "/machine-config", {"vcpu_count": 1}), 204)
    code, mc = call(sock, "GET", "/machine-config")
    expect(mc["vcpu_count"] == 1 and mc["mem_size_mib"] == 256, f"machine-config: {mc}")
    expect_status(call(sock, "PUT", "/drives/data", {
        "drive_id": "data", "path_on_host": str(disk), "is_root_device": False,
        "is_read_only": False, "cache_type": "Writeback"}), 204)
    expect_status(call(sock, "PUT", "/network-interfaces/eth0", {
        "iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "06:00:ac:1e:00:02"}), 204)
    expect_status(call(sock, "PUT", "/metrics", {"metrics_path": str(metrics)}), 204)
    expect_status(call(sock, "PUT", "/actions", {"action_type": "InstanceStart"}), 204)
    vm.wait_for(READY, timeout=BOOT_TIMEOUT_S)
    expect(call(sock, "GET", "/")[1]["state"] == "Running", "state after start")
    # Pre-boot resources are refused now, and say why.
    expect_status(call(sock, "PUT", "/machine-config",
                       {"vcpu_count": 2, "mem_size_mib": 256}), 400, "pre-boot")
    expect_status(call(sock, "PUT", "/actions", {"action_type": "InstanceStart"}), 400,
                  "already")
    vm.wait_for("PINGED", timeout=120)

    def wait_tick(n: int) -> None:
        # The ticks are the guest's console heartbeat (one per 0.2 s): if they stop
        # while the guest runs, under emulation it is the emulated host's known stall.
        try:
            vm.wait_for(rf"TICK {n}\b", timeout=60)
        except CaseFailed as e:
            if ctx.emulated:
                raise EmulatedHostFault(f"{e}\nthe guest's console ticks stopped") from e
            raise

    wait_tick(3)
    # Pause: the console stops.
    expect_status(call(sock, "PATCH", "/vm", {"state": "Paused"}), 204)
    expect(call(sock, "GET", "/")[1]["state"] == "Paused", "state after pause")
    time.sleep(0.5)
    before = len(vm.lines)
    time.sleep(3)
    expect(len(vm.lines) == before,
           f"the console moved while paused: {vm.lines[before:]}")
    # Devices are quiet too: frames sent to a paused guest wait in the tap; the net
    # device takes none (its counters don't move between two lines taken while paused).
    expect_status(call(sock, "PUT", "/actions", {"action_type": "FlushMetrics"}), 204)
    subprocess.run(["ip", "netns", "exec", ns, "busybox", "ping", "-c", "3", "-W", "1",
                    GUEST_IP], capture_output=True, timeout=30)
    expect_status(call(sock, "PUT", "/actions", {"action_type": "FlushMetrics"}), 204)
    paused_line = json.loads(metrics.read_text().splitlines()[-1])
    expect(paused_line["net"]["rx_packets_count"] == 0 and
           paused_line["net"]["tx_packets_count"] == 0,
           f"the net device moved frames while paused: {paused_line['net']}")
    expect_status(call(sock, "PATCH", "/vm", {"state": "Resumed"}), 204)
    last = max(int(x.split()[1]) for x in vm.lines if x.startswith("TICK "))
    wait_tick(last + 2)
    # Metrics count the guest's traffic.
    expect_status(call(sock, "PUT", "/actions", {"action_type": "FlushMetrics"}), 204)
    lines = [json.loads(x) for x in metrics.read_text().splitlines()]
    expect(len(lines) >= 1, "no metrics line")
    total = lambda g, k: sum(x.get(g, {}).get(k, 0) for x in lines)
    expect(total("block_data", "write_bytes") >= 4 << 20,
           f"block writes {total('block_data', 'write_bytes')} < 4 MiB")
    expect(total("net", "tx_packets_count") >= 3 and total("net", "rx_packets_count") >= 3,
           f"net packets: {lines[-1].get('net')}")
    expect(total("api_server", "put_actions_count") >= 2, f"api: {lines[-1].get('api_server')}")
    expect(total("vcpu", "exit_mmio_write") > 0, f"vcpu: {lines[-1].get('vcpu')}")
    # PATCH /drives swaps the backing file under the running guest, which sees the new
    # capacity and the new file's bytes.
    swapped = ctx.work / "swapped.img"
    with open(swapped, "wb") as f:
        f.write(b"EMBER-SWAPPED-DISK")
        f.truncate(32 << 20)
    expect_status(call(sock, "PATCH", "/drives/data",
                       {"drive_id": "data", "path_on_host": str(swapped)}), 204)
    vm.wait_for(r"NEWDISK size=65536 head=EMBER-SWAPPED-DISK", timeout=60)
    expect_status(call(sock, "PATCH", "/drives/data",
                       {"drive_id": "data", "path_on_host": str(ctx.work / "missing")}),
                  400, "missing")
    expect_status(call(sock, "PATCH", "/drives/nope",
                       {"drive_id": "nope", "path_on_host": str(swapped)}), 400, "no drive")
    code, cfg = call(sock, "GET", "/vm/config")
    expect(cfg["drives"][0]["path_on_host"] == str(swapped) and
           cfg["network-interfaces"][0]["host_dev_name"] == "tap0", f"vm/config: {cfg}")
    if ctx.arch == "aarch64":
        # No keyboard controller on Arm: refused with the reason. The guest is ended
        # through its drive instead and reboots (PSCI), which ends ember with 0.
        expect_status(call(sock, "PUT", "/actions", {"action_type": "SendCtrlAltDel"}),
                      400, "no keyboard controller")
        stop = ctx.work / "stop.img"
        with open(stop, "wb") as f:
            f.write(b"EMBER-STOP".ljust(18, b"-"))
            f.truncate(48 << 20)
        expect_status(call(sock, "PATCH", "/drives/data",
                           {"drive_id": "data", "path_on_host": str(stop)}), 204)
    else:
        # Ctrl-Alt-Del through the keyboard controller: the guest reboots, ember exits
        # 0, and then nobody answers on the socket.
        expect_status(call(sock, "PUT", "/actions", {"action_type": "SendCtrlAltDel"}), 204)
    expect(vm.wait_exit(timeout=120) == 0, f"ember did not exit 0\n{vm.tail()}")
    try:
        call(sock, "GET", "/")
        raise AssertionError("the API answered after the guest had exited")
    except OSError:
        pass


@pytest.mark.timeout(240)
def test_api_bad_input_gets_clear_errors_and_the_server_keeps_serving(ctx):
    vm, sock = start_api_ember(ctx, "bad", flags=["--http-api-max-payload-size", "1000"])
    cases = [
        ("PUT", "/machine-config", b'{"vcpu_count": 2,', 400, "EOF"),
        ("PUT", "/machine-config", b'{"vcpu_count": "two", "mem_size_mib": 128}', 400, "vcpu_count"),
        ("PUT", "/machine-config", b'{"vcpu_count": 1, "mem_size_mib": 128, "x": 1}', 400, "unknown field"),
        ("PUT", "/machine-config", b'{"vcpu_count": -1, "mem_size_mib": 128}', 400, "vcpu_count"),
        ("PUT", "/machine-config", b'{"vcpu_count": 1, "mem_size_mib": 1e30}', 400, "mem_size_mib"),
        ("PUT", "/machine-config", b'{"vcpu_count": 1, "mem_size_mib": 18446744073709551616}', 400, "mem_size_mib"),
        ("PUT", "/machine-config", b'{"vcpu_count": 64, "mem_size_mib": 128}', 400, "between 1 and 32"),
        ("PUT", "/machine-config", b'', 400, "JSON body"),
        ("PUT", "/boot-source", b'[]', 400, "expected struct"),
        ("PUT", "/drives/a", b'{"drive_id": "b", "path_on_host": "/x", "is_root_device": false}', 400, "does not match"),
        ("PUT", "/actions", b'{"action_type": "Explode"}', 400, "unknown action_type"),
        ("PUT", "/actions", b'{"action_type": "FlushMetrics"}', 400, "metrics"),
        ("PUT", "/actions", b'{"action_type": "InstanceStart"}', 400, "boot source"),
        ("PATCH", "/vm", b'{"state": "Paused"}', 400, "not been started"),
        ("PUT", "/actions", b'{"action_type": "SendCtrlAltDel"}', 400, "not been started"),
        ("PATCH", "/drives/x", b'{"drive_id": "x", "path_on_host": "/y"}', 400, "running guest"),
        ("PUT", "/nowhere", b'{}', 400, "invalid request path"),
        ("GET", "/actions", None, 405, "use PUT"),
        ("PUT", "/cpu-config", b'{}', 400, "not supported"),
        ("PUT", "/mmds/config", b'{"network_interfaces": ["nope"]}', 400, "not configured"),
        ("PATCH", "/mmds", b'[1]', 400, "object"),
        ("PUT", "/vsock", b'{"guest_cid": 3}', 400, "uds_path"),
        ("PUT", "/vsock", b'{"guest_cid": 1, "uds_path": "/v"}', 400, "at least 3"),
        ("PUT", "/entropy", b'{"rate_limiter": {}}', 400, "rate_limiter is not supported"),
        ("PUT", "/balloon", b'{"amount_mib": 1}', 400, "deflate_on_oom"),
        ("GET", "/balloon/statistics", None, 400, "not been started"),
        ("PATCH", "/balloon", b'{"amount_mib": 1}', 400, "running guest"),
        ("PUT", "/boot-source", b'{"kernel_image_path": "/k", "x": "' + b"a" * 2000 + b'"}', 400, "larger than the limit"),
    ]
    for method, path, raw, status, needle in cases:
        try:
            expect_status(call(sock, method, path, raw=raw), status, needle)
        except AssertionError as e:
            raise AssertionError(f"{method} {path} {raw[:60] if raw else raw!r}: {e}")
        expect(call(sock, "GET", "/")[0] == 200, f"not serving after {method} {path}")
    # A header flood: refused, and the server goes on.
    s = socket.socket(socket.AF_UNIX)
    s.connect(sock)
    s.sendall(b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(100)) + b"\r\n")
    reply = s.recv(4096).decode(errors="replace")
    s.close()
    expect(reply.startswith("HTTP/1.1 400") and "headers" in reply, f"header flood: {reply!r}")
    # A client that sends half a request and stalls does not hold up another.
    stall = socket.socket(socket.AF_UNIX)
    stall.connect(sock)
    stall.sendall(b"PUT /machine-config HTTP/1.1\r\nContent-Length: 100\r\n\r\n{\"vcpu")
    t0 = time.monotonic()
    expect(call(sock, "GET", "/")[0] == 200, "blocked by a stalled client")
    expect(time.monotonic() - t0 < 10, "a stalled client delayed another by 10 s")
    # 1000 sequential requests on fresh connections: no descriptor leak.
    fds = lambda: len(os.listdir(f"/proc/{vm.proc.pid}/fd"))
    before = fds()
    for i in range(1000):
        expect(call(sock, "GET", "/version")[0] == 200, f"request {i} failed")
    expect(fds() <= before + 1, f"descriptors grew from {before} to {fds()}")
    # And 200 on one keep-alive connection.
    c = UnixHTTP(sock)
    for i in range(200):
        expect(call(sock, "GET", "/", conn=c)[0] == 200, f"keep-alive request {i} failed")
    c.close()
    stall.close()
    expect(vm.proc.poll() is None, "ember exited")
    vm.kill()


def test_api_half_sent_requests_time_out_and_the_owner_gets_in(ctx):
    vm, sock = start_api_ember(ctx, "slots")
    slow = []
    for _ in range(64):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(sock)
        s.sendall(b"PUT /machine-config HTTP/1.1\r\nContent-Le")
        slow.append(s)
    # Every slot holds half a request; within ember's 10 s request timeout they are cut
    # off with a 408, and the owner's request is answered.
    t0 = time.monotonic()
    while True:
        try:
            code, info = call(sock, "GET", "/")
            if code == 200:
                break
        except OSError:
            pass
        expect(time.monotonic() - t0 < 60, "the owner never got a slot back")
        time.sleep(0.5)
    expect(info["state"] == "Not started", f"GET /: {info}")
    s = slow[0]
    s.settimeout(10)
    answer = s.recv(4096).decode(errors="replace")
    expect(answer.startswith("HTTP/1.1 408") and "did not arrive whole" in answer,
           f"a half-sent request got {answer!r}")
    for s in slow:
        s.close()
    vm.kill()


def test_api_socket_and_flags(ctx):
    # A stale socket file is replaced; the socket is 0600.
    stale = ctx.work / "stale.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(stale))
    s.close()
    vm = VmProcess("stale", [str(ctx.ember), "--api-sock", str(stale)], ctx.work)
    deadline = time.monotonic() + 20
    while True:
        try:
            if call(str(stale), "GET", "/version")[0] == 200:
                break
        except OSError:
            pass
        expect(time.monotonic() < deadline, f"no API on the stale path\n{vm.tail()}")
        time.sleep(0.05)
    expect(oct(os.stat(stale).st_mode & 0o777) == "0o600", "socket mode is not 0600")
    vm.kill()
    # A regular file in the way is not removed.
    plain = ctx.work / "plain"
    plain.write_text("keep me")
    import subprocess
    r = subprocess.run([str(ctx.ember), "--api-sock", str(plain)], capture_output=True,
                       text=True, timeout=30)
    expect(r.returncode != 0 and "not a socket" in r.stderr, f"plain file: {r.stderr!r}")
    expect(plain.read_text() == "keep me", "the file in the way was touched")
    # Flags ember does not implement are refused by name.
    for flag in (["--boot-timer"], ["--enable-pci"]):
        r = subprocess.run([str(ctx.ember), "--api-sock", str(ctx.work / "f.sock")] + flag,
                           capture_output=True, text=True, timeout=30)
        expect(r.returncode != 0 and flag[0] in r.stderr and "not supported" in r.stderr,
               f"{flag}: {r.stderr!r}")
    r = subprocess.run([str(ctx.ember), "--version"], capture_output=True, text=True, timeout=30)
    expect(r.returncode == 0 and "ember" in r.stdout, f"--version: {r.stdout!r}")
