#!/usr/bin/env bash
# Makes sure cargo, rustfmt and clippy are there (rustup's if it is installed, else
# Debian's), and a standard library for the aarch64 target: rustup's, or where rustup
# cannot fetch it, Debian's (rustc-web, cargo-web, libstd-rust-web-dev:arm64), which
# tools/ci/cargo-aarch64 then uses.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
apt_install() {
  $sudo apt-get update -q >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "$@" >&2
}
cross=rustup
if command -v rustup >/dev/null 2>&1; then
  rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy >&2
  rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt >&2
  targets=$(rustup target list --installed 2>/dev/null || true)
  if [ "$(uname -m)" = x86_64 ] && ! grep -qx aarch64-unknown-linux-gnu <<< "$targets"; then
    rustup target add aarch64-unknown-linux-gnu >&2 || cross=debian
  fi
elif ! command -v cargo >/dev/null 2>&1; then
  apt_install cargo rustc rustfmt rust-clippy
  cross=debian
else
  cross=debian
fi
if [ "$cross" = debian ] && [ "$(uname -m)" = x86_64 ] && ! dpkg-query -W -f='${Status}' libstd-rust-web-dev:arm64 2>/dev/null |
     grep -q "install ok installed"; then
  echo "ensure-rust: no aarch64 target from rustup; installing Debian's cross toolchain" >&2
  "$here/../guest/ensure-arm64-apt.sh"
  apt_install rustc-web cargo-web rust-web-clippy libstd-rust-web-dev:arm64
fi
