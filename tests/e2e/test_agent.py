"""emberd cases (issue 6): the host agent run for real, driven with emberctl and over its
socket, launching real guests. Each case runs emberd inside a network namespace of its
own, so its bridge and taps go with the namespace."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from framework.agent import register, wait_until
from framework.api import call, text as api_text
from framework.common import expect
from framework.net import sh

pytestmark = pytest.mark.emulated_flaky

# The guest: prints its metadata, read from MMDS (V2: a session token first, raw HTTP over
# busybox's nc), and its user data (its second drive); on its first boot it writes a
# marker to its root volume; on a later boot it says it found it. Then it idles until
# stopped.
MMDS_CMD = ("M=169.254.169.254; ip route add $M dev eth0 2>/dev/null; "
            "T=$(printf 'PUT /latest/api/token HTTP/1.1\\r\\nX-metadata-token-ttl-seconds: 60\\r\\n"
            "Connection: close\\r\\n\\r\\n' | nc $M 80 | tail -n 1); "
            "for k in meta-data/instance-id meta-data/local-ipv4 user-data; do echo MD $k "
            "$(printf 'GET /latest/%s HTTP/1.1\\r\\nX-metadata-token: %s\\r\\nConnection: close"
            "\\r\\n\\r\\n' $k $T | nc $M 80 | tail -n 1); done; ")
MARKER_CMD = (MMDS_CMD + "echo UD=$(head -c 64 /dev/vdb | tr -d '\\000'); if [ -f /marker ]; then echo SEEN-MARKER $(cat /marker); else "
              "echo run-1 > /marker; sync; echo WROTE-MARKER; fi; sleep 100000")


@pytest.mark.timeout(600)
@pytest.mark.arch("x86_64", reason="emberd registers the x86_64 vmlinux as its images' kernel; not yet run with aarch64 guests")
def test_agent_lifecycle_stop_start_keeps_data_terminate_frees_everything(ctx, emberd):
    agent = emberd
    ns = agent.ns
    image = register(agent, ctx, MARKER_CMD)
    mode = os.stat(agent.sock).st_mode & 0o777
    expect(mode == 0o660, f"emberd's socket has mode {mode:o}, not 660")
    ran = agent.ctl_json("run", "--image", image, "--type", "e1.micro",
                         "--tag", "Name=web", "--client-token", "tok-1",
                         "--user-data", "hello-from-user-data")
    inst = ran["instances"][0]
    iid = inst["id"]
    expect(inst["state"] == "running", f"run returned {inst['state']}")
    agent.wait_console(iid, "WROTE-MARKER")
    agent.wait_console(iid, "UD=hello-from-user-data")
    # EC2's metadata, from inside the guest, through MMDS.
    agent.wait_console(iid, f"MD meta-data/instance-id {iid}")
    agent.wait_console(iid, f"MD meta-data/local-ipv4 {inst['ip']}")
    agent.wait_console(iid, "MD user-data hello-from-user-data")
    # The same client token: the same instance, no new one.
    again = agent.ctl_json("run", "--image", image, "--client-token", "tok-1", "--no-wait")
    expect([i["id"] for i in again["instances"]] == [iid], f"idempotent run: {again}")
    expect(len(agent.ctl_json("ls")["instances"]) == 1, "a second instance appeared")
    # Describe filters.
    by_tag = call(agent.sock, "GET", "/v1/instances?tag:Name=web")[1]["instances"]
    expect([i["id"] for i in by_tag] == [iid], f"tag filter: {by_tag}")
    table = agent.ctl("ls").stdout
    expect(iid in table and "running" in table, f"table: {table}")
    # Stop (Ctrl-Alt-Del; the guest reboots, its VMM exits) and start again.
    tap = inst["tap"]
    # (stop may answer at once with `stopping`, the work going on in the background, or
    # when it is done: the final state is waited for, which passes with either.)
    agent.ctl("stop", iid)
    stopped = agent.wait_state(iid, "stopped")
    expect(stopped["state"] == "stopped" and stopped["reason"] == "user request",
           f"after stop: {stopped['state']} {stopped['reason']}")
    wait_until(lambda: sh("ip", "-n", ns, "link", "show", tap, check=False).returncode != 0,
               "the tap outlived the stop", timeout=30)
    agent.ctl("start", iid)
    agent.wait_state(iid, "running")
    agent.wait_console(iid, "SEEN-MARKER run-1")
    # Reboot: a new VMM on the same volumes; the guest boots again.
    pid_before = agent.instance(iid)["pid"]
    # (reboot may answer `running` before the new VMM is up: the second boot is waited for.)
    agent.ctl("reboot", iid)
    deadline = time.monotonic() + 120
    while agent.ctl("console", iid).stdout.count("SEEN-MARKER run-1") < 2:
        expect(time.monotonic() < deadline, "no second boot after reboot")
        time.sleep(0.3)
    after = agent.wait_state(iid, "running")
    expect(after["pid"] != pid_before and after["reason"] == "user request",
           f"after reboot: pid {after['pid']} (was {pid_before}), {after['reason']}")
    # kill -9 of its VMM: stopped, with the reason, tap gone.
    pid = agent.instance(iid)["pid"]
    os.kill(pid, signal.SIGKILL)
    gone = agent.wait_state(iid, "stopped", timeout=10)
    expect("killed" in gone["reason"], f"reason after kill -9: {gone['reason']}")
    expect(sh("ip", "-n", ns, "link", "show", tap, check=False).returncode != 0,
           "the tap outlived its VMM")
    # Terminate: described as terminated, directory and volumes gone.
    # (terminate may answer `shutting-down` at once: wait for the final state.)
    agent.ctl("terminate", iid)
    done = agent.wait_state(iid, "terminated")
    expect(done["state"] == "terminated", f"terminate: {done['state']}")
    wait_until(lambda: not Path(inst["dir"]).exists(),
               "the instance directory outlived terminate", timeout=30)
    r = agent.ctl("start", iid, check=False)
    expect(r.returncode != 0 and "IncorrectInstanceState" in r.stderr, f"start terminated: {r.stderr}")
    expect(agent.instance(iid)["state"] == "terminated", "terminated instance not describable")
    # The image is free again.
    agent.ctl("images", "deregister", image)


@pytest.mark.arch("x86_64", reason="emberd registers the x86_64 vmlinux as its images' kernel; not yet run with aarch64 guests")
def test_agent_bad_requests_get_the_right_4xx(ctx, emberd):
    agent = emberd
    image = register(agent, ctx, "sleep 100000")
    s = agent.sock
    checks = [
        ("POST", "/v1/instances", {"image_id": "img-00000000000000000", "instance_type": "e1.micro"}, 400, "InvalidImageID.NotFound"),
        ("POST", "/v1/instances", {"image_id": image, "instance_type": "m5.huge"}, 400, "InvalidInstanceType"),
        ("POST", "/v1/instances", {"image_id": image, "instance_type": "e1.micro", "count": 0}, 400, "InvalidParameterValue"),
        ("POST", "/v1/instances", {"image_id": image, "instance_type": "e1.xlarge", "count": 100000}, 400, "InsufficientInstanceCapacity"),
        ("POST", "/v1/instances", {"image_id": image, "instance_type": "e1.micro", "colour": "red"}, 400, "MalformedRequest"),
        ("POST", "/v1/images", {"name": "x", "kernel": "/nonexistent", "rootfs": "/nonexistent"}, 400, "InvalidParameterValue"),
        ("GET", "/v1/instances/i-00000000000000000", None, 404, "InvalidInstanceID.NotFound"),
        ("POST", "/v1/instances/i-00000000000000000/stop", None, 404, "InvalidInstanceID.NotFound"),
        ("GET", "/v1/instances?colour=red", None, 400, "InvalidParameter"),
        ("GET", "/v1/nothing", None, 404, "UnknownPath"),
        ("DELETE", "/v1/instances", None, 405, "MethodNotAllowed"),
        ("PUT", "/v1/types", {}, 405, "MethodNotAllowed"),
    ]
    for method, path, body, status, code in checks:
        got, answer = call(s, method, path, body)
        expect(got == status and answer and answer.get("code") == code,
               f"{method} {path} {body}: {got} {answer}")
    got, answer = call(s, "POST", "/v1/instances", raw=b'{"image_id": ')
    expect(got == 400 and answer["code"] == "MalformedRequest", f"malformed: {got} {answer}")
    # Framing errors hyper would answer with an empty body: emberd's error body, then close.
    for raw in (b"GARBAGE\r\n\r\n", b"GET /v1/types HTTP/1.1\r\nBad\x01Header: x\r\n\r\n",
                b"GET /v1/ty pes HTTP/1.1\r\n\r\n"):
        c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        c.connect(s)
        c.settimeout(10)
        c.sendall(raw)
        reply = b""
        while chunk := c.recv(4096):
            reply += chunk
        c.close()
        head, _, body = reply.partition(b"\r\n\r\n")
        expect(head.startswith(b"HTTP/1.1 400") and json.loads(body)["code"] == "MalformedRequest",
               f"{raw!r}: {reply!r}")
    r = agent.ctl("run", "--image", image, "--type", "nope", check=False)
    expect(r.returncode == 1 and "InvalidInstanceType" in r.stderr, f"emberctl: {r.stderr!r}")
    expect(call(s, "GET", "/v1/types")[0] == 200, "not serving after bad requests")


@pytest.mark.timeout(600)
@pytest.mark.arch("x86_64", reason="emberd registers the x86_64 vmlinux as its images' kernel; not yet run with aarch64 guests")
def test_agent_five_instances_concurrent_describes_restart_adopts(ctx, emberd):
    agent = emberd
    ns = agent.ns
    image = register(agent, ctx, "echo BOOTED; sleep 100000")
    # 50 describes from 10 threads while 5 instances launch: every one answered.
    answers: list[int] = []

    def describe_loop():
        for _ in range(5):
            try:
                answers.append(call(agent.sock, "GET", "/v1/instances")[0])
            except OSError as e:
                answers.append(-1)
                print(f"describe failed: {e}")
            time.sleep(0.05)

    threads = [threading.Thread(target=describe_loop) for _ in range(10)]
    for t in threads:
        t.start()
    ran = agent.ctl_json("run", "--image", image, "--count", "5", "--type", "e1.nano")
    for t in threads:
        t.join(timeout=120)
    expect(len(answers) == 50 and set(answers) == {200},
           f"concurrent describes: {len(answers)} answers, statuses {sorted(set(answers))}")
    ids = [i["id"] for i in ran["instances"]]
    expect(len(ids) == 5 and all(i["state"] == "running" for i in ran["instances"]),
           f"run: {[(i['id'], i['state']) for i in ran['instances']]}")
    ips = {i["ip"] for i in ran["instances"]}
    expect(len(ips) == 5, f"addresses not unique: {ips}")
    for iid in ids:
        agent.wait_console(iid, "BOOTED")
    pids = {iid: agent.instance(iid)["pid"] for iid in ids}
    agent.kill9()
    # While the agent is down, one VMM dies.
    os.kill(pids[ids[4]], signal.SIGKILL)
    time.sleep(0.5)
    agent.start()
    for iid in ids[:4]:
        inst = agent.instance(iid)
        expect(inst["state"] == "running" and inst["pid"] == pids[iid],
               f"{iid} not adopted: {inst['state']} pid {inst['pid']} (was {pids[iid]})")
        # Still answering: its VMM's own API, through its socket.
        expect(call(inst["api_socket"], "GET", "/")[1]["state"] == "Running",
               f"{iid}'s VMM does not answer")
    dead = agent.instance(ids[4])
    expect(dead["state"] == "stopped" and "agent was down" in dead["reason"],
           f"dead VMM: {dead['state']} {dead['reason']}")
    expect(sh("ip", "-n", ns, "link", "show", dead["tap"], check=False).returncode != 0,
           "the dead VMM's tap was left behind")
    # An adopted instance is still managed: stop it.
    # (stop and terminate may answer before their work is done: wait for the final state.)
    agent.ctl("stop", "--force", ids[0])
    expect(agent.wait_state(ids[0], "stopped")["state"] == "stopped",
           "adopted instance did not stop")
    for iid in ids:
        agent.ctl("terminate", iid)
    for iid in ids:
        agent.wait_state(iid, "terminated")

    def vmms_left() -> list[int]:
        return agent.vmm_pids()

    deadline = time.monotonic() + 30
    while vmms_left() and time.monotonic() < deadline:
        time.sleep(0.2)
    left = vmms_left()
    expect(not left, f"VMMs left after terminate: {left}")


CGROUPS = Path("/sys/fs/cgroup")
UID_START = 900000  # emberd's default --uid-range start


def proc_uid(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError(f"no Uid in /proc/{pid}/status")


def prom_value(text: str, metric: str, iid: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(metric + "{") and f'instance_id="{iid}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return None


@pytest.mark.timeout(600)
@pytest.mark.arch("x86_64", reason="emberd registers the x86_64 vmlinux as its images' kernel; not yet run with aarch64 guests")
def test_agent_every_vmm_is_jailed_with_its_own_uid_and_cgroup(ctx, emberd):
    agent = emberd
    # Each guest fills 90 of its 128 MiB: all of it is charged to its VMM's cgroup.
    image = register(agent, ctx, "echo BOOTED; mkdir -p /m && mount -t tmpfs -o size=100M tmpfs /m "
                                 "&& dd if=/dev/zero of=/m/f bs=1M count=90 2>/dev/null; "
                                 "echo FILLED; sleep 100000")
    ran = agent.ctl_json("run", "--image", image, "--count", "2", "--type", "e1.nano")
    a, b = ran["instances"]
    for inst in (a, b):
        agent.wait_console(inst["id"], "FILLED", timeout=180)
    views = {i["id"]: agent.instance(i["id"]) for i in (a, b)}
    uids = {}
    for iid, v in views.items():
        pid = v["pid"]
        uid = proc_uid(pid)
        uids[iid] = uid
        expect(uid == UID_START + int(v["ip"].rsplit(".", 1)[1]),
               f"{iid} runs as uid {uid}, address {v['ip']}")
        own = Path(f"/proc/{pid}/cgroup").read_text().strip()
        expect(own == f"0::/emberd/{iid}", f"{iid}: in cgroup {own}")
        cg = CGROUPS / "emberd" / iid
        limit = (128 + 64) << 20
        expect((cg / "memory.max").read_text().strip() == str(limit), "memory.max")
        expect((cg / "cpu.max").read_text().strip() == "100000 100000", "cpu.max")
        expect((cg / "pids.max").read_text().strip() == "64", "pids.max")
        # The guest's memory is the VMM's, charged to its cgroup and held under the limit.
        current = int((cg / "memory.current").read_text())
        expect(64 << 20 < current <= limit, f"{iid}: memory.current {current}")
        peak = cg / "memory.peak"
        if peak.exists():
            expect(int(peak.read_text()) <= limit, f"{iid}: memory.peak {peak.read_text()}")
        # Its root is its jail: its own files, no one else's.
        root = Path(f"/proc/{pid}/root")
        volume = Path(v["dir"]) / "root.img"
        st = volume.stat()
        expect(st.st_uid == uid and st.st_mode & 0o777 == 0o600,
               f"{iid}: its volume is {st.st_uid}:{st.st_mode & 0o777:o}")
        expect((root / "rootfs.img").stat().st_ino == st.st_ino,
               f"{iid}: the jail's rootfs.img is not its volume")
        names = sorted(os.listdir(root))
        expect(set(names) <= {"dev", "ember", "run", "kernel", "initrd", "rootfs.img",
                              "user_data.img", "metrics.jsonl", "hibernate"},
               f"{iid}: jail holds {names}")
        # Where a hibernation snapshot is written: the VMM user's alone, and empty.
        hib = (root / "hibernate").stat()
        expect(hib.st_uid == uid and hib.st_mode & 0o777 == 0o700
               and not os.listdir(root / "hibernate"),
               f"{iid}: hibernate/ is {hib.st_uid}:{hib.st_mode & 0o777:o}")
    expect(len(set(uids.values())) == 2, f"both VMMs run as one uid: {uids}")
    # One VMM's user cannot open the other's volume.
    r = subprocess.run(["setpriv", f"--reuid={uids[a['id']]}", f"--regid={uids[a['id']]}",
                        "--clear-groups", "head", "-c", "1", str(Path(b["dir"]) / "root.img")],
                       capture_output=True, text=True)
    expect(r.returncode != 0 and "Permission denied" in r.stderr,
           f"uid {uids[a['id']]} read the other instance's volume: {r.returncode} {r.stderr!r}")
    # The cgroup's CPU time covers the metered vCPU time (the whole process against its
    # vCPU threads).
    text = api_text(agent.sock, "/metrics")[2]
    cg_s = prom_value(text, "ember_instance_cgroup_cpu_seconds_total", a["id"])
    vcpu_s = prom_value(text, "ember_instance_vcpu_seconds_total", a["id"])
    expect(cg_s is not None and cg_s > 0, f"no cgroup CPU time for {a['id']}: {text[-2000:]}")
    expect(vcpu_s is not None and vcpu_s <= cg_s,
           f"metered vCPU {vcpu_s} s exceeds the cgroup's {cg_s} s")
    # A process the VMM could have started (here put into its cgroup by hand) does not
    # outlive the instance: terminate kills the whole cgroup.
    survivor = subprocess.Popen(["setpriv", f"--reuid={uids[a['id']]}", f"--regid={uids[a['id']]}",
                                 "--clear-groups", "sleep", "600"])
    (CGROUPS / "emberd" / a["id"] / "cgroup.procs").write_text(str(survivor.pid))
    # Terminate removes its jail and its cgroup; the neighbour runs on.
    agent.ctl("terminate", a["id"])
    agent.wait_state(a["id"], "terminated")
    try:
        survivor.wait(timeout=30)
    except subprocess.TimeoutExpired:
        survivor.kill()
        raise AssertionError("a process in the instance's cgroup outlived terminate")
    jail = agent.state / "jail" / "ember" / a["id"]
    wait_until(lambda: not jail.exists() and not (CGROUPS / "emberd" / a["id"]).exists(),
               "the jail or the cgroup outlived terminate", timeout=30)
    expect(call(views[b["id"]]["api_socket"], "GET", "/")[1]["state"] == "Running",
           "the neighbour's VMM stopped answering")
    agent.ctl("terminate", b["id"])
    agent.wait_state(b["id"], "terminated")


HIBERNATE_CMD = ("sleep 100000 & bg=$!; i=0; while :; do echo TICK $i $(cut -d' ' -f1 /proc/uptime) "
                 "BG=$(cat /proc/$bg/comm); i=$((i+1)); sleep 0.5; done")


def ticks(agent, iid: str) -> list[tuple[int, float, str]]:
    out = agent.ctl("console", iid).stdout
    return [(int(a), float(b), c) for a, b, c in
            __import__("re").findall(r"TICK (\d+) ([\d.]+) BG=(\S*)", out)]


@pytest.mark.timeout(600)
@pytest.mark.arch("x86_64", reason="emberd registers the x86_64 vmlinux as its images' kernel; not yet run with aarch64 guests")
def test_agent_hibernate_resumes_the_guest_across_an_agent_restart(ctx, emberd):
    agent = emberd
    image = register(agent, ctx, HIBERNATE_CMD)
    iid = agent.ctl_json("run", "--image", image, "--type", "e1.micro")["instances"][0]["id"]
    agent.wait_console(iid, "TICK 3 ")
    agent.ctl("stop", "--hibernate", iid)
    t_stop = time.monotonic()
    stopped = agent.wait_state(iid, "stopped")
    expect(stopped["reason"] == "hibernated", f"reason after stop --hibernate: {stopped['reason']}")
    expect(stopped.get("hibernation_bytes", 0) > 0, f"no snapshot size reported: {stopped}")
    before = ticks(agent, iid)[-1]
    # The agent dies while the instance is hibernated; the new one resumes it.
    agent.kill9()
    agent.start()
    time.sleep(2)
    agent.ctl("start", iid)
    running = agent.wait_state(iid, "running")
    expect(running["reason"] == "resumed from hibernation", f"start: {running['reason']}")
    wait_until(lambda: ticks(agent, iid)[-1][0] >= before[0] + 3, "the counter did not go on",
               timeout=120)
    after = [t for t in ticks(agent, iid) if t[0] > before[0]]
    stopped_for = time.monotonic() - t_stop
    expect(after[0][0] == before[0] + 1, f"the counter went from {before[0]} to {after[0][0]}")
    expect(after[0][1] - before[1] < stopped_for,
           f"uptime jumped from {before[1]} to {after[0][1]} over a {stopped_for:.0f} s stop")
    expect(all(t[2] == "sleep" for t in after), f"the process started before is gone: {after[:3]}")
    expect("hibernation_bytes" not in agent.instance(iid), "the used snapshot is still kept")
    # A snapshot that cannot be loaded: the instance boots cold and says so.
    agent.ctl("stop", "--hibernate", iid)
    again = agent.wait_state(iid, "stopped")
    expect(again["reason"] == "hibernated", f"a resumed instance's hibernation: {again['reason']}")
    snap = Path(agent.instance(iid)["dir"]) / "hibernation" / "vm.snap"
    data = bytearray(snap.read_bytes())
    data[len(data) // 2] ^= 0xff
    snap.write_bytes(bytes(data))
    agent.ctl("start", iid)
    cold = agent.wait_state(iid, "running")
    expect("booted cold" in cold["reason"] and "checksum" in cold["reason"],
           f"reason after a bad snapshot: {cold['reason']}")
    wait_until(lambda: agent.ctl("console", iid).stdout.count("TICK 0 ") >= 2,
               "no cold boot after the bad snapshot", timeout=120)
    agent.ctl("terminate", iid)
    agent.wait_state(iid, "terminated")
