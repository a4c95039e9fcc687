#!/usr/bin/env bash
# Make sure `haproxy` (the load balancer docs/scale-out.md puts in front of
# several hosts) is on PATH. Debian ships it; install it when missing.
# Never starts the packaged service: policy-rc.d forbids service starts
# during the install; the tests run their own haproxy in the foreground.
set -euo pipefail
say() { printf 'ensure-haproxy: %s\n' "$*" >&2; }

if command -v haproxy >/dev/null 2>&1; then
  exit 0
fi
say "installing Debian package haproxy"
policy=/usr/sbin/policy-rc.d
created_policy=0
if [[ ! -e $policy ]]; then
  printf '#!/bin/sh\nexit 101\n' >"$policy"
  chmod 0755 "$policy"
  created_policy=1
fi
cleanup() { if ((created_policy)); then rm -f "$policy"; fi; }
trap cleanup EXIT
apt_get() {
  # Other jobs may hold the dpkg lock; wait for it instead of failing.
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 -y -q "$@"
}
if ! apt_get install --no-install-recommends haproxy >/dev/null; then
  apt_get update >/dev/null
  apt_get install --no-install-recommends haproxy >/dev/null
fi
command -v haproxy >/dev/null 2>&1 || { say "ERROR: haproxy still missing after install"; exit 1; }
say "$(haproxy -v | head -n1)"
