"""Snapshots (issue 18): a guest paused, saved with PUT /snapshot/create, killed, and loaded
into a new ember with PUT /snapshot/load continues where it was: its counter, the lines it
wrote to its drive, its network (on a new tap), two clones of one snapshot at once sharing
the memory they did not write, and a Diff snapshot applied on its base. Every bad load
gets a 400 that names what is wrong, and the VMM keeps serving its API."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from framework.api import call, expect_status, start_api_ember
from framework.common import expect
from framework.disk import MIB, sparse_file
from framework.net import GUEST_IP, HOST_IP, netns_exec, sh, tap
from framework.net import netns as new_netns
from framework.vm import BOOT_TIMEOUT_S, READY, VmProcess, vm_config

pytestmark = pytest.mark.emulated_flaky

# The guest's counter: a console line and a 512-byte record on its data drive per tick.
COUNTER = ("i=0; while :; do echo LINE-$i | dd of=/dev/vda bs=512 seek=$i conv=sync,fsync "
           "2>/dev/null; echo COUNT $i; i=$((i+1)); sleep 0.2; done")


def api_ember(ctx, cfg: dict, name: str, pre: list[str] | None = None) -> tuple[VmProcess, str]:
    """ember booting `cfg` (a configuration file) and serving its API too."""
    path = ctx.work / f"{name}.json"
    path.write_text(json.dumps(cfg, indent=1))
    sock = str(ctx.work / f"{name}.sock")
    vm = VmProcess(name, [str(ctx.ember), "--api-sock", sock, "--id", name,
                          "--config-file", str(path)], ctx.work, pre=pre)
    deadline = time.monotonic() + 60
    while True:
        try:
            if call(sock, "GET", "/")[0] == 200:
                return vm, sock
        except OSError:
            pass
        expect(vm.proc.poll() is None and time.monotonic() < deadline,
               f"{name}: the API never answered\n{vm.tail()}")
        time.sleep(0.05)


def last_count(vm: VmProcess) -> int:
    counts = [int(m.group(1)) for l in list(vm.lines) if (m := re.search(r"COUNT (\d+)", l))]
    return counts[-1] if counts else -1


def pause_and_snapshot(sock: str, snap: Path, mem: Path, kind: str = "Full") -> None:
    expect_status(call(sock, "PATCH", "/vm", {"state": "Paused"}), 204)
    expect_status(call(sock, "PUT", "/snapshot/create", {
        "snapshot_type": kind, "snapshot_path": str(snap), "mem_file_path": str(mem)}), 204)


def load_body(snap: Path, mem: Path, **extra) -> dict:
    body = {"snapshot_path": str(snap),
            "mem_backend": {"backend_type": "File", "backend_path": str(mem)}}
    body.update(extra)
    return body


def records(disk: Path, upto: int) -> list[str]:
    data = disk.read_bytes()
    return [data[i * 512:(i + 1) * 512].rstrip(b"\0").decode(errors="replace").strip()
            for i in range(upto + 1)]


@pytest.mark.timeout(420)
def test_snapshot_restore_continues_and_bad_loads_fail(ctx):
    disk = ctx.work / "data.img"
    sparse_file(disk, 16 * MIB)
    cfg = vm_config(ctx, vcpus=2, mode="run", extra_args=f'ember_cmd="{COUNTER}"')
    cfg["drives"] = [{"drive_id": "data", "path_on_host": str(disk), "is_root_device": False,
                      "is_read_only": False}]
    vm, sock = api_ember(ctx, cfg, "orig")
    vm.wait_for(READY, timeout=BOOT_TIMEOUT_S)
    vm.wait_for(r"COUNT 5\b", timeout=120)
    # Bad creates first: the guest is running, and paths must be given.
    expect_status(call(sock, "PUT", "/snapshot/create", {
        "snapshot_path": str(ctx.work / "x"), "mem_file_path": str(ctx.work / "y")}), 400,
        "must be paused")
    snap, mem = ctx.work / "vm.snap", ctx.work / "vm.mem"
    pause_and_snapshot(sock, snap, mem)
    time.sleep(0.5)
    n = last_count(vm)
    expect(n >= 5, f"no count before the snapshot\n{vm.tail()}")
    vm.kill()
    expect(mem.stat().st_size == 128 * MIB, f"memory file is {mem.stat().st_size} bytes")
    expect(mem.stat().st_blocks * 512 < 128 * MIB, "the memory file is not sparse")

    new, nsock = start_api_ember(ctx, "restored")
    # Nothing started yet: create has nothing to save.
    expect_status(call(nsock, "PUT", "/snapshot/create", {
        "snapshot_path": str(snap), "mem_file_path": str(mem)}), 400, "not been started")
    bad = ctx.work / "bad.snap"
    good = snap.read_bytes()
    cases = []
    bad_missing = load_body(ctx.work / "missing.snap", mem)
    cases.append((bad_missing, "missing.snap"))
    bad.write_bytes(good[:len(good) // 2])
    cases.append((load_body(bad, mem), "truncated"))
    flipped = bytearray(good)
    flipped[len(good) // 3] ^= 0x10
    (ctx.work / "flipped.snap").write_bytes(bytes(flipped))
    cases.append((load_body(ctx.work / "flipped.snap", mem), "checksum mismatch"))
    other = bytearray(good)
    other[:8] = b"EMBRa64\x01" if ctx.arch == "x86_64" else b"EMBRx86\x01"
    (ctx.work / "other.snap").write_bytes(bytes(other))
    cases.append((load_body(ctx.work / "other.snap", mem), "this ember runs"))
    newer = bytearray(good)
    newer[8:12] = (99).to_bytes(4, "little")
    (ctx.work / "newer.snap").write_bytes(bytes(newer))
    cases.append((load_body(ctx.work / "newer.snap", mem), "format version 99"))
    (ctx.work / "short.mem").write_bytes(b"\0" * 4096)
    cases.append((load_body(snap, ctx.work / "short.mem"), "bytes of RAM"))
    cases.append(({"snapshot_path": str(snap), "mem_backend": {
        "backend_type": "Uffd", "backend_path": "/x"}}, "Uffd"))
    cases.append(({"snapshot_path": str(snap)}, "mem_backend"))
    cases.append((load_body(snap, mem, network_overrides=[
        {"iface_id": "nope", "host_dev_name": "tap9"}]), "no interface"))
    for body, needle in cases:
        expect_status(call(nsock, "PUT", "/snapshot/load", body), 400, needle)
        expect(call(nsock, "GET", "/")[0] == 200, f"the API stopped after a bad load ({needle})")
    # A missing drive file is named; once it is back, the same ember loads.
    moved = ctx.work / "data.moved"
    disk.rename(moved)
    expect_status(call(nsock, "PUT", "/snapshot/load", load_body(snap, mem)), 400, "data.img")
    moved.rename(disk)
    expect_status(call(nsock, "PUT", "/snapshot/load", load_body(snap, mem, resume_vm=True)), 204)
    m = new.wait_for(r"COUNT (\d+)", timeout=120)
    first = int(m.group(1))
    expect(first in (n, n + 1), f"the restored counter starts at {first}, saved at {n}")
    new.wait_for(rf"COUNT {n + 5}\b", timeout=120)
    code, info = call(nsock, "GET", "/")
    expect(info["state"] == "Running", f"after load: {info}")
    # Writing over the file its memory is mapped from would corrupt the running guest.
    expect_status(call(nsock, "PATCH", "/vm", {"state": "Paused"}), 204)
    expect_status(call(nsock, "PUT", "/snapshot/create", {
        "snapshot_path": str(ctx.work / "again.snap"), "mem_file_path": str(mem)}), 400,
        "mapped from")
    expect_status(call(nsock, "PATCH", "/vm", {"state": "Resumed"}), 204)
    code, vmcfg = call(nsock, "GET", "/vm/config")
    expect(vmcfg["machine-config"]["vcpu_count"] == 2 and vmcfg["drives"][0]["drive_id"] == "data",
           f"GET /vm/config after load: {vmcfg}")
    # Only logger and metrics may precede a load; a second load is refused.
    expect_status(call(nsock, "PUT", "/snapshot/load", load_body(snap, mem)), 400,
                  "already been started")
    other_vm, osock = start_api_ember(ctx, "cfgd")
    expect_status(call(osock, "PUT", "/machine-config", {"vcpu_count": 1, "mem_size_mib": 128}),
                  204)
    expect_status(call(osock, "PUT", "/snapshot/load", load_body(snap, mem)), 400,
                  "only logger and metrics")
    other_vm.kill()
    new.kill()
    lines = records(disk, n)
    expect(lines == [f"LINE-{i}" for i in range(n + 1)],
           f"drive records before the snapshot: {lines[:3]} .. {lines[-3:]}")


TCP_PEER = r"""
import hashlib, os, socket, sys, time
data = os.urandom(1 << 20)
for attempt in range(60):
    try:
        s = socket.create_connection((sys.argv[1], 5001), timeout=5)
        break
    except OSError:
        time.sleep(0.5)
else:
    sys.exit("cannot connect")
s.sendall(data)
s.close()
print("SENT", hashlib.sha256(data).hexdigest())
"""


def smaps_shared_kib(pid: int) -> int:
    fields = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        k, v = line.split(":", 1)
        fields[k] = int(v.split()[0])
    return fields.get("Shared_Clean", 0) + fields.get("Shared_Dirty", 0)


def ember_pid(vm: VmProcess) -> int:
    """The ember process under `ip netns exec` (which execs it: the same pid)."""
    return vm.proc.pid


def apply_diff(base: Path, diff: Path, out: Path) -> None:
    """What Firecracker's rebase-snap does: the diff's data extents copied onto the base."""
    shutil.copyfile(base, out)
    with open(diff, "rb") as d, open(out, "r+b") as o:
        size = os.fstat(d.fileno()).st_size
        pos = 0
        while pos < size:
            try:
                start = os.lseek(d.fileno(), pos, os.SEEK_DATA)
            except OSError:
                break
            end = os.lseek(d.fileno(), start, os.SEEK_HOLE)
            d.seek(start)
            o.seek(start)
            o.write(d.read(end - start))
            pos = end


@pytest.mark.timeout(480)
def test_snapshot_clones_new_taps_and_diff(ctx, netns):
    ns = netns
    tap(ns, "tap0", f"{HOST_IP}/24")
    guest = (f"(while :; do nc -l -p 5001 | sha256sum | sed 's/^/TCP-HASH /'; done) & "
             f"i=0; while :; do echo COUNT $i; ping -c 1 -W 2 {HOST_IP} >/dev/null && echo PING-OK $i; "
             "i=$((i+1)); sleep 0.3; done")
    ipcfg = f"ip={GUEST_IP}::{HOST_IP}:255.255.255.0::eth0:off"
    cfg = vm_config(ctx, vcpus=2, mode="run", extra_args=f'{ipcfg} ember_cmd="{guest}"')
    cfg["machine-config"]["track_dirty_pages"] = True
    cfg["network-interfaces"] = [{"iface_id": "eth0", "host_dev_name": "tap0",
                                  "guest_mac": "06:00:ac:1e:00:02"}]
    vm, sock = api_ember(ctx, cfg, "orig", pre=netns_exec(ns))
    vm.wait_for(READY, timeout=BOOT_TIMEOUT_S)
    vm.wait_for(r"PING-OK 3\b", timeout=120)
    base_snap, base_mem = ctx.work / "base.snap", ctx.work / "base.mem"
    pause_and_snapshot(sock, base_snap, base_mem)
    at_base = last_count(vm)
    expect_status(call(sock, "PATCH", "/vm", {"state": "Resumed"}), 204)
    vm.wait_for(rf"COUNT {at_base + 10}\b", timeout=120)
    diff_snap, diff_mem = ctx.work / "diff.snap", ctx.work / "diff.mem"
    pause_and_snapshot(sock, diff_snap, diff_mem, kind="Diff")
    time.sleep(0.3)
    at_diff = last_count(vm)
    vm.kill()
    diff_used = diff_mem.stat().st_blocks * 512
    base_used = base_mem.stat().st_blocks * 512
    expect(diff_used < base_used, f"the diff ({diff_used} bytes on disk) is not smaller than "
                                  f"its base ({base_used})")
    merged = ctx.work / "merged.mem"
    apply_diff(base_mem, diff_mem, merged)

    # The original's tap goes: the clones' taps take its address.
    sh("ip", "-n", ns, "link", "del", "tap0")
    with new_netns("snap2") as ns2:
        tap(ns, "tap1", f"{HOST_IP}/24")
        tap(ns2, "tap2", f"{HOST_IP}/24")
        clones = []
        for i, (space, dev) in enumerate([(ns, "tap1"), (ns2, "tap2")]):
            c, csock = start_api_ember(ctx, f"clone{i}", pre=netns_exec(space))
            expect_status(call(csock, "PUT", "/snapshot/load", load_body(
                diff_snap, merged, resume_vm=True, track_dirty_pages=True,
                network_overrides=[{"iface_id": "eth0", "host_dev_name": dev}])), 204)
            clones.append((c, csock, space))
        for c, _, space in clones:
            m = c.wait_for(r"COUNT (\d+)", timeout=120)
            first = int(m.group(1))
            expect(first in (at_diff, at_diff + 1),
                   f"{c.name} starts at {first}: the diff was taken at {at_diff} "
                   f"(the base at {at_base})")
            c.wait_for(r"PING-OK \d+", timeout=60)
            r = sh("ip", "netns", "exec", space, "busybox", "ping", "-c", "2", "-W", "5",
                   GUEST_IP, check=False)
            expect(r.returncode == 0, f"host cannot ping {c.name}: {r.stdout}{r.stderr}")
        peer = subprocess.run(["ip", "netns", "exec", ns, "python3", "-c", TCP_PEER, GUEST_IP],
                              capture_output=True, text=True, timeout=120)
        expect(peer.returncode == 0, f"TCP to the restored guest: {peer.stderr}")
        sent = peer.stdout.split("SENT ")[1].split()[0]
        got = clones[0][0].wait_for(r"TCP-HASH ([0-9a-f]{64})", timeout=60).group(1)
        expect(got == sent, f"TCP after restore: sent {sent}, the guest hashed {got}")
        # The clones map one memory file privately: the pages neither wrote are shared.
        shared = [smaps_shared_kib(ember_pid(c)) for c, _, _ in clones]
        expect(all(s > 8 * 1024 for s in shared), f"shared memory of the clones (KiB): {shared}")
        ctx.data(shared_kib=shared)
        for c, _, _ in clones:
            c.kill()

