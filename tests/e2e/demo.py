"""The demo (README's first command, tools/demo.sh): what Ember is for. emberd, the host
agent, runs with its EC2 endpoint on loopback; the AWS CLI, pointed at it, runs an
instance, waits for it with its waiter, reads its console, and terminates it; emberctl
shows the instance's metered usage. A harness case of suite `demo`, not a test."""

from __future__ import annotations

import json
import secrets
import shlex
import time

from framework import ec2
from framework.agent import Emberd, register
from framework.common import expect, log
from framework.net import netns
from harness import case

# The guest introduces itself: its kernel, CPUs and memory, and what EC2's metadata
# service (MMDS, inside ember) says it is.
GUEST = ("M=169.254.169.254; ip route add $M dev eth0 2>/dev/null; "
         "T=$(printf 'PUT /latest/api/token HTTP/1.1\\r\\nX-metadata-token-ttl-seconds: 60\\r\\n"
         "Connection: close\\r\\n\\r\\n' | nc $M 80 | tail -n 1); "
         "md() { printf 'GET /latest/%s HTTP/1.1\\r\\nX-metadata-token: %s\\r\\nConnection: "
         "close\\r\\n\\r\\n' $1 $T | nc $M 80 | tail -n 1; }; "
         "echo; echo hello from $(md meta-data/instance-id): type $(md meta-data/instance-type), "
         "zone $(md meta-data/placement/availability-zone), address $(md meta-data/local-ipv4); "
         "echo kernel $(uname -r), $(grep -c ^processor /proc/cpuinfo) vCPUs, "
         "$(free -m | awk '/Mem:/ {print $2}') MiB; echo user data: $(md user-data); "
         "echo DEMO-GUEST-DONE; sleep 100000")


def step(n: int, text: str) -> None:
    log("")
    log(f"[{n}/7] {text}")


def show(text: str) -> None:
    for line in text.rstrip().splitlines():
        log(f"    {line}")


@case("demo", suite="demo", arches=("x86_64",), timeout=900)
def _(ctx):
    step(1, "emberd, the host agent: its state in a scratch directory, its JSON API on a "
            "Unix socket, and EC2's Query API on 127.0.0.1:8788 with a freshly made access "
            "key (an AWS credentials file, mode 0600, that the AWS CLI reads too)")
    key_id = "AKIA" + secrets.token_hex(8).upper()
    creds = ec2.write_credentials(ctx.work / "aws-credentials", key_id,
                                  secrets.token_urlsafe(30))
    with netns("demo") as ns:
        agent = Emberd(ctx, ns, extra=("--ec2-listen", f"127.0.0.1:{ec2.PORT}",
                                       "--ec2-credentials", str(creds),
                                       "--region", ec2.REGION))
        try:
            show(f"emberd --state-dir {agent.state} --ec2-listen 127.0.0.1:{ec2.PORT} "
                 f"--ec2-credentials {creds.name} --region {ec2.REGION}")
            step(2, "register the guest image (a Linux kernel and an ext4 root filesystem "
                    "built from Debian packages): emberctl images register")
            image = register(agent, ctx, GUEST)
            show(f"image {image}")

            def aws(*args: str) -> str:
                show("$ aws --endpoint-url " + ec2.endpoint() + " " + shlex.join(args))
                return ec2.aws(ns, creds, *args).stdout

            step(3, "run an instance with the AWS CLI, as against EC2 (the endpoint is the "
                    "only difference)")
            out = json.loads(aws("ec2", "run-instances", "--image-id", image,
                                 "--instance-type", "e1.small", "--count", "1",
                                 "--user-data", "hello from the demo",
                                 "--tag-specifications",
                                 "ResourceType=instance,Tags=[{Key=Name,Value=demo}]"))
            inst = out["Instances"][0]
            iid = inst["InstanceId"]
            show(f"{iid}: {inst['State']['Name']}, {inst['InstanceType']}, "
                 f"{inst['PrivateIpAddress']}")
            step(4, "wait for it with the CLI's waiter, then describe it")
            t0 = time.monotonic()
            aws("ec2", "wait", "instance-running", "--instance-ids", iid)
            show(f"running after {time.monotonic() - t0:.1f} s")
            show(aws("ec2", "describe-instances", "--instance-ids", iid, "--output", "table",
                     "--query", "Reservations[].Instances[].[InstanceId,State.Name,"
                     "InstanceType,PrivateIpAddress,Placement.AvailabilityZone]"))
            step(5, "its console, through EC2's GetConsoleOutput: the guest read its "
                    "metadata and user data from the metadata service")
            deadline = time.monotonic() + 300
            while True:
                text = json.loads(ec2.aws(ns, creds, "ec2", "get-console-output",
                                          "--instance-id", iid).stdout).get("Output", "")
                if "DEMO-GUEST-DONE" in text:
                    break
                expect(time.monotonic() < deadline, f"the guest never finished:\n{text}")
                time.sleep(1)
            show("$ aws ec2 get-console-output --instance-id " + iid)
            show("\n".join(line for line in text.splitlines()
                           if line.strip() and "DEMO-GUEST-DONE" not in line
                           and not line.startswith("[")))
            step(6, "what it used, as emberd meters it: emberctl usage")
            show(agent.ctl("usage").stdout)
            step(7, "terminate it and wait until it is gone")
            aws("ec2", "terminate-instances", "--instance-ids", iid)
            aws("ec2", "wait", "instance-terminated", "--instance-ids", iid)
            show(f"{iid}: terminated; its volumes, tap and jail are gone")
        finally:
            agent.stop_all()
