"""emberd run for real: the agent in a network namespace of its own (so its bridge and
taps go with the namespace), its state in the test's scratch directory, driven with
emberctl (`Emberd.ctl`) and over its socket."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

from .api import call

# Where emberd makes its instances' cgroups (the cgroup v2 hierarchy).
CGROUPS = Path("/sys/fs/cgroup")
from . import stall
from .common import CaseFailed, Ctx, EmulatedHostFault, expect
from .vm import guest_cmdline

SUBNET = "172.31.0.0"


class Emberd:
    """emberd in namespace `ns`, with its state in `work`."""

    def __init__(self, ctx: Ctx, ns: str, name: str = "emberd", extra: tuple[str, ...] = ()):
        self.ctx, self.ns, self.name, self.extra = ctx, ns, name, list(extra)
        self.bin = ctx.ember.parent
        self.sock = str(ctx.work / "emberd.sock")
        self.state = ctx.work / "state"
        # Unix socket paths are short: the VMMs' sockets go in a short directory.
        self.run_dir = f"/tmp/ed-{os.getpid()}-{name}"
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        """Starts emberd (again, after kill9) and waits until its socket answers."""
        log = open(self.ctx.work / f"{self.name}.log", "a")
        self.proc = subprocess.Popen(
            # `ip netns exec` mounts a fresh /sys for the namespace, which hides the cgroup2
            # hierarchy under it: mounted again there, as a host has it.
            ["ip", "netns", "exec", self.ns, "sh", "-c",
             "mountpoint -q /sys/fs/cgroup || mount -t cgroup2 none /sys/fs/cgroup; exec \"$0\" \"$@\"",
             str(self.bin / "emberd"), "--socket", self.sock,
             "--state-dir", str(self.state), "--bridge", "ember0", "--subnet", SUBNET,
             "--ember", str(self.ctx.ember), "--jailer", str(self.bin / "ember-jailer"),
             "--stop-timeout", "30", "--run-dir", self.run_dir,
             *self.extra],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 30
        while True:
            try:
                if call(self.sock, "GET", "/v1/types")[0] == 200:
                    return
            except OSError:
                pass
            expect(self.proc.poll() is None, f"emberd exited: {self.log()}")
            expect(time.monotonic() < deadline, f"emberd never answered: {self.log()}")
            time.sleep(0.1)

    def log(self) -> str:
        """The end of emberd's log, for failure messages."""
        return (self.ctx.work / f"{self.name}.log").read_text(errors="replace")[-3000:]

    def kill9(self) -> None:
        """SIGKILLs emberd (its VMMs, in their own process groups, live on)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """Runs `emberctl --socket <ours> ARGS`; with `check`, fails the test on a non-zero exit."""
        try:
            r = subprocess.run([str(self.bin / "emberctl"), "--socket", self.sock, *args],
                               capture_output=True, text=True, timeout=150)
        except subprocess.TimeoutExpired as e:
            raise AssertionError(f"emberctl {' '.join(args)} still running after 150 s: "
                                 f"{e.stderr!r}\n{self.log()}\n{self.vmm_logs()}")
        if check and r.returncode != 0:
            raise AssertionError(f"emberctl {' '.join(args)} failed: {r.stderr}\n{r.stdout}\n"
                                 f"{self.log()}\n{self.vmm_logs()}")
        return r

    def vmm_logs(self) -> str:
        """The last lines of every instance's ember log, for failure reports."""
        out = []
        for f in sorted((self.state / "instances").glob("*/ember.log")):
            out.append(f"--- {f.parent.name} ember.log ---\n"
                       + "\n".join(f.read_text(errors="replace").splitlines()[-5:]))
        return "\n".join(out)

    def ctl_json(self, *args: str):
        """`emberctl --json ARGS`, parsed."""
        return json.loads(self.ctl("--json", *args).stdout)

    def instance(self, iid: str) -> dict:
        """GET /v1/instances/<iid>."""
        return call(self.sock, "GET", f"/v1/instances/{iid}")[1]

    def wait_state(self, iid: str, state: str, timeout: float = 120) -> dict:
        """Polls until instance `iid` is in `state`; returns it. (The slow verbs, stop,
        reboot and terminate, may answer before their work is done: wait for the state.)"""
        deadline = time.monotonic() + timeout
        while True:
            inst = self.instance(iid)
            if inst["state"] == state:
                return inst
            expect(time.monotonic() < deadline,
                   f"{iid} is {inst['state']} ({inst['reason']}), not {state}\n{self.log()}")
            time.sleep(0.2)

    def wait_console(self, iid: str, needle: str, timeout: float = 120) -> str:
        """Polls the instance's console until it holds `needle`; returns the console."""
        deadline = time.monotonic() + timeout
        while True:
            out = call(self.sock, "GET", f"/v1/instances/{iid}/console?kib=64")[1]["output"]
            if needle in out:
                return out
            if time.monotonic() >= deadline:
                self._console_missed(iid, needle, out)
            time.sleep(0.3)

    def _console_missed(self, iid: str, needle: str, out: str) -> None:
        """Fails the wait for `needle`: with the VMM's thread states, and as the emulated
        host's stall (framework.stall) if its vCPUs get no interrupt at all."""
        msg = f"{iid}: no {needle!r} on its console:\n{out[-2000:]}"
        try:
            pid = self.instance(iid).get("pid")
        except Exception as e:  # the agent itself may be what failed
            pid, msg = None, f"{msg}\n(describing it failed: {e})"
        frozen, report = stall.probe(pid)
        msg = f"{msg}\n{report}"
        if frozen and self.ctx.emulated:
            raise EmulatedHostFault(msg)
        raise CaseFailed(msg)

    def stop_all(self) -> None:
        """Kills emberd and every VMM it started (the teardown of the emberd fixtures)."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
        # Whatever VMMs are left (the namespace's removal does not end processes).
        for pid in self.vmm_pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def vmm_pids(self) -> list[int]:
        """The VMMs this agent started that still run: the processes in the cgroups of its
        instances (every VMM runs in /sys/fs/cgroup/emberd/<instance id>)."""
        ids = {d.name for sub in ("instances", "jail/ember") if (self.state / sub).is_dir()
               for d in (self.state / sub).iterdir()}
        out = []
        for iid in ids:
            try:
                out += [int(p) for p in
                        (CGROUPS / "emberd" / iid / "cgroup.procs").read_text().split()]
            except OSError:
                pass
        return out


def register(agent: Emberd, ctx: Ctx, cmd: str) -> str:
    """Registers the test guest's ext4 root filesystem as an image whose init runs `cmd`."""
    args = guest_cmdline(ctx, "run", f'ember_cmd="{cmd}"')
    img = agent.ctl_json("images", "register", "--name", "test", "--kernel",
                         str(ctx.kernel_dir / "vmlinux"), "--rootfs",
                         str(ctx.rootfs_dir / "rootfs.ext4"), "--boot-args", args)
    expect(img["id"].startswith("img-") and len(img["id"]) == 21, f"image id {img['id']}")
    return img["id"]


def wait_until(cond, what: str, timeout: float = 60, interval: float = 0.2) -> None:
    """Polls `cond()` until it is true; fails the test with `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not cond():
        expect(time.monotonic() < deadline, f"{what} (after {timeout:.0f} s)")
        time.sleep(interval)
