"""The Alembic migrations build exactly the schema the code declares, on both databases."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlalchemy.exc import IntegrityError

from apiinone.db.engine import make_engine
from apiinone.db.migrate import alembic_config, upgrade
from apiinone.db.tables import metadata
from tests.conftest import PG_ADMIN_DSN, _pg_exec


async def _diff_and_tables(url: str) -> tuple[list[Any], set[str]]:
    engine = make_engine(url, null_pool=True)
    try:
        async with engine.connect() as conn:
            diff = await conn.run_sync(lambda c: compare_metadata(MigrationContext.configure(c), metadata))
            tables = await conn.run_sync(lambda c: set(inspect(c).get_table_names()))
    finally:
        await engine.dispose()
    return diff, tables


def test_migrated_schema_matches_the_tables_and_downgrades_cleanly(database_url: str) -> None:
    diff, tables = asyncio.run(_diff_and_tables(database_url))
    assert diff == []
    assert set(metadata.tables) <= tables
    command.downgrade(alembic_config(database_url), "base")
    _diff, tables = asyncio.run(_diff_and_tables(database_url))
    assert tables <= {"alembic_version"}
    upgrade(database_url)
    diff, _tables = asyncio.run(_diff_and_tables(database_url))
    assert diff == []


# ------------------------------------------------------------------- 0003: credits → micro-credits

BEFORE_MICRO_CREDITS = "0002_upstream_routes"
M = 1_000_000


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def blank_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database (no migration run yet) on each engine."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'old.db'}"
        return
    name = f"apiinone_m_{uuid.uuid4().hex[:12]}"
    asyncio.run(_pg_exec(f'CREATE DATABASE "{name}"'))
    yield PG_ADMIN_DSN.replace("postgresql://", "postgresql+asyncpg://").rsplit("/", 1)[0] + f"/{name}"
    asyncio.run(_pg_exec(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


OLD_ROWS = [  # written with the 0002 schema, amounts in whole credits
    "INSERT INTO accounts (id, email, is_admin, disabled, balance, held, created_at) VALUES "
    "('acc_a', 'a@example.com', false, false, 30, 12, 1), "
    "('acc_b', 'b@example.com', false, false, 0, 0, 2), "
    "('acc_c', 'c@example.com', true, false, 9000000000000, 9000000000000, 3)",
    "INSERT INTO api_keys (id, account_id, name, prefix, key_hash, credit_budget, credits_spent, created_at) VALUES "
    "('key_1', 'acc_a', 'k', 'aio_abc', 'h1', 50, 12, 1), ('key_2', 'acc_a', 'k2', 'aio_def', 'h2', NULL, 7, 1)",
    "INSERT INTO ledger_entries (account_id, kind, amount, task_id, created_at) VALUES "
    "('acc_a', 'grant', 40, NULL, 1), ('acc_a', 'hold', 10, 'tsk_1', 2), ('acc_a', 'capture', -10, 'tsk_1', 3), "
    "('acc_a', 'hold', 12, 'tsk_2', 4), ('acc_a', 'adjustment', -0, NULL, 5)",
    "INSERT INTO tasks (id, account_id, type, model, status, input, price, charged, attempts, run_after, created_at) "
    "VALUES ('tsk_1', 'acc_a', 'image', 'm', 'succeeded', '{}', 10, 10, 1, 0, 2), "
    "('tsk_2', 'acc_a', 'image', 'm', 'queued', '{}', 12, 0, 0, 0, 4)",
    "INSERT INTO redemption_codes (code_hash, batch, code_prefix, credits, created_at) VALUES ('c1', 'b', 'AIO-', 40, 1)",
    "INSERT INTO orders (id, account_id, pack, credits, amount_cents, currency, provider, status, history, created_at) "
    "VALUES ('ord_1', 'acc_a', 'credits-500', 500, 500, 'USD', 'manual', 'paid', '[]', 1)",
    "INSERT INTO model_overrides (model_id, enabled, pricing, updated_at) VALUES ('m', NULL, '{\"medium\": 7}', 1)",
]
MONEY = {
    "accounts": ("id", ("balance", "held")),
    "api_keys": ("id", ("credit_budget", "credits_spent")),
    "ledger_entries": ("id", ("amount",)),
    "tasks": ("id", ("price", "charged")),
    "redemption_codes": ("code_hash", ("credits",)),
    "orders": ("id", ("credits", "amount_cents")),
    "model_overrides": ("model_id", ("pricing",)),
}


async def _exec(url: str, statements: list[str]) -> None:
    engine = make_engine(url, null_pool=True)
    try:
        async with engine.begin() as conn:
            for statement in statements:
                await conn.execute(text(statement))
    finally:
        await engine.dispose()


async def _money(url: str) -> dict[str, dict[Any, tuple[Any, ...]]]:
    engine = make_engine(url, null_pool=True)
    found: dict[str, dict[Any, tuple[Any, ...]]] = {}
    try:
        async with engine.connect() as conn:
            for table, (key, columns) in MONEY.items():
                rows = (await conn.execute(text(f"SELECT {key}, {', '.join(columns)} FROM {table}"))).all()
                found[table] = {r[0]: tuple(r[1:]) for r in rows}
    finally:
        await engine.dispose()
    return found


def test_micro_credit_migration_converts_old_rows_exactly_and_back(blank_database_url: str) -> None:
    url = blank_database_url
    config = alembic_config(url)
    command.upgrade(config, BEFORE_MICRO_CREDITS)
    asyncio.run(_exec(url, OLD_ROWS))
    before = asyncio.run(_money(url))

    command.upgrade(config, "head")
    after = asyncio.run(_money(url))
    assert after["accounts"] == {"acc_a": (30 * M, 12 * M), "acc_b": (0, 0),
                                 "acc_c": (9_000_000_000_000 * M, 9_000_000_000_000 * M)}
    assert after["api_keys"] == {"key_1": (50 * M, 12 * M), "key_2": (None, 7 * M)}
    assert {k: a for k, (a,) in after["ledger_entries"].items()} == {
        k: a * M for k, (a,) in before["ledger_entries"].items()}
    assert after["tasks"] == {"tsk_1": (10 * M, 10 * M), "tsk_2": (12 * M, 0)}
    assert after["redemption_codes"] == {"c1": (40 * M,)}
    assert after["orders"] == {"ord_1": (500 * M, 500)}, "amount_cents is money, not credits"
    assert after["model_overrides"] == before["model_overrides"], "catalog prices stay in credits"
    diff, tables = asyncio.run(_diff_and_tables(url))
    assert diff == [] and "request_log" in tables

    # the new schema refuses what the old one allowed: a hold above the balance
    with pytest.raises(IntegrityError):
        asyncio.run(_exec(url, ["UPDATE accounts SET held = balance + 1 WHERE id = 'acc_a'"]))

    command.downgrade(config, BEFORE_MICRO_CREDITS)
    assert asyncio.run(_money(url)) == before
