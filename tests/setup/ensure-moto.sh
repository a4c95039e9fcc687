#!/usr/bin/env bash
# Make sure a moto S3 server answers on loopback; install and start it if not.
#
#   tests/setup/ensure-moto.sh          # idempotent: prints the endpoint URL on stdout
#   tests/setup/ensure-moto.sh stop     # stop the moto_server THIS script started
#
# Also installs the AWS CLI (`aws`, for the lifecycle-policy test) when missing.
#
# Knobs (environment):
#   AGENTBOX_MOTO_PORT     port on 127.0.0.1                   (9560)
#   AGENTBOX_MOTO_PIDFILE  pid file of the server we start      (/run/agentbox-moto.pid)
#   AGENTBOX_MOTO_LOG      its log                              (/var/log/agentbox-moto.log)
#   AGENTBOX_MOTO_WAIT     seconds to wait for it to answer     (30)
set -euo pipefail

PORT=${AGENTBOX_MOTO_PORT:-9560}
PIDFILE=${AGENTBOX_MOTO_PIDFILE:-/run/agentbox-moto.pid}
LOGFILE=${AGENTBOX_MOTO_LOG:-/var/log/agentbox-moto.log}
WAIT=${AGENTBOX_MOTO_WAIT:-30}
URL="http://127.0.0.1:$PORT"

say() { printf 'ensure-moto: %s\n' "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }

answers() { curl -s -o /dev/null --max-time 2 "$URL/" 2>/dev/null; }

alive() {
  local st
  st=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
  [[ -n $st && $st != Z && $st != X ]]
}

our_pid() {
  [[ -s $PIDFILE ]] || return 1
  local pid
  pid=$(<"$PIDFILE")
  [[ $pid =~ ^[0-9]+$ ]] && alive "$pid" || return 1
  grep -q moto_server "/proc/$pid/cmdline" 2>/dev/null || return 1
  echo "$pid"
}

pip_install() {
  local pip
  pip=$(command -v pip3 || command -v pip || true)
  if [[ -z $pip ]]; then
    say "pip missing: installing Debian's python3-pip"
    apt-get update -q && apt-get install -y -q --no-install-recommends python3-pip ||
      die "cannot install python3-pip"
    pip=$(command -v pip3)
  fi
  # Debian's system Python refuses pip installs without this flag (PEP 668).
  "$pip" install -q "$@" 2>/dev/null || "$pip" install -q --break-system-packages "$@" ||
    die "pip install $* failed"
  hash -r
}

stop_ours() {
  local pid i
  if ! pid=$(our_pid); then
    say "no moto_server started by this script is running; nothing to stop"
    rm -f "$PIDFILE"
    return 0
  fi
  say "stopping moto_server pid $pid"
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 50; i++)); do
    alive "$pid" || break
    sleep 0.1
  done
  alive "$pid" && kill -KILL "$pid" 2>/dev/null || true
  rm -f "$PIDFILE"
}

main() {
  case "${1:-start}" in
    stop) stop_ours; return ;;
    start) ;;
    *) die "usage: $0 [start|stop]" ;;
  esac
  command -v curl >/dev/null 2>&1 || { apt-get update -q && apt-get install -y -q curl; }
  command -v aws >/dev/null 2>&1 || { say "installing awscli (pip)"; pip_install awscli; }
  if answers; then
    say "moto answers on $URL"
    echo "$URL"
    return 0
  fi
  if ! command -v moto_server >/dev/null 2>&1; then
    say "moto_server missing: pip install 'moto[server]'"
    pip_install 'moto[server]'
    command -v moto_server >/dev/null 2>&1 || die "moto installed but moto_server is not on PATH"
  fi
  mkdir -p "$(dirname "$PIDFILE")" "$(dirname "$LOGFILE")"
  say "starting moto_server on $URL (log $LOGFILE, pid file $PIDFILE)"
  # Not a process-group leader here, so setsid does not fork: $! is the server.
  setsid nohup moto_server -H 127.0.0.1 -p "$PORT" </dev/null >>"$LOGFILE" 2>&1 &
  local pid=$! i
  echo "$pid" >"$PIDFILE"
  for ((i = 0; i < WAIT * 10; i++)); do
    if answers; then
      say "moto is up after $((i / 10)).$((i % 10))s (pid $pid)"
      echo "$URL"
      return 0
    fi
    alive "$pid" || { tail -n 20 "$LOGFILE" >&2 || true; die "moto_server exited during start"; }
    sleep 0.1
  done
  die "moto_server pid $pid did not answer within ${WAIT}s; see $LOGFILE"
}

main "$@"
