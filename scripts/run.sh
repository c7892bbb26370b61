#!/usr/bin/env bash
# Runs the whole system locally: nats-server with JetStream, ingest, dispatcher and a demo
# receiver that verifies every signature; creates a demo tenant, API key and subscription,
# and prints a curl line that sends an event. Ctrl-C stops everything.
#
#   scripts/run.sh           run until Ctrl-C
#   scripts/run.sh --smoke   send one event, wait for the verified delivery, exit (used by CI)
set -euo pipefail
cd "$(dirname "$0")/.."

SMOKE=false
[ "${1:-}" = "--smoke" ] && SMOKE=true
if $SMOKE; then d=1; else d=0; fi
NATS_PORT=${NATS_PORT:-$((4222 + d * 10000))}
INGEST_PORT=${INGEST_PORT:-$((8080 + d * 10000))}
DISPATCHER_PORT=${DISPATCHER_PORT:-$((9090 + d * 10000))}
RECEIVER_PORT=${RECEIVER_PORT:-$((9999 + d * 10000))}
RUN_DIR=${RUN_DIR:-.run}
ADMIN_TOKEN=${WEBHOOKS_ADMIN_TOKEN:-dev-admin-token-change-me}
API="http://127.0.0.1:$INGEST_PORT"

mkdir -p "$RUN_DIR"
# A fresh store each run, so the demo starts from one tenant and one subscription.
rm -rf "$RUN_DIR/nats" "$RUN_DIR/secret" "$RUN_DIR/receiver.log"
NATS_BIN="$(scripts/nats-server.sh)"
echo "building (first run takes a few minutes)…"
cargo build --quiet --locked -p ingest -p dispatcher -p testkit --bins
BIN=target/debug

pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

wait_for() { # url, what
  for _ in $(seq 1 150); do
    curl -fsS -o /dev/null "$1" 2>/dev/null && return 0
    sleep 0.2
  done
  echo "$2 did not become ready; logs are in $RUN_DIR/" >&2
  exit 1
}

"$NATS_BIN" -js -a 127.0.0.1 -p "$NATS_PORT" -m $((NATS_PORT + 4000)) -sd "$RUN_DIR/nats" >"$RUN_DIR/nats.log" 2>&1 &
pids+=($!)
wait_for "http://127.0.0.1:$((NATS_PORT + 4000))/healthz?js-enabled-only=true" nats-server

export NATS_URL="nats://127.0.0.1:$NATS_PORT"
export WEBHOOKS_ALLOW_HTTP=true
export WEBHOOKS_ALLOW_PRIVATE_TARGETS=127.0.0.0/8
export WEBHOOKS_ADMIN_TOKEN="$ADMIN_TOKEN"
# Seals signing secrets at rest; a fresh one per run, as the store is fresh too (docs/security.md).
WEBHOOKS_MASTER_KEY=${WEBHOOKS_MASTER_KEY:-$(python3 -c 'import os,base64;print(base64.b64encode(os.urandom(32)).decode())')}
export WEBHOOKS_MASTER_KEY
export RUST_LOG=${RUST_LOG:-info}

if $SMOKE; then
  "$BIN/demo-receiver" --listen "127.0.0.1:$RECEIVER_PORT" --secret-file "$RUN_DIR/secret" >"$RUN_DIR/receiver.log" 2>&1 &
else
  "$BIN/demo-receiver" --listen "127.0.0.1:$RECEIVER_PORT" --secret-file "$RUN_DIR/secret" 2>&1 | tee "$RUN_DIR/receiver.log" &
fi
pids+=($!)
WEBHOOKS_LISTEN="127.0.0.1:$INGEST_PORT" "$BIN/ingest" >"$RUN_DIR/ingest.log" 2>&1 &
pids+=($!)
WEBHOOKS_METRICS_LISTEN="127.0.0.1:$DISPATCHER_PORT" "$BIN/dispatcher" >"$RUN_DIR/dispatcher.log" 2>&1 &
pids+=($!)
wait_for "$API/readyz" ingest
wait_for "http://127.0.0.1:$DISPATCHER_PORT/readyz" dispatcher

json() { python3 -c "import json,sys; print(json.load(sys.stdin)$1)"; }
KEY=$(curl -fsS -X POST "$API/v1/admin/tenants/demo/api-keys" -H "Authorization: Bearer $ADMIN_TOKEN" | json '["key"]')
SUB=$(curl -fsS -X POST "$API/v1/subscriptions" -H "Authorization: Bearer $KEY" -H 'content-type: application/json' \
  -d "{\"url\":\"http://127.0.0.1:$RECEIVER_PORT/webhooks\",\"event_types\":[\"*\"],\"description\":\"demo receiver\"}")
echo "$SUB" | json '["secret"]' >"$RUN_DIR/secret"

EVENT='{"type":"call.started","agent_id":"agent_demo","call_id":"call_123","data":{"direction":"inbound","from":"+14155550100","to":"+14155550199","started_at":"2026-11-28T15:20:11.123Z"}}'
CURL="curl -sS -X POST $API/v1/events -H 'Authorization: Bearer $KEY' -H 'content-type: application/json' -d '$EVENT'"
{
  echo "export API=$API"
  echo "export KEY=$KEY"
  echo "export ADMIN_TOKEN=$ADMIN_TOKEN"
} >"$RUN_DIR/demo.env"

if $SMOKE; then
  eval "$CURL"
  echo
  for _ in $(seq 1 100); do
    if grep -q "verified" "$RUN_DIR/receiver.log"; then
      grep "verified" "$RUN_DIR/receiver.log"
      echo "smoke: the event arrived signed and verified"
      exit 0
    fi
    sleep 0.2
  done
  echo "smoke: no verified delivery; receiver log:" >&2
  cat "$RUN_DIR/receiver.log" >&2
  exit 1
fi

cat <<TXT

Open Webhooks is running:
  ingest API   $API          (logs: $RUN_DIR/ingest.log)
  dispatcher   http://127.0.0.1:$DISPATCHER_PORT   (logs: $RUN_DIR/dispatcher.log)
  nats-server  nats://127.0.0.1:$NATS_PORT   (data: $RUN_DIR/nats)
  receiver     http://127.0.0.1:$RECEIVER_PORT/webhooks (verifies every signature; prints below)

Demo tenant "demo", API key and admin token are in $RUN_DIR/demo.env (source it in another shell).
Send an event:

$CURL

Press Ctrl-C to stop.
TXT
wait
