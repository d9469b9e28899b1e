#!/usr/bin/env bash
# Benchmarks side by side with the fake upstream: installs what they need, then runs bench/run.py.
#   scripts/bench.sh                 # SQLite, 10 s per load
#   scripts/bench.sh --postgres      # a fresh PostgreSQL database (scripts/services.sh starts the server)
#   scripts/bench.sh --short         # the 1 s version CI runs
# Any other argument is passed to bench/run.py (see --help there); bench/remote_jobs.py follows.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
if ! command -v wrk >/dev/null 2>&1; then
  echo "installing wrk (Debian package) for the benchmarks" >&2
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
  else
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
  fi
fi
for arg in "$@"; do
  if [ "$arg" = "--postgres" ]; then scripts/services.sh; fi
done
.venv/bin/python bench/run.py "$@"
# how many upstream jobs one worker follows at once (remote jobs against the fal fake)
jobs_args=(-n 2000 --window 20)
for arg in "$@"; do
  if [ "$arg" = "--short" ]; then jobs_args=(-n 50 --window 2); fi
  if [ "$arg" = "--postgres" ]; then jobs_args+=(--db postgres); fi
done
exec .venv/bin/python -m bench.remote_jobs "${jobs_args[@]}"
