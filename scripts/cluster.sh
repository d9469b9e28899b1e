#!/usr/bin/env bash
# A local cluster on this machine, for trying scale-out and for tests: PostgreSQL-backed
# `apiinone serve --workers 2 --no-worker` on $PORT (default 8000) and three worker nodes,
# node41, node42 and node43. Redis is used for shared rate limits when it answers on 6379.
# Ctrl-C (or SIGTERM) stops every process gracefully: running tasks drain or go back to the queue.
#
#   make cluster                      # or: scripts/cluster.sh
#   PORT=9000 CLUSTER_DB=mydb scripts/cluster.sh
#   APIINONE_DATABASE_URL=postgresql+asyncpg://user@host/db scripts/cluster.sh
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh  # quick when the install is current
PORT=${PORT:-8000}
DB=${CLUSTER_DB:-apiinone_cluster}
export APIINONE_DATABASE_URL=${APIINONE_DATABASE_URL:-postgresql+asyncpg://postgres@127.0.0.1:5432/$DB}
export APIINONE_PUBLIC_URL=${APIINONE_PUBLIC_URL:-http://127.0.0.1:$PORT}
export APIINONE_DATA_DIR=${APIINONE_DATA_DIR:-./data/cluster}  # images on local disk, shared by all processes here
if [ -z "${APIINONE_REDIS_URL:-}" ] && command -v redis-cli >/dev/null && redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  export APIINONE_REDIS_URL=redis://127.0.0.1:6379/0
fi

# create the database if it does not exist yet, then migrate it (PostgreSQL is migrated explicitly)
.venv/bin/python - "$APIINONE_DATABASE_URL" <<'PY'
import asyncio, sys
import asyncpg
from sqlalchemy.engine import make_url

url = make_url(sys.argv[1])
async def main() -> None:
    conn = await asyncpg.connect(user=url.username, password=url.password, host=url.host or "127.0.0.1",
                                 port=url.port or 5432, database="postgres")
    try:
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", url.database):
            await conn.execute(f'CREATE DATABASE "{url.database}"')
    finally:
        await conn.close()
asyncio.run(main())
PY
.venv/bin/apiinone db upgrade

pids=()
stop() {
  trap - INT TERM EXIT
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait || true
}
trap stop INT TERM EXIT
.venv/bin/apiinone serve --host 127.0.0.1 --port "$PORT" --workers 2 --no-worker & pids+=($!)
for node in node41 node42 node43; do
  .venv/bin/apiinone worker --node "$node" & pids+=($!)
done
echo "cluster: API on $APIINONE_PUBLIC_URL (2 processes), workers node41 node42 node43; database $APIINONE_DATABASE_URL${APIINONE_REDIS_URL:+, Redis $APIINONE_REDIS_URL}" >&2
wait -n "${pids[@]}"  # any process exiting stops the cluster
