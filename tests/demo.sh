#!/usr/bin/env bash
# The demo: one conversation end to end on embedded defaults (local redb,
# local storage under /var/lib/agentbox). The agent writes a file; the SSE
# events are printed as they arrive; then everything stops cleanly.
# Without ANTHROPIC_API_KEY the model is the repository's mock, and the demo
# says so; with it, the real Anthropic API answers.
#
# It installs only what the demo itself needs (a Docker engine, the host
# tools of the workspace quota, the workspace image); the test suite's tools
# (Chromium, shellcheck, cargo-deb, ...) are `just setup`'s business. Each
# step prints one line with its time and keeps its output in a log under
# $DIR/logs; a step that fails names itself and shows the end of its log.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/debug
DIR=/var/lib/agentbox/demo
LOGS=$DIR/logs
TOKEN=demo-token
LISTEN=${AGENTBOX_DEMO_LISTEN:-127.0.0.1:8787}
export PATH="$HOME/.cargo/bin:$PATH"

say() { printf '\033[1mdemo:\033[0m %s\n' "$*"; }
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }
T_START=$(now)

# Prints the failing step, its log's last lines and exits.
fail() {
  local name=$1 log=$2 rc=$3
  say "FAILED: $name (exit $rc); last lines of $log:"
  tail -n 25 "$log" 2>/dev/null | sed 's/^/    /' >&2 || true
  say "the whole log: $log"
  exit "$rc"
}

# step NAME LOG CMD...: runs CMD with its output in LOG, then one line
# with the time it took.
step() {
  local name=$1 log=$2 t0 rc=0
  shift 2
  t0=$(now)
  printf '\033[1mdemo:\033[0m %s ... ' "$name"
  "$@" >"$log" 2>&1 </dev/null || rc=$?
  if ((rc != 0)); then
    echo "failed after $(secs "$t0" "$(now)") s"
    fail "$name" "$log" "$rc"
  fi
  echo "done in $(secs "$t0" "$(now)") s"
}

ensure_curl() {
  command -v curl >/dev/null 2>&1 && return 0
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q && apt-get install -y -q --no-install-recommends curl ca-certificates
}

mkdir -p "$LOGS"
pids=()
cleanup() {
  local pid ids=()
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  # The daemon leaves its containers running when it stops (a restart
  # adopts them); the demo removes its own, with their workspace quota
  # mounts and state, as an operator would.
  if [[ -x $BIN/agentbox && -f $DIR/agentbox.toml ]]; then
    "$BIN/agentbox" destroy-all --config "$DIR/agentbox.toml" >"$LOGS/destroy.log" 2>&1 || true
  fi
  if command -v docker >/dev/null 2>&1; then
    mapfile -t ids < <(docker ps -aq --filter label=agentbox.instance=demo 2>/dev/null || true)
    ((${#ids[@]} == 0)) || docker rm -f -v "${ids[@]}" >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT

step "curl" "$LOGS/curl.log" ensure_curl
step "Docker engine (installed and started when missing)" "$LOGS/docker.log" \
  bash "$ROOT/tests/setup/ensure-docker.sh"
step "host tools for the workspace quota (mkfs.ext4, loop devices)" "$LOGS/host-tools.log" \
  bash "$ROOT/tests/setup/ensure-isolation-tools.sh" --runtime
step "cargo build agentbox and the mock model (minutes on a fresh machine)" "$LOGS/build.log" \
  cargo build --manifest-path "$ROOT/Cargo.toml" -p agentbox -p mock-model --bins
step "workspace image (Debian base, agent, Claude Code CLI; skipped when up to date)" "$LOGS/image.log" \
  bash "$ROOT/workspace-base/build-image.sh"

# Waits for `pattern` in `file` while `pid` lives; 0 when it appeared.
wait_for_line() {
  local file=$1 pattern=$2 pid=$3 i
  for ((i = 0; i < 200; i++)); do
    grep -q "$pattern" "$file" 2>/dev/null && return 0
    kill -0 "$pid" 2>/dev/null || return 1
    sleep 0.05
  done
  return 1
}

if [[ -n ${ANTHROPIC_API_KEY:-} ]]; then
  MODEL_URL=https://api.anthropic.com
  say "ANTHROPIC_API_KEY is set: talking to the real Anthropic API."
else
  "$BIN/mock-model" --listen 127.0.0.1:0 >"$LOGS/mock-model.log" 2>&1 &
  pids+=($!)
  wait_for_line "$LOGS/mock-model.log" listening "$!" ||
    fail "start the mock model ($BIN/mock-model)" "$LOGS/mock-model.log" 1
  MODEL_URL=$(sed -n 's/.*listening on //p' "$LOGS/mock-model.log")
  [[ -n $MODEL_URL ]] || fail "read the mock model's address" "$LOGS/mock-model.log" 1
  export ANTHROPIC_API_KEY=demo-key-for-the-mock
  say "No ANTHROPIC_API_KEY: using the MOCK model at $MODEL_URL (scripted answers, no real AI)."
fi

cat >"$DIR/agentbox.toml" <<TOML
# Demo config: everything not set here takes its embedded default.
[server]
listen = "$LISTEN"
instance = "demo"

[model]
anthropic_base_url = "$MODEL_URL"

[[tenants]]
id = "demo"
token_sha256 = "$("$BIN/agentbox" hash-token "$TOKEN")"
TOML
step "check the config (agentbox validate)" "$LOGS/validate.log" \
  "$BIN/agentbox" validate --config "$DIR/agentbox.toml"

t0=$(now)
"$BIN/agentbox" serve --config "$DIR/agentbox.toml" >"$LOGS/daemon.log" 2>&1 &
daemon=$!
pids=("$daemon" "${pids[@]}")
up=0
for _ in $(seq 300); do
  if curl -sf "http://$LISTEN/healthz" >/dev/null 2>&1; then up=1; break; fi
  kill -0 "$daemon" 2>/dev/null || break
  sleep 0.1
done
((up)) || fail "start the daemon (agentbox serve on $LISTEN)" "$LOGS/daemon.log" 1
say "daemon up on http://$LISTEN in $(secs "$t0" "$(now)") s (log: $LOGS/daemon.log)"

CONV=demo-$(date +%s)
PROMPT='Create a file named hello.txt that contains exactly: Hello from agentbox\n!write hello.txt Hello from agentbox'
say "POST /v1/conversations/$CONV/messages (a container starts; events follow as they arrive)"
echo
t_post=$(now)
first="" result=0 failed=0
# Each line as it arrives; the first event's time is what a user waits for.
while IFS= read -r line; do
  if [[ -z $first && $line == event:* ]]; then first=$(now); fi
  if [[ $line =~ ^event:\ ?result$ ]]; then result=1; fi
  if [[ $line =~ ^event:\ ?error$ ]]; then failed=1; fi
  printf '%s\n' "$line"
done < <(curl -sN --fail-with-body -X POST "http://$LISTEN/v1/conversations/$CONV/messages" \
  -H "Authorization: Bearer $TOKEN" -H 'content-type: application/json' \
  -d "{\"prompt\": \"$PROMPT\"}" 2>"$LOGS/messages.log"; echo "curl-exit=$?" >>"$LOGS/messages.log")
echo
grep -q 'curl-exit=0' "$LOGS/messages.log" || fail "POST the message" "$LOGS/messages.log" 1
[[ -n $first ]] || fail "receive events (none came)" "$LOGS/daemon.log" 1
((failed == 0 && result == 1)) || fail "the run (it ended without a result event)" "$LOGS/daemon.log" 1
say "first event $(secs "$t_post" "$first") s after the POST; the run ended after $(secs "$t_post" "$(now)") s"

say "the agent's file, fetched back through the API (GET /v1/conversations/$CONV/files/hello.txt):"
curl -sf "http://$LISTEN/v1/conversations/$CONV/files/hello.txt" -H "Authorization: Bearer $TOKEN" ||
  fail "fetch hello.txt through the files API" "$LOGS/daemon.log" 1
echo
say "it was synced to the object store (/var/lib/agentbox/objects/demo/$CONV/) before the result event came"
say "stopping the daemon (SIGTERM) and removing the demo container (agentbox destroy-all)"
say "total $(secs "$T_START" "$(now)") s"
