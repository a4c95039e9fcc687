#!/usr/bin/env bash
# Make sure a directory holds the pinned verdaccio (a private npm registry,
# from npm) for the brokered-registry test (tests/e2e/egress_npm.rs);
# install it there if not. Starts nothing: the test runs its own registry
# on loopback with its own configuration.
#
#   tests/setup/ensure-verdaccio.sh    # idempotent: prints the directory on stdout
#
# The test requires `verdaccio` from DIR/node_modules.
#
# Knobs (environment):
#   AGENTBOX_VERDACCIO_DIR   the directory     ($HOME/.cache/agentbox/verdaccio)
set -euo pipefail

# 6.8.0: the newest that runs on Node 20 (later 6.x want Node 22).
VERSION=6.8.0
DIR=${AGENTBOX_VERDACCIO_DIR:-$HOME/.cache/agentbox/verdaccio}

say() { printf 'ensure-verdaccio: %s\n' "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }

installed() {
  node -e 'console.log(require(process.argv[1] + "/package.json").version)' \
    "$DIR/node_modules/verdaccio" 2>/dev/null || true
}

main() {
  if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    say "node or npm missing: installing Debian's nodejs and npm"
    apt-get update -q && apt-get install -y -q --no-install-recommends nodejs npm || die "cannot install nodejs npm"
  fi
  local major
  major=$(node -p 'process.versions.node.split(".")[0]')
  ((major >= 20)) || die "node $major is too old: verdaccio $VERSION needs Node 20 or later"
  mkdir -p "$DIR"
  [[ -f $DIR/package.json ]] || echo '{"name": "agentbox-verdaccio", "private": true}' >"$DIR/package.json"
  if [[ $(installed) != "$VERSION" ]]; then
    say "installing verdaccio@$VERSION into $DIR"
    (cd "$DIR" && npm install --no-audit --no-fund --omit=optional "verdaccio@$VERSION" >&2) ||
      die "npm install in $DIR failed"
    [[ $(installed) == "$VERSION" ]] || die "verdaccio $VERSION still missing from $DIR after install"
  fi
  say "ready: $DIR (verdaccio $VERSION)"
  echo "$DIR"
}

main "$@"
