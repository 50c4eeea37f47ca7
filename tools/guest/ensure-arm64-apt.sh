#!/usr/bin/env bash
# Makes arm64 packages fetchable with `apt-get download` (aarch64 guest and emulated-host
# images are made from them): adds arm64 as a foreign dpkg architecture if it is not one,
# and refreshes the package lists. Guest and emulated-host images only download and unpack
# arm64 packages, never install them (installing busybox-static:arm64 would remove the
# host's busybox); only tools/ci/ensure-rust.sh's fallback installs arm64 libraries
# (libstd-rust-web-dev:arm64 and its libc6:arm64), which live beside the host's.
set -euo pipefail
[ "$(dpkg --print-architecture)" = arm64 ] && exit 0
dpkg --print-foreign-architectures | grep -qx arm64 && exit 0
sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
echo "adding arm64 as a foreign dpkg architecture (for apt-get download only)" >&2
$sudo dpkg --add-architecture arm64
$sudo apt-get update -q >&2
