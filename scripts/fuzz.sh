#!/usr/bin/env bash
# Runs the cargo-fuzz targets (proto's event decoder and JSON validator) for a bounded time.
# Not part of CI. The toolchain here is stable, so RUSTC_BOOTSTRAP=1 lets cargo-fuzz use the
# nightly-only sanitizer flags.
#
#   scripts/fuzz.sh [seconds per target, default 60]
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
SECONDS_PER_TARGET=${1:-60}
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
export RUSTC_BOOTSTRAP=1
for target in event_decoder event_json; do
  echo "== $target for ${SECONDS_PER_TARGET}s"
  cargo fuzz run "$target" -- -max_total_time="$SECONDS_PER_TARGET" -rss_limit_mb=2048
done
