#!/usr/bin/env bash
# Builds the "bench tools" image that benchmark guests mount read-only from a second drive:
# an ext4 image (mkfs.ext4 -d, no root privileges needed), label `ember-bench`, holding
#   /bin/fio                  Debian's fio
#   /lib/*                    every shared library in its ldd closure, flat, and the
#                             dynamic loader (ld-linux-x86-64.so.2)
#   /bench_blk.sh             the guest half of tools/bench/bench_blk.py
# The guest runs fio through the loader on the image (`/mnt/lib/ld-linux-x86-64.so.2
# --library-path /mnt/lib /mnt/bin/fio`), so its own root filesystem needs nothing.
#
# Usage: tools/guest/build-benchfs.sh   (x86_64 only: the host's fio is packaged)
# Prints the output directory (holding benchfs.ext4). Cached by content hash.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
cache=${EMBER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ember}
scripts=("$root/tools/bench/bench_blk.sh")

[ "$(uname -m)" = x86_64 ] || { echo "build-benchfs: x86_64 hosts only" >&2; exit 1; }
[ -x /usr/bin/fio ] || "$here/install-deps.sh" bench >&2
command -v mkfs.ext4 >/dev/null || "$here/install-deps.sh" images >&2

# The closure: "name => /path" lines give each library under the name the loader asks for;
# the loader itself is the line with an absolute path and no arrow.
libs=$(ldd /usr/bin/fio | awk '$2 == "=>" && $3 ~ /^\// {print $1 "=" $3} $1 ~ /^\// {print $1}')
[ -n "$libs" ] || { echo "build-benchfs: ldd /usr/bin/fio found no libraries" >&2; exit 1; }
files=(/usr/bin/fio)
for l in $libs; do files+=("$(readlink -f "${l#*=}")"); done

key=$( { sha256sum "${files[@]}" "${scripts[@]}" "$0" | cut -d' ' -f1; echo "$libs"; } |
       sha256sum | cut -c1-16)
out="$cache/benchfs-x86_64-$key"
if [ -f "$out/.done" ]; then echo "$out"; exit 0; fi
rm -rf "$out.tmp"; mkdir -p "$out.tmp"
stage="$out.tmp/stage"
mkdir -p "$stage/bin" "$stage/lib"
cp /usr/bin/fio "$stage/bin/fio"
for l in $libs; do
  src=${l#*=}
  cp "$(readlink -f "$src")" "$stage/lib/$(basename "${l%%=*}")"
done
for s in "${scripts[@]}"; do cp "$s" "$stage/$(basename "$s")"; done

# Room for the files plus ext4's metadata (no journal: the guest mounts it read-only).
kib=$(du -sk "$stage" | cut -f1)
mkfs.ext4 -q -F -L ember-bench -m 0 -O ^has_journal -E root_owner=0:0 -d "$stage" \
  "$out.tmp/benchfs.ext4" "$(( kib + kib / 8 + 4096 ))K" >/dev/null
echo "build-benchfs: $(du -sh "$stage" | cut -f1) in $(find "$stage" -type f | wc -l) files" >&2
rm -rf "$stage"
touch "$out.tmp/.done"
rm -rf "$out"; mv "$out.tmp" "$out"
echo "$out"
