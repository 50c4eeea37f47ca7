"""Network namespaces and taps for guests' networks. Everything a test creates lives in a
namespace of its own, so deleting the namespace removes every tap and bridge in it."""

from __future__ import annotations

import contextlib
import ctypes
import os
import subprocess

HOST_IP = "172.30.0.1"
GUEST_IP = "172.30.0.2"

_CLONE_NEWNET = 0x40000000


@contextlib.contextmanager
def in_netns(ns: str):
    """Runs the calling thread inside network namespace `ns` (`ip netns`'s name) until the
    block ends: sockets made inside belong to it (and keep working after). (Python 3.11
    has no os.setns; the namespace is per thread, other threads stay where they are.)"""
    libc = ctypes.CDLL(None, use_errno=True)
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    try:
        if libc.setns(target, _CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {ns}")
        try:
            yield
        finally:
            if libc.setns(home, _CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back")
    finally:
        os.close(target)
        os.close(home)


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Runs a command, capturing its output (text)."""
    return subprocess.run(list(args), check=check, capture_output=True, text=True)


def netns_exec(ns: str) -> list[str]:
    """The command prefix that runs a command inside namespace `ns`."""
    return ["ip", "netns", "exec", ns]


@contextlib.contextmanager
def netns(tag: str):
    """A fresh network namespace with loopback up; deleted on exit, which removes every
    tap and bridge created in it (and checked to be gone)."""
    name = f"ember-{tag}-{os.getpid()}"
    sh("ip", "netns", "add", name)
    try:
        sh("ip", "-n", name, "link", "set", "lo", "up")
        yield name
    finally:
        sh("ip", "netns", "del", name, check=False)
        left = sh("ip", "netns", "list").stdout
        if name in left:
            raise AssertionError(f"network namespace {name} was left behind")


def tap(ns: str, name: str, addr: str | None = None, user: int | None = None) -> None:
    """A tap device `name` in namespace `ns`, up, with address `addr` (CIDR) if given;
    `user` owns it (an unprivileged VMM can attach to it then)."""
    owner = ["user", str(user), "group", str(user)] if user is not None else []
    sh("ip", "-n", ns, "tuntap", "add", "dev", name, "mode", "tap", *owner)
    if addr:
        sh("ip", "-n", ns, "addr", "add", addr, "dev", name)
    sh("ip", "-n", ns, "link", "set", name, "up")
