#!/usr/bin/env bash
# Validates what CI cannot run, with no cluster, no Docker engine and no network beyond the
# package registries: the kustomize manifests of deploy/ (rendered by kubectl's kustomize, checked
# against the Kubernetes schemas and the project's own rules), docker-compose.yml
# (`docker-compose config`) and the Dockerfile. The checks are in scripts/validate_deploy.py.
#
#   scripts/validate-deploy.sh
#
# Installs, once: the pinned Python tools of scripts/validate-deploy.requirements.txt into
# target/deploy-venv (again only when that file changes), Debian's docker-compose when it is
# missing, and nats-server through scripts/nats-server.sh (which the tests need too).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=target/deploy-venv
REQUIREMENTS=scripts/validate-deploy.requirements.txt
STAMP="$VENV/.requirements.sha256"

want=$(sha256sum "$REQUIREMENTS" | cut -d' ' -f1)
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$STAMP" 2>/dev/null)" != "$want" ]; then
  echo "installing the pinned validation tools into $VENV" >&2
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check --no-cache-dir -r "$REQUIREMENTS" >&2
  echo "$want" >"$STAMP"
fi

# Debian's docker-compose (1.29, Python): `config` parses and validates the file, no engine.
if ! command -v docker-compose >/dev/null 2>&1; then
  echo "installing Debian's docker-compose" >&2
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq docker-compose >/dev/null
fi

NATS_BIN="$(scripts/nats-server.sh)"

exec "$VENV/bin/python" scripts/validate_deploy.py \
  --kubectl "$VENV/bin/kubectl" \
  --nats-server "$NATS_BIN" \
  --docker-compose "$(command -v docker-compose)"
