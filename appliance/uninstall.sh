#!/usr/bin/env bash
# Remove what appliance/install.sh installed.
#
#   appliance/uninstall.sh [--root DIR] [--purge]
#
#   --root DIR  uninstall from a scratch root (no systemctl, no containers)
#   --purge     also remove this daemon's containers with their workspaces,
#               the state file, the audit log and /etc/agentbox (config and
#               secrets). Without it they stay, and a reinstall carries on
#               where the daemon stopped. Workspaces synced to an S3 bucket
#               are never touched.
#
# Idempotent: running it again finds nothing to do.
set -euo pipefail

ROOT=
PURGE=0

say() { printf 'uninstall: %s\n' "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }

while (($#)); do
  case "$1" in
    --root) ROOT=${2:?--root needs a directory}; shift ;;
    --purge) PURGE=1 ;;
    -h | --help) sed -n '2,13p' "$0"; exit 0 ;;
    *) die "unknown argument: $1 (--help)" ;;
  esac
  shift
done
[[ $(id -u) == 0 ]] || die "run as root"
if [[ -n $ROOT ]]; then
  [[ -d $ROOT ]] || die "--root $ROOT: no such directory"
  ROOT=$(cd "$ROOT" && pwd)
  [[ $ROOT != / ]] || ROOT=
fi

gone() {
  local p
  for p in "$@"; do
    if [[ -e $ROOT$p || -L $ROOT$p ]]; then
      rm -rf -- "$ROOT$p"
      say "removed $p"
    fi
  done
}

if [[ -z $ROOT ]]; then
  if [[ -d /run/systemd/system ]]; then
    systemctl disable --now agentbox.service 2>/dev/null || true
    say "agentbox.service stopped and disabled"
  else
    say "systemd is not running here: stop a hand-started daemon yourself (SIGTERM)"
  fi
  if ((PURGE)) && [[ -x /usr/bin/agentbox ]]; then
    # While the binary is still here: containers, their sockets, workspace
    # quota mounts and records. Unsynced workspace changes are lost.
    # This daemon's containers (its server.instance) only: another daemon
    # on the same engine keeps its own.
    /usr/bin/agentbox destroy-all --config /etc/agentbox/agentbox.toml ||
      say "destroy-all failed; remove leftover containers with: docker ps -a --filter label=agentbox.managed=true"
  fi
  if [[ $(cat /sys/module/apparmor/parameters/enabled 2>/dev/null) == Y ]] &&
    command -v apparmor_parser >/dev/null && [[ -f /etc/apparmor.d/workspace-container ]]; then
    apparmor_parser -R /etc/apparmor.d/workspace-container 2>/dev/null || true
  fi
fi

gone /usr/bin/agentbox /lib/systemd/system/agentbox.service /usr/share/agentbox \
  /usr/share/doc/agentbox /etc/apparmor.d/workspace-container
if [[ -z $ROOT && -d /run/systemd/system ]]; then
  systemctl daemon-reload
fi

if ((PURGE)); then
  # Anything still mounted under the state directory (quota images) must
  # go before the directory does.
  if [[ -z $ROOT ]]; then
    awk '$5 ~ "^/var/lib/agentbox/" { print $5 }' /proc/self/mountinfo | sort -r |
      while read -r mnt; do umount "$mnt" || umount -l "$mnt" || true; done
  fi
  gone /var/lib/agentbox /var/log/agentbox /run/agentbox /etc/agentbox
else
  say "kept /etc/agentbox, /var/lib/agentbox and /var/log/agentbox (--purge removes them)"
fi
