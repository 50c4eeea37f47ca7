#!/usr/bin/env bash
# Installs, with apt, what building guest images and running the test harness needs.
# Usage: tools/guest/install-deps.sh [kernel|images|harness|bench|cross|all]   (default all)
# Does nothing for packages already installed; needs root (or sudo) for apt.
set -euo pipefail
what=${1:-all}
pkgs=()
case "$what" in
  kernel) pkgs+=(linux-source-6.1 build-essential bc bison flex libelf-dev libssl-dev xz-utils
                  gcc-aarch64-linux-gnu libc6-dev-arm64-cross) ;;   # the cross libc: static guest tools
  cross) pkgs+=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user-static) ;;
  images) pkgs+=(busybox-static e2fsprogs cpio) ;;
  harness) pkgs+=(qemu-system-x86 qemu-system-arm kmod xz-utils cpio busybox-static iproute2
                   python3-prometheus-client prometheus \
                   python3-pytest python3-pytest-timeout python3-pytest-rerunfailures python3-pip) ;;   # metering checks (promtool); the suite runs on pytest
  bench) pkgs+=(iperf3) ;;   # host side of bench_net, and copied into the bench tools image
  all) pkgs+=(linux-source-6.1 build-essential bc bison flex libelf-dev libssl-dev xz-utils
              busybox-static e2fsprogs cpio qemu-system-x86 kmod iproute2 iperf3
              gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user-static qemu-system-arm
              python3-prometheus-client prometheus python3-pytest python3-pytest-timeout
              python3-pytest-rerunfailures python3-pip) ;;
  *) echo "install-deps: unknown set $what" >&2; exit 1 ;;
esac
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
echo "install-deps: installing ${missing[*]}" >&2
$sudo apt-get update -q >&2
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
