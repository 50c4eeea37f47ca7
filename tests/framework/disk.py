"""Disks for guests: drive images and the host side of checking them, and running a guest
command over drives."""

from __future__ import annotations

import hashlib
import shutil
import struct
import subprocess

from .common import Ctx, expect
from .vm import BOOT_TIMEOUT_S, HEARTBEAT, READY, start_ember, vm_config, wait_or_stall

MIB = 1 << 20


def sparse_file(path, size: int):
    """A sparse file of `size` bytes at `path`; returns `path`."""
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def sha256_file(path) -> str:
    """The SHA-256 of a file, hex."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(MIB), b""):
            h.update(chunk)
    return h.hexdigest()


def run_cmd_vm(ctx: Ctx, cmd: str, drives: list[dict], name: str, vcpus: int = 1,
               mem_mib: int = 256, timeout: float = 600, heartbeat: bool = False):
    """Boots the initramfs guest with `drives`, runs `cmd`, waits for the exit marker and
    for ember to exit 0; returns the VM. With `heartbeat`, the guest also prints a console
    heartbeat, and under emulation a guest that went silent altogether is reported as the
    emulated host's fault (framework.common.EmulatedHostFault) rather than the device's."""
    if heartbeat:
        cmd = HEARTBEAT + cmd
    cfg = vm_config(ctx, mode="run", vcpus=vcpus, mem_mib=mem_mib,
                    extra_args=f'ember_cmd="{cmd}"')
    cfg["drives"] = drives
    vm = start_ember(ctx, cfg, name=name)
    vm.wait_for(READY, timeout=BOOT_TIMEOUT_S)
    pattern = r"EMBER-CMD-EXIT status=(\d+)"
    m = (wait_or_stall(ctx, vm, pattern, timeout) if heartbeat
         else vm.wait_for(pattern, timeout=timeout))
    expect(m.group(1) == "0", f"guest command failed with {m.group(1)}\n{vm.tail()}")
    rc = vm.wait_exit(timeout=60)
    expect(rc == 0, f"ember exited with {rc}\n{vm.tail()}")
    return vm


def image_with_file(ctx: Ctx, name: str, content: bytes):
    """A copy of the test root filesystem with /host-file.txt added (debugfs, no root)."""
    img = ctx.work / f"{name}.ext4"
    shutil.copyfile(ctx.rootfs_dir / "rootfs.ext4", img)
    src = ctx.work / f"{name}.txt"
    src.write_bytes(content)
    subprocess.run(["debugfs", "-w", "-R", f"write {src} host-file.txt", str(img)],
                   check=True, capture_output=True)
    return img


def write_mbr(path, signature: int, start_lba: int, sectors: int) -> None:
    """An MBR with one Linux partition; the kernel's PARTUUID for it is
    `{signature:08x}-01`."""
    entry = struct.pack("<B3sB3sII", 0, b"\xfe\xff\xff", 0x83, b"\xfe\xff\xff",
                        start_lba, sectors)
    with open(path, "r+b") as f:
        f.seek(440)
        f.write(struct.pack("<I", signature) + b"\0\0" + entry + bytes(48) + b"\x55\xaa")
