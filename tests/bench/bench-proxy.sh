#!/usr/bin/env bash
# Loopback benchmark: agentbox's egress proxy vs squid vs tinyproxy vs no
# proxy (CONNECT tunnel throughput; latency of small requests through a
# tunnel and as plain HTTP), and the model gateway's latency against a
# model stand-in. Prints tables; see docs/benchmarks.md.
#
#   bash tests/bench/bench-proxy.sh [--mib N] [--requests N]
#
# `intercept` instead runs tests/bench/bench_intercept.rs: HTTPS through
# CONNECT, agentbox's blind tunnel and its interception (a rule with
# methods, paths and a brokered credential) beside squid's tunnel and squid
# in ssl-bump mode, with a CA made here for squid:
#
#   bash tests/bench/bench-proxy.sh intercept [--requests N] [--clients N]
#       [--mib N] [--hosts N] [--smoke] [--out FILE] [--squid-peek]
#
# squid bumps at step 1 by default (its certificate cache works); with
# --squid-peek it peeks at the client's TLS hello first, then bumps, the
# setup for rules on the SNI, in which squid 5.7 turns its certificate
# cache off and asks its helper on every connection.
#
# Installs squid (Debian's squid-openssl, which can bump) and tinyproxy
# when missing, starts each on 127.0.0.1 with a throw-away config, and
# stops them again.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
say() { printf 'bench-proxy: %s\n' "$*" >&2; }
MODE=plain
if [[ ${1:-} == intercept ]]; then
  MODE=intercept
  shift
fi

bash tests/setup/ensure-squid-openssl.sh
if [[ $MODE == plain ]] && ! command -v tinyproxy >/dev/null; then
  say "installing tinyproxy"
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q tinyproxy >/dev/null
fi
# The packages start system services on the default ports; they are not needed.
systemctl stop squid tinyproxy >/dev/null 2>&1 || true

EXAMPLE=bench_proxy
[[ $MODE == intercept ]] && EXAMPLE=bench_intercept
say "building the bench binary (release)"
cargo build --release --quiet --example "$EXAMPLE"
BIN=${CARGO_TARGET_DIR:-target}/release/examples/$EXAMPLE

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
wait_port() {
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  say "nothing listens on 127.0.0.1:$1"; return 1
}

if [[ $MODE == intercept ]]; then
  BUMP="ssl_bump bump all"
  LABEL="squid ssl-bump"
  ARGS=()
  for a in "$@"; do
    if [[ $a == --squid-peek ]]; then
      BUMP=$'acl step1 at_step SslBump1\nssl_bump peek step1\nssl_bump bump all'
      LABEL="squid ssl-bump, peek first"
    else
      ARGS+=("$a")
    fi
  done
  AB=$(free_port); SQ=$(free_port); SQB=$(free_port)
  "$BIN" certs "$WORK"
  "$BIN" serve "$AB" "$WORK" 2>"$WORK/agentbox.log" &
  PIDS+=($!)
  # squid's CA as squid's documentation makes it (RSA); squid signs the
  # certificates it shows the client with it.
  openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=bench squid CA" \
    -keyout "$WORK/squid-ca.key" -out "$WORK/squid-ca.pem" 2>/dev/null
  /usr/lib/squid/security_file_certgen -c -s "$WORK/ssl_db" -M 16MB >/dev/null
  chown -R proxy:proxy "$WORK/ssl_db" "$WORK/squid-ca.key"
  cat >"$WORK/squid.conf" <<CONF
http_port 127.0.0.1:$SQ
http_port 127.0.0.1:$SQB ssl-bump tls-cert=$WORK/squid-ca.pem tls-key=$WORK/squid-ca.key generate-host-certificates=on dynamic_cert_mem_cache_size=16MB
sslcrtd_program /usr/lib/squid/security_file_certgen -s $WORK/ssl_db -M 16MB
sslcrtd_children 5 startup=1 idle=1
$BUMP
tls_outgoing_options cafile=$WORK/upstream-ca.pem
hosts_file $WORK/hosts
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
  wait_port "$AB"; wait_port "$SQ"; wait_port "$SQB"
  say "agentbox :$AB  squid $(squid -v | head -1 | awk '{print $4}') :$SQ, ssl-bump :$SQB"
  say "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
  status=0
  "$BIN" run "$WORK" --agentbox "127.0.0.1:$AB" --squid "127.0.0.1:$SQ" \
    --squid-bump "127.0.0.1:$SQB" --squid-bump-label "$LABEL" "${ARGS[@]}" || status=$?
  say "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
  if ((status)); then
    say "failed; squid's log:"; tail -n 20 "$WORK/squid-cache.log" >&2 || true
    say "agentbox's log:"; tail -n 20 "$WORK/agentbox.log" >&2 || true
  fi
  exit "$status"
fi

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
