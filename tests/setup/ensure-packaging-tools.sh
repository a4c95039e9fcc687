#!/usr/bin/env bash
# Make sure the tools the packaging tests need exist: systemd-analyze
# (Debian `systemd`, for `verify` and `security` on unit files; nothing is
# started), shellcheck, dpkg-deb and cargo-deb (crates.io, pinned as in
# appliance/build-deb.sh). Idempotent.
set -euo pipefail

CARGO_DEB_VERSION=3.8.0

say() { printf 'ensure-packaging-tools: %s\n' "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }

missing=()
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
command -v shellcheck >/dev/null 2>&1 || missing+=(shellcheck)
command -v dpkg-deb >/dev/null 2>&1 || missing+=(dpkg)
command -v unshare >/dev/null 2>&1 || missing+=(util-linux)
[[ -x /bin/kill ]] || missing+=(procps)
if ((${#missing[@]})); then
  say "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # Installing systemd must not try to start services on a host without it.
  policy=/usr/sbin/policy-rc.d added=0
  if [[ ! -e $policy ]]; then printf '#!/bin/sh\nexit 101\n' >"$policy"; chmod 0755 "$policy"; added=1; fi
  rc=0
  { apt-get update -q && apt-get install -y -q --no-install-recommends "${missing[@]}"; } || rc=$?
  ((added)) && rm -f "$policy"
  ((rc == 0)) || die "apt-get install ${missing[*]} failed (exit $rc)"
fi

export PATH="$HOME/.cargo/bin:$PATH"
if [[ $(cargo deb --version 2>/dev/null) != *"$CARGO_DEB_VERSION"* ]]; then
  say "installing cargo-deb $CARGO_DEB_VERSION (cargo install; a few minutes on two cores)"
  cargo install cargo-deb --locked --version "$CARGO_DEB_VERSION" --quiet
fi
say "systemd-analyze, shellcheck, dpkg-deb and cargo-deb $CARGO_DEB_VERSION present"
