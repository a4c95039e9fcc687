# agentbox developer recipes. The README's two commands are
# `bash tests/run.sh demo` and `bash tests/run.sh test`, which install `just`
# and then run the recipes below.

set shell := ["bash", "-euo", "pipefail", "-c"]

default: test

# Docker engine running, gVisor (runsc) registered with it, Claude Code CLI on the host, Chromium for the
# status-page test, systemd-analyze and cargo-deb for the packaging test,
# the pinned Agent SDK and the Python client in a venv, the TypeScript
# Agent SDK and client in a node_modules, verdaccio (the private npm
# registry of the egress_npm test), workspace image built.
setup:
    bash tests/setup/ensure-docker.sh
    bash tests/setup/ensure-isolation-tools.sh
    bash tests/setup/ensure-gvisor.sh
    bash tests/setup/ensure-claude.sh
    bash tests/setup/ensure-chromium.sh
    bash tests/setup/ensure-packaging-tools.sh
    bash tests/setup/ensure-python-sdk.sh >/dev/null
    bash tests/setup/ensure-node-sdk.sh >/dev/null
    bash tests/setup/ensure-verdaccio.sh >/dev/null
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

# The penetration test (tests/e2e/pentest.rs), then its report rendered
# into docs/security/penetration-test-report.md; refuses a failing run.
pentest-report: setup
    cargo test --test e2e pentest::
    cargo run --quiet --example pentest-report

# The penetration test on the gVisor tier (results-gvisor.json beside the
# runc run's), then the report rendered with its gVisor column. Not part of
# `test`: it takes far longer than the runc run (525 s against 226 s here at
# load 7 to 13; 458 s against 165 s on the last runs, gVisor's at load 15
# to 86, runc's at 2 to 3; docs/isolation.md). Both runs pass 119 of 119.
pentest-gvisor: setup
    AGENTBOX_PENTEST_TIER=gvisor cargo test --test e2e pentest::every_attack
    cargo run --quiet --example pentest-report

# One conversation end to end against the mock model (or the real API when
# ANTHROPIC_API_KEY is set). Installs only what the demo needs, itself.
demo:
    @bash tests/demo.sh

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

# Egress proxy vs squid vs tinyproxy on loopback (prints figures; see docs/benchmarks.md).
bench-proxy *ARGS:
    bash tests/bench/bench-proxy.sh {{ARGS}}

# HTTPS through CONNECT: agentbox's blind tunnel and its interception (a
# brokered credential) beside squid's tunnel, squid's ssl-bump and no proxy
# (prints figures, writes raw results with --out; see docs/benchmarks.md).
bench-intercept *ARGS:
    bash tests/bench/bench-proxy.sh intercept {{ARGS}}

# The model gateway's pooled HTTPS upstream against the TLS mock: first call
# vs later calls vs a new connection per call (prints figures; see docs/benchmarks.md).
bench-upstream-tls *ARGS:
    cargo run --release --quiet --example bench_upstream_tls -- {{ARGS}}

# The forward proxy's DNS cache: a cached answer vs a system-resolver
# lookup (prints figures; see docs/benchmarks.md). NAME: a name the host's
# DNS answers. The test build, as the unit tests are: a hit's cost is an
# upper bound there. OUT: where to write the raw results (JSON).
bench-dns NAME="deb.debian.org" OUT="":
    AGENTBOX_BENCH_DNS_NAME={{NAME}} AGENTBOX_BENCH_OUT={{OUT}} cargo test --lib proxy::dns::tests::cache_hit_and_miss_figures -- --ignored --nocapture

# Fuzz the proxy's request parsing and host matching (needs nightly and cargo-fuzz).
fuzz-proxy SECS="60":
    cargo +nightly fuzz run proxy_request --fuzz-dir tests/fuzz -- -max_total_time={{SECS}} -max_len=512

# What a conversation's lease adds to a run's start and end (moto S3 and
# a local directory); prints figures for docs/benchmarks.md, raw results
# with `--out FILE`. Not a test.
bench-lease *ARGS:
    bash tests/setup/ensure-moto.sh >/dev/null
    cargo run --release --quiet --example lease_bench -- {{ARGS}}

# Workspace sync beside rclone (moto S3 and a local directory); prints
# figures for docs/benchmarks.md. Not a test.
bench-sync:
    bash tests/setup/ensure-moto.sh >/dev/null
    command -v rclone >/dev/null 2>&1 || { apt-get update -q && apt-get install -y -q --no-install-recommends rclone; }
    cargo run --release --quiet --example sync_bench

# The Debian package (release build; installs cargo-deb when missing).
deb *ARGS:
    bash appliance/build-deb.sh {{ARGS}}

# Install the appliance on this host (appliance/install.sh --help).
install *ARGS:
    cargo build --release -p agentbox -p workspace-agent
    bash appliance/install.sh {{ARGS}}
