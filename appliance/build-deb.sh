#!/usr/bin/env bash
# Build the agentbox Debian package (release binaries) with cargo-deb.
#
#   appliance/build-deb.sh [OUTPUT_DIR]      # default target/debian
#
# Installs cargo-deb (a pinned version, from crates.io) when it is missing,
# builds the daemon and the workspace agent in release mode, then packages
# them with the files listed in Cargo.toml's [package.metadata.deb]. Takes
# minutes on two cores; tests/e2e/packaging.rs packages debug binaries
# instead (version suffix ~debug) to stay fast.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SRC=$(cd "$HERE/.." && pwd)
OUT=${1:-$SRC/target/debian}
# Pinned, like tests/setup/ensure-packaging-tools.sh: the package's layout
# is tested against this version's behaviour.
CARGO_DEB_VERSION=3.8.0

say() { printf 'build-deb: %s\n' "$*" >&2; }

export PATH="$HOME/.cargo/bin:$PATH"
if [[ $(cargo deb --version 2>/dev/null) != *"$CARGO_DEB_VERSION"* ]]; then
  say "installing cargo-deb $CARGO_DEB_VERSION"
  cargo install cargo-deb --locked --version "$CARGO_DEB_VERSION"
fi
cd "$SRC"
cargo build --release --locked -p agentbox -p workspace-agent
mkdir -p "$OUT"
cargo deb --no-build -p agentbox -o "$OUT"
