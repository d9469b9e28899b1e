#!/usr/bin/env bash
# Create .venv and install apiinone into it (editable). Pass "dev" to add the test tools.
#
# The install is skipped when .venv already holds one made from this very pyproject.toml (a stamp
# keyed on its hash; the install is editable, so source edits need none). Installs take a lock:
# `make run &` and `make wait` started together install once, and the second waits for the first.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
extras=base
[ "${1:-}" = "dev" ] && extras=dev
stamp=.venv/.apiinone-install
want="$("$PY" -c 'import hashlib; print(hashlib.sha256(open("pyproject.toml", "rb").read()).hexdigest())')"

installed() {  # a dev install also serves a plain one
  [ -x .venv/bin/python ] && [ -f "$stamp" ] || return 1
  read -r have_hash have_extras < "$stamp" || return 1
  [ "$have_hash" = "$want" ] && { [ "$extras" = base ] || [ "$have_extras" = dev ]; }
}

installed && exit 0
mkdir -p .venv
exec 9>.venv/.install-lock
command -v flock >/dev/null 2>&1 && flock 9
installed && exit 0  # another setup.sh finished it while this one waited for the lock
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv and installing apiinone ($extras); the first time takes about a minute" >&2
  "$PY" -m venv .venv
  .venv/bin/pip install -q --upgrade pip
else
  echo "setup: pyproject.toml changed (or no $extras install yet): pip install into .venv" >&2
fi
rm -f "$stamp"
if [ "$extras" = dev ]; then
  .venv/bin/pip install -q -e '.[dev]'
else
  .venv/bin/pip install -q -e .
fi
echo "$want $extras" > "$stamp"
