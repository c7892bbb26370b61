#!/usr/bin/env bash
# Prints two lines: the path of a Chromium binary, then the path of a chromedriver of the same
# major version, for the dashboard's browser test. Installs Debian's `chromium` and
# `chromium-driver` with apt-get (sudo when not root) when no matching pair is found, with
# fonts-liberation (chromium only recommends it) so pages and screenshots render real text.
#
# Explicit binaries: WEBHOOKS_TEST_CHROMIUM and/or WEBHOOKS_TEST_CHROMEDRIVER (the other from PATH).
set -euo pipefail

major() {
  local v
  v=$("$1" --version 2>/dev/null | grep -oE '[0-9]+\.[0-9]+\.[0-9]+' | head -n1) || return 1
  [ -n "$v" ] || return 1
  echo "${v%%.*}"
}

# Succeeds (printing the pair) when both run and share a major version.
usable_pair() {
  local browser=$1 driver=$2 a b
  [ -n "$browser" ] && [ -x "$browser" ] && [ -n "$driver" ] && [ -x "$driver" ] || return 1
  a=$(major "$browser") || return 1
  b=$(major "$driver") || return 1
  if [ "$a" != "$b" ]; then
    echo "ignoring $browser (major $a) with $driver (major $b): versions differ" >&2
    return 1
  fi
  printf '%s\n%s\n' "$browser" "$driver"
}

if [ -n "${WEBHOOKS_TEST_CHROMIUM:-}" ] || [ -n "${WEBHOOKS_TEST_CHROMEDRIVER:-}" ]; then
  # Explicit choices are used as given (the other one from PATH), never replaced behind the
  # user's back.
  browser="${WEBHOOKS_TEST_CHROMIUM:-$(command -v chromium 2>/dev/null || true)}"
  driver="${WEBHOOKS_TEST_CHROMEDRIVER:-$(command -v chromedriver 2>/dev/null || true)}"
  if usable_pair "$browser" "$driver"; then
    exit 0
  fi
  echo "chromium '$browser' and chromedriver '$driver' (from WEBHOOKS_TEST_CHROMIUM, WEBHOOKS_TEST_CHROMEDRIVER or PATH) are not a runnable pair of the same version" >&2
  exit 1
fi

driver="$(command -v chromedriver 2>/dev/null || true)"
for browser in "$(command -v chromium 2>/dev/null || true)" "$(command -v chromium-browser 2>/dev/null || true)"; do
  if usable_pair "$browser" "$driver"; then
    exit 0
  fi
done

echo "installing Debian's chromium and chromium-driver with apt-get" >&2
if [ "$(id -u)" -eq 0 ]; then
  as_root=()
elif command -v sudo >/dev/null 2>&1; then
  as_root=(sudo)
else
  echo "chromium and chromium-driver are missing, and installing them needs root or sudo" >&2
  exit 1
fi
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive NEEDRESTART_MODE=a apt-get update -qq >&2
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive NEEDRESTART_MODE=a apt-get install -y -qq --no-install-recommends \
  chromium chromium-driver fonts-liberation >&2

if usable_pair /usr/bin/chromium /usr/bin/chromedriver; then
  exit 0
fi
echo "chromium and chromium-driver did not install as /usr/bin/chromium and /usr/bin/chromedriver" >&2
exit 1
