#!/usr/bin/env bash
# Builds the guest kernel (vmlinux with the PVH note, and bzImage) from Debian's
# linux-source-6.1 and a config fragment in resources/guest_configs/.
#
# Usage: tools/guest/build-kernel.sh [ARCH]   (ARCH: x86_64, default, or aarch64; the other
# architecture than the machine's is cross-built with Debian's gcc-<arch>-linux-gnu)
# Prints the directory holding the artefacts. Cached by the hash of the fragment, this
# script and the linux-source package version, so a second run returns at once.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
arch=${1:-x86_64}
cache=${EMBER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ember}
fragment="$root/resources/guest_configs/$arch.fragment"
[ -f "$fragment" ] || { echo "build-kernel: no config fragment $fragment" >&2; exit 1; }

src_tar=/usr/src/linux-source-6.1.tar.xz
if [ ! -f "$src_tar" ]; then
  "$here/install-deps.sh" kernel >&2
fi
src_ver=$(dpkg-query -W -f='${Version}' linux-source-6.1)
key=$( { cat "$fragment" "$0"; echo "$src_ver $arch"; } | sha256sum | cut -c1-16)
out="$cache/kernel-$arch-$key"
if [ -f "$out/.done" ]; then echo "$out"; exit 0; fi

work="$cache/kbuild-$arch"
mkdir -p "$cache"
if [ ! -f "$work/.unpacked-$src_ver" ]; then
  rm -rf "$work"; mkdir -p "$work"
  echo "build-kernel: unpacking linux-source $src_ver" >&2
  tar -xf "$src_tar" -C "$work" --strip-components=1
  touch "$work/.unpacked-$src_ver"
fi

case "$arch" in
  x86_64) karch=x86_64; cross=x86_64-linux-gnu-; targets="vmlinux bzImage" ;;
  aarch64) karch=arm64; cross=aarch64-linux-gnu-; targets="Image" ;;
  *) echo "build-kernel: unknown arch $arch" >&2; exit 1 ;;
esac
[ "$arch" = "$(uname -m)" ] && cross=""
if [ -n "$cross" ] && ! command -v "${cross}gcc" >/dev/null 2>&1; then
  "$here/install-deps.sh" kernel >&2
fi
mk() { make -C "$work" ARCH="$karch" CROSS_COMPILE="$cross" -j"$(nproc)" "$@"; }

echo "build-kernel: configuring ($arch, fragment $fragment)" >&2
mk allnoconfig KCONFIG_ALLCONFIG="$fragment" >&2
# Every option the fragment asks for must be in the result: a missing dependency drops
# an option silently, and a guest without (say) virtio-mmio fails much later and obscurely.
missing=0
while IFS= read -r line; do
  case "$line" in
    CONFIG_*=y|CONFIG_*=[0-9]*)
      grep -qx "$line" "$work/.config" || { echo "build-kernel: $line did not make it into .config" >&2; missing=1; } ;;
    CONFIG_*=n)
      opt=${line%=n}
      if grep -q "^$opt=" "$work/.config"; then echo "build-kernel: $opt should be off" >&2; missing=1; fi ;;
  esac
done < "$fragment"
[ "$missing" = 0 ] || exit 1

echo "build-kernel: building $targets" >&2
mk $targets >&2
# gen_init_cpio is used for the initramfs
mk usr/gen_init_cpio >&2 2>/dev/null || make -C "$work/usr" gen_init_cpio >&2 || true

rm -rf "$out.tmp"; mkdir -p "$out.tmp"
if [ "$arch" = x86_64 ]; then
  cp "$work/vmlinux" "$out.tmp/vmlinux"
  cp "$work/arch/x86/boot/bzImage" "$out.tmp/bzImage"
else
  cp "$work/arch/arm64/boot/Image" "$out.tmp/Image"
fi
cp "$work/.config" "$out.tmp/config"
[ -x "$work/usr/gen_init_cpio" ] && cp "$work/usr/gen_init_cpio" "$out.tmp/gen_init_cpio"
touch "$out.tmp/.done"
rm -rf "$out"; mv "$out.tmp" "$out"
echo "$out"
