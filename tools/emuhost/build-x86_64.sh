#!/usr/bin/env bash
# Builds the emulated x86_64 KVM host (L1) that guest tests run in when /dev/kvm cannot
# run a stock guest: Debian's generic amd64 kernel (it has 9p, KVM and virtio as modules)
# and a busybox initramfs with those modules and tools/emuhost/init-x86_64.
#
# Prints the output directory (vmlinuz, initramfs.cpio). Cached by the kernel package
# version and the hash of this script and the init.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
cache=${EMBER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ember}
"$root/tools/guest/install-deps.sh" harness >&2

pkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
if [ -z "$pkg" ]; then
  sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -q >&2
  pkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
fi
[ -n "$pkg" ] || { echo "emuhost: cannot find Debian's linux-image-amd64 kernel package" >&2; exit 1; }
ver=$(apt-cache policy "$pkg" | awk '/Candidate:/ {print $2}')
key=$( { echo "$pkg $ver"; cat "$0" "$here/init-x86_64" "$here/stage-modules.sh"; } | sha256sum | cut -c1-16)
out="$cache/emuhost-x86_64-$key"
if [ -f "$out/.done" ]; then echo "$out"; exit 0; fi

tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && apt-get download "$pkg" >&2 2>/dev/null || apt-get download "$pkg" >&2)
dpkg-deb -x "$tmp"/*.deb "$tmp/x"
kver=$(ls "$tmp/x/lib/modules")
stage="$tmp/stage"
"$here/stage-modules.sh" "$tmp/x" "$stage/modules" \
  kvm-amd 9p 9pnet_virtio virtio_pci tun bridge veth virtio_net virtio_blk

list="$tmp/list"
{
  for d in bin sbin dev proc sys host modules tmp; do echo "dir /$d 0755 0 0"; done
  echo "nod /dev/console 0600 0 0 c 5 1"
  echo "file /bin/busybox /bin/busybox 0755 0 0"
  echo "file /init $here/init-x86_64 0755 0 0"
  for a in sh mount mkdir insmod cat grep poweroff sync chroot echo ip sleep ls; do
    echo "slink /bin/$a /bin/busybox 0777 0 0"
  done
  for f in "$stage"/modules/*; do echo "file /modules/$(basename "$f") $f 0644 0 0"; done
} > "$list"
gen_init_cpio="$("$root/tools/guest/build-kernel.sh" x86_64)/gen_init_cpio"
rm -rf "$out.tmp"; mkdir -p "$out.tmp"
"$gen_init_cpio" "$list" > "$out.tmp/initramfs.cpio"
cp "$tmp/x/boot/vmlinuz-$kver" "$out.tmp/vmlinuz"
echo "$pkg $ver" > "$out.tmp/kernel-package"
touch "$out.tmp/.done"
rm -rf "$out"; mv "$out.tmp" "$out"
echo "$out"
