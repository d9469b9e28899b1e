"""The Database adapter: an engine plus the unit of work factory, and the write path for SQLite."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from apiinone.db.engine import make_engine
from apiinone.db.uow import SqlUnitOfWork


class Database:
    """Owns the engine. On SQLite all writers of this process queue on one asyncio lock, so they
    wait in the event loop instead of spinning in SQLite's busy handler."""

    def __init__(self, url: str, *, pool_size: int = 10, busy_timeout_ms: int = 10_000) -> None:
        self.url = url
        self.engine: AsyncEngine = make_engine(url, pool_size=pool_size, busy_timeout_ms=busy_timeout_ms)
        self.dialect = self.engine.dialect.name
        self.is_sqlite = self.dialect == "sqlite"
        self._write_lock = asyncio.Lock() if self.is_sqlite else None

    def uow(self, *, write: bool = True) -> SqlUnitOfWork:
        return SqlUnitOfWork(self, write=write)

    @asynccontextmanager
    async def connect(self, *, write: bool) -> AsyncIterator[AsyncConnection]:
        if self._write_lock is not None and write:
            async with self._write_lock:
                conn = await self.engine.connect()
                conn = await conn.execution_options(sqlite_begin="IMMEDIATE")
                try:
                    yield conn
                finally:
                    await conn.close()
            return
        conn = await self.engine.connect()
        try:
            yield conn
        finally:
            await conn.close()

    async def ping(self) -> None:
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def dispose(self) -> None:
        await self.engine.dispose()
