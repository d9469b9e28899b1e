"""Engine construction with the per-dialect settings that make each database behave.

SQLite: WAL, a busy timeout, and ``BEGIN IMMEDIATE`` for write transactions (chosen per
connection through the ``sqlite_begin`` execution option) so a read never has to be upgraded to a
write lock mid-transaction, which SQLite answers with an immediate "database is locked".
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from apiinone.db.sqlite_inline import DRIVER_NAME as INLINE_DRIVER
from apiinone.db.sqlite_inline import begin_immediate


def make_engine(
    url: str, *, pool_size: int = 10, busy_timeout_ms: int = 10_000, null_pool: bool = False
) -> AsyncEngine:
    parsed = make_url(url)
    kwargs: dict[str, Any] = {}
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        # Pooled engines serve the event loop inline (see sqlite_inline): their connections never
        # wait in SQLite's busy handler; one-off engines (migrations) may.
        kwargs["connect_args"] = {"timeout": busy_timeout_ms / 1000 if null_pool else 0, "check_same_thread": False}
        if parsed.drivername == "sqlite+aiosqlite":
            url = parsed.set(drivername=INLINE_DRIVER).render_as_string(hide_password=False)
        if null_pool:
            kwargs["poolclass"] = NullPool
        else:
            kwargs["pool_size"] = pool_size
            kwargs["max_overflow"] = pool_size
        engine = create_async_engine(url, **kwargs)
        _configure_sqlite(engine, busy_timeout_ms)
        return engine
    if null_pool:
        kwargs["poolclass"] = NullPool
    else:
        kwargs["pool_size"] = pool_size
        kwargs["max_overflow"] = pool_size
        kwargs["pool_pre_ping"] = False
        kwargs["pool_recycle"] = 1800
    kwargs["connect_args"] = {"server_settings": {"application_name": "apiinone"}, "timeout": 5}
    return create_async_engine(url, **kwargs)


def _configure_sqlite(engine: AsyncEngine, busy_timeout_ms: int) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we emit BEGIN ourselves
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        mode = conn.get_execution_options().get("sqlite_begin", "DEFERRED")
        raw = conn.connection.dbapi_connection
        if mode == "IMMEDIATE":
            begin_immediate(raw, busy_timeout_ms)
        else:
            raw.execute(f"BEGIN {mode}")
