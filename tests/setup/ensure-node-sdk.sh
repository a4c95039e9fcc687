#!/usr/bin/env bash
# Make sure a directory holds the pinned Claude Agent SDK for TypeScript
# (@anthropic-ai/claude-agent-sdk from npm) and this repository's client
# (clients/typescript, copied in, not linked); create or update it if not.
#
#   tests/setup/ensure-node-sdk.sh     # idempotent: prints the directory on stdout
#
# The SDK's optional per-platform CLI binaries (400 MB) are left out: the
# client spawns nothing. The client is reinstalled when its sources change
# (a hash kept in the directory).
#
# Knobs (environment):
#   AGENTBOX_NODE_SDK_DIR   the directory     ($HOME/.cache/agentbox/node-sdk)
set -euo pipefail

SDK_VERSION=0.3.337
WS_VERSION=8.23.1
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CLIENT="$ROOT/clients/typescript"
DIR=${AGENTBOX_NODE_SDK_DIR:-$HOME/.cache/agentbox/node-sdk}

say() { printf 'ensure-node-sdk: %s\n' "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }

client_hash() {
  (cd "$CLIENT" && find package.json README.md index.mjs options.mjs errors.mjs index.d.ts -type f |
    LC_ALL=C sort | xargs sha256sum) | sha256sum | cut -d' ' -f1
}

installed() {
  node -e 'console.log(require(process.argv[1] + "/package.json").version)' \
    "$DIR/node_modules/$1" 2>/dev/null || true
}

main() {
  if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    say "node or npm missing: installing Debian's nodejs and npm"
    apt-get update -q && apt-get install -y -q --no-install-recommends nodejs npm || die "cannot install nodejs npm"
  fi
  local major
  major=$(node -p 'process.versions.node.split(".")[0]')
  ((major >= 18)) || die "node $major is too old: the SDK needs 18.14 or later"
  mkdir -p "$DIR"
  [[ -f $DIR/package.json ]] || echo '{"name": "agentbox-node-sdk", "private": true, "type": "module"}' >"$DIR/package.json"
  local want have
  want=$(client_hash)
  have=$(cat "$DIR/.agentbox-client-hash" 2>/dev/null || true)
  if [[ $(installed @anthropic-ai/claude-agent-sdk) != "$SDK_VERSION" || $(installed ws) != "$WS_VERSION" ||
    $want != "$have" || ! -f $DIR/node_modules/agentbox-client/index.mjs ]]; then
    say "installing @anthropic-ai/claude-agent-sdk@$SDK_VERSION, ws@$WS_VERSION and the client into $DIR"
    (cd "$DIR" && npm install --no-audit --no-fund --omit=optional --install-links \
      "@anthropic-ai/claude-agent-sdk@$SDK_VERSION" "ws@$WS_VERSION" "$CLIENT" >&2) ||
      die "npm install in $DIR failed"
    echo "$want" >"$DIR/.agentbox-client-hash"
  fi
  say "ready: $DIR (@anthropic-ai/claude-agent-sdk $SDK_VERSION, agentbox-client)"
  echo "$DIR"
}

main "$@"
