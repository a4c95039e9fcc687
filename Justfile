# agentbox developer recipes. The README's two commands are
# `bash tests/run.sh demo` and `bash tests/run.sh test`, which install `just`
# and then run the recipes below.

set shell := ["bash", "-euo", "pipefail", "-c"]

default: test

# Docker engine running, Claude Code CLI on the host, workspace image built.
setup:
    bash tests/setup/ensure-docker.sh
    bash tests/setup/ensure-claude.sh
    bash workspace-base/build-image.sh

# Build the workspace image (skipped when its inputs are unchanged).
image *ARGS:
    bash workspace-base/build-image.sh {{ARGS}}

# The whole suite: lints, unit tests and end-to-end tests on a real engine.
test: setup
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets --quiet -- -D warnings
    cargo test --workspace --no-fail-fast

# One conversation end to end against the mock model (or the real API when
# ANTHROPIC_API_KEY is set).
demo: setup
    cargo build --quiet --bins
    bash tests/demo.sh

# Remove every container agentbox created on this host.
destroy-all:
    ids=$(docker ps -aq --filter label=agentbox.managed=true); [ -z "$ids" ] || docker rm -f -v $ids

# Workspace sync beside rclone (moto S3 and a local directory); prints
# figures for docs/benchmarks.md. Not a test.
bench-sync:
    bash tests/setup/ensure-moto.sh >/dev/null
    command -v rclone >/dev/null 2>&1 || { apt-get update -q && apt-get install -y -q --no-install-recommends rclone; }
    cargo run --release --quiet --example sync_bench
