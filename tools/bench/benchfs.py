"""The bench tools image for benchmark cases: a read-only ext4 image, label `ember-bench`,
built by tools/guest/build-benchfs.sh (see there for what it holds), that the guest mounts
at /mnt from a drive of its own."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from harness import ROOT, CaseFailed


def tools_image(ctx) -> Path:
    """The bench tools image, copied into the case's scratch directory so that no guest
    reads through the emulated host's 9p. It comes from $EMBER_BENCHFS (tools/bench/run
    builds it before the run, since inside the emulated host the cache is read-only), else
    from build-benchfs.sh run here."""
    src = os.environ.get("EMBER_BENCHFS")
    if not src:
        res = subprocess.run([str(ROOT / "tools/guest/build-benchfs.sh")], check=True,
                             stdout=subprocess.PIPE, text=True)
        src = res.stdout.strip().splitlines()[-1]
    image = Path(src) / "benchfs.ext4"
    if not image.is_file():
        raise CaseFailed(f"no bench tools image at {image} (run tools/guest/build-benchfs.sh)")
    dst = ctx.work / "benchfs.ext4"
    shutil.copyfile(image, dst)
    return dst
