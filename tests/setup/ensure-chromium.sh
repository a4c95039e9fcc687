#!/usr/bin/env bash
# Make sure a headless Chromium and its WebDriver (chromedriver) are installed,
# for the status-page test (tests/e2e/admin.rs). Idempotent; installs Debian's
# `chromium` and `chromium-driver` when either is missing.
#
#   tests/setup/ensure-chromium.sh     # prints the two paths on success
set -euo pipefail

say() { printf 'ensure-chromium: %s\n' "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }

have() { command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; }

if ! have; then
  say "chromium or chromedriver missing: installing Debian's chromium and chromium-driver"
  export DEBIAN_FRONTEND=noninteractive
  # Another engineer's run may hold the dpkg lock for a while: wait for it.
  apt_opts=(-o DPkg::Lock::Timeout=300)
  { apt-get "${apt_opts[@]}" update -q &&
    apt-get "${apt_opts[@]}" install -y -q --no-install-recommends chromium chromium-driver; } ||
    die "apt-get install chromium chromium-driver failed"
fi
have || die "chromium and chromedriver still missing after install"
chromium --version >&2 || die "chromium does not run"
chromedriver --version >&2 || die "chromedriver does not run"
say "ok: $(command -v chromium) $(command -v chromedriver)"
