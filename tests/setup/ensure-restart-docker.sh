#!/usr/bin/env bash
# A Docker engine the engine-restart test may stop and start again, beside
# the host's engine (own socket, data root, exec root and pid files, no
# iptables; never `--bridge none`, which would delete the shared docker0),
# holding the workspace image. Nothing else uses it, so stopping it breaks
# no other test.
#
#   tests/setup/ensure-restart-docker.sh [IMAGE]     # start (idempotent)
#   tests/setup/ensure-restart-docker.sh stop        # SIGTERM, wait for exit
#
# Prints the engine's DOCKER_HOST on stdout. IMAGE (default
# agentbox/workspace-base:latest) must exist in the default engine; it is
# copied over with `docker save | docker load` when the ids differ.
#
# Knobs: AGENTBOX_RESTART_ROOT (state, default /var/lib/agentbox-restart),
#        AGENTBOX_RESTART_RUN  (sockets and pids, default /run/agentbox-restart).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=${AGENTBOX_RESTART_ROOT:-/var/lib/agentbox-restart}
RUN=${AGENTBOX_RESTART_RUN:-/run/agentbox-restart}
SOCK=$RUN/docker.sock
HOST=unix://$SOCK
IMAGE=agentbox/workspace-base:latest

say() { printf 'ensure-restart-docker: %s\n' "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }

export AGENTBOX_DOCKERD_PIDFILE=$RUN/ensure-docker.pid
export AGENTBOX_DOCKERD_LOG=/var/log/agentbox-restart-dockerd.log
# No live-restore (the default): a restart stops every container, the
# harder case for the daemon.
export AGENTBOX_DOCKERD_ARGS="-H $HOST --data-root $ROOT/data --exec-root $RUN/exec --pidfile $RUN/dockerd.pid --iptables=false --ip-masq=false --ip-forward=false"

case "${1:-}" in
  stop) DOCKER_HOST=$HOST bash "$HERE/ensure-docker.sh" stop; exit ;;
  "") ;;
  *) IMAGE=$1 ;;
esac

mkdir -p "$RUN" "$ROOT"
DOCKER_HOST=$HOST bash "$HERE/ensure-docker.sh" >&2

src=$(env -u DOCKER_HOST docker image inspect -f '{{.Id}}' "$IMAGE" 2>/dev/null) ||
  die "$IMAGE is missing in the default engine; build it first (workspace-base/build-image.sh $IMAGE)"
dst=$(DOCKER_HOST=$HOST docker image inspect -f '{{.Id}}' "$IMAGE" 2>/dev/null || true)
if [[ $src != "$dst" ]]; then
  say "copying $IMAGE into the restart engine (docker save | docker load)"
  t0=$SECONDS
  env -u DOCKER_HOST docker save "$IMAGE" | DOCKER_HOST=$HOST docker load -q >&2
  say "loaded in $((SECONDS - t0))s"
  # Drop the previous copy, now untagged, unless a container still uses it.
  [[ -n $dst ]] && DOCKER_HOST=$HOST docker rmi "$dst" >/dev/null 2>&1 || true
fi
echo "$HOST"
