"""The unit of work: one database transaction and the repositories bound to it.

It is the only thing that commits. Leaving the block without ``commit()`` rolls back, so a
failure half way through a use case leaves nothing behind.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AsyncExitStack
from types import TracebackType
from typing import TYPE_CHECKING

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from apiinone.db.audit import AuditRepository
from apiinone.db.queue import QueueRepository
from apiinone.db.remote_jobs import RemoteJobRepository
from apiinone.db.repositories import (
    AccountRepository,
    ApiKeyRepository,
    IdempotencyRepository,
    LedgerRepository,
    TaskRepository,
)
from apiinone.db.request_log import RequestLogRepository
from apiinone.db.route_health import RouteHealthRepository
from apiinone.db.upstream_routes import UpstreamRouteRepository
from apiinone.db.webhooks import WebhookRepository

if TYPE_CHECKING:
    from apiinone.db.database import Database


class SqlUnitOfWork:
    accounts: AccountRepository
    api_keys: ApiKeyRepository
    tasks: TaskRepository
    ledger: LedgerRepository
    queue: QueueRepository
    remote_jobs: RemoteJobRepository
    idempotency: IdempotencyRepository
    webhooks: WebhookRepository
    requests: RequestLogRepository
    route_health: RouteHealthRepository
    routes: UpstreamRouteRepository
    audit: AuditRepository
    conn: AsyncConnection

    def __init__(self, db: Database, *, write: bool, pinned: bool = False) -> None:
        self._db = db
        self._write = write
        self._pinned = pinned
        self._stack = AsyncExitStack()
        self._committed = False
        self._after_commit: list[str] = []
        self._on_commit: list[Callable[[], None]] = []

    async def __aenter__(self) -> SqlUnitOfWork:
        opened = self._db.pinned_writer() if self._pinned else self._db.connect(write=self._write)
        self.conn = await self._stack.enter_async_context(opened)
        try:
            await self.conn.begin()
        except BaseException:  # no transaction: give the connection (and SQLite's write lock) back
            await self._stack.aclose()
            raise
        self.accounts = AccountRepository(self.conn)
        self.api_keys = ApiKeyRepository(self.conn)
        self.tasks = TaskRepository(self.conn)
        self.ledger = LedgerRepository(self.conn)
        self.queue = QueueRepository(self.conn)
        self.remote_jobs = RemoteJobRepository(self.conn)
        self.idempotency = IdempotencyRepository(self.conn)
        self.webhooks = WebhookRepository(self.conn)
        self.requests = RequestLogRepository(self.conn)
        self.route_health = RouteHealthRepository(self.conn)
        self.routes = UpstreamRouteRepository(self.conn)
        self.audit = AuditRepository(self.conn)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        try:
            if not self._committed and self.conn.in_transaction():
                await self.conn.rollback()
        finally:
            await self._stack.aclose()

    async def commit(self) -> None:
        await self.conn.commit()
        self._committed = True
        for callback in self._on_commit:
            callback()

    def on_commit(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` once this transaction committed (never if it rolls back): metrics."""
        self._on_commit.append(callback)

    async def notify(self, channel: str, payload: str = "") -> None:
        """PostgreSQL NOTIFY, delivered at commit (and dropped on rollback) to LISTENing workers."""
        if self.conn.dialect.name == "postgresql":
            await self.conn.execute(text("SELECT pg_notify(:c, :p)"), {"c": channel, "p": payload})
