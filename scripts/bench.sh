#!/usr/bin/env bash
# The delivery benchmark (issue 7; docs/benchmarks.md): builds release binaries, then for every
# scenario and run starts a fresh nats-server (file storage, its own store under target/bench,
# ports 14422/18422), ingest (18480) and one dispatcher (18490), the bench receiver and load
# generator, and prints a markdown table; the JSON goes to bench/results/last.json.
#
#   scripts/bench.sh                 every scenario, 3 runs each (medians with min–max)
#   scripts/bench.sh --runs 1 --only 1,4a
#
# Not a test and not part of CI. BENCH_RUST_LOG sets the services' RUST_LOG (default info).
set -euo pipefail
cd "$(dirname "$0")/.."
NATS_BIN="$(scripts/nats-server.sh)"
cargo build --quiet --locked --release -p ingest -p dispatcher -p bench
exec target/release/bench suite --nats-bin "$NATS_BIN" --bin-dir target/release "$@"
