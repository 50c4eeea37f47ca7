"""Boot cases (issue 2): real guests to the ready marker, and bad inputs."""

from __future__ import annotations

import os

from guest import (READY, expect, parse_ready, run_ember_expecting_error, start_ember,
                   start_qemu_microvm, start_qemu_virt, vm_config)
from harness import ALL_ARCHES, case


def boot_to_marker(ctx, name="ember", **cfg):
    vm = start_ember(ctx, vm_config(ctx, **cfg), name=name)
    m = vm.wait_for(READY + r".*", timeout=300)
    info = parse_ready(m.group(0))
    rc = vm.wait_exit(timeout=60)
    expect(rc == 0, f"ember exited with {rc} after the guest rebooted\n{vm.tail()}")
    return info, vm


def expect_memory(info, mib):
    # MemTotal is RAM minus what the kernel keeps for itself; for these sizes it is
    # within 15% of the configured size, and can never exceed it.
    kib = info["mem_kib"]
    expect(0.85 * mib * 1024 <= kib <= mib * 1024,
           f"guest reports {kib} KiB of memory for {mib} MiB configured")


@case("boot_vmlinux_pvh_initrd")
def _(ctx):
    info, _ = boot_to_marker(ctx, kernel="vmlinux")
    expect(info["cpus"] == 1, f"guest reports {info['cpus']} CPUs, expected 1")
    expect_memory(info, 128)


@case("boot_arm64_image_initrd", arches=("aarch64",))
def _(ctx):
    info, _ = boot_to_marker(ctx, kernel="Image")
    expect(info["cpus"] == 1, f"guest reports {info['cpus']} CPUs, expected 1")
    expect_memory(info, 128)


@case("gic_is_the_one_the_host_offers", arches=("aarch64",))
def _(ctx):
    # GICv3 where KVM can emulate one, else GICv2 (EMBER_EMUHOST_GIC=2 gives the emulated
    # host a GICv2, so KVM there has no GICv3 to offer); either way the guest boots on it.
    vm = start_ember(ctx, vm_config(ctx, vcpus=2), extra_flags=["--level", "Info"])
    m = vm.wait_for(READY + r".*", timeout=150)
    expect(parse_ready(m.group(0))["cpus"] == 2, f"guest did not bring up 2 CPUs: {m.group(0)}")
    rc = vm.wait_exit(timeout=60)
    expect(rc == 0, f"ember exited with {rc}\n{vm.tail()}")
    want = os.environ.get("EMBER_EMUHOST_GIC")
    expected = f"GICv{want} (" if want else "GIC"
    expect(f"interrupt controller: {expected}" in vm.stderr(),
           f"expected ember to log {expected!r} as its interrupt controller: {vm.stderr()!r}")
    if want == "2":
        # KVM runs at most 8 vCPUs with a GICv2: refused up front, with the reason.
        line = run_ember_expecting_error(ctx, vm_config(ctx, vcpus=9))
        for w in ("vcpu_count 9", "(8;", "GICv2"):
            expect(w in line, f"error line does not mention {w!r}: {line!r}")


@case("poweroff_by_psci_exits_zero", arches=("aarch64",))
def _(ctx):
    # The guest powers off (PSCI SYSTEM_OFF, a KVM system event): ember ends with 0.
    vm = start_ember(ctx, vm_config(ctx, mode="run", extra_args='ember_cmd="poweroff -f"'),
                     extra_flags=["--level", "Info"])
    vm.wait_for(READY, timeout=150)
    rc = vm.wait_exit(timeout=60)
    expect(rc == 0, f"ember exited with {rc}\n{vm.tail()}")
    expect("guest shut down" in vm.stderr(), f"ember did not log a power-off: {vm.stderr()!r}")


@case("rtc_gives_the_guest_the_hosts_date", arches=("aarch64",))
def _(ctx):
    # The PL031 RTC: the guest's clock starts at the host's wall-clock time.
    import time as _time
    vm = start_ember(ctx, vm_config(ctx, mode="run", extra_args='ember_cmd="echo guest-date=$(date +%s)"'))
    m = vm.wait_for(r"guest-date=(\d+)", timeout=150)
    now = int(_time.time())
    expect(abs(int(m.group(1)) - now) < 300,
           f"guest date {m.group(1)} vs host {now}: the RTC did not set the clock")
    rc = vm.wait_exit(timeout=60)
    expect(rc == 0, f"ember exited with {rc}\n{vm.tail()}")


@case("boot_bzimage_initrd")
def _(ctx):
    info, _ = boot_to_marker(ctx, kernel="bzImage")
    expect(info["cpus"] == 1, f"guest reports {info['cpus']} CPUs, expected 1")


@case("boot_two_vcpus", arches=ALL_ARCHES)
def _(ctx):
    info, _ = boot_to_marker(ctx, vcpus=2)
    expect(info["cpus"] == 2, f"guest reports {info['cpus']} CPUs, expected 2")


@case("boot_two_vcpus_bzimage")
def _(ctx):
    info, _ = boot_to_marker(ctx, kernel="bzImage", vcpus=2)
    expect(info["cpus"] == 2, f"guest reports {info['cpus']} CPUs, expected 2")


@case("boot_1024_mib", arches=ALL_ARCHES)
def _(ctx):
    info, _ = boot_to_marker(ctx, mem_mib=1024)
    expect_memory(info, 1024)


@case("guest_command_runs_and_reboot_exits_zero", arches=ALL_ARCHES)
def _(ctx):
    # The guest runs a command given on its command line, then reboots (x86_64, reboot=k:
    # the kernel writes 0xFE to port 0x64; aarch64: PSCI SYSTEM_RESET); ember must exit 0.
    vm = start_ember(ctx, vm_config(ctx, mode="run",
                                    extra_args='ember_cmd="echo hello-from-$(uname -m)"'))
    vm.wait_for(rf"hello-from-{ctx.arch}", timeout=150)
    vm.wait_for(r"EMBER-CMD-EXIT status=0", timeout=30)
    rc = vm.wait_exit(timeout=60)
    expect(rc == 0, f"ember exited with {rc}\n{vm.tail()}")


@case("reboot_by_triple_fault_exits_zero")
def _(ctx):
    # reboot=t: the guest resets by triple fault, which KVM reports as KVM_EXIT_SHUTDOWN.
    vm = start_ember(ctx, vm_config(ctx, reboot="t"), extra_flags=["--level", "Info"])
    vm.wait_for(READY, timeout=150)
    rc = vm.wait_exit(timeout=60)
    expect(rc == 0, f"ember exited with {rc}\n{vm.tail()}")
    err = vm.stderr()
    expect("vcpu 0: guest reset" in err and "i8042" not in err,
           f"expected a reset by KVM_EXIT_SHUTDOWN, ember logged: {err!r}")


@case("console_input_reaches_the_guest_without_loss", arches=ALL_ARCHES)
def _(ctx):
    # (The kernel command line cannot carry double quotes inside ember_cmd.)
    # Ten kilobytes typed into ember's stdin, far more than the UART's 64-byte FIFO: every
    # line must arrive, in order, with nothing dropped while the guest is slower.
    n = 200
    cmd = ("stty -echo; i=0; sum=0; while read -r l; do i=$((i+1)); "
           "[ $l = line-$i-$(printf %040d $i) ] && sum=$((sum+1)); "
           f"[ $i = {n} ] && break; done; echo console-lines=$i intact=$sum")
    vm = start_ember(ctx, vm_config(ctx, mode="run", extra_args=f'ember_cmd="{cmd}"'),
                     stdin_pipe=True)
    vm.wait_for(READY, timeout=150)
    vm.send(b"".join(f"line-{i}-{i:040d}\n".encode() for i in range(1, n + 1)))
    m = vm.wait_for(r"console-lines=(\d+) intact=(\d+)", timeout=240)
    expect(m.group(1) == str(n) and m.group(2) == str(n),
           f"guest got {m.group(1)} lines, {m.group(2)} intact, of {n}")
    rc = vm.wait_exit(timeout=60)
    expect(rc == 0, f"ember exited with {rc}\n{vm.tail()}")


@case("serial_output_to_file", arches=ALL_ARCHES)
def _(ctx):
    cfg = vm_config(ctx)
    out = ctx.work / "console.txt"
    cfg["serial"] = {"serial_out_path": str(out)}
    vm = start_ember(ctx, cfg)
    rc = vm.wait_exit(timeout=150)
    expect(rc == 0, f"ember exited with {rc}\n{vm.tail()}")
    text = out.read_text(errors="replace") if out.exists() else ""
    expect(READY in text, f"the console file lacks the ready marker: {text[-500:]!r}")


@case("qemu_microvm_boots_our_guest")
def _(ctx):
    # The harness proves itself: a reference VMM boots the same kernel and initramfs here.
    vm = start_qemu_microvm(ctx)
    vm.wait_for(READY, timeout=150)
    rc = vm.wait_exit(timeout=60)
    expect(rc == 0, f"qemu exited with {rc}\n{vm.tail()}")


@case("qemu_virt_boots_our_guest", arches=("aarch64",))
def _(ctx):
    # The harness proves itself on aarch64: QEMU's virt machine on KVM boots the same
    # Image and initramfs in the same emulated host.
    vm = start_qemu_virt(ctx)
    vm.wait_for(READY, timeout=150)
    rc = vm.wait_exit(timeout=60)
    expect(rc == 0, f"qemu exited with {rc}\n{vm.tail()}")


# --- bad inputs: one line naming the problem, non-zero exit, no panic, no hang ---------


def bad(ctx, mutate=None, text=None, pre=None):
    cfg = vm_config(ctx)
    if mutate:
        mutate(cfg)
    return run_ember_expecting_error(ctx, text if text is not None else cfg, pre=pre)


def must_mention(line, *words):
    for w in words:
        expect(w in line, f"error line does not mention {w!r}: {line!r}")


@case("bad_missing_kernel", timeout=60, arches=ALL_ARCHES)
def _(ctx):
    line = bad(ctx, lambda c: c["boot-source"].update(kernel_image_path="/nonexistent/vmlinux"))
    must_mention(line, "kernel image", "/nonexistent/vmlinux", "No such file")


@case("bad_kernel_is_a_directory", timeout=60, arches=ALL_ARCHES)
def _(ctx):
    line = bad(ctx, lambda c: c["boot-source"].update(kernel_image_path=str(ctx.work)))
    must_mention(line, "kernel image", "not a regular file")


@case("bad_not_a_kernel", timeout=60, arches=ALL_ARCHES)
def _(ctx):
    junk = ctx.work / "junk.bin"
    junk.write_bytes(os.urandom(64 * 1024))
    line = bad(ctx, lambda c: c["boot-source"].update(kernel_image_path=str(junk)))
    must_mention(line, str(junk), "not a kernel image")


@case("bad_initrd_larger_than_memory", timeout=60, arches=ALL_ARCHES)
def _(ctx):
    big = ctx.work / "big.cpio"
    with open(big, "wb") as f:
        f.truncate(200 << 20)  # sparse: 200 MiB for a 128 MiB guest
    line = bad(ctx, lambda c: c["boot-source"].update(initrd_path=str(big)))
    must_mention(line, "initrd", "does not fit")


@case("bad_missing_initrd", timeout=60, arches=ALL_ARCHES)
def _(ctx):
    line = bad(ctx, lambda c: c["boot-source"].update(initrd_path="/nonexistent/initrd"))
    must_mention(line, "initrd", "/nonexistent/initrd")


@case("bad_vcpu_count_0_and_33", timeout=60, arches=ALL_ARCHES)
def _(ctx):
    for n in (0, 33):
        line = bad(ctx, lambda c: c["machine-config"].update(vcpu_count=n))
        must_mention(line, "vcpu_count", str(n))


@case("bad_mem_size_zero", timeout=60, arches=ALL_ARCHES)
def _(ctx):
    line = bad(ctx, lambda c: c["machine-config"].update(mem_size_mib=0))
    must_mention(line, "mem_size_mib")


@case("bad_mem_size_more_than_host_can_map", timeout=60, arches=ALL_ARCHES)
def _(ctx):
    # Addressable by the guest (16 TiB on x86_64; 512 GiB on aarch64, whose guests get a
    # 40-bit physical address space), but more than any host of ours can back.
    mib = (512 << 10) if ctx.arch == "aarch64" else (16 << 20)
    line = bad(ctx, lambda c: c["machine-config"].update(mem_size_mib=mib))
    must_mention(line, "guest memory", str(mib))
    # 2^40 MiB cannot even be addressed.
    line = bad(ctx, lambda c: c["machine-config"].update(mem_size_mib=1 << 40))
    must_mention(line, "mem_size_mib", "larger than a guest can address")


@case("bad_unknown_field", timeout=60, arches=ALL_ARCHES)
def _(ctx):
    line = bad(ctx, lambda c: c["machine-config"].update(vcpus=2))
    must_mention(line, "unknown field `vcpus`")


@case("bad_wrong_type", timeout=60, arches=ALL_ARCHES)
def _(ctx):
    line = bad(ctx, lambda c: c["machine-config"].update(vcpu_count="2"))
    must_mention(line, "invalid type", "machine-config.vcpu_count")


@case("bad_malformed_json", timeout=60, arches=ALL_ARCHES)
def _(ctx):
    line = bad(ctx, text='{"boot-source": {"kernel_image_path": "/k"')
    must_mention(line, "invalid VM configuration")


@case("bad_kvm_not_openable", timeout=60, arches=ALL_ARCHES)
def _(ctx):
    # A private mount namespace whose /dev has no kvm node: what a user sees on a host
    # without KVM, or in a container without the device.
    line = bad(ctx, pre=["unshare", "--mount", "--propagation", "private", "sh", "-c",
                         'mount -t tmpfs tmpfs /dev && exec "$@"', "sh"])
    must_mention(line, "/dev/kvm", "No such file")


# --- the demo (README's first command): boot one guest and show its console ------------


@case("demo", suite="demo")
def _(ctx):
    cmd = ("echo; uname -a; echo; grep -m1 'model name' /proc/cpuinfo; "
           "echo cpus: $(grep -c ^processor /proc/cpuinfo); free -m; echo; cat /proc/cmdline")
    cfg = vm_config(ctx, vcpus=2, mem_mib=256, mode="run", extra_args=f'ember_cmd="{cmd}"')
    cfg["boot-source"]["boot_args"] = cfg["boot-source"]["boot_args"].replace(" quiet", "")
    vm = start_ember(ctx, cfg, echo=True, extra_flags=["--level", "Info"])
    vm.wait_for(r"EMBER-CMD-EXIT status=0", timeout=300)
    rc = vm.wait_exit(timeout=60)
    expect(rc == 0, f"ember exited with {rc}\n{vm.tail()}")
    for line in vm.stderr().splitlines():
        print(f"e2e: ember| {line}", flush=True)


# --- a guest KVM cannot run: non-zero exit, the cause and the registers named -----------


def tiny_pvh_elf(entry: int, code: bytes = b"\xf4", load: int = 0x100000) -> bytes:
    """A minimal ELF 'kernel': one PT_LOAD of `code` at `load` and a Xen PVH note whose
    32-bit entry point is `entry`."""
    import struct

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


@case("guest_kvm_cannot_run_reports_registers", timeout=120)
def _(ctx):
    # The entry point lies in the MMIO gap, where there is no RAM: the first instruction
    # fetch cannot be served and KVM gives up on the vCPU.
    kernel = ctx.work / "bad-entry.elf"
    kernel.write_bytes(tiny_pvh_elf(entry=0xD000_0000))
    cfg = vm_config(ctx, initrd=False)
    cfg["boot-source"]["kernel_image_path"] = str(kernel)
    line = run_ember_expecting_error(ctx, cfg, timeout=90)
    must_mention(line, "vcpu 0", "rip=0xd0000000", "cr0=")
