"""EC2's own tools pointed at emberd's EC2 endpoint (`--ec2-listen`): boto3 clients, the AWS
CLI with a profile, moto's server as the reference for EC2's shapes, and the network
namespace emberd's listener lives in. The packages come pinned from PyPI
(tools/ci/python-deps.sh, EMBER_PYDEPS)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from .common import expect

PYDEPS = Path(os.environ.get("EMBER_PYDEPS", Path.home() / ".cache" / "ember" / "python"))
REGION = "ember-1"
ZONE = "ember-1a"
PORT = 8788
KEY_ID = "AKIAEMBERTEST0000001"
SECRET = "emberTestSecretKey/0000000000000000000000"

def write_credentials(path: Path, key_id: str = KEY_ID, secret: str = SECRET,
                      profile: str = "ember") -> Path:
    """An AWS shared-credentials file (the format emberd and the CLI both read), 0600."""
    path.write_text(f"[{profile}]\naws_access_key_id = {key_id}\n"
                    f"aws_secret_access_key = {secret}\n")
    path.chmod(0o600)
    return path


def endpoint(port: int = PORT) -> str:
    """emberd's EC2 endpoint URL."""
    return f"http://127.0.0.1:{port}"


def wait_listening(port: int, timeout: float = 30) -> None:
    """Waits until something accepts on 127.0.0.1:`port` (in the current namespace)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
            return
        except OSError:
            expect(time.monotonic() < deadline, f"nothing listens on 127.0.0.1:{port}")
            time.sleep(0.2)


def client(url: str, key_id: str = KEY_ID, secret: str = SECRET, region: str = REGION):
    """A boto3 EC2 client for `url`, without retries (an error is the answer looked at)."""
    if str(PYDEPS) not in sys.path and PYDEPS.is_dir():
        sys.path.append(str(PYDEPS))
    import boto3
    from botocore.config import Config
    return boto3.client("ec2", endpoint_url=url, region_name=region,
                        aws_access_key_id=key_id, aws_secret_access_key=secret,
                        config=Config(retries={"max_attempts": 1, "mode": "standard"},
                                      connect_timeout=10, read_timeout=120))


def signed_request(body: str, when=None) -> urllib.request.Request:
    """A POST of the form `body` to emberd's endpoint, signed as botocore signs one, at
    time `when` (an aware datetime; default now): what boto3 would send, for requests it
    will not make (a stale date, a bad form) and to replay one without boto3's costs."""
    import datetime
    import unittest.mock

    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials
    req = AWSRequest(method="POST", url=endpoint() + "/", data=body,
                     headers={"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"})
    signer = SigV4Auth(Credentials(KEY_ID, SECRET), "ec2", REGION)
    if when is None:
        signer.add_auth(req)
    else:
        # botocore signs with the time its get_current_datetime gives (UTC, naive).
        utc = when.astimezone(datetime.timezone.utc).replace(tzinfo=None)
        with unittest.mock.patch("botocore.auth.get_current_datetime", return_value=utc):
            signer.add_auth(req)
    p = req.prepare()
    data = p.body.encode() if isinstance(p.body, str) else p.body
    return urllib.request.Request(p.url, data=data, method="POST", headers=dict(p.headers))


def aws(ns: str, creds: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """The AWS CLI (its `ember` profile from `creds`, JSON output) inside namespace `ns`."""
    env = dict(os.environ, PYTHONPATH=str(PYDEPS), AWS_SHARED_CREDENTIALS_FILE=str(creds),
               AWS_CONFIG_FILE=str(creds.parent / "aws-config"), AWS_PROFILE="ember",
               AWS_DEFAULT_REGION=REGION, AWS_DEFAULT_OUTPUT="json",
               AWS_MAX_ATTEMPTS="1")
    r = subprocess.run(["ip", "netns", "exec", ns, sys.executable, str(PYDEPS / "bin" / "aws"),
                        "--endpoint-url", endpoint(), *args],
                       capture_output=True, text=True, env=env, timeout=180)
    if check:
        expect(r.returncode == 0, f"aws {' '.join(args)} exited {r.returncode}:\n{r.stderr}")
    return r


@contextlib.contextmanager
def moto_server(ns: str, work: Path, port: int = 5055):
    """moto's EC2 server on 127.0.0.1:`port` inside namespace `ns`, for the block."""
    env = dict(os.environ, PYTHONPATH=str(PYDEPS))
    log = open(work / "moto.log", "w")
    proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-m", "moto.server",
                             "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)
    try:
        wait_listening(port, timeout=60)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.kill()
        proc.wait(timeout=10)
        log.close()


def key_paths(value, prefix: str = "") -> set[str]:
    """The set of key paths of a parsed answer (`Reservations[].Instances[].State.Name`),
    without botocore's ResponseMetadata."""
    out: set[str] = set()
    if isinstance(value, dict):
        for k, v in value.items():
            if k == "ResponseMetadata":
                continue
            p = f"{prefix}.{k}" if prefix else k
            out.add(p)
            out |= key_paths(v, p)
    elif isinstance(value, list):
        for v in value:
            out |= key_paths(v, prefix + "[]")
    return out
