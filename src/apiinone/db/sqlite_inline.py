"""SQLite driven from the event loop thread, behind SQLAlchemy's asyncio API.

aiosqlite runs every statement on a helper thread: a queue hand-off, a thread wake-up, a GIL
hand-over and a loop wake-up per statement, several times per request. Profiles of the task API
showed that hopping cost more than the SQL itself (a primary-key read is ~10 µs in SQLite, a hop
~100 µs), so on SQLite apiinone runs the stdlib ``sqlite3`` driver inline instead: the engine is
still an ``AsyncEngine`` (same repositories, same ``AsyncConnection`` type), but each statement runs
to completion without leaving the loop.

Blocking the loop is safe because nothing here waits: in WAL mode readers never wait for writers,
in-process writers queue on :class:`~apiinone.db.database.Database`'s asyncio lock, and the only
wait left (another *process* holding the write lock) is taken by ``begin_immediate``, which retries
``BEGIN IMMEDIATE`` with a zero busy timeout and sleeps in the event loop between attempts.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from typing import Any

from sqlalchemy import pool
from sqlalchemy.dialects import registry
from sqlalchemy.dialects.sqlite.pysqlite import SQLiteDialect_pysqlite
from sqlalchemy.engine import URL
from sqlalchemy.util.concurrency import await_, in_greenlet

DRIVER_NAME = "sqlite+apiinone_inline"
_RETRY_FIRST_S = 0.0005
_RETRY_MAX_S = 0.02


class InlineSQLiteDialect(SQLiteDialect_pysqlite):
    """``pysqlite`` declared async, so ``create_async_engine`` accepts it; calls never suspend."""

    driver = "apiinone_inline"
    is_async = True
    supports_statement_cache = True

    def connect(self, *cargs: Any, **cparams: Any) -> Any:
        cparams.setdefault("factory", _InlineConnection)
        return super().connect(*cargs, **cparams)

    @classmethod
    def get_pool_class(cls, url: URL) -> type[pool.Pool]:
        if cls._is_url_file_db(url):
            return pool.AsyncAdaptedQueuePool
        return pool.StaticPool

    # SQLAlchemy's AsyncConnection.execute insists that a statement awaited something (to catch
    # sync drivers used by mistake); one already-finished awaitable satisfies it for ~1 µs.
    def do_execute(self, cursor: Any, statement: str, parameters: Any, context: Any = None) -> None:
        _pass_through_loop()
        cursor.execute(statement, parameters)

    def do_execute_no_params(self, cursor: Any, statement: str, context: Any = None) -> None:
        _pass_through_loop()
        cursor.execute(statement)

    def do_executemany(self, cursor: Any, statement: str, parameters: Any, context: Any = None) -> None:
        _pass_through_loop()
        cursor.executemany(statement, parameters)


async def _finished() -> None:
    return None


def _pass_through_loop() -> None:
    if in_greenlet():
        await_(_finished())


class _InlineCursor(sqlite3.Cursor):
    async def _async_soft_close(self) -> None:
        """Called by SQLAlchemy's asyncio results; rows stay readable from the cursor itself."""


class _InlineConnection(sqlite3.Connection):
    def cursor(self, factory: Any = _InlineCursor) -> Any:
        return super().cursor(factory)


registry.register("sqlite.apiinone_inline", __name__, "InlineSQLiteDialect")


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    return getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_BUSY or "locked" in str(exc)


def begin_immediate(dbapi_connection: Any, busy_timeout_ms: int) -> None:
    """Take SQLite's write lock without blocking the event loop while another process holds it.

    The connection's own busy timeout is zero, so a held lock fails at once; we then sleep in the
    loop (through the greenlet SQLAlchemy runs us in) and try again until ``busy_timeout_ms``."""
    deadline = time.monotonic() + busy_timeout_ms / 1000
    delay = _RETRY_FIRST_S
    while True:
        try:
            dbapi_connection.execute("BEGIN IMMEDIATE")
            return
        except sqlite3.OperationalError as exc:
            if not _is_busy(exc) or time.monotonic() + delay > deadline:
                raise
        if in_greenlet():
            await_(asyncio.sleep(delay))
        else:
            time.sleep(delay)
        delay = min(delay * 2, _RETRY_MAX_S)
