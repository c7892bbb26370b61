#!/usr/bin/env bash
# Fuzzes the live API against its own OpenAPI document (GET /openapi.json) with schemathesis
# (pinned, from PyPI, installed into a venv under .run/). Starts nats-server, ingest, dispatcher and
# a demo receiver (as scripts/run.sh does, on ports of their own), creates a tenant key, a
# subscription and an event so ids exist, then runs schemathesis twice: the tenant API with a
# tenant key, and the admin API with the admin token. Every check must pass: no 5xx, every status,
# content type, header and body as documented, schema-violating input refused, auth enforced.
# The output goes to docs/schemathesis-last-run.txt; the exit code is non-zero on any failure.
#
#   scripts/schemathesis.sh                     # about 50 examples per operation and mode
#   MAX_EXAMPLES=200 scripts/schemathesis.sh    # longer
#
# Not run in CI (it takes minutes); run it after changing a route or its annotations.
set -euo pipefail
cd "$(dirname "$0")/.."

SCHEMATHESIS_VERSION=4.32.5
MAX_EXAMPLES=${MAX_EXAMPLES:-50}
MAX_TIME=${MAX_TIME:-600}
SEED=${SEED:-}
NATS_PORT=${NATS_PORT:-24322}
INGEST_PORT=${INGEST_PORT:-28180}
DISPATCHER_PORT=${DISPATCHER_PORT:-29190}
RECEIVER_PORT=${RECEIVER_PORT:-29999}
RUN_DIR=${RUN_DIR:-.run/schemathesis}
VENV=${SCHEMATHESIS_VENV:-.run/schemathesis-venv}
OUT=${OUT:-docs/schemathesis-last-run.txt}
ADMIN_TOKEN=schemathesis-admin-token-0123456789
API="http://127.0.0.1:$INGEST_PORT"

mkdir -p "$RUN_DIR" "$(dirname "$OUT")"
rm -rf "$RUN_DIR/nats" "$RUN_DIR/secret" "$RUN_DIR"/*.log "$RUN_DIR/report"

# The newest Python at hand: 3.11's ast module trips over hypothesis's lambda parsing
# ("AST constructor recursion depth mismatch"), which aborts some operations' tests.
version_of() { "$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || true; }
if [ -z "${PYTHON:-}" ]; then
  PYTHON=python3
  for candidate in python3.13 python3.12 \
    $(ls -d "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.1[2-9]*/bin/python3 2>/dev/null | sort -rV); do
    if [ -n "$(version_of "$candidate")" ]; then PYTHON=$candidate; break; fi
  done
fi
if ! "$VENV/bin/schemathesis" --version 2>/dev/null | grep -q "$SCHEMATHESIS_VERSION" \
  || [ "$(version_of "$VENV/bin/python")" != "$(version_of "$PYTHON")" ]; then
  echo "installing schemathesis $SCHEMATHESIS_VERSION from PyPI into $VENV (Python $(version_of "$PYTHON"))" >&2
  rm -rf "$VENV"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi
NATS_BIN="$(scripts/nats-server.sh)"
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
WEBHOOKS_MASTER_KEY=$(python3 -c "import base64, os; print(base64.b64encode(os.urandom(32)).decode())")
export WEBHOOKS_MASTER_KEY
# Small stream caps, as in the tests: the fuzzer needs little room.
export WEBHOOKS_EVENTS_MAX_BYTES=${WEBHOOKS_EVENTS_MAX_BYTES:-268435456}
export RUST_LOG=${RUST_LOG:-info}

"$BIN/demo-receiver" --listen "127.0.0.1:$RECEIVER_PORT" --secret-file "$RUN_DIR/secret" >"$RUN_DIR/receiver.log" 2>&1 &
pids+=($!)
WEBHOOKS_LISTEN="127.0.0.1:$INGEST_PORT" "$BIN/ingest" >"$RUN_DIR/ingest.log" 2>&1 &
pids+=($!)
WEBHOOKS_METRICS_LISTEN="127.0.0.1:$DISPATCHER_PORT" "$BIN/dispatcher" >"$RUN_DIR/dispatcher.log" 2>&1 &
pids+=($!)
wait_for "$API/readyz" ingest
wait_for "http://127.0.0.1:$DISPATCHER_PORT/readyz" dispatcher

# Something to find: a key, a subscription (to the receiver) and an event.
json() { python3 -c "import json,sys; print(json.load(sys.stdin)$1)"; }
KEY=$(curl -fsS -X POST "$API/v1/admin/tenants/fuzz/api-keys" -H "Authorization: Bearer $ADMIN_TOKEN" | json '["key"]')
SUB=$(curl -fsS -X POST "$API/v1/subscriptions" -H "Authorization: Bearer $KEY" -H 'content-type: application/json' \
  -d "{\"url\":\"http://127.0.0.1:$RECEIVER_PORT/webhooks\",\"event_types\":[\"*\"],\"description\":\"schemathesis\"}")
echo "$SUB" | json '["secret"]' >"$RUN_DIR/secret"
curl -fsS -o /dev/null -X POST "$API/v1/events" -H "Authorization: Bearer $KEY" -H 'content-type: application/json' \
  -d '{"type":"call.started","agent_id":"agent_fuzz","call_id":"call_1","id":"evt_fuzz_1","data":{"direction":"inbound","from":"+14155550100","to":"+14155550199","started_at":"2026-11-28T15:20:11.123Z"}}'

# Which checks run, and with which token (the tenant key; the admin token on /v1/admin), is in
# scripts/schemathesis.toml.
export ST_TENANT_KEY="$KEY" ST_ADMIN_TOKEN="$ADMIN_TOKEN"
ARGS=(--config-file scripts/schemathesis.toml --no-color run "$API/openapi.json"
  --max-examples "$MAX_EXAMPLES" --max-time "$MAX_TIME" --suppress-health-check all
  --generation-database none)
[ -n "$SEED" ] && ARGS+=(--seed "$SEED")

status=0
{
  echo "# scripts/schemathesis.sh: schemathesis $SCHEMATHESIS_VERSION, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "# commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (with local changes)')"
  echo "# schemathesis ${ARGS[*]}"
  echo
} >"$OUT"
"$VENV/bin/schemathesis" "${ARGS[@]}" >>"$OUT" 2>&1 || status=$?
# A panic closes the connection without an answer; count them (and 5xx) from the service's log.
panics=$(grep -c 'panicked at' "$RUN_DIR/ingest.log" || true)
{
  echo
  echo "# ingest log: $panics panic(s)"
  echo "# exit status: $status"
} >>"$OUT"
[ "$panics" = 0 ] || status=1
tail -n 30 "$OUT"
exit "$status"
