#!/usr/bin/env bash
# Builds the test guests' root filesystems from Debian's busybox-static, without root
# privileges: an uncompressed initramfs (newc cpio, via the kernel's gen_init_cpio) and an
# ext4 image (mkfs.ext4 -d). Both hold busybox, its applet links and resources/rootfs/init;
# the ext4 image also holds /bin/vsock and /bin/httplat (resources/rootfs/*.c).
#
# Usage: tools/guest/build-rootfs.sh [ARCH]   (x86_64 default; aarch64 uses busybox-static:arm64)
# Prints the output directory. Cached by content hash.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
arch=${1:-x86_64}
cache=${EMBER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ember}
init="$root/resources/rootfs/init"

case "$arch" in
  x86_64) busybox=/bin/busybox; [ -x "$busybox" ] || "$here/install-deps.sh" images >&2 ;;
  aarch64)
    busybox="$cache/busybox-arm64/bin/busybox"
    if [ ! -x "$busybox" ]; then
      "$here/ensure-arm64-apt.sh"
      d=$(mktemp -d); (cd "$d" && apt-get download busybox-static:arm64 >&2)
      rm -rf "$cache/busybox-arm64"; dpkg-deb -x "$d"/busybox-static_*.deb "$cache/busybox-arm64"; rm -rf "$d"
    fi ;;
  *) echo "build-rootfs: unknown arch $arch" >&2; exit 1 ;;
esac
kernel_dir=$("$here/build-kernel.sh" "$(uname -m)")   # for gen_init_cpio (a host tool)
gen_init_cpio="$kernel_dir/gen_init_cpio"

# The guest's AF_VSOCK tool and HTTP latency probe (busybox has neither), static like
# busybox: on the ext4 image only, so the initramfs every other case boots stays as small
# as it was.
vsock_src="$root/resources/rootfs/vsock.c"
httplat_src="$root/resources/rootfs/httplat.c"
case "$arch" in
  x86_64) cc=x86_64-linux-gnu-gcc ;;
  aarch64) cc=aarch64-linux-gnu-gcc ;;
esac
[ "$arch" = "$(uname -m)" ] && cc=gcc
command -v "$cc" >/dev/null 2>&1 || "$here/install-deps.sh" kernel >&2
key=$( { sha256sum "$busybox" "$init" "$vsock_src" "$httplat_src" "$0" | cut -d' ' -f1; echo "$arch"
         "$cc" --version | head -1; } | sha256sum | cut -c1-16)
out="$cache/rootfs-$arch-$key"
if [ -f "$out/.done" ]; then echo "$out"; exit 0; fi
rm -rf "$out.tmp"; mkdir -p "$out.tmp"
stage="$out.tmp/stage"
mkdir -p "$stage"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,tmp,run,etc,mnt,root}
cp "$busybox" "$stage/bin/busybox"
cp "$init" "$stage/init"
ln -s ../init "$stage/sbin/init"

# The applet list comes from the host's busybox-static (the same Debian version for both
# architectures); every applet is a symlink to /bin/busybox.
applets=$(/bin/busybox --list-full 2>/dev/null || true)
[ -n "$applets" ] || { echo "build-rootfs: cannot list busybox applets" >&2; exit 1; }

list="$out.tmp/initramfs.list"
{
  for d in bin sbin usr usr/bin usr/sbin dev proc sys tmp run etc mnt root; do echo "dir /$d 0755 0 0"; done
  echo "nod /dev/console 0600 0 0 c 5 1"
  echo "nod /dev/null 0666 0 0 c 1 3"
  echo "file /bin/busybox $stage/bin/busybox 0755 0 0"
  echo "file /init $stage/init 0755 0 0"
  echo "slink /sbin/init /init 0777 0 0"
  for a in $applets; do
    case "$a" in bin/busybox|sbin/init) continue ;; esac
    echo "slink /$a /bin/busybox 0777 0 0"
    mkdir -p "$stage/$(dirname "$a")"; ln -sf /bin/busybox "$stage/$a"
  done
} > "$list"
"$gen_init_cpio" "$list" > "$out.tmp/initramfs.cpio"
"$cc" -static -Os -s -Wall -Wextra -Werror -o "$stage/bin/vsock" "$vsock_src"
"$cc" -static -Os -s -Wall -Wextra -Werror -o "$stage/bin/httplat" "$httplat_src"

mkfs.ext4 -q -F -L rootfs -E root_owner=0:0 -d "$stage" "$out.tmp/rootfs.ext4" 16M >/dev/null
rm -rf "$stage"
touch "$out.tmp/.done"
rm -rf "$out"; mv "$out.tmp" "$out"
echo "$out"
