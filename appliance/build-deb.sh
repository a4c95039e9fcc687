#!/usr/bin/env bash
# Build the agentbox Debian package (release binaries) with cargo-deb.
#
#   appliance/build-deb.sh [OUTPUT_DIR]      # default target/debian
#
# Installs cargo-deb (a pinned version, from crates.io) when it is missing,
# builds the daemon and the workspace agent in release mode, then packages
# them with the files listed in Cargo.toml's [package.metadata.deb]. Takes
# minutes on two cores; tests/e2e_packaging.rs packages debug binaries
# instead (version suffix ~debug) to stay fast.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SRC=$(cd "$HERE/.." && pwd)
OUT=${1:-$SRC/target/debian}
# Pinned: cargo-deb warns that packaging the dev profile (the tests do it
# through --no-build) will become an error in a later version.
CARGO_DEB_VERSION=3.8.0

say() { printf 'build-deb: %s\n' "$*" >&2; }

if ! cargo deb --version >/dev/null 2>&1; then
  say "installing cargo-deb $CARGO_DEB_VERSION"
  cargo install cargo-deb --locked --version "$CARGO_DEB_VERSION"
fi
cd "$SRC"
cargo build --release --locked -p agentbox -p workspace-agent
mkdir -p "$OUT"
cargo deb --no-build -p agentbox -o "$OUT"
