#!/usr/bin/env bash
# One command from a fresh clone to a running service on the embedded default:
# SQLite + file storage under ./data, the offline local-typeset model, an embedded worker.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/apiinone serve --host "${HOST:-127.0.0.1}" --port "${PORT:-8000}" "$@"
