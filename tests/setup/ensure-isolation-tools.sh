#!/usr/bin/env bash
# Make sure the host tools the isolation layers and their tests need exist:
# mkfs.ext4 (e2fsprogs) for the workspace quota, apparmor_parser (apparmor)
# to check the AppArmor profile, and loop devices. Idempotent.
#
#   tests/setup/ensure-isolation-tools.sh            # what the tests need
#   tests/setup/ensure-isolation-tools.sh --runtime  # only what the daemon needs
#                                                    # (no apparmor_parser: the demo)
set -euo pipefail
RUNTIME_ONLY=0
case "${1:-}" in
  --runtime) RUNTIME_ONLY=1 ;;
  "") ;;
  *) printf 'usage: %s [--runtime]\n' "$0" >&2; exit 2 ;;
esac

say() { printf 'ensure-isolation-tools: %s\n' "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }

missing=()
command -v mkfs.ext4 >/dev/null 2>&1 || [[ -x /usr/sbin/mkfs.ext4 ]] || missing+=(e2fsprogs)
((RUNTIME_ONLY)) || command -v apparmor_parser >/dev/null 2>&1 || [[ -x /usr/sbin/apparmor_parser ]] || [[ -x /sbin/apparmor_parser ]] || missing+=(apparmor)
command -v losetup >/dev/null 2>&1 || [[ -x /usr/sbin/losetup ]] || missing+=(mount)

if ((${#missing[@]})); then
  say "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # apparmor's maintainer scripts try to load profiles; on kernels without
  # AppArmor that fails harmlessly, but keep them from starting services.
  policy=/usr/sbin/policy-rc.d added=0
  if [[ ! -e $policy ]]; then printf '#!/bin/sh\nexit 101\n' >"$policy"; chmod 0755 "$policy"; added=1; fi
  rc=0
  { apt-get update -q && apt-get install -y -q --no-install-recommends "${missing[@]}"; } || rc=$?
  ((added)) && rm -f "$policy"
  ((rc == 0)) || die "apt-get install ${missing[*]} failed (exit $rc)"
fi

if [[ ! -e /dev/loop-control ]]; then
  modprobe loop 2>/dev/null || true
  [[ -e /dev/loop-control ]] || die "no loop devices (/dev/loop-control); the workspace quota needs them"
fi
if ((RUNTIME_ONLY)); then
  say "mkfs.ext4 and loop devices present"
else
  say "mkfs.ext4, apparmor_parser and loop devices present"
fi
