"""Bad configurations (issue 2): each is refused with one line naming the problem, a
non-zero exit, no panic and no hang (framework.vm.run_ember_expecting_error checks all of
that); and a guest KVM cannot run ends ember with the cause and the registers."""

from __future__ import annotations

import os
import struct

import pytest

from framework.common import expect
from framework.vm import run_ember_expecting_error, vm_config

pytestmark = pytest.mark.emulated_flaky


def big_initrd(ctx) -> str:
    big = ctx.work / "big.cpio"
    with open(big, "wb") as f:
        f.truncate(200 << 20)  # sparse: 200 MiB for a 128 MiB guest
    return str(big)


def junk_kernel(ctx) -> str:
    junk = ctx.work / "junk.bin"
    junk.write_bytes(os.urandom(64 * 1024))
    return str(junk)


def boot(key, value):
    """Sets boot-source.<key> (`value`: a string, or a function of ctx that makes one)."""
    return lambda ctx, c: c["boot-source"].update({key: value(ctx) if callable(value) else value})


def machine(key, value):
    """Sets machine-config.<key> (`value`: a value, or a function of ctx that gives one)."""
    return lambda ctx, c: c["machine-config"].update({key: value(ctx) if callable(value) else value})


def more_than_host_can_map(ctx) -> int:
    # Addressable by the guest (16 TiB on x86_64; 512 GiB on aarch64, whose guests get a
    # 40-bit physical address space), but more than any host of ours can back.
    return (512 << 10) if ctx.arch == "aarch64" else (16 << 20)


# A private mount namespace whose /dev has no kvm node: what a user sees on a host without
# KVM, or in a container without the device.
NO_KVM = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
          'mount -t tmpfs tmpfs /dev && exec "$@"', "sh"]
MALFORMED = '{"boot-source": {"kernel_image_path": "/k"'

# case name, what to do to a good configuration (or the whole text of the file), the words
# the error line must hold ({work}: the test's directory; {map}: more_than_host_can_map),
# and a command prefix. A case with several rows checks each of them.
BAD_CONFIGS = [
    ("bad_missing_kernel", boot("kernel_image_path", "/nonexistent/vmlinux"),
     ("kernel image", "/nonexistent/vmlinux", "No such file"), None),
    ("bad_kernel_is_a_directory", boot("kernel_image_path", lambda ctx: str(ctx.work)),
     ("kernel image", "not a regular file"), None),
    ("bad_not_a_kernel", boot("kernel_image_path", junk_kernel),
     ("{work}/junk.bin", "not a kernel image"), None),
    ("bad_initrd_larger_than_memory", boot("initrd_path", big_initrd),
     ("initrd", "does not fit"), None),
    ("bad_missing_initrd", boot("initrd_path", "/nonexistent/initrd"),
     ("initrd", "/nonexistent/initrd"), None),
    ("bad_vcpu_count_0_and_33", machine("vcpu_count", 0), ("vcpu_count", "0"), None),
    ("bad_vcpu_count_0_and_33", machine("vcpu_count", 33), ("vcpu_count", "33"), None),
    ("bad_mem_size_zero", machine("mem_size_mib", 0), ("mem_size_mib",), None),
    ("bad_mem_size_more_than_host_can_map", machine("mem_size_mib", more_than_host_can_map),
     ("guest memory", "{map}"), None),
    # 2^40 MiB cannot even be addressed.
    ("bad_mem_size_more_than_host_can_map", machine("mem_size_mib", 1 << 40),
     ("mem_size_mib", "larger than a guest can address"), None),
    ("bad_unknown_field", machine("vcpus", 2), ("unknown field `vcpus`",), None),
    ("bad_wrong_type", machine("vcpu_count", "2"),
     ("invalid type", "machine-config.vcpu_count"), None),
    ("bad_malformed_json", MALFORMED, ("invalid VM configuration",), None),
    ("bad_kvm_not_openable", None, ("/dev/kvm", "No such file"), NO_KVM),
]
CASES = list(dict.fromkeys(row[0] for row in BAD_CONFIGS))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", CASES, ids=CASES)
def test_bad_config_is_refused_with_one_clear_line(ctx, case):
    for name, change, words, pre in (r for r in BAD_CONFIGS if r[0] == case):
        cfg = vm_config(ctx)
        if callable(change):
            change(ctx, cfg)
        line = run_ember_expecting_error(ctx, change if isinstance(change, str) else cfg,
                                         pre=pre)
        for w in words:
            w = w.format(work=ctx.work, map=more_than_host_can_map(ctx))
            expect(w in line, f"error line does not mention {w!r}: {line!r}")


# --- a guest KVM cannot run: non-zero exit, the cause and the registers named -----------


def tiny_pvh_elf(entry: int, code: bytes = b"\xf4", load: int = 0x100000) -> bytes:
    """A minimal ELF 'kernel': one PT_LOAD of `code` at `load` and a Xen PVH note whose
    32-bit entry point is `entry`."""
    phoff, phnum = 64, 2
    code_off = phoff + phnum * 56
    note = struct.pack("<III", 4, 4, 18) + b"Xen\0" + struct.pack("<I", entry)
    note_off = (code_off + len(code) + 3) & ~3
    ehdr = struct.pack("<16sHHIQQQIHHHHHH", b"\x7fELF\x02\x01\x01" + b"\0" * 9, 2, 0x3E, 1,
                       entry, phoff, 0, 0, 64, 56, phnum, 64, 0, 0)
    load_ph = struct.pack("<IIQQQQQQ", 1, 5, code_off, load, load, len(code), len(code), 0x1000)
    note_ph = struct.pack("<IIQQQQQQ", 4, 4, note_off, 0, 0, len(note), len(note), 4)
    body = ehdr + load_ph + note_ph + code
    body += b"\0" * (note_off - len(body))
    return body + note


@pytest.mark.arch("x86_64", reason="the kernel is an x86_64 PVH ELF and the registers x86's")
@pytest.mark.timeout(120)
def test_guest_kvm_cannot_run_reports_registers(ctx):
    # The entry point lies in the MMIO gap, where there is no RAM: the first instruction
    # fetch cannot be served and KVM gives up on the vCPU.
    kernel = ctx.work / "bad-entry.elf"
    kernel.write_bytes(tiny_pvh_elf(entry=0xD000_0000))
    cfg = vm_config(ctx, initrd=False)
    cfg["boot-source"]["kernel_image_path"] = str(kernel)
    line = run_ember_expecting_error(ctx, cfg, timeout=90)
    for w in ("vcpu 0", "rip=0xd0000000", "cr0="):
        expect(w in line, f"error line does not mention {w!r}: {line!r}")
