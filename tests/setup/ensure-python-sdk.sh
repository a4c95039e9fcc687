#!/usr/bin/env bash
# Make sure a Python venv holds the pinned Claude Agent SDK, the `mcp`
# package the e2e tests' HTTP/SSE MCP servers use (the SDK depends on it;
# pinned so its API holds), and this repository's client (clients/python);
# create or update it if not.
#
#   tests/setup/ensure-python-sdk.sh     # idempotent: prints the venv's python on stdout
#
# The client is reinstalled when its sources change (a hash kept in the venv).
#
# Knobs (environment):
#   AGENTBOX_SDK_VENV   the venv's directory     ($HOME/.cache/agentbox/sdk-venv)
set -euo pipefail

SDK_VERSION=0.2.184
MCP_VERSION=2.3.0
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CLIENT="$ROOT/clients/python"
VENV=${AGENTBOX_SDK_VENV:-$HOME/.cache/agentbox/sdk-venv}
PY="$VENV/bin/python"

say() { printf 'ensure-python-sdk: %s\n' "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }

client_hash() {
  (cd "$CLIENT" && find pyproject.toml README.md src/agentbox_client -type f -not -name '*.pyc' |
    LC_ALL=C sort | xargs sha256sum) | sha256sum | cut -d' ' -f1
}

main() {
  command -v python3 >/dev/null 2>&1 || {
    say "python3 missing: installing Debian's python3"
    apt-get update -q && apt-get install -y -q --no-install-recommends python3 || die "cannot install python3"
  }
  # A venv left half made (no pip) is made again.
  if [[ ! -x $PY ]] || ! "$PY" -m pip --version >/dev/null 2>&1; then
    if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
      say "python3-venv missing: installing it from Debian"
      apt-get update -q && apt-get install -y -q --no-install-recommends python3-venv ||
        die "cannot install python3-venv"
    fi
    say "creating the venv $VENV"
    mkdir -p "$(dirname "$VENV")"
    python3 -m venv --clear "$VENV" || die "python3 -m venv $VENV failed"
  fi
  if [[ $("$PY" -c 'import importlib.metadata as m; print(m.version("claude-agent-sdk"))' 2>/dev/null) != "$SDK_VERSION" ]]; then
    say "installing claude-agent-sdk==$SDK_VERSION (a minute; it bundles a CLI the tests do not use)"
    "$PY" -m pip install -q --disable-pip-version-check --no-cache-dir "claude-agent-sdk==$SDK_VERSION" ||
      die "pip install claude-agent-sdk==$SDK_VERSION failed"
  fi
  if [[ $("$PY" -c 'import importlib.metadata as m; print(m.version("mcp"))' 2>/dev/null) != "$MCP_VERSION" ]]; then
    say "installing mcp==$MCP_VERSION"
    "$PY" -m pip install -q --disable-pip-version-check --no-cache-dir "mcp==$MCP_VERSION" ||
      die "pip install mcp==$MCP_VERSION failed"
  fi
  local want have
  want=$(client_hash)
  have=$(cat "$VENV/.agentbox-client-hash" 2>/dev/null || true)
  if [[ $want != "$have" ]] || ! "$PY" -c 'import agentbox_client' 2>/dev/null; then
    say "installing the client from $CLIENT"
    "$PY" -m pip install -q --disable-pip-version-check --no-cache-dir --force-reinstall --no-deps "$CLIENT" &&
      "$PY" -m pip install -q --disable-pip-version-check --no-cache-dir "$CLIENT" ||
      die "pip install $CLIENT failed"
    echo "$want" >"$VENV/.agentbox-client-hash"
  fi
  say "ready: $PY (claude-agent-sdk $SDK_VERSION, mcp $MCP_VERSION, agentbox-client)"
  echo "$PY"
}

main "$@"
