#!/usr/bin/env bash
# Make sure the gVisor tier can run: `runsc` installed (Debian's package) and
# registered with the Docker engine as the runtime `runsc`. Idempotent.
#
#   tests/setup/ensure-gvisor.sh
#
# Installs runsc and jq when missing, then registers the runtime the way an
# appliance does (appliance/register-gvisor.sh: /etc/docker/daemon.json
# merged, dockerd sent SIGHUP, no restart) and waits until the engine lists
# it with those arguments.
#
# Knobs: AGENTBOX_DOCKER_CONFIG (default /etc/docker/daemon.json),
#        AGENTBOX_GVISOR_WAIT   (seconds to wait for the engine to list it, 30).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
WAIT=${AGENTBOX_GVISOR_WAIT:-30}
# Keep in step with appliance/register-gvisor.sh.
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

docker info >/dev/null 2>&1 || die "no Docker engine answers; run tests/setup/ensure-docker.sh first"
registered && exit 0
bash "$HERE/../../appliance/register-gvisor.sh"
for ((i = 0; i < WAIT * 10; i++)); do
  registered && { say "runsc registered"; exit 0; }
  sleep 0.1
done
die "the engine does not list runsc with $RUNTIME_ARGS after SIGHUP; see its log and /etc/docker/daemon.json"
