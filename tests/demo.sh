#!/usr/bin/env bash
# The demo: one conversation end to end on embedded defaults (local redb,
# local storage under /var/lib/agentbox). The agent writes a file; the SSE
# events are printed as they arrive; then everything stops cleanly.
# Without ANTHROPIC_API_KEY the model is the repository's mock, and the demo
# says so; with it, the real Anthropic API answers.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/debug
DIR=/var/lib/agentbox/demo
TOKEN=demo-token
LISTEN=${AGENTBOX_DEMO_LISTEN:-127.0.0.1:8787}
say() { printf '\033[1mdemo:\033[0m %s\n' "$*"; }

command -v curl >/dev/null 2>&1 || DEBIAN_FRONTEND=noninteractive apt-get install -y -q curl >/dev/null
mkdir -p "$DIR"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  ids=$(docker ps -aq --filter label=agentbox.instance=demo)
  [[ -z $ids ]] || docker rm -f -v $ids >/dev/null
}
trap cleanup EXIT

if [[ -n ${ANTHROPIC_API_KEY:-} ]]; then
  MODEL_URL=https://api.anthropic.com
  say "ANTHROPIC_API_KEY is set: talking to the real Anthropic API."
else
  "$BIN/mock-model" --listen 127.0.0.1:0 >"$DIR/mock.out" &
  pids+=($!)
  for _ in $(seq 100); do grep -q listening "$DIR/mock.out" 2>/dev/null && break; sleep 0.05; done
  MODEL_URL=$(sed -n 's/.*listening on //p' "$DIR/mock.out")
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

"$BIN/agentbox" serve --config "$DIR/agentbox.toml" >"$DIR/daemon.log" 2>&1 &
pids=("$!" "${pids[@]}")
for _ in $(seq 200); do curl -sf "http://$LISTEN/healthz" >/dev/null && break; sleep 0.1; done
curl -sf "http://$LISTEN/healthz" >/dev/null || { cat "$DIR/daemon.log"; exit 1; }
say "daemon up on http://$LISTEN (log: $DIR/daemon.log)"

CONV=demo-$(date +%s)
PROMPT='Create a file named hello.txt that contains exactly: Hello from agentbox\n!write hello.txt Hello from agentbox'
say "POST /v1/conversations/$CONV/messages (a container starts; events follow as they arrive)"
echo
curl -sN --fail-with-body -X POST "http://$LISTEN/v1/conversations/$CONV/messages" \
  -H "Authorization: Bearer $TOKEN" -H 'content-type: application/json' \
  -d "{\"prompt\": \"$PROMPT\"}"
echo
say "the agent's file, fetched back through the API (GET /v1/conversations/$CONV/files/hello.txt):"
curl -sf "http://$LISTEN/v1/conversations/$CONV/files/hello.txt" -H "Authorization: Bearer $TOKEN"
echo
say "it was synced to the object store (/var/lib/agentbox/objects/demo/$CONV/) before the result event came"
say "stopping the daemon (SIGTERM) and removing the demo container"
