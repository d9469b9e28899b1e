#!/usr/bin/env bash
# One command from a fresh clone to every check: install, start PostgreSQL/Redis if down,
# install Chromium, wrk and openssl for the browser, benchmark and TLS tests if missing, then ruff, mypy
# --strict and pytest. With CI=true a part of the suite that cannot run fails instead of skipping.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh dev
scripts/services.sh
need=""
command -v chromium >/dev/null 2>&1 || need="$need chromium"
[ -e /usr/share/fonts/truetype/wqy/wqy-microhei.ttc ] || need="$need fonts-wqy-microhei"
command -v wrk >/dev/null 2>&1 || need="$need wrk"
command -v openssl >/dev/null 2>&1 || need="$need openssl"
if [ -n "$need" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing Debian packages for the browser tests and the bench smoke test:$need" >&2
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $need >/dev/null) || true
fi
echo "== ruff" >&2
.venv/bin/ruff check src tests bench
echo "== mypy --strict src" >&2
.venv/bin/mypy src
echo "== pytest" >&2
.venv/bin/pytest -q -p no:cacheprovider --timeout 300 "$@"
