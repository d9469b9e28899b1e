"""Group commit: the writes that many requests ask for in one event-loop turn share a transaction.

A transaction costs a fixed price (on SQLite: the write lock, BEGIN, COMMIT; on PostgreSQL: round
trips and a WAL flush) whatever it holds, and most of a request's statements can be run for many
rows at once. So each kind of direct write (holds of direct calls, their settlements, ends of
direct tasks) queues its items here; one writer at a time takes everything queued so far, writes
it in one transaction with ``write(uow, items)`` and wakes each caller with its own result. While
that transaction is being written the next batch fills up, so under load a batch holds dozens of
items and at rest it holds one (a lone request waits for no timer).

``write`` returns one result per item, in order: a value, or an exception *instance* for an item
that failed on its own (a hold that does not fit) without spoiling the others. If ``write`` raises,
the transaction rolls back and every item of that batch is written alone, so one bad item (a
duplicate key, a task that ended meanwhile) fails only itself.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import structlog

from apiinone.db.database import Database
from apiinone.db.uow import SqlUnitOfWork
from apiinone.telemetry.metrics import GROUP_COMMIT_ITEMS, GROUP_COMMIT_TRANSACTIONS

log = structlog.get_logger(__name__)

_MAX_GATHER_TURNS = 8
T = TypeVar("T")
R = TypeVar("R")


class BatchConflict(Exception):
    """Raised by a ``write`` that found the batch cannot be written together (some item must be
    decided alone): the batch is rolled back and retried item by item."""


@dataclass(slots=True)
class _Queued(Generic[T, R]):
    item: T
    done: asyncio.Future[R] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class GroupCommit(Generic[T, R]):
    def __init__(self, db: Database, write: Callable[[SqlUnitOfWork, list[T]], Awaitable[list[Exception | R]]],
                 *, name: str, after_commit: Callable[[T, R], None] | None = None) -> None:
        self.db = db
        self.name = name
        self._write_items = write
        self._after_commit = after_commit
        self._pending: list[_Queued[T, R]] = []
        self._writer: asyncio.Task[None] | None = None
        self.transactions = 0
        """Transactions written (each for one or more items)."""
        self.items = 0
        self._transactions_metric = GROUP_COMMIT_TRANSACTIONS.labels(name)
        self._items_metric = GROUP_COMMIT_ITEMS.labels(name)

    async def submit(self, item: T) -> R:
        """Write ``item`` in the next group commit; its result, or its failure raised. A caller that
        is canceled while waiting still has its item written (the write may already be under way)."""
        queued: _Queued[T, R] = _Queued(item)
        self._pending.append(queued)
        if self._writer is None:
            self._writer = asyncio.create_task(self._write_pending(), name=f"group-commit-{self.name}")
        return await asyncio.shield(queued.done)

    async def _write_pending(self) -> None:
        try:
            while True:
                await self._gather()
                if not self._pending:
                    break
                batch, self._pending = self._pending, []
                try:
                    results = await self._write([q.item for q in batch])
                except Exception as exc:  # one bad item must not fail the others: write each alone
                    if not isinstance(exc, BatchConflict):
                        log.warning("group_commit_batch_failed", writer=self.name, size=len(batch),
                                    error=type(exc).__name__)
                    for queued in batch:
                        try:
                            [one] = await self._write([queued.item])
                        except Exception as single:
                            one = single
                        self._resolve(queued, one)
                    continue
                for queued, result in zip(batch, results, strict=True):
                    self._resolve(queued, result)
        finally:
            self._writer = None
            if self._pending:  # asked for while this writer was stopping
                self._writer = asyncio.create_task(self._write_pending(), name=f"group-commit-{self.name}")

    async def _gather(self) -> None:
        """Let the batch fill: one loop turn, then more turns for as long as each brought new items
        (at most ``_MAX_GATHER_TURNS``). A lone request waits one turn; under load, the requests
        that reached this point in the same few turns share the transaction. On SQLite the write
        itself never yields to the loop, so without this a batch could only hold the items of a
        single turn."""
        seen = -1
        for _ in range(_MAX_GATHER_TURNS):
            if len(self._pending) == seen:
                return
            seen = len(self._pending)
            await asyncio.sleep(0)

    async def _write(self, items: list[T]) -> list[Exception | R]:
        async with self.db.uow() as uow:
            results = await self._write_items(uow, items)
            await uow.commit()
        self.transactions += 1
        self.items += len(items)
        self._transactions_metric.inc()
        self._items_metric.inc(len(items))
        return results

    def _resolve(self, queued: _Queued[T, R], result: Exception | R) -> None:
        if queued.done.done():
            return
        if isinstance(result, Exception):
            queued.done.set_exception(result)
            queued.done.exception()  # a caller that went away must not leave "exception never retrieved"
            return
        queued.done.set_result(result)
        if self._after_commit is not None:
            self._after_commit(queued.item, result)

    async def drain(self, timeout_s: float = 5.0) -> None:
        """Let the last group commit land (shutdown)."""
        writer = self._writer
        if writer is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(writer), timeout_s)
