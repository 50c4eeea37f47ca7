"""HTTP over a Unix socket: Python's http.client on an AF_UNIX socket, the way
Firecracker's SDKs drive ember (and the way the tests drive emberd)."""

from __future__ import annotations

import http.client
import json
import socket
import time

from .common import Ctx, expect
from .vm import VmProcess


class UnixHTTP(http.client.HTTPConnection):
    """HTTP/1.1 over a Unix socket."""

    def __init__(self, path: str, timeout: float = 30):
        super().__init__("localhost", timeout=timeout)
        self.sock_path = path

    def connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self.sock_path)
        self.sock = s


def call(sock: str, method: str, path: str, body=None, raw: bytes | None = None,
         conn: UnixHTTP | None = None) -> tuple[int, dict | None]:
    """One request; returns the status and the JSON body (None when empty)."""
    c = conn or UnixHTTP(sock)
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    headers = {"Content-Type": "application/json"} if data is not None else {}
    c.request(method, path, body=data, headers=headers)
    r = c.getresponse()
    text = r.read()
    if conn is None:
        c.close()
    return r.status, (json.loads(text) if text else None)


def text(sock: str, path: str) -> tuple[int, str, str]:
    """GET `path`; returns the status, the Content-Type and the body as text."""
    c = UnixHTTP(sock)
    c.request("GET", path)
    r = c.getresponse()
    out = r.read().decode()
    c.close()
    return r.status, r.getheader("Content-Type") or "", out


def expect_status(got: tuple[int, dict | None], status: int, needle: str = "") -> None:
    """Fails unless the answer has `status` and its fault_message mentions `needle`."""
    code, body = got
    msg = (body or {}).get("fault_message", "")
    expect(code == status, f"expected {status}, got {code}: {body}")
    if needle:
        expect(needle.lower() in msg.lower(), f"fault_message {msg!r} lacks {needle!r}")


def start_api_ember(ctx: Ctx, name: str, pre: list[str] | None = None,
                    flags: list[str] | None = None,
                    stdin_pipe: bool = False) -> tuple[VmProcess, str]:
    """ember serving its API on a socket in the test's directory, no guest configured.
    Returns once the socket answers. `stdin_pipe`: the console's input is `vm.send`."""
    sock = str(ctx.work / f"{name}.sock")
    argv = [str(ctx.ember), "--api-sock", sock, "--id", name] + (flags or [])
    vm = VmProcess(name, argv, ctx.work, pre=pre, stdin_pipe=stdin_pipe)
    deadline = time.monotonic() + 30
    while True:
        try:
            code, _ = call(sock, "GET", "/")
            if code == 200:
                return vm, sock
        except OSError:
            pass
        if time.monotonic() > deadline or vm.proc.poll() is not None:
            raise AssertionError(f"API socket never answered\n{vm.tail()}")
        time.sleep(0.05)
