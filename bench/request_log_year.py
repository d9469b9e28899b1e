"""A year of request-log rows for a busy account on PostgreSQL, and how fast its usage answers.

Generates ``--rows`` records (default 2,000,000) for one account spread evenly over the last 365
days (five models, eight keys, 2% failed, 1% canceled) plus ``--others`` (200,000) records of 200 other
accounts, with ``generate_series`` in a fresh database migrated to head, and their ``usage_daily``
sums (filled the way migration 0004 fills them from existing records); then times the queries
the console and the API run (the same SQLAlchemy statements, median of 5 runs) and prints
``EXPLAIN (ANALYZE, BUFFERS)`` of the usage query grouped by day over the whole year.

    .venv/bin/python -m bench.request_log_year [--rows 2000000] [--others 500000] [--keep]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import statistics
import time
import uuid
from decimal import Decimal

import asyncpg
from sqlalchemy.dialects import postgresql

from apiinone.db.database import Database
from apiinone.db.migrate import upgrade
from apiinone.db.request_log import raw_usage_statement, usage_statement
from apiinone.domain.usage import DAY_MS
from apiinone.ids import now_ms

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"
BUSY = "acc_busy"
MODELS = "ARRAY['gpt-image-1.5-official','local-typeset','gpt-4.1','claude-sonnet','tts-1']"
TYPES = "ARRAY['image','image','chat','chat','speech']"

GENERATE = """
INSERT INTO request_log (id, account_id, api_key_id, key_prefix, type, model, route, status, http_status,
                         credits, input_tokens, output_tokens, latency_ms, ttft_ms, task_id, created_at)
SELECT 'req_' || lpad(ts::text, 14, '0') || {tag} || lpad(g::text, 10, '0'), {account},
       'key_' || (g % 8), 'aio_k' || (g % 8),
       ({types})[1 + g % 5], ({models})[1 + g % 5], 'route-' || (g % 3),
       CASE WHEN g % 50 = 0 THEN 'failed' WHEN g % 97 = 0 THEN 'canceled' ELSE 'succeeded' END,
       CASE WHEN g % 50 = 0 THEN 502 ELSE 200 END,
       CASE WHEN g % 50 = 0 OR g % 97 = 0 THEN 0 ELSE (1 + g % 7) * 250000 END,
       CASE WHEN g % 5 IN (2, 3) THEN 500 + g % 4000 END, CASE WHEN g % 5 IN (2, 3) THEN 50 + g % 900 END,
       200 + g % 5000, CASE WHEN g % 5 IN (2, 3) THEN 90 + g % 400 END, NULL, ts
FROM (SELECT g, $1::bigint + (g::bigint * $2::bigint / $3::bigint) AS ts FROM generate_series(1, $3::int) AS g) AS s
"""


async def timed(db: Database, runs: int, query: object) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        async with db.uow(write=False) as uow:
            await uow.conn.execute(query)  # type: ignore[call-overload]
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


async def main(rows: int, others: int, keep: bool) -> None:
    name = f"apiinone_bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(PG_ADMIN)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    dsn = PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"
    url = dsn.replace("postgresql://", "postgresql+asyncpg://")
    try:
        upgrade(url)
        conn = await asyncpg.connect(dsn)
        now = now_ms()
        start = now - 365 * DAY_MS
        await conn.execute("INSERT INTO accounts (id, email, is_admin, disabled, balance, held, created_at) "
                           "SELECT 'acc_' || g, 'user' || g || '@example.com', false, false, 0, 0, 0 "
                           "FROM generate_series(1, 200) AS g")
        await conn.execute("INSERT INTO accounts (id, email, is_admin, disabled, balance, held, created_at) "
                           "VALUES ($1, 'busy@example.com', false, false, 0, 0, 0)", BUSY)
        began = time.perf_counter()
        await conn.execute(GENERATE.format(tag="'b'", account=f"'{BUSY}'", types=TYPES, models=MODELS),
                           start, 365 * DAY_MS, rows)
        if others:
            await conn.execute(GENERATE.format(tag="'o'", account="'acc_' || (1 + g % 200)", types=TYPES,
                                               models=MODELS), start, 365 * DAY_MS, others)
        generated_s = time.perf_counter() - began
        began = time.perf_counter()
        migration = importlib.import_module("apiinone.db.migrations.versions.0004_routes_audit_usage")
        await conn.execute(migration.BACKFILL)  # what each record's transaction adds, all at once
        rollup_s = time.perf_counter() - began
        await conn.execute("VACUUM ANALYZE request_log")
        await conn.execute("VACUUM ANALYZE usage_daily")
        daily_rows = await conn.fetchval("SELECT count(*) FROM usage_daily WHERE account_id = $1", BUSY)
        size = await conn.fetchval("SELECT pg_size_pretty(pg_total_relation_size('request_log'))")
        print(f"generated {rows:,} rows for {BUSY} and {others:,} for 200 other accounts in {generated_s:.1f} s "
              f"(request_log with indexes: {size}); usage_daily filled in {rollup_s:.1f} s, "
              f"{daily_rows:,} rows for {BUSY}")

        year = {"start_ms": start - start % DAY_MS, "end_ms": now - now % DAY_MS + DAY_MS}
        month = {"start_ms": now - now % DAY_MS - 29 * DAY_MS, "end_ms": now - now % DAY_MS + DAY_MS}
        dialect = postgresql.dialect()  # type: ignore[no-untyped-call]
        day_sql = str(usage_statement(BUSY, group_by="day", **year).compile(
            dialect=dialect, compile_kwargs={"literal_binds": True}))
        plan = await conn.fetch("EXPLAIN (ANALYZE, BUFFERS) " + day_sql)
        print("\nEXPLAIN (ANALYZE, BUFFERS) usage by day over 365 days (usage_daily):")
        for line in plan:
            print("  " + line[0])
        await conn.close()

        db = Database(url)
        try:
            print("\nmedian of 5 runs, through the app's repository statements:")
            for label, window in (("365 days", year), ("30 days", month)):
                for group_by in ("day", "model", "key"):
                    ms = await timed(db, 5, usage_statement(BUSY, group_by=group_by, **window))
                    print(f"  usage group_by={group_by:<5} {label:>8}: {ms:8.1f} ms")
            print("the same sums straight from request_log (what usage_daily saves), one run each:")
            for group_by in ("day", "model", "key"):
                ms = await timed(db, 1, raw_usage_statement(BUSY, group_by=group_by, **year))
                print(f"  raw   group_by={group_by:<5} 365 days: {ms:8.1f} ms")
            async with db.uow(write=False) as uow:
                fast = (await uow.conn.execute(usage_statement(BUSY, group_by="model", **year))).all()
                slow = (await uow.conn.execute(raw_usage_statement(BUSY, group_by="model", **year))).all()
            def normal(rows: object) -> list[tuple[object, ...]]:
                return [tuple(int(v) if isinstance(v, int | Decimal) else v for v in r) for r in rows]  # type: ignore[attr-defined]

            if normal(fast) == normal(slow):
                print("  (usage_daily and request_log agree, model by model)")
            else:
                print(f"  DISAGREE: usage_daily {normal(fast)} vs request_log {normal(slow)}")

            async def page(**filters: str) -> None:
                started = time.perf_counter()
                for _ in range(5):
                    async with db.uow(write=False) as uow:
                        entries = await uow.requests.list(BUSY, limit=51, **filters)  # type: ignore[arg-type]
                ms = (time.perf_counter() - started) * 1000 / 5
                print(f"  request log first page {filters or ''}: {ms:.1f} ms ({len(entries)} rows)")

            await page()
            await page(model="tts-1")
            await page(status="failed")
            await page(key_prefix="aio_k3")
        finally:
            await db.dispose()
    finally:
        if not keep:
            admin = await asyncpg.connect(PG_ADMIN)
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await admin.close()
        else:
            print(f"kept database {name}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--others", type=int, default=200_000)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    asyncio.run(main(args.rows, args.others, args.keep))
