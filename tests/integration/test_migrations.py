"""The Alembic migrations build exactly the schema the code declares, on both databases."""

from __future__ import annotations

import asyncio
from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from apiinone.db.engine import make_engine
from apiinone.db.migrate import alembic_config, upgrade
from apiinone.db.tables import metadata


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
