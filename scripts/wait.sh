#!/usr/bin/env bash
# Block until the server started by `make run` answers /readyz (exit 1 after the timeout).
# Waits first for the install that `make run` may still be doing (scripts/setup.sh takes a lock).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/apiinone wait --url "http://${HOST:-127.0.0.1}:${PORT:-8000}" --timeout "${WAIT_TIMEOUT:-120}"
