"""The real-guest suite's pytest configuration: the framework's plugin (tests/framework/
plugin.py: --arch, markers, fixtures, retries under emulation, results)."""

import os
import sys
from pathlib import Path

# tests/ on the path, so `framework` imports as a package wherever pytest is started.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
# The pinned PyPI packages (boto3, the AWS CLI, moto: tools/ci/python-deps.sh), after
# Debian's own.
_pydeps = os.environ.get("EMBER_PYDEPS")
if _pydeps and Path(_pydeps).is_dir():
    sys.path.append(_pydeps)

from framework.plugin import *  # noqa: E402,F401,F403  (hooks and fixtures)
