"""The jailer (issue 17): ember-jailer runs ember as an unprivileged user, pivot_rooted into
its own directory, in a cgroup v2 with the limits asked for and in a given network
namespace, and the guest's drive and network work from there; bad jailer input gets one
clear line and leaves no jail or cgroup behind."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from framework.api import call, expect_status
from framework.common import expect
from framework.disk import MIB, sparse_file
from framework.net import GUEST_IP, HOST_IP, netns_exec, sh, tap
from framework.vm import BOOT_TIMEOUT_S, READY, VmProcess, guest_cmdline

pytestmark = pytest.mark.emulated_flaky

UID = GID = 12345
CGROUP_ROOT = Path("/sys/fs/cgroup")


def jailer(ctx) -> Path:
    return ctx.ember.parent / "ember-jailer"


def place(src: Path, dst: Path) -> None:
    """A hard link where the file system allows (as an operator would), else a copy."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def wait_socket(sock: Path, vm: VmProcess, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if call(str(sock), "GET", "/")[0] == 200:
                return
        except OSError:
            pass
        expect(vm.proc.poll() is None, f"the jailed ember exited\n{vm.tail()}")
        expect(time.monotonic() < deadline, f"{sock} never answered\n{vm.tail()}")
        time.sleep(0.05)


def status_ids(pid: int) -> tuple[str, str]:
    fields = dict(l.split(":", 1) for l in Path(f"/proc/{pid}/status").read_text().splitlines())
    return fields["Uid"].split()[0], fields["Gid"].split()[0]


@pytest.mark.timeout(400)
def test_jailer_runs_ember_as_its_user_in_its_root_cgroup_and_netns(ctx, netns):
    tap(netns, "tap0", f"{HOST_IP}/24", user=UID)
    base = Path(tempfile.mkdtemp(prefix="jails-", dir="/tmp"))
    jid = f"e2e-{os.getpid()}"
    root = base / "ember" / jid / "root"
    cgroup = CGROUP_ROOT / "ember-e2e" / jid
    mem_max = 512 * MIB
    argv = [str(jailer(ctx)), "--id", jid, "--exec-file", str(ctx.ember),
            "--uid", str(UID), "--gid", str(GID), "--chroot-base-dir", str(base),
            "--netns", f"/var/run/netns/{netns}", "--cgroup-version", "2",
            "--parent-cgroup", "ember-e2e", "--cgroup", f"memory.max={mem_max}",
            "--cgroup", "pids.max=64", "--cgroup", "cpu.max=200000 100000",
            "--resource-limit", "no-file=256", "--", "--api-sock", "/run/api.sock"]
    vm = VmProcess("jailed", argv, ctx.work)
    try:
        sock = root / "run/api.sock"
        wait_socket(sock, vm)
        pid = vm.proc.pid  # the jailer execs ember: same process
        expect(status_ids(pid) == (str(UID), str(GID)), f"ids: {status_ids(pid)}")
        expect(os.readlink(f"/proc/{pid}/ns/mnt") != os.readlink("/proc/self/ns/mnt"),
               "ember shares the host's mount namespace")
        expect(os.readlink(f"/proc/{pid}/ns/net") != os.readlink("/proc/self/ns/net"),
               "ember is not in the given network namespace")
        expect(sorted(os.listdir(f"/proc/{pid}/root")) == ["dev", "ember", "run"],
               f"the jail's root holds {sorted(os.listdir(f'/proc/{pid}/root'))}")
        own = Path(f"/proc/{pid}/cgroup").read_text().strip()
        expect(own == f"0::/ember-e2e/{jid}", f"/proc/PID/cgroup: {own}")
        expect((cgroup / "memory.max").read_text().strip() == str(mem_max), "memory.max")
        expect((cgroup / "pids.max").read_text().strip() == "64", "pids.max")
        expect((cgroup / "cpu.max").read_text().strip() == "200000 100000", "cpu.max")
        limits = Path(f"/proc/{pid}/limits").read_text()
        expect(any(l.startswith("Max open files") and " 256 " in l for l in limits.splitlines()),
               f"no-file limit: {limits}")

        # The operator puts the guest's files in the jail; ember names them from inside.
        kernel = "Image" if ctx.arch == "aarch64" else "vmlinux"
        place(ctx.kernel_dir / kernel, root / kernel)
        place(ctx.initramfs, root / "initramfs.cpio")
        data = sparse_file(root / "data.img", 8 * MIB)
        os.chown(data, UID, GID)
        ipcfg = f"ip={GUEST_IP}::{HOST_IP}:255.255.255.0::eth0:off"
        cmd = (f'{ipcfg} ember_cmd="echo JAILED-WRITE | dd of=/dev/vda conv=fsync 2>/dev/null && '
               f'ping -c 1 -W 5 {HOST_IP} && echo DEVICES-USED; sleep 600"')
        s = str(sock)
        expect_status(call(s, "PUT", "/boot-source", {
            "kernel_image_path": f"/{kernel}", "initrd_path": "/initramfs.cpio",
            "boot_args": guest_cmdline(ctx, "run", cmd)}), 204)
        expect_status(call(s, "PUT", "/machine-config", {"vcpu_count": 1, "mem_size_mib": 128}),
                      204)
        # A host file outside the jail cannot be named: the jail has no /etc.
        expect_status(call(s, "PUT", "/drives/shadow", {
            "drive_id": "shadow", "path_on_host": "/etc/shadow", "is_root_device": False,
            "is_read_only": True}), 400, "/etc/shadow")
        expect_status(call(s, "PUT", "/drives/data", {
            "drive_id": "data", "path_on_host": "/data.img", "is_root_device": False,
            "is_read_only": False}), 204)
        expect_status(call(s, "PUT", "/network-interfaces/eth0", {
            "iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "06:00:ac:1e:00:02"}), 204)
        expect_status(call(s, "PUT", "/actions", {"action_type": "InstanceStart"}), 204)
        vm.wait_for(READY, timeout=BOOT_TIMEOUT_S)
        vm.wait_for("DEVICES-USED", timeout=120)
        expect(data.read_bytes()[:12] == b"JAILED-WRITE", "the guest's write is not in the file")
        expect_status(call(s, "PATCH", "/drives/data", {
            "drive_id": "data", "path_on_host": "/etc/shadow"}), 400, "/etc/shadow")
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
        unfiltered = [t.name for t in tasks if "Seccomp:\t2" not in (t / "status").read_text()]
        expect(not unfiltered, f"threads without seccomp: {unfiltered}")
        held = set((cgroup / "cgroup.threads").read_text().split())
        outside = {t.name for t in tasks} - held
        expect(not outside, f"threads outside the cgroup: {outside} (it holds {held})")
        # What was charged to the cgroup stays under its limit (the guest's RAM included).
        peak = cgroup / "memory.peak"
        if peak.exists():
            expect(int(peak.read_text()) <= mem_max, f"memory.peak {peak.read_text()}")
    finally:
        vm.kill()
        time.sleep(0.2)
        # The jail is the operator's to remove (as with Firecracker's jailer).
        shutil.rmtree(base, ignore_errors=True)
        try:
            cgroup.rmdir()
        except OSError:
            pass


def test_jailer_bad_input_gets_one_line_and_leaves_nothing(ctx):
    base = Path(tempfile.mkdtemp(prefix="jails-", dir="/tmp"))
    a_file = base / "plain-file"
    a_file.write_text("x")
    good = ["--exec-file", str(ctx.ember), "--uid", str(UID), "--gid", str(GID),
            "--chroot-base-dir", str(base)]

    def run(args: list[str]) -> tuple[int, str]:
        r = subprocess.run([str(jailer(ctx))] + args, capture_output=True, text=True,
                           timeout=60, stdin=subprocess.DEVNULL)
        return r.returncode, r.stderr.strip()

    def with_flag(flag: str, value: str) -> list[str]:
        out = list(good)
        if flag in out:
            out[out.index(flag) + 1] = value
        else:
            out += [flag, value]
        return out

    cases = [
        ("missing-exec", with_flag("--exec-file", "/nonexistent/ember"),
         "--exec-file /nonexistent/ember: No such file"),
        ("dynamic-exec", with_flag("--exec-file", "/bin/sh"), "is dynamically linked"),
        ("bad/id", good, "--id \"bad/id\": '/' is not allowed"),
        ("root-uid", with_flag("--uid", "0"), "--uid \"0\": the VMM would run as root"),
        ("base-is-file", with_flag("--chroot-base-dir", str(a_file)), "is not a directory"),
        ("no-such-key", good + ["--cgroup", "memory.nosuch=1"],
         "memory.nosuch does not exist (no such cgroup file)"),
        ("bad-value", good + ["--cgroup", "pids.max=many"], "writing"),
        ("no-netns", good + ["--netns", "/var/run/netns/nonexistent"],
         "--netns /var/run/netns/nonexistent"),
        ("bad-limit", good + ["--resource-limit", "core=1"], "unknown resource \"core\""),
    ]
    for jid, args, needle in cases:
        rc, err = run(["--id", jid] + args)
        lines = err.splitlines()
        expect(rc != 0, f"{jid}: exit 0")
        expect(len(lines) == 1 and lines[0].startswith("ember-jailer: error: "),
               f"{jid}: expected one 'ember-jailer: error:' line, got {err!r}")
        expect(needle in err, f"{jid}: {err!r} lacks {needle!r}")
        expect(not (base / "ember" / jid).exists(), f"{jid}: a jail was left behind")
        expect(not (CGROUP_ROOT / "ember" / jid).exists(), f"{jid}: a cgroup was left behind")
    # A jail directory the caller made first (with the guest's files in it, as for
    # --config-file) is used as it is; a failure removes only what the jailer added.
    premade = base / "ember" / "premade" / "root"
    premade.mkdir(parents=True)
    (premade / "vm.json").write_text("{}")
    rc, err = run(["--id", "premade"] + good + ["--cgroup", "memory.nosuch=1"])
    expect(rc != 0 and "no such cgroup file" in err, f"premade: {rc} {err!r}")
    left = sorted(p.name for p in premade.iterdir())
    expect(left == ["vm.json"], f"premade: after the failure the jail holds {left}")
    # A link left in a jail (by an earlier VMM, say) is never followed by the jailer.
    trap = base / "ember" / "trapped" / "root"
    trap.mkdir(parents=True)
    os.symlink("/etc", trap / "run")
    rc, err = run(["--id", "trapped"] + good)
    expect(rc != 0 and "is left from an earlier jail (a symbolic link" in err,
           f"trapped: {rc} {err!r}")
    expect(os.stat("/etc").st_uid == 0, "the jailer followed the link to /etc")
    rc, err = run(["--id", "x"] + good + ["--bogus"])
    expect(rc == 2 and err.startswith("ember-jailer: error: invalid option '--bogus'"), f"{err!r}")
    shutil.rmtree(base, ignore_errors=True)
