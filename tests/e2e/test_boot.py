"""Boot (issue 2): real guests to the ready marker, their CPUs and memory, reboot and
power-off ending the VMM with 0, the console both ways, and QEMU as the harness's proof."""

from __future__ import annotations

import os
import time

import pytest

from framework.common import expect
from framework.vm import (BOOT_TIMEOUT_S, HEARTBEAT, READY, parse_ready, run_ember_expecting_error,
                          start_qemu_microvm, start_qemu_virt, vm_config, wait_or_stall)

pytestmark = pytest.mark.emulated_flaky
X86 = pytest.mark.arch("x86_64", reason="x86_64 boot protocol or device")
ARM = pytest.mark.arch("aarch64", reason="aarch64 boot protocol or device")


def boot_to_marker(microvm, name="ember", **cfg):
    """Boots a guest to its ready marker and lets it reboot; returns the marker's numbers."""
    vm = microvm(name, **cfg).start()
    m = vm.console.expect(READY + r".*", timeout=BOOT_TIMEOUT_S)
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


@X86
def test_boot_vmlinux_pvh_initrd(microvm):
    info, _ = boot_to_marker(microvm, kernel="vmlinux")
    expect(info["cpus"] == 1, f"guest reports {info['cpus']} CPUs, expected 1")
    expect_memory(info, 128)


@ARM
def test_boot_arm64_image_initrd(microvm):
    info, _ = boot_to_marker(microvm, kernel="Image")
    expect(info["cpus"] == 1, f"guest reports {info['cpus']} CPUs, expected 1")
    expect_memory(info, 128)


@ARM
def test_gic_is_the_one_the_host_offers(ctx, microvm):
    # GICv3 where KVM can emulate one, else GICv2 (EMBER_EMUHOST_GIC=2 gives the emulated
    # host a GICv2, so KVM there has no GICv3 to offer); either way the guest boots on it.
    vm = microvm(vcpus=2).start(extra_flags=["--level", "Info"])
    m = vm.console.expect(READY + r".*", timeout=BOOT_TIMEOUT_S)
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


@ARM
def test_poweroff_by_psci_exits_zero(microvm):
    # The guest powers off (PSCI SYSTEM_OFF, a KVM system event): ember ends with 0.
    vm = microvm(mode="run", extra_args='ember_cmd="poweroff -f"').start(
        extra_flags=["--level", "Info"])
    vm.console.expect(READY, timeout=BOOT_TIMEOUT_S)
    rc = vm.wait_exit(timeout=60)
    expect(rc == 0, f"ember exited with {rc}\n{vm.tail()}")
    expect("guest shut down" in vm.stderr(), f"ember did not log a power-off: {vm.stderr()!r}")


@pytest.mark.arch("aarch64", reason="the PL031 RTC is aarch64's (x86_64 guests read the CMOS clock)")
def test_rtc_gives_the_guest_the_hosts_date(microvm):
    # The PL031 RTC: the guest's clock starts at the host's wall-clock time.
    vm = microvm(mode="run", extra_args='ember_cmd="echo guest-date=$(date +%s)"').start()
    m = vm.console.expect(r"guest-date=(\d+)", timeout=150)
    now = int(time.time())
    expect(abs(int(m.group(1)) - now) < 300,
           f"guest date {m.group(1)} vs host {now}: the RTC did not set the clock")
    rc = vm.wait_exit(timeout=60)
    expect(rc == 0, f"ember exited with {rc}\n{vm.tail()}")


@pytest.mark.arch("x86_64", reason="bzImage is x86_64's boot format")
def test_boot_bzimage_initrd(microvm):
    info, _ = boot_to_marker(microvm, kernel="bzImage")
    expect(info["cpus"] == 1, f"guest reports {info['cpus']} CPUs, expected 1")


def test_boot_two_vcpus(microvm):
    info, _ = boot_to_marker(microvm, vcpus=2)
    expect(info["cpus"] == 2, f"guest reports {info['cpus']} CPUs, expected 2")


@pytest.mark.arch("x86_64", reason="bzImage is x86_64's boot format")
def test_boot_two_vcpus_bzimage(microvm):
    info, _ = boot_to_marker(microvm, kernel="bzImage", vcpus=2)
    expect(info["cpus"] == 2, f"guest reports {info['cpus']} CPUs, expected 2")


def test_boot_1024_mib(microvm):
    info, _ = boot_to_marker(microvm, mem_mib=1024)
    expect_memory(info, 1024)


def test_guest_command_runs_and_reboot_exits_zero(ctx, microvm):
    # The guest runs a command given on its command line, then reboots (x86_64, reboot=k:
    # the kernel writes 0xFE to port 0x64; aarch64: PSCI SYSTEM_RESET); ember must exit 0.
    vm = microvm(mode="run", extra_args='ember_cmd="echo hello-from-$(uname -m)"').start()
    vm.console.expect(rf"hello-from-{ctx.arch}", timeout=150)
    vm.console.expect(r"EMBER-CMD-EXIT status=0", timeout=30)
    rc = vm.wait_exit(timeout=60)
    expect(rc == 0, f"ember exited with {rc}\n{vm.tail()}")


@pytest.mark.arch("x86_64", reason="reset by triple fault (KVM_EXIT_SHUTDOWN) is x86_64's")
def test_reboot_by_triple_fault_exits_zero(microvm):
    # reboot=t: the guest resets by triple fault, which KVM reports as KVM_EXIT_SHUTDOWN.
    vm = microvm(reboot="t").start(extra_flags=["--level", "Info"])
    vm.console.expect(READY, timeout=BOOT_TIMEOUT_S)
    rc = vm.wait_exit(timeout=60)
    expect(rc == 0, f"ember exited with {rc}\n{vm.tail()}")
    err = vm.stderr()
    expect("vcpu 0: guest reset" in err and "i8042" not in err,
           f"expected a reset by KVM_EXIT_SHUTDOWN, ember logged: {err!r}")


@pytest.mark.timeout(420)
def test_console_input_reaches_the_guest_without_loss(ctx, microvm):
    # (The kernel command line cannot carry double quotes inside ember_cmd.)
    # Ten kilobytes typed into ember's stdin, far more than the UART's 64-byte FIFO: every
    # line must arrive, in order, with nothing dropped while the guest is slower. The guest
    # takes the lines with `head` (one read per line from the tty) and checks them after,
    # from a file: a shell `read` loop on the tty would make a system call per byte while
    # the UART interrupts, and an interrupt right after SYSCALL is what TCG's nested SVM
    # gets wrong (framework/build.py, EMULATION_FAULTS). The heartbeat tells the emulated
    # host's stall (console output stops too) from lost input (it goes on).
    n = 200
    cmd = (f"{HEARTBEAT}stty -echo; head -n {n} > /tmp/in; i=0; sum=0; while read -r l; do "
           "i=$((i+1)); [ $l = line-$i-$(printf %040d $i) ] && sum=$((sum+1)); "
           "done < /tmp/in; echo console-lines=$i intact=$sum")
    vm = microvm(mode="run", extra_args=f'ember_cmd="{cmd}"').start(stdin_pipe=True)
    vm.console.expect(READY, timeout=BOOT_TIMEOUT_S)
    vm.console.send(b"".join(f"line-{i}-{i:040d}\n".encode() for i in range(1, n + 1)))
    m = wait_or_stall(ctx, vm.process, r"console-lines=(\d+) intact=(\d+)", timeout=240)
    expect(m.group(1) == str(n) and m.group(2) == str(n),
           f"guest got {m.group(1)} lines, {m.group(2)} intact, of {n}")
    rc = vm.wait_exit(timeout=60)
    expect(rc == 0, f"ember exited with {rc}\n{vm.tail()}")


def test_serial_output_to_file(ctx, microvm):
    vm = microvm()
    out = ctx.work / "console.txt"
    vm.config["serial"] = {"serial_out_path": str(out)}
    vm.start()
    rc = vm.wait_exit(timeout=150)
    expect(rc == 0, f"ember exited with {rc}\n{vm.tail()}")
    text = out.read_text(errors="replace") if out.exists() else ""
    expect(READY in text, f"the console file lacks the ready marker: {text[-500:]!r}")


@pytest.mark.arch("x86_64", reason="QEMU's microvm machine is x86_64's (aarch64: qemu_virt_boots_our_guest)")
def test_qemu_microvm_boots_our_guest(ctx):
    # The harness proves itself: a reference VMM boots the same kernel and initramfs here.
    vm = start_qemu_microvm(ctx)
    vm.wait_for(READY, timeout=BOOT_TIMEOUT_S)
    rc = vm.wait_exit(timeout=60)
    expect(rc == 0, f"qemu exited with {rc}\n{vm.tail()}")


@pytest.mark.arch("aarch64", reason="QEMU's virt machine with the arm64 Image")
def test_qemu_virt_boots_our_guest(ctx):
    # The harness proves itself on aarch64: QEMU's virt machine on KVM boots the same
    # Image and initramfs in the same emulated host.
    vm = start_qemu_virt(ctx)
    vm.wait_for(READY, timeout=BOOT_TIMEOUT_S)
    rc = vm.wait_exit(timeout=60)
    expect(rc == 0, f"qemu exited with {rc}\n{vm.tail()}")
