#!/usr/bin/env bash
# Builds the "bench tools" image that benchmark guests mount read-only from a second drive:
# an ext4 image (mkfs.ext4 -d, no root privileges needed), label `ember-bench`, holding
#   /bin/blkbench     tools/bench/blkbench.c, linked static (the guest's root has no libc)
#   /bench_blk.sh     the guest half of tools/bench/bench_blk.py
#
# Usage: tools/guest/build-benchfs.sh   (x86_64 guests: built with the host's gcc)
# Prints the output directory (holding benchfs.ext4). Cached by content hash.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
cache=${EMBER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ember}
src="$root/tools/bench/blkbench.c"
scripts=("$root/tools/bench/bench_blk.sh")

[ "$(uname -m)" = x86_64 ] || { echo "build-benchfs: x86_64 hosts only" >&2; exit 1; }
command -v gcc >/dev/null || "$here/install-deps.sh" kernel >&2     # build-essential
command -v mkfs.ext4 >/dev/null || "$here/install-deps.sh" images >&2

key=$( { sha256sum "$src" "${scripts[@]}" "$0" | cut -d' ' -f1; gcc --version | head -1; } |
       sha256sum | cut -c1-16)
out="$cache/benchfs-x86_64-$key"
if [ -f "$out/.done" ]; then echo "$out"; exit 0; fi
rm -rf "$out.tmp"; mkdir -p "$out.tmp"
stage="$out.tmp/stage"
mkdir -p "$stage/bin"
gcc -static -O2 -Wall -Wextra -Werror -o "$stage/bin/blkbench" "$src"
for s in "${scripts[@]}"; do cp "$s" "$stage/$(basename "$s")"; done

mkfs.ext4 -q -F -L ember-bench -m 0 -O ^has_journal -E root_owner=0:0 -d "$stage" \
  "$out.tmp/benchfs.ext4" 4M >/dev/null
rm -rf "$stage"
touch "$out.tmp/.done"
rm -rf "$out"; mv "$out.tmp" "$out"
echo "$out"
