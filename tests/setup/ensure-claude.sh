#!/usr/bin/env bash
# Make sure the Claude Code CLI is on the host's PATH (used by the mock
# model's own test against the real CLI; containers get theirs from the image).
# Installs the native binary from npm's per-platform package, which needs no
# Node.js at run time.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
VERSION=${CLAUDE_CODE_VERSION:-$(sed -n 's/^ARG CLAUDE_CODE_VERSION=\([^[:space:]]*\).*/\1/p' "$HERE/../../workspace-base/Dockerfile" | head -n1)}
DEST=/opt/agentbox/claude-code/$VERSION
say() { printf 'ensure-claude: %s\n' "$*" >&2; }

if [[ -x $DEST/claude ]] && command -v claude >/dev/null 2>&1; then
  exit 0
fi
if [[ ! -x $DEST/claude ]]; then
  command -v npm >/dev/null 2>&1 || { say "installing npm"; DEBIAN_FRONTEND=noninteractive apt-get install -y -q npm >/dev/null; }
  say "downloading @anthropic-ai/claude-code-linux-x64@$VERSION (about 190 MB)"
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  (cd "$tmp" && npm pack --silent "@anthropic-ai/claude-code-linux-x64@$VERSION" >/dev/null && tar xzf ./*.tgz)
  mkdir -p "$DEST"
  install -m 0755 "$tmp/package/claude" "$DEST/claude"
fi
ln -sf "$DEST/claude" /usr/local/bin/claude
say "claude $("$DEST/claude" --version 2>/dev/null | head -n1) at /usr/local/bin/claude"
