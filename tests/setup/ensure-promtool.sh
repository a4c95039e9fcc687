#!/usr/bin/env bash
# Make sure `promtool` (Prometheus' rule and metrics checker) is on PATH.
# Debian ships it in the `prometheus` package; install that when missing.
# Never starts the Prometheus server: policy-rc.d forbids service starts
# during the install, and on hosts without systemd nothing starts anyway.
set -euo pipefail
say() { printf 'ensure-promtool: %s\n' "$*" >&2; }

if command -v promtool >/dev/null 2>&1; then
  exit 0
fi
say "installing Debian package prometheus (provides promtool)"
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
if ! apt_get install --no-install-recommends prometheus >/dev/null; then
  apt_get update >/dev/null
  apt_get install --no-install-recommends prometheus >/dev/null
fi
command -v promtool >/dev/null 2>&1 || { say "ERROR: promtool still missing after install"; exit 1; }
say "$(promtool --version 2>&1 | head -n1)"
