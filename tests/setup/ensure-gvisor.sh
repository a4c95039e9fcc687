#!/usr/bin/env bash
# Make sure the gVisor tier can run: `runsc` installed (Debian's package) and
# registered with the Docker engine as the runtime `runsc`. Idempotent.
#
#   tests/setup/ensure-gvisor.sh
#
# Registering edits /etc/docker/daemon.json (merged with jq: other keys are
# kept) and sends SIGHUP to the engine, which reloads its runtimes without a
# restart; running containers are untouched. The runtime's arguments are the
# ones appliance/docker-daemon.json ships (see docs/isolation.md):
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
#        AGENTBOX_GVISOR_WAIT   (seconds to wait for the engine to list it, 30).
set -euo pipefail

CONF=${AGENTBOX_DOCKER_CONFIG:-/etc/docker/daemon.json}
WAIT=${AGENTBOX_GVISOR_WAIT:-30}
RUNTIME_ARGS='["--network=none","--host-uds=all"]'

say() { printf 'ensure-gvisor: %s\n' "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }

# Registered with exactly our arguments (an older registration is updated).
registered() {
  docker info --format '{{json .Runtimes}}' 2>/dev/null |
    jq -e --argjson args "$RUNTIME_ARGS" '.runsc.runtimeArgs == $args' >/dev/null
}

missing=()
command -v runsc >/dev/null 2>&1 || [[ -x /usr/bin/runsc ]] || missing+=(runsc)
command -v jq >/dev/null 2>&1 || missing+=(jq)
if ((${#missing[@]})); then
  say "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  { apt-get update -q && apt-get install -y -q --no-install-recommends "${missing[@]}"; } ||
    die "apt-get install ${missing[*]} failed"
fi
RUNSC=$(command -v runsc || echo /usr/bin/runsc)

docker info >/dev/null 2>&1 || die "no Docker engine answers; run tests/setup/ensure-docker.sh first"
registered && exit 0

say "registering runsc ($RUNSC) in $CONF"
mkdir -p "$(dirname "$CONF")"
[[ -s $CONF ]] || echo '{}' >"$CONF"
tmp=$(mktemp "$CONF.XXXXXX")
jq --arg path "$RUNSC" --argjson args "$RUNTIME_ARGS" \
  '.runtimes = ((.runtimes // {}) + {runsc: {path: $path, runtimeArgs: $args}})' "$CONF" >"$tmp" ||
  { rm -f "$tmp"; die "$CONF is not valid JSON"; }
chmod 0644 "$tmp"
mv "$tmp" "$CONF"

# Every engine reading this file (no --config-file of its own) reloads it.
signalled=0
for pid in $(pgrep -x dockerd || true); do
  if tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- '--config-file'; then continue; fi
  kill -HUP "$pid" && signalled=$((signalled + 1))
done
((signalled)) || die "no dockerd to reload; start it with tests/setup/ensure-docker.sh"
for ((i = 0; i < WAIT * 10; i++)); do
  registered && { say "runsc registered"; exit 0; }
  sleep 0.1
done
die "the engine does not list runsc after SIGHUP; see its log and $CONF"
