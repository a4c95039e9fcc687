#!/usr/bin/env bash
# Build the agentbox workspace-base image.
#
#   workspace-base/build-image.sh [--force] [--no-cache] [TAG]
#
#   TAG         default agentbox/workspace-base:latest
#   --force     run `docker build` even when TAG's inputs label matches (layer cache still used)
#   --no-cache  also bypass docker's layer cache (fresh apt packages, fresh CLI download)
#
# Steps: build-base.sh (local debian:bookworm-slim, registry-free) -> cargo build
# --release -p workspace-agent -> stage .build/{workspace-agent,host-ca.pem} ->
# DOCKER_BUILDKIT=0 docker build. Skipped when TAG already carries the same
# `agentbox.inputs` label (sha256 of Dockerfile + agent binary + CLI version +
# base image id).
#
# Knobs (environment):
#   AGENTBOX_BUILD_CA     CA bundle handed to the npm step only (default: the host's
#                         /etc/ssl/certs/ca-certificates.crt; set to "" for none)
#   CLAUDE_CODE_VERSION   Claude Code CLI version (default: the Dockerfile's ARG)
#   NPM_REGISTRY          npm registry URL for the CLI download (default: npm's)
#   CARGO_TARGET_DIR      honoured when locating the agent binary
#   AGENTBOX_DEBIAN_MIRROR passed through to build-base.sh
#   AGENTBOX_IMAGE_AGENT_BIN a prebuilt workspace-agent instead of `cargo build`;
#                         an installed copy (share/agentbox/workspace-base, no
#                         sources) defaults to the workspace-agent shipped beside
#                         this script. (Not AGENTBOX_AGENT_*: the daemon reads
#                         those as `[agent]` settings and refuses unknown keys.)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
BUILD_DIR=$HERE/.build
TAG=agentbox/workspace-base:latest
FORCE=0
NO_CACHE=()
DEFAULT_CA=/etc/ssl/certs/ca-certificates.crt

say() { printf 'build-image: %s\n' "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }

for arg in "$@"; do
  case "$arg" in
    --force) FORCE=1 ;;
    --no-cache) FORCE=1; NO_CACHE=(--no-cache) ;;
    -h | --help) sed -n '2,24p' "$0"; exit 0 ;;
    -*) die "unknown option: $arg" ;;
    *) TAG=$arg ;;
  esac
done

T_START=$SECONDS
step_t0=0
step() { step_t0=$SECONDS; say "== $*"; }
step_done() { say "   done in $((SECONDS - step_t0))s"; }

command -v docker >/dev/null 2>&1 || die "docker CLI not found (run tests/setup/ensure-docker.sh)"
docker info >/dev/null 2>&1 || die "docker engine not reachable (run tests/setup/ensure-docker.sh)"

DEFAULT_VERSION=$(sed -n 's/^ARG CLAUDE_CODE_VERSION=\([^[:space:]]*\).*/\1/p' "$HERE/Dockerfile" | head -n1)
VERSION=${CLAUDE_CODE_VERSION:-$DEFAULT_VERSION}
[[ -n $VERSION ]] || die "no CLAUDE_CODE_VERSION (and none in the Dockerfile)"

step "base image (build-base.sh)"
"$HERE/build-base.sh"
step_done

AGENT_BIN=${AGENTBOX_IMAGE_AGENT_BIN:-}
if [[ -z $AGENT_BIN && ! -f $ROOT/Cargo.toml && -x $HERE/workspace-agent ]]; then
  AGENT_BIN=$HERE/workspace-agent
fi
if [[ -n $AGENT_BIN ]]; then
  step "prebuilt workspace-agent ($AGENT_BIN)"
else
  step "cargo build --release -p workspace-agent"
  cargo build --release -p workspace-agent --manifest-path "$ROOT/Cargo.toml"
  AGENT_BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/workspace-agent
fi
[[ -x $AGENT_BIN ]] || die "agent binary not found at $AGENT_BIN"
step_done

step "stage .build/"
mkdir -p "$BUILD_DIR"
install -m 0755 "$AGENT_BIN" "$BUILD_DIR/workspace-agent"
if [[ -n ${AGENTBOX_BUILD_CA+set} ]]; then
  CA=$AGENTBOX_BUILD_CA
  [[ -z $CA || -f $CA ]] || die "AGENTBOX_BUILD_CA=$CA: no such file"
else
  CA=$DEFAULT_CA
  [[ -f $CA ]] || CA=""
fi
if [[ -n $CA ]]; then
  install -m 0644 "$CA" "$BUILD_DIR/host-ca.pem"
  say "   CA bundle for the npm step: $CA ($(grep -c 'BEGIN CERTIFICATE' "$BUILD_DIR/host-ca.pem") certs)"
else
  : >"$BUILD_DIR/host-ca.pem"
  say "   no CA bundle handed to the build (npm uses the image's own trust store)"
fi
# The CA copy is only needed during `docker build`.
trap 'rm -f "$BUILD_DIR/host-ca.pem"' EXIT

INPUTS=$(
  {
    printf 'dockerfile '; sha256sum <"$HERE/Dockerfile"
    printf 'agent '; sha256sum <"$BUILD_DIR/workspace-agent"
    printf 'node '; cat "$HERE"/node/* | sha256sum
    printf 'claude-code %s\n' "$VERSION"
    printf 'base %s\n' "$(docker image inspect -f '{{.Id}}' debian:bookworm-slim)"
  } | sha256sum | cut -d' ' -f1
)
say "   inputs: ${INPUTS:0:16} (claude-code $VERSION, agent $(du -h "$BUILD_DIR/workspace-agent" | cut -f1))"
step_done

CURRENT=$(docker image inspect -f '{{ index .Config.Labels "agentbox.inputs" }}' "$TAG" 2>/dev/null || true)
if ((!FORCE)) && [[ $CURRENT == "$INPUTS" ]]; then
  say "$TAG is up to date (agentbox.inputs=${INPUTS:0:16}); skipping docker build (--force rebuilds)"
  say "total $((SECONDS - T_START))s"
  exit 0
fi

OLD_ID=$(docker image inspect -f '{{.Id}}' "$TAG" 2>/dev/null || true)
step "docker build -t $TAG (classic builder)"
build_args=(--build-arg "CLAUDE_CODE_VERSION=$VERSION")
[[ -n ${NPM_REGISTRY:-} ]] && build_args+=(--build-arg "NPM_REGISTRY=$NPM_REGISTRY")
# Send only the Dockerfile, node/ and .build/ as the context (not the agent's sources).
tar -C "$HERE" -c Dockerfile node .build/workspace-agent .build/host-ca.pem |
  DOCKER_BUILDKIT=0 docker build \
    --force-rm "${NO_CACHE[@]}" \
    "${build_args[@]}" \
    --label "agentbox.inputs=$INPUTS" \
    -t "$TAG" -
step_done

NEW_ID=$(docker image inspect -f '{{.Id}}' "$TAG")
if [[ -n $OLD_ID && $OLD_ID != "$NEW_ID" ]]; then
  # The previous build is now untagged: drop it unless a container still uses it.
  if docker rmi "$OLD_ID" >/dev/null 2>&1; then say "   removed previous image ${OLD_ID:0:19}"; fi
fi
say "built $TAG: $(docker image inspect -f '{{.Id}}' "$TAG" | cut -c1-19), $(docker image inspect -f '{{.Size}}' "$TAG" | awk '{printf "%.0f MB", $1/1e6}')"
say "total $((SECONDS - T_START))s"
