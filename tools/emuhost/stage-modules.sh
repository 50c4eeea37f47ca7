#!/usr/bin/env bash
# Copies kernel modules and everything they depend on, decompressed and in load order, out
# of an unpacked Debian kernel package, for an emulated host's init to insmod one by one.
#
# Usage: tools/emuhost/stage-modules.sh KERNEL_ROOT OUT_DIR MODULE...
#   KERNEL_ROOT  where linux-image-*.deb was unpacked (it has lib/modules/<version>)
#   OUT_DIR      receives the .ko files and `order` (one file name per line, load order)
set -euo pipefail
kroot=$1; out=$2; shift 2
kver=$(ls "$kroot/lib/modules")
depmod -b "$kroot" "$kver"
mkdir -p "$out"
: > "$out/order"
for m in "$@"; do
  modprobe -d "$kroot" -S "$kver" --show-depends "$m" | awk '$1 == "insmod" {print $2}'
done | awk '!seen[$0]++' | while read -r ko; do
  name=$(basename "$ko")
  case "$ko" in
    *.ko.xz) xz -dc "$ko" > "$out/${name%.xz}"; name=${name%.xz} ;;
    *.ko.zst) zstd -dc "$ko" > "$out/${name%.zst}"; name=${name%.zst} ;;
    *) cp "$ko" "$out/$name" ;;
  esac
  echo "$name" >> "$out/order"
done
