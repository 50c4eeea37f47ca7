#!/usr/bin/env bash
# The Python packages the EC2 API's tests and the demo use, from PyPI, pinned: boto3, the
# AWS CLI (v1, a Python package) and moto's server (the reference the XML shapes are
# compared with). Installed with Debian's pip into a directory of their own
# (EMBER_PYDEPS, default ~/.cache/ember/python), never into the system's Python; the
# suite and the demo put it on their path. Does nothing when the pins are already there.
set -euo pipefail
dir=${EMBER_PYDEPS:-$HOME/.cache/ember/python}
pins=(boto3==1.43.11 botocore==1.43.11 awscli==1.45.11 "moto[server]==5.2.1")
stamp="$dir/.pins"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "${pins[*]}" ]; then
  exit 0
fi
echo "python-deps: installing ${pins[*]} into $dir" >&2
rm -rf "$dir.new"
/usr/bin/python3 -m pip install --quiet --disable-pip-version-check --no-warn-script-location \
  --target "$dir.new" "${pins[@]}"
rm -rf "$dir"
mv "$dir.new" "$dir"
echo "${pins[*]}" > "$stamp"
