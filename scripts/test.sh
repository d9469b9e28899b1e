#!/usr/bin/env bash
# One command from a fresh clone to every check: install, start PostgreSQL/Redis if down,
# install Chromium, wrk and openssl for the browser, benchmark and TLS tests if missing, then ruff, mypy
# --strict and pytest. With CI=true a part of the suite that cannot run fails instead of skipping.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh dev
scripts/services.sh
need=""
why() { echo "  $1: $2" >&2; need="$need $1"; }
missing() {
  command -v chromium >/dev/null 2>&1 ||
    why chromium "headless browser for the console, /docs and README screenshot tests (tests/e2e/*browser*, *screenshots*)"
  [ -e /usr/share/fonts/truetype/wqy/wqy-microhei.ttc ] ||
    why fonts-wqy-microhei "CJK font: Chinese prompts drawn by local-typeset and the zh-CN console pages in Chromium"
  command -v wrk >/dev/null 2>&1 || why wrk "HTTP load generator for the benchmark smoke test (tests/e2e/test_bench_smoke.py)"
  command -v espeak-ng >/dev/null 2>&1 ||
    why espeak-ng "speech synthesizer behind the offline local-speech model (tests/integration/test_speech.py, the README's speech example)"
  command -v openssl >/dev/null 2>&1 || why openssl "certificates for the egress TLS test (tests/integration/test_egress_transport.py)"
}
echo "== Debian packages the tests need" >&2
missing
if [ -z "$need" ]; then
  echo "  all present (chromium, fonts-wqy-microhei, wrk, espeak-ng, openssl)" >&2
elif [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing with apt-get:$need" >&2
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $need >/dev/null) || true
else
  echo "not root or no apt-get: install them yourself (apt-get install$need), or the tests above fail" >&2
fi
echo "== ruff" >&2
.venv/bin/ruff check src tests bench
echo "== mypy --strict src" >&2
.venv/bin/mypy src
echo "== pytest" >&2
.venv/bin/pytest -q -p no:cacheprovider --timeout 300 "$@"
