"""The hot statements (holds, settlements, task inserts and finishes, request-log rows) run on
SQLite's own cursor, compiled once.

On SQLite (driven inline, ``sqlite_inline.py``) a primary-key UPDATE costs SQLite ~2 µs and
SQLAlchemy's execution around it ~75 µs: building an execution context, processing parameters,
wrapping a cursor result, even for a statement whose compiled form is cached. Profiles of the
direct path put that wrapping at a quarter of the API process's CPU. So the statements that every
billable request runs are compiled here once per shape into SQL text and a parameter order, and
executed straight on the ``sqlite3`` connection, inside the unit of work's transaction (SQLAlchemy
began it with ``BEGIN IMMEDIATE`` on that very connection). Errors are raised as SQLAlchemy's own
(``IntegrityError``, ``OperationalError``), exactly as through ``Connection.execute``.

Any other database, or a statement whose parameters need a type processor, goes through
SQLAlchemy as usual; the conformance suite runs every repository on both paths (SQLite, PostgreSQL).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.expression import Executable

from apiinone.db.sqlite_inline import DRIVER_NAME

__all__ = ["first_row", "run"]

_INLINE_DRIVER = DRIVER_NAME.split("+", 1)[1]


@dataclass(frozen=True, slots=True)
class _Plan:
    statement: Executable  # kept alive: plans are keyed by its id()
    sql: str
    names: tuple[str, ...]
    defaults: dict[str, Any]

    def args(self, params: Mapping[str, Any]) -> tuple[Any, ...]:
        defaults = self.defaults
        return tuple(params[n] if n in params else defaults[n] for n in self.names)


_PLANS: dict[tuple[int, tuple[str, ...]], _Plan | None] = {}


def _plan(conn: AsyncConnection, statement: Executable, keys: tuple[str, ...]) -> _Plan | None:
    cache_key = (id(statement), keys)
    if cache_key in _PLANS:
        plan = _PLANS[cache_key]
        if plan is None or plan.statement is statement:
            return plan
    assert isinstance(statement, ClauseElement)
    compiled = statement.compile(dialect=conn.dialect, column_keys=list(keys))
    assert isinstance(compiled, SQLCompiler)
    names = tuple(compiled.positiontup or ())
    if (getattr(compiled, "_bind_processors", None) or compiled.has_out_parameters
            or compiled.insert_prefetch or compiled.update_prefetch
            or compiled.post_compile_params or compiled.literal_execute_params):  # e.g. an IN list
        plan = None  # parameters to convert, to expand or defaults to compute: SQLAlchemy does it
    else:
        plan = _Plan(statement, str(compiled), names, dict(compiled.construct_params(_check=False)))
    _PLANS[cache_key] = plan
    return plan


def _sqlite(conn: AsyncConnection) -> sqlite3.Connection | None:
    if conn.dialect.driver != _INLINE_DRIVER:
        return None
    raw: sqlite3.Connection = conn.sync_connection.connection.dbapi_connection  # type: ignore[union-attr,assignment]
    return raw


async def run(conn: AsyncConnection, statement: Executable,
              params: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> int:
    """Execute with one parameter set, or many (executemany); the number of rows it changed."""
    rows: Sequence[Mapping[str, Any]] = [params] if isinstance(params, Mapping) else params
    if not rows:
        return 0
    raw = _sqlite(conn)
    plan = _plan(conn, statement, tuple(rows[0])) if raw is not None else None
    if raw is None or plan is None:
        result = await conn.execute(statement, list(rows) if len(rows) > 1 else rows[0])
        return int(result.rowcount)
    try:
        if len(rows) > 1:
            cursor = raw.executemany(plan.sql, [plan.args(p) for p in rows])
        else:
            cursor = raw.execute(plan.sql, plan.args(rows[0]))
    except sqlite3.Error as error:
        raise _wrapped(plan, error) from error
    return int(cursor.rowcount)


async def first_row(conn: AsyncConnection, statement: Executable,
                    params: Mapping[str, Any]) -> tuple[Any, ...] | None:
    """The first row of a query, as a tuple; None if it returned none."""
    raw = _sqlite(conn)
    plan = _plan(conn, statement, tuple(params)) if raw is not None else None
    if raw is None or plan is None:
        row = (await conn.execute(statement, dict(params))).first()
        return None if row is None else tuple(row)
    try:
        found: tuple[Any, ...] | None = raw.execute(plan.sql, plan.args(params)).fetchone()
    except sqlite3.Error as error:
        raise _wrapped(plan, error) from error
    return found


def _wrapped(plan: _Plan, error: sqlite3.Error) -> sa_exc.StatementError:
    """SQLAlchemy's exception for a driver error, as ``Connection.execute`` would raise it (no
    parameter values in its text: they may be anything a client sent)."""
    return sa_exc.DBAPIError.instance(plan.sql, None, error, sqlite3.Error, hide_parameters=True)
