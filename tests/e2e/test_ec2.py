"""EC2's Query API (issue 20): boto3, its waiters and the AWS CLI drive emberd's EC2
endpoint; moto's server is the reference the parsed shapes are compared with; bad
requests get EC2's error codes. emberd runs in a network namespace of its own (its
listener is on that namespace's loopback): the cases enter it (framework.net.in_netns)."""

from __future__ import annotations

import datetime
import json
import time
import urllib.error
import urllib.request

import pytest

from framework import ec2
from framework.agent import register
from framework.common import expect
from framework.net import in_netns

pytestmark = [pytest.mark.emulated_flaky,
              pytest.mark.arch("x86_64", reason="emberd registers the x86_64 vmlinux as its "
                               "images' kernel, as in test_agent")]

# The guest prints its user data as MMDS gives it (V2 token first), then a marker per boot.
GUEST = ("M=169.254.169.254; ip route add $M dev eth0 2>/dev/null; "
         "T=$(printf 'PUT /latest/api/token HTTP/1.1\\r\\nX-metadata-token-ttl-seconds: 60\\r\\n"
         "Connection: close\\r\\n\\r\\n' | nc $M 80 | tail -n 1); "
         "echo MD-USER-DATA $(printf 'GET /latest/user-data HTTP/1.1\\r\\nX-metadata-token: %s"
         "\\r\\nConnection: close\\r\\n\\r\\n' $T | nc $M 80 | tail -n 1); "
         "echo EC2-GUEST-BOOTED; sleep 100000")
WAIT = {"Delay": 1, "MaxAttempts": 180}


def ec2_agent(emberd_factory, ctx):
    """emberd with its EC2 endpoint on loopback and the test's credentials file."""
    creds = ec2.write_credentials(ctx.work / "aws-credentials")
    agent = emberd_factory(extra=("--ec2-listen", f"127.0.0.1:{ec2.PORT}",
                                  "--ec2-credentials", str(creds), "--region", ec2.REGION,
                                  "--availability-zone", ec2.ZONE))
    return agent, creds


def ids(reservations) -> list[str]:
    return sorted(i["InstanceId"] for r in reservations for i in r["Instances"])


def describe(c, **kw) -> list[str]:
    return ids(c.describe_instances(**kw)["Reservations"])


@pytest.mark.timeout(900)
def test_ec2_boto3_and_the_cli_run_describe_stop_start_reboot_terminate(ctx, emberd_factory):
    agent, creds = ec2_agent(emberd_factory, ctx)
    image = register(agent, ctx, GUEST)
    with in_netns(agent.ns):
        ec2.wait_listening(ec2.PORT)
        c = ec2.client(ec2.endpoint())
        # Run two, tagged, with user data and a client token; the waiter sees them running.
        tags = [{"ResourceType": "instance", "Tags": [{"Key": "Name", "Value": "web"},
                                                      {"Key": "team", "Value": "blue"}]}]
        run = c.run_instances(ImageId=image, InstanceType="e1.micro", MinCount=2, MaxCount=2,
                              UserData="hello-from-ec2", TagSpecifications=tags,
                              ClientToken="ec2-tok-1")
        web = sorted(i["InstanceId"] for i in run["Instances"])
        expect(len(web) == 2 and run["ReservationId"].startswith("r-"), f"run: {run}")
        expect(all(i["State"]["Name"] == "pending" and i["State"]["Code"] == 0
                   for i in run["Instances"]), f"run states: {run['Instances']}")
        c.get_waiter("instance_running").wait(InstanceIds=web, WaiterConfig=WAIT)
        again = c.run_instances(ImageId=image, InstanceType="e1.micro", MinCount=2,
                                MaxCount=2, ClientToken="ec2-tok-1")
        expect(sorted(i["InstanceId"] for i in again["Instances"]) == web
               and again["ReservationId"] == run["ReservationId"],
               f"a repeated ClientToken started something: {again}")
        expect(describe(c) == web, f"after the repeated token: {describe(c)}")
        # The guest reads its user data through MMDS.
        for iid in web:
            agent.wait_console(iid, "MD-USER-DATA hello-from-ec2", timeout=180)
        # Four more, untagged, for pagination (EC2's smallest page is 5).
        more = c.run_instances(ImageId=image, InstanceType="e1.nano", MinCount=4, MaxCount=4)
        extra = sorted(i["InstanceId"] for i in more["Instances"])
        c.get_waiter("instance_running").wait(InstanceIds=extra, WaiterConfig=WAIT)
        every = sorted(web + extra)
        pages = list(c.get_paginator("describe_instances").paginate(
            PaginationConfig={"PageSize": 5}))
        expect([len([i for r in p["Reservations"] for i in r["Instances"]]) for p in pages]
               == [5, 1], f"pages of 5: {[ids(p['Reservations']) for p in pages]}")
        expect(sorted(sum((ids(p["Reservations"]) for p in pages), [])) == every,
               "the pages do not hold every instance once")
        # Each filter.
        filters = {
            "instance-id": ([web[0]], [web[0]]),
            "instance-state-name": (["running"], every),
            "instance-type": (["e1.nano"], extra),
            "image-id": ([image], every),
            "tag:Name": (["web"], web),
            "tag-key": (["team"], web),
        }
        for name, (values, want) in filters.items():
            got = describe(c, Filters=[{"Name": name, "Values": values}])
            expect(got == want, f"filter {name}={values}: {got}, expected {want}")
        expect(describe(c, InstanceIds=[web[1]]) == [web[1]], "InstanceIds")
        inst = c.describe_instances(InstanceIds=[web[0]])["Reservations"][0]["Instances"][0]
        expect(inst["Placement"]["AvailabilityZone"] == ec2.ZONE
               and inst["PrivateIpAddress"].startswith("172.31.0.")
               and isinstance(inst["LaunchTime"], datetime.datetime)
               and {"Key": "Name", "Value": "web"} in inst["Tags"], f"instance shape: {inst}")
        status = c.describe_instance_status(InstanceIds=web)["InstanceStatuses"]
        expect(sorted(s["InstanceId"] for s in status) == web
               and all(s["InstanceState"]["Name"] == "running" for s in status),
               f"instance status: {status}")
        # Console output (base64 on the wire, decoded by botocore) holds the guest's marker.
        out = c.get_console_output(InstanceId=web[0])
        expect("EC2-GUEST-BOOTED" in out.get("Output", ""), f"console: {out}")
        # Tags after launch.
        c.create_tags(Resources=[web[0]], Tags=[{"Key": "stage", "Value": "prod"}])
        tagged = c.describe_tags(Filters=[{"Name": "resource-id", "Values": [web[0]]}])["Tags"]
        expect(sorted((t["Key"], t["Value"]) for t in tagged)
               == [("Name", "web"), ("stage", "prod"), ("team", "blue")], f"tags: {tagged}")
        c.delete_tags(Resources=[web[0]], Tags=[{"Key": "stage"}])
        expect(describe(c, Filters=[{"Name": "tag-key", "Values": ["stage"]}]) == [],
               "a deleted tag still matches")
        # Stop, start, reboot.
        stop = c.stop_instances(InstanceIds=[web[0]])["StoppingInstances"][0]
        expect(stop["PreviousState"]["Name"] == "running", f"stop: {stop}")
        c.get_waiter("instance_stopped").wait(InstanceIds=[web[0]], WaiterConfig=WAIT)
        start = c.start_instances(InstanceIds=[web[0]])["StartingInstances"][0]
        expect(start["PreviousState"]["Name"] == "stopped", f"start: {start}")
        c.get_waiter("instance_running").wait(InstanceIds=[web[0]], WaiterConfig=WAIT)
        c.reboot_instances(InstanceIds=[web[1]])
        deadline = time.monotonic() + 180
        while c.get_console_output(InstanceId=web[1]).get("Output", "").count(
                "EC2-GUEST-BOOTED") < 2:
            expect(time.monotonic() < deadline, "no second boot after RebootInstances")
            time.sleep(0.5)
        # The AWS CLI with a profile: its JSON names our instances; it runs and terminates.
        listed = json.loads(ec2.aws(agent.ns, creds, "ec2", "describe-instances").stdout)
        expect(sorted(i["InstanceId"] for r in listed["Reservations"] for i in r["Instances"])
               == every, f"aws ec2 describe-instances: {listed}")
        cli_run = json.loads(ec2.aws(agent.ns, creds, "ec2", "run-instances", "--image-id",
                                     image, "--instance-type", "e1.nano", "--count", "1").stdout)
        cli_id = cli_run["Instances"][0]["InstanceId"]
        ec2.aws(agent.ns, creds, "ec2", "wait", "instance-running", "--instance-ids", cli_id)
        gone = json.loads(ec2.aws(agent.ns, creds, "ec2", "terminate-instances",
                                  "--instance-ids", cli_id).stdout)
        expect(gone["TerminatingInstances"][0]["InstanceId"] == cli_id, f"cli terminate: {gone}")
        # Terminate the rest; the waiter sees them terminated.
        term = c.terminate_instances(InstanceIds=every)["TerminatingInstances"]
        expect(sorted(t["InstanceId"] for t in term) == every
               and all(t["CurrentState"]["Name"] in ("shutting-down", "terminated") for t in term),
               f"terminate: {term}")
        c.get_waiter("instance_terminated").wait(InstanceIds=every + [cli_id],
                                                 WaiterConfig=WAIT)
        ours = {
            "describe_instances": c.describe_instances(InstanceIds=[web[0]]),
            "describe_images": c.describe_images(ImageIds=[image]),
            "describe_instance_types": c.describe_instance_types(InstanceTypes=["e1.micro"]),
            "describe_regions": c.describe_regions(),
            "describe_availability_zones": c.describe_availability_zones(),
        }
        expect([r["RegionName"] for r in ours["describe_regions"]["Regions"]] == [ec2.REGION]
               and [z["ZoneName"] for z in ours["describe_availability_zones"]
                    ["AvailabilityZones"]] == [ec2.ZONE], "region and zone")
        types = ours["describe_instance_types"]["InstanceTypes"]
        expect(types and types[0]["InstanceType"] == "e1.micro"
               and types[0]["VCpuInfo"]["DefaultVCpus"] >= 1
               and types[0]["MemoryInfo"]["SizeInMiB"] > 0, f"types: {types}")
        # moto's server answers the same calls: every key emberd's answer has, moto's has at
        # the same place (the XML names are EC2's as botocore reads them).
        with ec2.moto_server(agent.ns, ctx.work) as url:
            m = ec2.client(url, region="us-east-1")
            ami = m.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
            mr = m.run_instances(ImageId=ami, InstanceType="t3.micro", MinCount=1, MaxCount=1,
                                 TagSpecifications=tags)
            mid = mr["Instances"][0]["InstanceId"]
            ref = {
                "run_instances": mr,
                "describe_instances": m.describe_instances(InstanceIds=[mid]),
                "describe_images": m.describe_images(ImageIds=[ami]),
                "describe_instance_types": m.describe_instance_types(InstanceTypes=["t3.micro"]),
                "describe_regions": m.describe_regions(),
                "describe_availability_zones": m.describe_availability_zones(),
                "stop_instances": m.stop_instances(InstanceIds=[mid]),
                "start_instances": m.start_instances(InstanceIds=[mid]),
                "describe_instance_status": m.describe_instance_status(InstanceIds=[mid]),
                "describe_tags": m.describe_tags(),
                "terminate_instances": m.terminate_instances(InstanceIds=[mid]),
            }
        ours.update(run_instances=run, stop_instances={"StoppingInstances": [stop]},
                    start_instances={"StartingInstances": [start]},
                    describe_instance_status={"InstanceStatuses": status},
                    describe_tags={"Tags": tagged},
                    terminate_instances={"TerminatingInstances": term})
        for call, answer in ours.items():
            extra_keys = ec2.key_paths(answer) - ec2.key_paths(ref[call])
            expect(not extra_keys, f"{call}: keys moto's EC2 does not have: {sorted(extra_keys)}")


def test_ec2_bad_requests_get_ec2s_error_codes_and_emberd_keeps_serving(ctx, emberd_factory):
    agent, _ = ec2_agent(emberd_factory, ctx)
    image = register(agent, ctx, "sleep 1000")
    from botocore.exceptions import ClientError

    def code_of(fn, **kw) -> str:
        try:
            fn(**kw)
        except ClientError as e:
            return e.response["Error"]["Code"]
        raise AssertionError(f"{fn.__name__}({kw}) succeeded")

    with in_netns(agent.ns):
        ec2.wait_listening(ec2.PORT)
        good = ec2.client(ec2.endpoint())
        wrong_secret = ec2.client(ec2.endpoint(), secret="not-the-secret")
        unknown_key = ec2.client(ec2.endpoint(), key_id="AKIANOBODY0000000000")
        cases = [
            ("a wrong secret", wrong_secret.describe_instances, {}, "SignatureDoesNotMatch"),
            ("an unknown key", unknown_key.describe_instances, {}, "AuthFailure"),
            ("an unknown instance id", good.describe_instances,
             {"InstanceIds": ["i-0123456789abcdef0"]}, "InvalidInstanceID.NotFound"),
            ("a malformed instance id", good.stop_instances,
             {"InstanceIds": ["web-1"]}, "InvalidInstanceID.Malformed"),
            ("an unknown type", good.run_instances,
             {"ImageId": image, "InstanceType": "m5.huge", "MinCount": 1, "MaxCount": 1},
             "InvalidParameterValue"),
            ("an unknown image", good.run_instances,
             {"ImageId": "img-00000000000000000", "InstanceType": "e1.micro", "MinCount": 1,
              "MaxCount": 1}, "InvalidAMIID.NotFound"),
            ("MaxResults below 5", good.describe_instances, {"MaxResults": 2},
             "InvalidParameterValue"),
        ]
        for what, fn, kw, want in cases:
            got = code_of(fn, **kw)
            expect(got == want, f"{what}: {got}, expected {want}")
        # What boto3 will not send: raw, signed requests.
        raw = [
            ("a missing MinCount", {"Action": "RunInstances", "ImageId": image,
                                    "InstanceType": "e1.micro", "MaxCount": "1"},
             None, 400, "MissingParameter"),
            ("an unknown action", {"Action": "LaunchRockets"}, None, 400, "InvalidAction"),
            ("a stale X-Amz-Date", {"Action": "DescribeInstances"},
             datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=20),
             400, "RequestExpired"),
            ("a malformed body", "Action=DescribeInstances&Version=2016-11-15&%zz=%%", None,
             400, None),
        ]
        for what, params, when, status, want in raw:
            got_status, body = signed_post(params, when)
            expect(got_status == status and "<Errors><Error><Code>" in body
                   and (want is None or f"<Code>{want}</Code>" in body)
                   and "<RequestID>" in body,
                   f"{what}: {got_status} {body[:400]}")
        # No signature at all, and an oversize body.
        for what, data, headers in [
            ("an unsigned request", b"Action=DescribeInstances&Version=2016-11-15", {}),
            ("an oversize body", b"Action=DescribeInstances&x=" + b"a" * (2 << 20), {}),
        ]:
            req = urllib.request.Request(ec2.endpoint() + "/", data=data, method="POST",
                                         headers={"Content-Type": "application/x-www-form-"
                                                  "urlencoded", **headers})
            try:
                urllib.request.urlopen(req, timeout=30)
                raise AssertionError(f"{what}: accepted")
            except urllib.error.HTTPError as e:
                expect(400 <= e.code < 500, f"{what}: {e.code}")
            except (ConnectionError, urllib.error.URLError):
                pass  # an oversize body may be cut off: refused either way
        # Still serving, and the JSON API untouched.
        expect(good.describe_instances()["Reservations"] == [], "emberd stopped serving")
        expect(agent.ctl_json("ls")["instances"] == [], "the JSON API changed")


def signed_post(params, when=None) -> tuple[int, str]:
    """POSTs a signed Query request (a dict, or a raw body) at time `when` (default now);
    returns (status, body)."""
    import urllib.parse
    body = (urllib.parse.urlencode({"Version": "2016-11-15", **params})
            if isinstance(params, dict) else params)
    try:
        with urllib.request.urlopen(ec2.signed_request(body, when), timeout=30) as resp:
            return resp.status, resp.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")
