"""EC2 API benchmark (issue 20), registered as the `bench_ec2` case (suite `bench`): the
same emberd answered through its EC2 endpoint (boto3, SigV4, XML) and through its JSON API
(Unix socket), in the same run, interleaved:

- `DescribeInstances` with 20 instances (made first): p50/p99 of 200 calls each. Under
  emulation twenty guests cannot run at once (see bench_agent), so the twenty are made
  four at a time and stopped (`Force`) once running: a describe reads the same records;
- `RunInstances` -> running: 3 instances from one call, until emberd says all are running
  (boto3's `instance_running` waiter polling every 0.2 s; the JSON API polled as often);
  rounds alternate which API goes first, and the instances are terminated between them.

emberd closes every connection after one answer, so every client connects per request.
A third column replays one botocore-signed DescribeInstances with urllib: emberd's own
share (SigV4 check, the describe, the XML), without boto3's signing and parsing. No
peer agent to run beside it: the JSON API is the yardstick the issue asks for."""

from __future__ import annotations

import os
import statistics
import time
import urllib.request

from framework import ec2
from framework.agent import Emberd, register
from framework.api import call
from framework.net import in_netns, netns
from harness import case, log

ROUNDS = int(os.environ.get("EMBER_BENCH_RUNS", "3"))
CALLS = 200
WAIT = {"Delay": 0.2, "MaxAttempts": 3000}


RAW = "EC2 API (signed once)"
APIS = ("EC2 API (boto3)", RAW, "JSON API")


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))]


def _json_run(agent: Emberd, image: str, n: int) -> tuple[float, list[str]]:
    t0 = time.monotonic()
    code, ran = call(agent.sock, "POST", "/v1/instances",
                     {"image_id": image, "instance_type": "e1.nano", "count": n})
    assert code == 200, ran
    ids = [i["id"] for i in ran["instances"]]
    while any(agent.instance(i)["state"] != "running" for i in ids):
        assert time.monotonic() - t0 < 600, "JSON API: not all running after 600 s"
        time.sleep(0.2)
    return time.monotonic() - t0, ids


def _ec2_run(c, image: str, n: int) -> tuple[float, list[str]]:
    t0 = time.monotonic()
    ran = c.run_instances(ImageId=image, InstanceType="e1.nano", MinCount=n, MaxCount=n)
    ids = [i["InstanceId"] for i in ran["Instances"]]
    c.get_waiter("instance_running").wait(InstanceIds=ids, WaiterConfig=WAIT)
    return time.monotonic() - t0, ids


def _gone(agent: Emberd, ids: list[str]) -> None:
    for iid in ids:
        agent.ctl("terminate", iid)
    for iid in ids:
        agent.wait_state(iid, "terminated", timeout=300)


@case("bench_ec2", suite="bench", timeout=3600, arches=("x86_64",))
def _(ctx):
    creds = ec2.write_credentials(ctx.work / "aws-credentials")
    with netns("bench-ec2") as ns:
        agent = Emberd(ctx, ns, extra=("--ec2-listen", f"127.0.0.1:{ec2.PORT}",
                                       "--ec2-credentials", str(creds)))
        try:
            image = register(agent, ctx, "sleep 100000")
            with in_netns(ns):
                ec2.wait_listening(ec2.PORT)
                c = ec2.client(ec2.endpoint())
                # Twenty to describe, first (terminated instances stay listed, as in EC2).
                made: list[str] = []
                while len(made) < 20:
                    _, ids = _json_run(agent, image, min(4, 20 - len(made)))
                    if ctx.emulated:
                        c.stop_instances(InstanceIds=ids, Force=True)
                        c.get_waiter("instance_stopped").wait(InstanceIds=ids, WaiterConfig=WAIT)
                    made += ids
                lat: dict[str, list[float]] = {a: [] for a in APIS}
                # Replayed as is (emberd accepts a signature for 5 minutes): emberd's own share.
                raw = ec2.signed_request("Action=DescribeInstances&Version=2016-11-15")
                for k in range(CALLS):
                    for api in APIS[k % 3:] + APIS[:k % 3]:
                        t = time.perf_counter()
                        if api == "JSON API":
                            n = len(call(agent.sock, "GET", "/v1/instances")[1]["instances"])
                        elif api == RAW:
                            with urllib.request.urlopen(raw, timeout=60) as r:
                                n = r.read().count(b"<instanceId>")
                        else:
                            n = sum(len(x["Instances"]) for x in
                                    c.describe_instances()["Reservations"])
                        lat[api].append((time.perf_counter() - t) * 1000)
                        assert n == 20, f"{api} described {n} instances"
                _gone(agent, made)
                runs: dict[str, list[float]] = {"EC2 API (boto3)": [], "JSON API": []}
                for r in range(ROUNDS):
                    order = ["JSON API", "EC2 API (boto3)"]
                    for api in order[r % 2:] + order[:r % 2]:
                        if api == "JSON API":
                            secs, ids = _json_run(agent, image, 3)
                        else:
                            secs, ids = _ec2_run(c, image, 3)
                        runs[api].append(secs)
                        _gone(agent, ids)
            where = "emulated KVM host" if ctx.emulated else "hardware KVM"
            log(f"EC2 API benchmark, {where}; {ROUNDS} interleaved rounds of RunInstances "
                f"-> running (3 x e1.nano), {CALLS} DescribeInstances of 20 instances"
                f"{' (stopped: see the module)' if ctx.emulated else ''}")
            log(f"{'':44}{'EC2 API (boto3)':>18}{RAW:>24}{'JSON API':>12}"
                f"{'boto3 / JSON':>14}{'signed once / JSON':>20}")
            e, j = statistics.median(runs["EC2 API (boto3)"]), statistics.median(runs["JSON API"])
            log(f"{'RunInstances -> all 3 running, median (s)':44}{e:18.2f}{'':>24}{j:12.2f}"
                f"{e / j:13.2f}x")
            for p, name in ((.5, "p50"), (.99, "p99")):
                e, r, j = (pct(lat[a], p) for a in APIS)
                log(f"{'DescribeInstances, 20 instances, ' + name + ' (ms)':44}"
                    f"{e:18.2f}{r:24.2f}{j:12.2f}{e / j:13.2f}x{r / j:19.2f}x")
            ctx.data(runs=runs, describe_ms=lat)
        finally:
            agent.stop_all()
