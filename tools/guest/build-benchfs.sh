#!/usr/bin/env bash
# Builds the "bench tools" image that benchmark guests mount read-only from a second drive:
# an ext4 image (mkfs.ext4 -d, no root privileges needed), label `ember-bench`, holding
#   /bin/blkbench     tools/bench/blkbench.c, linked static (the guest's root has no libc)
#   /bin/iperf3       Debian's iperf3, dynamically linked, with its whole `ldd` closure
#   /lib/*            (libiperf, libcrypto, libsctp, libc, libm and the loader, ~8 MB); the
#                     guest runs it as /lib/ld-linux-x86-64.so.2 --library-path /lib ...
#                     (paths under the image's mount point), since its root has no /lib64
#   /bench_blk.sh     the guest half of tools/bench/bench_blk.py
#   /bench_net.sh     the guest half of tools/bench/bench_net.py
#
# Usage: tools/guest/build-benchfs.sh   (x86_64 guests: built with the host's gcc and
# iperf3, so guest and host run the same iperf3)
# Prints the output directory (holding benchfs.ext4). Cached by the hash of the sources,
# the scripts, this script, gcc's version and every file copied from the host.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
cache=${EMBER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ember}
src="$root/tools/bench/blkbench.c"
scripts=("$root/tools/bench/bench_blk.sh" "$root/tools/bench/bench_net.sh")

[ "$(uname -m)" = x86_64 ] || { echo "build-benchfs: x86_64 hosts only" >&2; exit 1; }
command -v gcc >/dev/null || "$here/install-deps.sh" kernel >&2     # build-essential
command -v mkfs.ext4 >/dev/null || "$here/install-deps.sh" images >&2
command -v iperf3 >/dev/null || "$here/install-deps.sh" bench >&2

iperf3=$(command -v iperf3)
libs=$(ldd "$iperf3" | grep -o '/[^ ]*')    # resolved libraries and the loader
[ -n "$libs" ] || { echo "build-benchfs: ldd found no libraries for $iperf3" >&2; exit 1; }
# shellcheck disable=SC2086  # $libs: one path a word
key=$( { sha256sum "$src" "${scripts[@]}" "$0" "$iperf3" $libs | cut -d' ' -f1
         gcc --version | head -1; } | sha256sum | cut -c1-16)
out="$cache/benchfs-x86_64-$key"
if [ -f "$out/.done" ]; then echo "$out"; exit 0; fi
rm -rf "$out.tmp"; mkdir -p "$out.tmp"
stage="$out.tmp/stage"
mkdir -p "$stage/bin" "$stage/lib"
gcc -static -O2 -Wall -Wextra -Werror -o "$stage/bin/blkbench" "$src"
cp "$iperf3" "$stage/bin/iperf3"
for l in $libs; do cp -L "$l" "$stage/lib/"; done
for s in "${scripts[@]}"; do cp "$s" "$stage/$(basename "$s")"; done

# The staged files plus a quarter and 2 MiB for ext4's own metadata.
kib=$(du -sk "$stage" | cut -f1)
mkfs.ext4 -q -F -L ember-bench -m 0 -O ^has_journal -E root_owner=0:0 -d "$stage" \
  "$out.tmp/benchfs.ext4" "$((kib + kib / 4 + 2048))K" >/dev/null
rm -rf "$stage"
touch "$out.tmp/.done"
rm -rf "$out"; mv "$out.tmp" "$out"
echo "$out"
