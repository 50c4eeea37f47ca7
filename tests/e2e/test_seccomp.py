"""Confinement (issue 17): every thread of a running ember is under its seccomp filter; a
thread that calls outside its list takes the process down (SIGSYS, reported, exit 148);
bad filter files are refused with one clear line."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from framework.common import expect
from framework.disk import MIB, sparse_file
from framework.net import GUEST_IP, HOST_IP, netns_exec, tap
from framework.vm import BOOT_TIMEOUT_S, READY, start_ember, vm_config

pytestmark = pytest.mark.emulated_flaky

RULES = Path(__file__).resolve().parents[2] / "resources" / "seccomp"


def threads(pid: int) -> dict[str, tuple[str, str]]:
    """Each thread's name -> (Seccomp mode, number of filters), from /proc."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        fields = dict(line.split(":", 1) for line in (task / "status").read_text().splitlines()
                      if ":" in line)
        out[fields["Name"].strip()] = (fields["Seccomp"].strip(),
                                       fields.get("Seccomp_filters", "?").strip())
    return out


def running_guest(ctx, netns, name: str, extra_flags: list[str] | None = None):
    """A guest with a data drive and a network interface in use (so every thread kind runs:
    the VMM, vCPUs, a block and a net device thread), started from a config file, on the
    namespace's tap0."""
    data = sparse_file(ctx.work / f"{name}.img", 8 * MIB)
    ipcfg = f"ip={GUEST_IP}::{HOST_IP}:255.255.255.0::eth0:off"
    cfg = vm_config(ctx, vcpus=2, mode="run", extra_args=(
        f'{ipcfg} ember_cmd="dd if=/dev/vda of=/dev/null bs=4k count=16 && '
        f'ping -c 1 -W 5 {HOST_IP} && echo DEVICES-USED; sleep 600"'))
    cfg["drives"] = [{"drive_id": "data", "path_on_host": str(data), "is_root_device": False,
                      "is_read_only": False}]
    cfg["network-interfaces"] = [{"iface_id": "eth0", "host_dev_name": "tap0",
                                  "guest_mac": "06:00:ac:1e:00:02"}]
    return start_ember(ctx, cfg, name=name, pre=netns_exec(netns), extra_flags=extra_flags)


@pytest.mark.timeout(400)
def test_seccomp_every_thread_is_filtered_and_no_seccomp_turns_it_off(ctx, netns):
    tap(netns, "tap0", f"{HOST_IP}/24")
    vm = running_guest(ctx, netns, "confined")
    vm.wait_for(READY, timeout=BOOT_TIMEOUT_S)
    vm.wait_for("DEVICES-USED", timeout=120)
    pid = vm.proc.pid
    # Under `ip netns exec` the VMM is the exec'd process itself.
    seen = threads(pid)
    names = sorted(seen)
    for kind in ("ember_vcpu0", "ember_vcpu1", "blk-data", "net-eth0"):
        expect(kind in seen, f"no thread {kind} in {names}")
    loose = {n: v for n, v in seen.items() if v[0] != "2"}
    expect(not loose, f"threads without a seccomp filter: {loose} (all: {seen})")
    # Device threads hold the filter of the vCPU thread that started them and their own.
    for dev in ("blk-data", "net-eth0"):
        expect(seen[dev][1] in ("2", "?"), f"{dev}: {seen[dev][1]} filters, expected 2")
    vm.kill()

    off = running_guest(ctx, netns, "unconfined", extra_flags=["--no-seccomp"])
    off.wait_for(READY, timeout=BOOT_TIMEOUT_S)
    off.wait_for("DEVICES-USED", timeout=120)
    seen = threads(off.proc.pid)
    expect(all(v[0] == "0" for v in seen.values()), f"--no-seccomp left filters: {seen}")
    off.kill()


@pytest.mark.timeout(300)
def test_seccomp_a_call_outside_the_list_ends_ember_and_says_which_thread(ctx):
    # The built-in rules, with the vCPU thread's ioctl taken away: its first KVM_RUN is a
    # call outside its list.
    rules = json.loads((RULES / f"{ctx.arch}.json").read_text())
    rules["vcpu"]["filter"] = [r for r in rules["vcpu"]["filter"] if r["syscall"] != "ioctl"]
    f = ctx.work / "no-vcpu-ioctl.json"
    f.write_text(json.dumps(rules))
    vm = start_ember(ctx, vm_config(ctx), name="sigsys", extra_flags=["--seccomp-filter", str(f)])
    rc = vm.wait_exit(timeout=120)
    expect(rc == 148, f"ember exited with {rc}, expected 148 (a forbidden call)\n{vm.tail()}")
    expect("the vcpu thread made a system call outside its seccomp filter" in vm.stderr(),
           f"no report of the forbidden call: {vm.stderr()!r}")
    expect(not any("EMBER-GUEST-READY" in line for line in vm.lines), "the guest booted")


def test_seccomp_bad_filter_files_are_refused_with_one_clear_line(ctx):
    cfg = ctx.work / "vm.json"
    cfg.write_text(json.dumps(vm_config(ctx)))
    partial = ctx.work / "partial.json"
    partial.write_text(json.dumps({"vmm": {"mismatch_action": "kill_process",
                                           "match_action": "allow", "filter": []}}))
    garbage = ctx.work / "garbage.json"
    garbage.write_text("{not json")
    cases = [
        (["--seccomp-filter", "/nonexistent/f.json"],
         "cannot read seccomp filter file /nonexistent/f.json"),
        (["--seccomp-filter", str(partial)], "no filter for thread kind `api`"),
        (["--seccomp-filter", str(garbage)], f"seccomp filter file {garbage}"),
        (["--seccomp-filter", str(partial), "--no-seccomp"], "cannot be used with"),
    ]
    for flags, needle in cases:
        r = subprocess.run([str(ctx.ember), "--no-api", "--config-file", str(cfg)] + flags,
                           capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        err = r.stderr.strip()
        expect(r.returncode not in (0, None) and r.returncode > 0,
               f"{flags}: exit {r.returncode}, stderr {err!r}")
        expect(needle in err, f"{flags}: {err!r} lacks {needle!r}")
        expect("EMBER-GUEST-READY" not in r.stdout, f"{flags}: the guest ran")
