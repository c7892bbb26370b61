#!/usr/bin/env bash
# The test command: every unit and end-to-end test, against real nats-server processes.
set -euo pipefail
cd "$(dirname "$0")/.."
NATS_SERVER_BIN="$(scripts/nats-server.sh)"
export NATS_SERVER_BIN
echo "using $("$NATS_SERVER_BIN" --version)"
if ! cargo nextest --version >/dev/null 2>&1; then
  cargo install --locked cargo-nextest
fi
# The fault tests run the service binaries as processes; nextest builds test targets (and the
# test crate's own binaries) but not other crates' binaries, so build them first.
cargo build --workspace --bins --locked
exec cargo nextest run --workspace --locked "$@"
