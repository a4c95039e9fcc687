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

# Egress proxy vs squid vs tinyproxy on loopback (prints figures; see docs/benchmarks.md).
bench-proxy *ARGS:
    bash tests/bench/bench-proxy.sh {{ARGS}}

# Fuzz the proxy's request parsing and host matching (needs nightly and cargo-fuzz).
fuzz-proxy SECS="60":
    cargo +nightly fuzz run proxy_request --fuzz-dir tests/fuzz -- -max_total_time={{SECS}} -max_len=512
