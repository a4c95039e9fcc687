#!/usr/bin/env bash
# Loopback benchmark: agentbox's egress proxy vs squid vs tinyproxy vs no
# proxy (CONNECT tunnel throughput; latency of small requests through a
# tunnel and as plain HTTP), and the model gateway's latency against a
# model stand-in. Prints tables; see docs/benchmarks.md.
#
#   bash tests/bench/bench-proxy.sh [--mib N] [--requests N]
#
# Installs squid and tinyproxy (Debian packages) when missing, starts each
# on 127.0.0.1 with a throw-away config, and stops them again.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
say() { printf 'bench-proxy: %s\n' "$*" >&2; }

if ! command -v squid >/dev/null || ! command -v tinyproxy >/dev/null; then
  say "installing squid and tinyproxy"
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q squid tinyproxy >/dev/null
fi
# The packages start system services on the default ports; they are not needed.
systemctl stop squid tinyproxy >/dev/null 2>&1 || true

say "building the bench binary (release)"
cargo build --release --quiet --example bench_proxy
BIN=${CARGO_TARGET_DIR:-target}/release/examples/bench_proxy

WORK=$(mktemp -d /tmp/bench-proxy.XXXXXX)
# squid drops to its own user and writes its logs and pid file here.
chmod 1777 "$WORK"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
AB=$(free_port); SQ=$(free_port); TP=$(free_port); MODEL=$(free_port)

"$BIN" serve "$AB" "$MODEL" 2>"$WORK/agentbox.log" &
PIDS+=($!)

cat >"$WORK/squid.conf" <<CONF
http_port 127.0.0.1:$SQ
http_access allow all
cache deny all
cache_mem 8 MB
access_log none
cache_log $WORK/squid-cache.log
pid_filename $WORK/squid.pid
coredump_dir $WORK
workers 1
shutdown_lifetime 1 seconds
CONF
squid -N -f "$WORK/squid.conf" 2>"$WORK/squid.err" &
PIDS+=($!)

cat >"$WORK/tinyproxy.conf" <<CONF
User nobody
Group nogroup
Port $TP
Listen 127.0.0.1
Timeout 60
MaxClients 256
Allow 127.0.0.1
DisableViaHeader Yes
LogLevel Critical
CONF
tinyproxy -d -c "$WORK/tinyproxy.conf" 2>"$WORK/tinyproxy.err" &
PIDS+=($!)

for port in "$AB" "$SQ" "$TP"; do
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    sleep 0.1
  done
done
say "agentbox :$AB  squid $(squid -v | head -1 | awk '{print $4}') :$SQ  tinyproxy $(tinyproxy -v 2>&1 | awk '{print $2}') :$TP"
AGENTBOX_BENCH_ADDR="127.0.0.1:$AB" "$BIN" run \
  agentbox="127.0.0.1:$AB" squid="127.0.0.1:$SQ" tinyproxy="127.0.0.1:$TP" \
  --gateway "127.0.0.1:$AB" --model "127.0.0.1:$MODEL" "$@"
