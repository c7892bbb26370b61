#!/usr/bin/env bash
# The test command: every unit and end-to-end test, against real nats-server processes.
set -euo pipefail
cd "$(dirname "$0")/.."
NATS_SERVER_BIN="$(scripts/nats-server.sh)"
export NATS_SERVER_BIN
echo "using $("$NATS_SERVER_BIN" --version)"
# The dashboard's browser test drives headless Chromium through chromedriver (Debian's
# packages, installed when missing).
chromium_pair="$(scripts/chromium.sh)"
WEBHOOKS_TEST_CHROMIUM="$(sed -n 1p <<<"$chromium_pair")"
WEBHOOKS_TEST_CHROMEDRIVER="$(sed -n 2p <<<"$chromium_pair")"
export WEBHOOKS_TEST_CHROMIUM WEBHOOKS_TEST_CHROMEDRIVER
echo "using $("$WEBHOOKS_TEST_CHROMEDRIVER" --version | head -n1) with $WEBHOOKS_TEST_CHROMIUM"
if ! cargo nextest --version >/dev/null 2>&1; then
  cargo install --locked cargo-nextest
fi
# The fault tests run the service binaries as processes; nextest builds test targets (and the
# test crate's own binaries) but not other crates' binaries, so build them first.
cargo build --workspace --bins --locked
exec cargo nextest run --workspace --locked "$@"
