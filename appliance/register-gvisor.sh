#!/usr/bin/env bash
# Register gVisor's runsc with the Docker engine as the runtime `runsc`, when
# runsc is installed, for agentbox's gVisor isolation tier. Idempotent; a
# no-op when runsc is absent or already registered with these arguments.
#
#   register-gvisor.sh            # called by appliance/install.sh and the .deb
#
# Merges into /etc/docker/daemon.json (other keys kept; needs jq) and sends
# dockerd SIGHUP, which reloads runtimes without a restart: running
# containers are untouched. The arguments (docs/isolation.md):
#   --network=none   the sandbox's own network stack without devices, only
#                    loopback (containers run with Docker's `--network none`,
#                    which runsc otherwise refuses to start in)
#   --host-uds=all   the agent serves agent.sock and dials proxy.sock in the
#                    bind-mounted socket directory; gVisor refuses host Unix
#                    sockets without it
# Not --oci-seccomp: with it runsc applies our seccomp profile inside the
# sandbox as well, and the Claude Code CLI aborts there (runsc 20221219);
# the host kernel is shielded by gVisor's own filter on its Sentry instead.
#
# Knobs: AGENTBOX_DOCKER_CONFIG (default /etc/docker/daemon.json),
#        AGENTBOX_RUNSC        (default: runsc on PATH, else /usr/bin/runsc).
set -euo pipefail

CONF=${AGENTBOX_DOCKER_CONFIG:-/etc/docker/daemon.json}
RUNTIME_ARGS='["--network=none","--host-uds=all"]'

say() { printf 'register-gvisor: %s\n' "$*" >&2; }

RUNSC=${AGENTBOX_RUNSC:-$(command -v runsc || echo /usr/bin/runsc)}
if [[ ! -x $RUNSC ]]; then
  say "runsc is not installed; the gVisor tier stays unavailable (apt-get install runsc, then run this again)"
  exit 0
fi
if ! command -v jq >/dev/null 2>&1; then
  say "jq is missing: add to $CONF by hand: \"runtimes\": {\"runsc\": {\"path\": \"$RUNSC\", \"runtimeArgs\": $RUNTIME_ARGS}}, then: systemctl reload docker"
  exit 0
fi
mkdir -p "$(dirname "$CONF")"
[[ -s $CONF ]] || echo '{}' >"$CONF"
if jq -e --arg path "$RUNSC" --argjson args "$RUNTIME_ARGS" \
  '.runtimes.runsc == {path: $path, runtimeArgs: $args}' "$CONF" >/dev/null 2>&1; then
  say "runsc already registered in $CONF"
else
  tmp=$(mktemp "$CONF.XXXXXX")
  if ! jq --arg path "$RUNSC" --argjson args "$RUNTIME_ARGS" \
    '.runtimes = ((.runtimes // {}) + {runsc: {path: $path, runtimeArgs: $args}})' "$CONF" >"$tmp"; then
    rm -f "$tmp"
    say "ERROR: $CONF is not valid JSON; not changed"
    exit 1
  fi
  chmod 0644 "$tmp"
  mv "$tmp" "$CONF"
  say "registered runsc ($RUNSC) in $CONF"
fi
# Every engine reading this file (no --config-file of its own) reloads it.
for pid in $(pgrep -x dockerd || true); do
  if tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- '--config-file'; then continue; fi
  kill -HUP "$pid" && say "dockerd $pid reloaded (SIGHUP)"
done
