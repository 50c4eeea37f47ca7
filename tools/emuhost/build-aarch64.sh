#!/usr/bin/env bash
# Builds the emulated aarch64 KVM host (L1) that aarch64 guest tests run in on an x86_64
# machine: Debian's generic arm64 kernel (KVM built in; 9p, virtio and networking as
# modules) and an initramfs that is a small arm64 Debian user space (python3, iproute2,
# e2fsprogs, util-linux, dash, QEMU as the reference VMM, busybox-static for the rest) with tools/emuhost/init-aarch64
# as /init. The host's own user space is x86_64, so unlike the x86_64 L1 there is no chroot
# into the host's root: the initramfs is L1's root, and init binds in the paths the job needs.
#
# The arm64 packages are fetched with `apt-get download` and unpacked with dpkg-deb, never
# installed (installing, say, busybox-static:arm64 removes the host's busybox). If arm64 is
# not yet a foreign architecture of the host's dpkg, this adds it (and runs apt-get update).
#
# Prints the output directory (Image, initramfs.cpio) as its last line. Cached by the kernel
# package version, the user-space packages' versions and the hash of this script and the init.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
cache=${EMBER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ember}
"$root/tools/guest/install-deps.sh" harness >&2
sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo

"$root/tools/guest/ensure-arm64-apt.sh"
pkg=$(apt-cache depends linux-image-arm64:arm64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
if [ -z "$pkg" ]; then
  $sudo apt-get update -q >&2
  pkg=$(apt-cache depends linux-image-arm64:arm64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
fi
[ -n "$pkg" ] || { echo "emuhost: cannot find Debian's linux-image-arm64 kernel package" >&2; exit 1; }
case "$pkg" in *:arm64) ;; *) pkg="$pkg:arm64" ;; esac

# L1's user space: these packages and their dependency closure (arm64 ones, and the
# architecture-independent ones), less what only package maintenance needs (dpkg, debconf,
# perl and the like) and an alternative that clashes (libelogind0 against libsystemd0).
# The check after unpacking catches a library that this leaves out.
# qemu-system-arm: the reference VMM the benchmark and a case compare ember with.
userspace="python3 iproute2 e2fsprogs util-linux procps dash busybox-static qemu-system-arm"
# Architecture "all" (no :arm64 to them): the Prometheus parser of the metering checks, and
# pytest with the plugins the suite uses (their dependencies come with the closure below).
userspace_all="python3-prometheus-client python3-pytest python3-pytest-timeout python3-pytest-rerunfailures"
exclude='dpkg|tar|install-info|c?debconf|libdebian-installer4|libnewt0\.52|libslang2|libtextwrap1|libelogind0|init-system-helpers|usrmerge|usr-is-merged|mailcap|mime-support|perl.*|lib.*-perl|libperl.*|libgdbm.*'
closure=$(apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts --no-breaks \
            --no-replaces --no-enhances $(printf '%s:arm64 ' $userspace) $userspace_all 2>/dev/null |
          awk '/^[^ <]/' | sort -u)
# Names without :arm64 are the host's architecture or "all"; keep the "all" ones.
indep=$(apt-get download --print-uris $(echo "$closure" | grep -v :) |
        awk '{print $2}' | sed -n 's/_.*_all\.deb$//p')
pkgs=$( { echo "$closure" | sed -n 's/:arm64$//p'; echo "$indep" | sed 's/$/ all/'; } |
        grep -vE "^($exclude)( all)?$" |
        awk '{print ($2 == "all") ? $1 : $1 ":arm64"}' | sort -u)
uris=$(apt-get download --print-uris "$pkg" $pkgs)
key=$( { echo "$uris" | awk '{print $2}'; cat "$0" "$here/init-aarch64" "$here/stage-modules.sh"; } | sha256sum | cut -c1-16)
out="$cache/emuhost-aarch64-$key"
if [ -f "$out/.done" ]; then echo "$out"; exit 0; fi

tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/debs"
echo "emuhost: downloading $pkg and $(echo "$pkgs" | wc -w) arm64 packages" >&2
(cd "$tmp/debs" && { apt-get download "$pkg" $pkgs >&2 2>/dev/null || apt-get download "$pkg" $pkgs >&2; })

# The kernel and the modules init loads (with their dependencies, in load order).
kdeb=$(ls "$tmp"/debs/linux-image-*_arm64.deb)
dpkg-deb -x "$kdeb" "$tmp/k"
kver=$(ls "$tmp/k/lib/modules")
stage="$tmp/stage"
"$here/stage-modules.sh" "$tmp/k" "$stage/modules" \
  virtio_pci 9p 9pnet_virtio tun bridge veth virtio_net virtio_blk

# The user space, merged-/usr like bookworm's: /bin, /sbin and /lib are links into /usr,
# so the loader is at /lib/ld-linux-aarch64.so.1 whichever directory a package uses.
mkdir -p "$stage"/usr/bin "$stage"/usr/sbin "$stage"/usr/lib
ln -s usr/bin "$stage/bin"; ln -s usr/sbin "$stage/sbin"; ln -s usr/lib "$stage/lib"
for deb in "$tmp"/debs/*.deb; do
  [ "$deb" = "$kdeb" ] && continue
  dpkg-deb --fsys-tarfile "$deb" | tar -x --keep-directory-symlink -C "$stage"
done
[ -e "$stage/lib/ld-linux-aarch64.so.1" ] || { echo "emuhost: no /lib/ld-linux-aarch64.so.1" >&2; exit 1; }
rm -rf "$stage"/usr/share/{doc,man,info,locale,lintian,bug,bash-completion,zsh,fish} \
       "$stage"/usr/lib/aarch64-linux-gnu/gconv \
       "$stage"/usr/lib/python3.11/{idlelib,lib2to3,pydoc_data,tkinter,turtledemo,ensurepip,test} \
       "$stage"/usr/lib/python3.11/{config-3.11-aarch64-linux-gnu,distutils/command/*.exe} \
       "$stage"/etc/{init.d,cron.*,logrotate.d,systemd} "$stage"/usr/lib/systemd "$stage"/var/lib/dpkg \
       "$stage"/usr/lib/aarch64-linux-gnu/tc/q_atm.so \
       "$stage"/usr/bin/qemu-system-arm "$stage"/usr/share/qemu
# (q_atm.so: tc's ATM qdisc plugin, the one user of libatm. QEMU: only qemu-system-aarch64
# is used, with -kernel and no devices that need firmware.)
ln -sf dash "$stage/usr/bin/sh"
# Python's byte code, compiled here with the host's python of the same version (byte code is
# the same on every architecture): compiling the modules in each boot costs seconds under TCG.
pyver=$(cd "$stage/usr/lib" && ls -d python3.* | head -1)
if command -v "$pyver" >/dev/null; then
  "$pyver" -m compileall -q --invalidation-mode unchecked-hash \
    "$stage/usr/lib/$pyver" "$stage/usr/lib/python3/dist-packages" >/dev/null 2>&1 || true
fi
# busybox's applets, where no real tool of that name is there (the host's busybox-static
# is the same version as the arm64 one, and lists the same applets).
busybox --list-full | while read -r a; do
  [ -e "$stage/$a" ] || [ -L "$stage/$a" ] || ln -s /bin/busybox "$stage/$a"
done
mkdir -p "$stage"/{dev,proc,sys,host,tmp,run,root,mnt,var/tmp,etc}
ln -sfn /run "$stage/var/run"
ln -sf /proc/self/mounts "$stage/etc/mtab"
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' > "$stage/etc/passwd"
printf 'root:x:0:\nkvm:x:993:\nnogroup:x:65534:\n' > "$stage/etc/group"
printf '127.0.0.1 localhost\n::1 localhost\n' > "$stage/etc/hosts"
echo emuhost > "$stage/etc/hostname"
cp "$here/init-aarch64" "$stage/init"; chmod 0755 "$stage/init"
$sudo mknod -m 0600 "$stage/dev/console" c 5 1

# Every ELF file's libraries must be there (the exclusions above must not drop one).
if command -v readelf >/dev/null; then
  missing=$(find "$stage" -type f \( -perm -u+x -o -name '*.so*' \) -not -path '*/modules/*' |
    while read -r f; do
      readelf -d "$f" 2>/dev/null | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'
    done | sort -u | while read -r lib; do
      [ -e "$stage/usr/lib/aarch64-linux-gnu/$lib" ] || [ -e "$stage/usr/lib/$lib" ] || echo "$lib"
    done) || true
  [ -z "$missing" ] || { echo "emuhost: libraries missing from the arm64 user space:" $missing >&2; exit 1; }
fi

rm -rf "$out.tmp"; mkdir -p "$out.tmp"
(cd "$stage" && find . -mindepth 1 | LC_ALL=C sort | $sudo cpio -o -H newc -R 0:0 --quiet) \
  > "$out.tmp/initramfs.cpio"
image="$tmp/k/boot/vmlinuz-$kver"
if [ "$(head -c2 "$image" | od -An -tx1 | tr -d ' ')" = 1f8b ]; then
  zcat "$image" > "$out.tmp/Image"   # QEMU wants the raw arm64 Image
else
  cp "$image" "$out.tmp/Image"
fi
echo "$pkg $(apt-cache policy "$pkg" | awk '/Candidate:/ {print $2}')" > "$out.tmp/kernel-package"
echo "$uris" | awk '{print $2}' > "$out.tmp/packages"
touch "$out.tmp/.done"
rm -rf "$out"; mv "$out.tmp" "$out"
echo "emuhost: initramfs $(du -h "$out/initramfs.cpio" | cut -f1)" >&2
echo "$out"
