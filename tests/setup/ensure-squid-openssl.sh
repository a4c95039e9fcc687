#!/usr/bin/env bash
# Make sure `squid` is Debian's squid-openssl build (the one with ssl-bump
# and security_file_certgen), which the proxy benchmarks compare with.
# squid-openssl replaces the plain `squid` package (they conflict); it is a
# superset, so the plain-proxy bench uses it as well. Never starts the
# packaged service: policy-rc.d forbids service starts during the install;
# the benches run their own squid in the foreground.
set -euo pipefail
say() { printf 'ensure-squid-openssl: %s\n' "$*" >&2; }

certgen=/usr/lib/squid/security_file_certgen
has_openssl() { [[ $(squid -v 2>/dev/null) == *--with-openssl* ]]; }
if has_openssl && [[ -x $certgen ]]; then
  exit 0
fi
say "installing Debian package squid-openssl"
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
if ! apt_get install --no-install-recommends squid-openssl >/dev/null; then
  apt_get update >/dev/null
  apt_get install --no-install-recommends squid-openssl >/dev/null
fi
has_openssl || { say "ERROR: squid has no OpenSSL after install"; exit 1; }
[[ -x $certgen ]] || { say "ERROR: $certgen missing after install"; exit 1; }
say "$(squid -v | head -n1)"
