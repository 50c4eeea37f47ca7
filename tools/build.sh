#!/usr/bin/env bash
# Builds ember, emberd, emberctl and ember-jailer (release), statically linked, for this
# machine's architecture: a jail holds nothing but the binary (no loader, no libc), and
# a static binary starts without the dynamic loader's work.
# Prints the directory the binaries are in. Extra arguments go to cargo (`-q`, say).
# Usage: tools/build.sh [CARGO ARGS...]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
target="$(uname -m)-unknown-linux-gnu"
var="CARGO_TARGET_$(echo "$target" | tr 'a-z-' 'A-Z_')_RUSTFLAGS"
# With an explicit --target the flag reaches only the target's crates, not the build
# scripts and proc-macros (which cannot be linked statically).
export "$var=${!var:-} -C target-feature=+crt-static"
cd "${EMBER_CARGO_DIR:-$root}"
cargo build --release --target "$target" -p ember -p agent -p cli -p jailer "$@" >&2
echo "$PWD/target/$target/release"
