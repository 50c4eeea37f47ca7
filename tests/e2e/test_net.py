"""Network cases (issue 4): guests on taps inside network namespaces the test creates and
removes. Each case leaves nothing behind: its namespace (and with it every tap and
bridge in it) is deleted, and the check at the end says so."""

from __future__ import annotations

import json
import subprocess

import pytest

from framework.common import EmulatedHostFault, expect
from framework.net import GUEST_IP, HOST_IP, netns_exec, sh, tap
from framework.vm import (BOOT_TIMEOUT_S, HEARTBEAT, READY, heartbeat, heartbeat_stopped,
                          run_ember_expecting_error, start_ember, vm_config, wait_or_stall)

pytestmark = pytest.mark.emulated_flaky


def net_vm(ctx, ns: str, tap_name: str, guest_ip: str, host_ip: str, cmd: str,
           name: str, mac: str = "06:00:ac:1e:00:02", mode: str = "run", mem_mib: int = 256,
           extra_flags: list[str] | None = None):
    ipcfg = f"ip={guest_ip}::{host_ip}:255.255.255.0::eth0:off"
    cfg = vm_config(ctx, mode=mode, mem_mib=mem_mib, extra_args=f'{ipcfg} ember_cmd="{cmd}"')
    cfg["network-interfaces"] = [{"iface_id": "eth0", "host_dev_name": tap_name,
                                  "guest_mac": mac}]
    return start_ember(ctx, cfg, name=name, pre=netns_exec(ns), extra_flags=extra_flags)


def test_net_ping_both_ways(ctx, netns):
    ns = netns
    tap(ns, "tap0", f"{HOST_IP}/24")
    # The heartbeat tells a network or console bug (it goes on) from the emulated host's
    # stall (the guest stops taking interrupts: its console stops too, seen once right after
    # the guest's ping had finished). Waits are longer than the heartbeat's 60 s of silence.
    vm = net_vm(ctx, ns, "tap0", GUEST_IP, HOST_IP,
                f"{HEARTBEAT}ping -c 3 -W 5 {HOST_IP} && echo GUEST-PING-OK; "
                "cat /sys/class/net/eth0/address; sleep 120",
                name="ping")
    vm.wait_for(READY, timeout=BOOT_TIMEOUT_S)
    wait_or_stall(ctx, vm, "GUEST-PING-OK", timeout=90)
    wait_or_stall(ctx, vm, "06:00:ac:1e:00:02", timeout=90)
    # busybox: the host needs no iputils.
    r = sh("ip", "netns", "exec", ns, "busybox", "ping", "-c", "3", "-W", "5", GUEST_IP, check=False)
    if r.returncode != 0:
        why = f"host could not ping the guest: {r.stdout}{r.stderr}\n{vm.tail()}"
        silent = heartbeat_stopped(vm, silent_s=15) if ctx.emulated else None
        if silent is not None:
            raise EmulatedHostFault(f"{why}\nthe guest's console heartbeat stopped too "
                                    f"({silent:.0f} s without one)")
        raise AssertionError(why)
    vm.kill()


def test_net_missing_tap_and_bad_mac_are_refused(ctx, netns):
    base = vm_config(ctx)
    ns = netns
    # A name that is taken by a device that is not a tap cannot be opened as one.
    cfg = dict(base, **{"network-interfaces": [{"iface_id": "e", "host_dev_name": "lo"}]})
    line = run_ember_expecting_error(ctx, cfg, pre=netns_exec(ns))
    expect('network interface "e"' in line and '"lo"' in line, line)
    for mac, needle in [("06:00:ac", "not a MAC address"), ("01:00:5e:00:00:01", "multicast")]:
        cfg = dict(base, **{"network-interfaces": [{"iface_id": "e", "host_dev_name": "t0",
                                                     "guest_mac": mac}]})
        line = run_ember_expecting_error(ctx, cfg)
        expect(needle in line, line)


# HEARTBEAT with the guest's view of its network on each beat: eth0's rx and tx packet
# counts and the virtio interrupt counts, so a stalled stream shows whether frames stopped
# arriving, interrupts stopped, or the guest stopped taking them.
NET_HEARTBEAT = heartbeat("$(cat /sys/class/net/eth0/statistics/rx_packets "
                          "/sys/class/net/eth0/statistics/tx_packets) "
                          "$(grep -i virtio /proc/interrupts)")


# The host end of the TCP case, run inside the namespace: send N random bytes to the guest,
# then receive N bytes from it, printing the hash of each stream. A stream that stops
# moving for two minutes fails the peer with how far it got.
HOST_PEER = r'''
import hashlib, os, socket, sys, time
n, guest, host = int(sys.argv[1]), sys.argv[2], sys.argv[3]
ls = socket.socket(); ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind((host, 5002)); ls.listen(1)
for _ in range(600):
    try:
        s = socket.create_connection((guest, 5001), timeout=5); break
    except OSError:
        time.sleep(0.5)
else:
    sys.exit("guest never listened on 5001")
s.settimeout(120); h = hashlib.sha256(); left = n
try:
    while left:
        b = os.urandom(min(left, 1 << 20)); s.sendall(b); h.update(b); left -= len(b)
except OSError as e:
    sys.exit(f"host -> guest stalled after {n - left} of {n} bytes: {e}")
s.close()
print("HOST-SENT", h.hexdigest(), flush=True)
ls.settimeout(900)
c, _ = ls.accept(); c.settimeout(120); h = hashlib.sha256(); left = n
try:
    while left:
        b = c.recv(min(left, 1 << 20))
        if not b: break
        h.update(b); left -= len(b)
except OSError as e:
    sys.exit(f"guest -> host stalled after {n - left} of {n} bytes: {e}")
c.close()
print("HOST-RECEIVED", h.hexdigest(), n - left, flush=True)
'''


def net_metrics(path) -> str:
    """ember's net counters (each line: the changes over its 60 s) from the last two lines
    of its metrics file, for a failure's report."""
    try:
        lines = path.read_text().strip().splitlines()[-2:]
        return "--- ember's net metrics, last 60 s periods ---\n" + "\n".join(
            json.dumps(json.loads(line).get("net")) for line in lines)
    except (OSError, ValueError) as e:
        return f"--- no ember metrics ({e}) ---"


@pytest.mark.timeout(1200)
def test_net_tcp_256mib_each_way_intact(ctx, netns):
    # The guest keeps each stream in tmpfs and hashes it apart from the transfer: what is
    # checked is the bytes that crossed, end to end.
    n = 256 << 20
    # A heartbeat on the console tells a stalled network (a bug) from a guest that stopped
    # taking interrupts at all (the emulated host's fault: the serial port stops too).
    guest_cmd = (f"{NET_HEARTBEAT}nc -l -p 5001 > /tmp/rx.bin; echo RX-HASH $(sha256sum /tmp/rx.bin); "
                 f"rm /tmp/rx.bin; head -c {n} /dev/urandom > /tmp/tx.bin; "
                 f"echo TX-HASH $(sha256sum /tmp/tx.bin); nc {HOST_IP} 5002 < /tmp/tx.bin")
    ns = netns
    tap(ns, "tap0", f"{HOST_IP}/24")
    # ember's own counters (a line each 60 s), for a stall's report.
    metrics = ctx.work / "tcp.metrics"
    vm = net_vm(ctx, ns, "tap0", GUEST_IP, HOST_IP, guest_cmd, name="tcp", mem_mib=768,
                extra_flags=["--metrics-path", str(metrics)])
    peer = subprocess.run(["ip", "netns", "exec", ns, "python3", "-c", HOST_PEER, str(n),
                           GUEST_IP, HOST_IP], capture_output=True, text=True, timeout=1100)
    out = peer.stdout
    if peer.returncode != 0:
        why = f"host peer failed: {peer.stderr.strip()}\n{vm.tail()}\n{net_metrics(metrics)}"
        silent = heartbeat_stopped(vm) if ctx.emulated else None
        if silent is not None:
            raise EmulatedHostFault(f"{why}\nthe guest's console heartbeat stopped too "
                                    f"({silent:.0f} s without one)")
        raise AssertionError(why)
    sent = out.split("HOST-SENT ")[1].split()[0]
    recv_hash, recv_len = out.split("HOST-RECEIVED ")[1].split()[:2]
    rx = vm.wait_for(r"RX-HASH ([0-9a-f]{64})", timeout=60).group(1)
    tx = vm.wait_for(r"TX-HASH ([0-9a-f]{64})", timeout=60).group(1)
    expect(rx == sent, f"host -> guest: sent {sent}, guest received {rx}")
    expect(recv_len == str(n), f"guest -> host: {recv_len} of {n} bytes arrived")
    expect(tx == recv_hash, f"guest -> host: guest sent {tx}, host received {recv_hash}")
    vm.wait_for(r"EMBER-CMD-EXIT status=0", timeout=60)
    expect(vm.wait_exit(timeout=60) == 0, f"ember did not exit 0\n{vm.tail()}")


def peer_cmd(peer_ip: str, marker: str) -> str:
    """A guest's command for the bridge case: wait (bounded) until the other guest, which
    boots at its own pace, answers once, then three pings in a row must get through."""
    return (f"{HEARTBEAT}i=0; while [ $i -lt 60 ] && ! ping -c 1 -W 2 {peer_ip} >/dev/null; "
            f"do i=$((i+1)); done; echo PEER-TRIES $i; "
            f"ping -c 3 -W 10 {peer_ip} && echo {marker}; "
            "cat /proc/net/arp /sys/class/net/eth0/statistics/rx_packets "
            "/sys/class/net/eth0/statistics/tx_packets; sleep 60")


@pytest.mark.timeout(500)
def test_net_two_guests_on_a_bridge(ctx, netns):
    a_ip, b_ip = "172.30.0.12", "172.30.0.13"
    ns = netns
    sh("ip", "-n", ns, "link", "add", "br0", "type", "bridge")
    sh("ip", "-n", ns, "link", "set", "br0", "up")
    for t in ("tapa", "tapb"):
        tap(ns, t)
        sh("ip", "-n", ns, "link", "set", t, "master", "br0")
    # Neither guest can know when the other is up (under emulation their boots can be a
    # minute apart), so each retries until its peer answers before the checked pings.
    a = net_vm(ctx, ns, "tapa", a_ip, HOST_IP, peer_cmd(b_ip, "A-REACHED-B"),
               name="guest-a", mac="06:00:ac:1e:00:12")
    b = net_vm(ctx, ns, "tapb", b_ip, HOST_IP, peer_cmd(a_ip, "B-REACHED-A"),
               name="guest-b", mac="06:00:ac:1e:00:13")
    a.wait_for(READY, timeout=BOOT_TIMEOUT_S)
    b.wait_for(READY, timeout=BOOT_TIMEOUT_S)
    wait_or_stall(ctx, a, "A-REACHED-B", timeout=120)
    wait_or_stall(ctx, b, "B-REACHED-A", timeout=60)
    a.kill()
    b.kill()
