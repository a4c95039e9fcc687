#!/usr/bin/env bash
# Entry point of the README's two commands: makes sure `just` exists, then
# runs the recipe (`demo`, `test`, `bench`, ...). Every recipe installs what
# else it needs (Docker engine, Claude Code CLI, the workspace image).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="$HOME/.cargo/bin:$PATH"
if ! command -v just >/dev/null 2>&1; then
  t0=$SECONDS
  echo "run: installing just (cargo install just; about a minute) ..." >&2
  # --debug: just's own release profile (LTO, one codegen unit) takes three
  # times as long on two cores, and a task runner needs no optimiser.
  cargo install just --locked --debug --quiet || { echo "run: FAILED: cargo install just" >&2; exit 1; }
  echo "run: just installed in $((SECONDS - t0)) s" >&2
fi
exec just "${@:-test}"
