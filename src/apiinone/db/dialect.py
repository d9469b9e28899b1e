"""The few places SQLite and PostgreSQL differ, in one object-free module: callers ask for a
statement by what it does, never by dialect name."""

from __future__ import annotations

import functools
from typing import Any

from sqlalchemy import Table, bindparam
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.dml import Insert


def is_postgres(conn: AsyncConnection) -> bool:
    return conn.dialect.name == "postgresql"


def insert_or_ignore(conn: AsyncConnection, table: Table, values: dict[str, Any]) -> Insert:
    """INSERT that does nothing when the row's key already exists (both dialects speak ON CONFLICT)."""
    stmt = (postgresql.insert if is_postgres(conn) else sqlite.insert)(table).values(**values)
    return stmt.on_conflict_do_nothing()


def insert_or_add(conn: AsyncConnection, table: Table, add: tuple[str, ...]) -> Insert:
    """INSERT, or on a key conflict add the new row's ``add`` columns to the existing row's. Built
    once per dialect and table with every column a bound parameter: run it with one dict, or a list
    of them (executemany) for many rows in one call."""
    return _insert_or_add(conn.dialect.name, table, add)


@functools.cache
def _insert_or_add(dialect: str, table: Table, add: tuple[str, ...]) -> Insert:
    make = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = make(table).values({c.name: bindparam(c.name) for c in table.columns})
    return stmt.on_conflict_do_update(index_elements=[c.name for c in table.primary_key.columns],
                                      set_={name: table.c[name] + stmt.excluded[name] for name in add})
