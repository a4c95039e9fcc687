#!/usr/bin/env bash
# Entry point of the README's two commands: makes sure `just` exists, then
# runs the recipe (`demo`, `test`, `bench`, ...). Every recipe installs what
# else it needs (Docker engine, Claude Code CLI, the workspace image).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="$HOME/.cargo/bin:$PATH"
if ! command -v just >/dev/null 2>&1; then
  echo "run: installing just (cargo install just --locked; about a minute)" >&2
  cargo install just --locked --quiet
fi
exec just "${@:-test}"
