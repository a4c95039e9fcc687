# agentbox developer recipes. The README's two commands are
# `bash tests/run.sh demo` and `bash tests/run.sh test`, which install `just`
# and then run the recipes below.

set shell := ["bash", "-euo", "pipefail", "-c"]

default: test

# Docker engine running, Claude Code CLI on the host, Chromium for the
# status-page test, systemd-analyze and cargo-deb for the packaging test,
# workspace image built.
setup:
    bash tests/setup/ensure-docker.sh
    bash tests/setup/ensure-isolation-tools.sh
    bash tests/setup/ensure-claude.sh
    bash tests/setup/ensure-chromium.sh
    bash tests/setup/ensure-packaging-tools.sh
    bash workspace-base/build-image.sh

# Build the workspace image (skipped when its inputs are unchanged).
image *ARGS:
    bash workspace-base/build-image.sh {{ARGS}}

# The whole suite: lints, unit tests and end-to-end tests on a real engine.
test: setup
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets --quiet -- -D warnings
    cargo test --workspace --no-fail-fast
    cargo test --bench agentbox -- --smoke

# The benchmark suite in release mode; prints markdown tables for
# docs/benchmarks.md. `just bench claim` runs one scenario.
bench *ARGS: setup
    cargo bench --bench agentbox -- {{ARGS}}

# One conversation end to end against the mock model (or the real API when
# ANTHROPIC_API_KEY is set).
demo: setup
    cargo build --quiet --bins
    bash tests/demo.sh

# Remove every container agentbox created on this host.
destroy-all:
    cargo run --quiet --bin agentbox -- destroy-all --all-instances

# Preflight checks of this host: pass / warn / fail with the fix for each.
doctor *ARGS:
    cargo run --quiet --bin agentbox -- doctor {{ARGS}}

# The running daemon's pool, containers, workers, events and health.
status *ARGS:
    cargo run --quiet --bin agentbox -- status {{ARGS}}

# Ask the running daemon to sweep idle, old and orphaned containers now.
gc *ARGS:
    cargo run --quiet --bin agentbox -- gc {{ARGS}}

# The Debian package (release build; installs cargo-deb when missing).
deb *ARGS:
    bash appliance/build-deb.sh {{ARGS}}

# Install the appliance on this host (appliance/install.sh --help).
install *ARGS:
    cargo build --release -p agentbox -p workspace-agent
    bash appliance/install.sh {{ARGS}}
