#!/usr/bin/env bash
# Make sure a Docker engine answers `docker info`; install and start one if not.
#
#   tests/setup/ensure-docker.sh          # idempotent: no-op when docker works
#   tests/setup/ensure-docker.sh stop     # stop a dockerd that THIS script started
#
# Start order when `docker info` fails:
#   1. apt-get install docker.io            (only when dockerd is missing)
#   2. systemctl start docker               (only when systemd is PID 1 and booted)
#   3. setsid nohup dockerd ... &           (otherwise; pid file + log below)
#
# Knobs (environment):
#   AGENTBOX_DOCKERD_PIDFILE  pid file of a dockerd we start  (/run/agentbox-dockerd.pid)
#   AGENTBOX_DOCKERD_LOG      its log                          (/var/log/agentbox-dockerd.log)
#   AGENTBOX_DOCKERD_ARGS     extra dockerd arguments, word-split (e.g. "--userns-remap=default",
#                             or a scratch engine: "-H unix:///tmp/x.sock --data-root /tmp/x
#                             --exec-root /tmp/x-exec --pidfile /tmp/x.pid --iptables=false".
#                             Do NOT pass "--bridge none" next to another engine: dockerd then
#                             deletes the host's docker0 link, breaking the other engine's bridge)
#   AGENTBOX_DOCKER_WAIT      seconds to wait for `docker info`  (60)
#   DOCKER_HOST               honoured by the docker CLI as usual
set -euo pipefail

PIDFILE=${AGENTBOX_DOCKERD_PIDFILE:-/run/agentbox-dockerd.pid}
LOGFILE=${AGENTBOX_DOCKERD_LOG:-/var/log/agentbox-dockerd.log}
WAIT=${AGENTBOX_DOCKER_WAIT:-60}
read -r -a EXTRA_ARGS <<<"${AGENTBOX_DOCKERD_ARGS:-}"

say() { printf 'ensure-docker: %s\n' "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }

docker_ok() { command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; }

wait_for_docker() {
  local i
  for ((i = 0; i < WAIT; i++)); do
    docker_ok && return 0
    sleep 1
  done
  return 1
}

# True while pid exists and is not a zombie (our parent may be an init that never reaps).
alive() {
  local st
  st=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
  [[ -n $st && $st != Z && $st != X ]]
}

# The pid recorded in our pid file, if that process is still a dockerd.
our_pid() {
  [[ -s $PIDFILE ]] || return 1
  local pid
  pid=$(<"$PIDFILE")
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  alive "$pid" || return 1
  [[ $(cat "/proc/$pid/comm" 2>/dev/null) == dockerd ]] || return 1
  echo "$pid"
}

systemd_usable() {
  [[ $(cat /proc/1/comm 2>/dev/null) == systemd ]] || return 1
  [[ -d /run/systemd/system ]] || return 1
  command -v systemctl >/dev/null 2>&1 || return 1
  local state
  state=$(systemctl is-system-running 2>/dev/null || true)
  [[ $state != offline && $state != unknown && -n $state ]]
}

stop_ours() {
  local pid i
  if ! pid=$(our_pid); then
    say "no dockerd started by this script is running (pid file $PIDFILE); nothing to stop"
    rm -f "$PIDFILE"
    return 0
  fi
  say "stopping dockerd pid $pid (SIGTERM)"
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 60; i++)); do
    alive "$pid" || break
    sleep 1
  done
  if alive "$pid"; then
    say "dockerd pid $pid still alive after 60 s; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    for ((i = 0; i < 10; i++)); do
      alive "$pid" || break
      sleep 1
    done
  fi
  if alive "$pid"; then die "dockerd pid $pid did not exit"; fi
  rm -f "$PIDFILE"
  say "dockerd pid $pid stopped"
}

install_docker() {
  say "dockerd not found: installing Debian's docker.io"
  export DEBIAN_FRONTEND=noninteractive
  # Keep the package's maintainer scripts from starting the service themselves:
  # we start it below, so we know (and can later stop) what we started.
  local policy=/usr/sbin/policy-rc.d added_policy=0
  if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 0755 "$policy"
    added_policy=1
  fi
  local rc=0
  { apt-get update -q && apt-get install -y -q --no-install-recommends docker.io; } || rc=$?
  ((added_policy)) && rm -f "$policy"
  ((rc == 0)) || die "apt-get install docker.io failed (exit $rc)"
  command -v dockerd >/dev/null 2>&1 || die "docker.io installed but dockerd is still missing"
  say "installed: $(dockerd --version 2>/dev/null || echo dockerd)"
}

start_detached() {
  local pid
  if pid=$(our_pid); then
    say "dockerd pid $pid (ours) is running but not answering yet; waiting up to ${WAIT}s"
    wait_for_docker && { say "docker is up (dockerd pid $pid, started earlier by this script)"; return 0; }
    die "dockerd pid $pid does not answer; see $LOGFILE"
  fi
  mkdir -p "$(dirname "$PIDFILE")" "$(dirname "$LOGFILE")"
  say "systemd not usable: starting dockerd detached (log $LOGFILE, pid file $PIDFILE)"
  # No job control here, so the background child is not a process-group leader:
  # setsid does not fork, nohup execs, and $! is dockerd's own pid.
  setsid nohup dockerd "${EXTRA_ARGS[@]}" </dev/null >>"$LOGFILE" 2>&1 &
  pid=$!
  echo "$pid" >"$PIDFILE"
  local i
  for ((i = 0; i < WAIT; i++)); do
    if docker_ok; then
      say "started dockerd pid $pid; docker is up after ${i}s"
      return 0
    fi
    if ! alive "$pid"; then
      rm -f "$PIDFILE"
      say "dockerd exited during start; last log lines:"
      tail -n 20 "$LOGFILE" >&2 || true
      die "dockerd failed to start"
    fi
    sleep 1
  done
  say "last log lines:"
  tail -n 20 "$LOGFILE" >&2 || true
  die "dockerd pid $pid did not answer within ${WAIT}s (left running; '$0 stop' stops it)"
}

main() {
  case "${1:-start}" in
    stop) stop_ours; return ;;
    start) ;;
    *) die "usage: $0 [start|stop]" ;;
  esac

  if docker_ok; then
    say "docker is already up ($(docker version -f '{{.Server.Version}}' 2>/dev/null || echo '?')); nothing to do"
    return 0
  fi

  command -v dockerd >/dev/null 2>&1 || install_docker
  command -v docker >/dev/null 2>&1 || die "docker CLI missing (expected from docker.io)"

  # A dockerd (not ours) may be starting right now: give it the chance first.
  local others=() p
  for p in $(pgrep -x dockerd 2>/dev/null || true); do alive "$p" && others+=("$p"); done
  if ((${#EXTRA_ARGS[@]} == 0 && ${#others[@]} > 0)) && ! our_pid >/dev/null; then
    say "a dockerd is already running (pid ${others[*]}) but not answering; waiting up to ${WAIT}s"
    wait_for_docker && { say "docker is up (pre-existing dockerd)"; return 0; }
    die "existing dockerd does not answer 'docker info'"
  fi

  # systemd's docker.service knows nothing of AGENTBOX_DOCKERD_ARGS: an
  # engine with extra arguments (a second, remapped engine) is always ours.
  if ((${#EXTRA_ARGS[@]} == 0)) && systemd_usable; then
    say "systemd is PID 1: systemctl start docker"
    systemctl start docker
    wait_for_docker || die "docker.service started but 'docker info' fails; see: journalctl -u docker"
    say "docker is up (started via systemctl)"
    return 0
  fi

  start_detached
}

main "$@"
