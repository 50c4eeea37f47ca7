"""The demo (README's first command, tools/demo.sh): boot one guest and show its console.
A harness case of suite `demo`, not a test."""

from __future__ import annotations

from framework.common import expect
from framework.vm import start_ember, vm_config
from harness import case


@case("demo", suite="demo", arches=("x86_64",))
def _(ctx):
    cmd = ("echo; uname -a; echo; grep -m1 'model name' /proc/cpuinfo; "
           "echo cpus: $(grep -c ^processor /proc/cpuinfo); free -m; echo; cat /proc/cmdline")
    cfg = vm_config(ctx, vcpus=2, mem_mib=256, mode="run", extra_args=f'ember_cmd="{cmd}"')
    cfg["boot-source"]["boot_args"] = cfg["boot-source"]["boot_args"].replace(" quiet", "")
    vm = start_ember(ctx, cfg, echo=True, extra_flags=["--level", "Info"])
    vm.wait_for(r"EMBER-CMD-EXIT status=0", timeout=300)
    rc = vm.wait_exit(timeout=60)
    expect(rc == 0, f"ember exited with {rc}\n{vm.tail()}")
    for line in vm.stderr().splitlines():
        print(f"e2e: ember| {line}", flush=True)
