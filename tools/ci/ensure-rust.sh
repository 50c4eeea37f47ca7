#!/usr/bin/env bash
# Makes sure cargo, rustfmt and clippy are there (rustup's if it is installed, else
# Debian's), and the aarch64 target for cross-building.
set -euo pipefail
if command -v rustup >/dev/null 2>&1; then
  rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy >&2
  rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt >&2
  rustup target list --installed 2>/dev/null | grep -q '^aarch64-unknown-linux-gnu$' ||
    rustup target add aarch64-unknown-linux-gnu >&2
elif ! command -v cargo >/dev/null 2>&1; then
  sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo dpkg --add-architecture arm64
  $sudo apt-get update -q >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q cargo rustc rustfmt rust-clippy \
    libstd-rust-dev:arm64 >&2
fi
