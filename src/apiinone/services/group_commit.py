"""Group commit: the writes that many requests ask for in a few event-loop turns share a transaction.

A transaction costs a fixed price (on SQLite: the write lock, BEGIN, COMMIT; on PostgreSQL: round
trips and a WAL flush) whatever it holds, and most of a request's statements can be run for many
rows at once. Each kind of hot write is a *lane* (:class:`GroupCommit`: task creates, workers'
completions, ends of direct tasks, holds of direct calls and their settlements) with its own
``write(uow, items)``; all the lanes of one database share one writer (:class:`_Committer`). It
takes everything queued on every lane, runs each lane's ``write`` on its items in one
transaction, commits once and wakes each caller with its own result. So a request's hold and
another's settlement, a task's create and another's end, go to the disk together; at rest a lone
request waits for no timer.

``write`` returns one result per item, in order: a value, or an exception *instance* for an item
that failed on its own (a hold that does not fit) without spoiling the others. If any ``write``
raises, the transaction rolls back and every item of that batch is written alone, so one bad item
(a duplicate key, a task that ended meanwhile) fails only itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import structlog

from apiinone.db.database import Database
from apiinone.db.uow import SqlUnitOfWork
from apiinone.errors import ApiError
from apiinone.telemetry.metrics import GROUP_COMMIT_FAILED, GROUP_COMMIT_ITEMS, GROUP_COMMIT_TRANSACTIONS

log = structlog.get_logger(__name__)

_MAX_GATHER_TURNS = 8
T = TypeVar("T")
R = TypeVar("R")


class BatchConflict(Exception):
    """Raised by a ``write`` that found the batch cannot be written together (some item must be
    decided alone): the batch is rolled back and retried item by item."""


@dataclass(slots=True)
class _Queued:
    lane: GroupCommit[Any, Any]
    item: Any
    done: asyncio.Future[Any] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class GroupCommit(Generic[T, R]):
    """One lane: items of one kind, written by ``write`` in the shared transaction."""

    def __init__(self, db: Database, write: Callable[[SqlUnitOfWork, list[T]], Awaitable[list[Exception | R]]],
                 *, name: str, after_commit: Callable[[T, R], None] | None = None, lock_order: int = 1,
                 abandoned: Callable[[T, R], Awaitable[None]] | None = None) -> None:
        self.db = db
        self.name = name
        self.abandoned = abandoned
        """Called with an item's result when it was written for a caller canceled while it waited
        (a hold that nobody will settle any more: release it)."""
        self._cleanups: set[asyncio.Task[None]] = set()
        self.lock_order = lock_order
        """Lanes run in this order within a transaction. Rows are locked in one order everywhere
        (tasks, then accounts, then keys, then the day's sums), so two processes' batches on
        PostgreSQL wait for each other and never deadlock: lanes that lock task rows go first (0)."""
        self.write = write
        self.after_commit = after_commit
        self.transactions = 0
        """Transactions that wrote items of this lane."""
        self.items = 0
        self.transactions_metric = GROUP_COMMIT_TRANSACTIONS.labels(name)
        self.items_metric = GROUP_COMMIT_ITEMS.labels(name)

    async def submit(self, item: T) -> R:
        """Write ``item`` in the next group commit; its result, or its failure raised. A caller that
        is canceled while waiting still has its item written (the write may already be under way)."""
        queued = _Queued(self, item)
        _committer(self.db).enqueue(queued)
        try:
            result: R = await asyncio.shield(queued.done)
        except asyncio.CancelledError:
            if self.abandoned is not None:
                queued.done.add_done_callback(lambda done: self._clean_up_after(item, done))
            raise
        return result

    def _clean_up_after(self, item: T, done: asyncio.Future[Any]) -> None:
        if self.abandoned is None or done.cancelled() or done.exception() is not None:
            return
        task: asyncio.Task[None] = asyncio.ensure_future(self.abandoned(item, done.result()))
        self._cleanups.add(task)  # kept until it ends
        task.add_done_callback(self._cleanups.discard)


async def drain(db: Database, timeout_s: float = 5.0) -> None:
    """Let the last group commit of every lane on ``db`` land (shutdown): they share one writer."""
    await _committer(db).drain(timeout_s)


_COMMITTERS: weakref.WeakKeyDictionary[Database, _Committer] = weakref.WeakKeyDictionary()


def failed_batches(db: Database) -> int:
    """How many of this process's batches on ``db`` failed as a whole and were redone item by item."""
    return _committer(db).failed_batches


def _committer(db: Database) -> _Committer:
    committer = _COMMITTERS.get(db)
    if committer is None:
        committer = _COMMITTERS[db] = _Committer(db)
    return committer


class _Committer:
    """The one writer of a database's lanes."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._pending: list[_Queued] = []
        self._writer: asyncio.Task[None] | None = None
        self.failed_batches = 0
        """Batches that failed as a whole (a duplicate, a deadlock) and were written item by item."""

    def enqueue(self, queued: _Queued) -> None:
        loop = asyncio.get_running_loop()
        if self._writer is not None and self._writer.get_loop() is not loop:  # that loop is gone
            self._writer, self._pending = None, []
        self._pending.append(queued)
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_pending(), name="group-commit")

    async def _write_pending(self) -> None:
        try:
            while True:
                await self._gather()
                if not self._pending:
                    break
                batch, self._pending = self._pending, []
                try:
                    results = await self._write(batch)
                except Exception as exc:  # one bad item must not fail the others: write each alone
                    if not isinstance(exc, BatchConflict | ApiError):  # ApiError: a refusal, not a failure
                        self.failed_batches += 1
                        GROUP_COMMIT_FAILED.inc()
                        log.warning("group_commit_batch_failed", size=len(batch), error=type(exc).__name__)
                    for queued in batch:
                        try:
                            [one] = await self._write([queued])
                        except Exception as single:
                            one = single
                        self._resolve(queued, one)
                    continue
                for queued, result in zip(batch, results, strict=True):
                    self._resolve(queued, result)
        finally:
            self._writer = None
            if self._pending:  # asked for while this writer was stopping
                self._writer = asyncio.create_task(self._write_pending(), name="group-commit")

    async def _gather(self) -> None:
        """Let the batch fill: one loop turn, then more turns for as long as each brought new items
        (at most ``_MAX_GATHER_TURNS``). A lone request waits one turn; under load, the requests
        that reached a write in the same few turns share the transaction. On SQLite the write
        itself never yields to the loop, so without this a batch could only hold one turn's items."""
        seen = -1
        for _ in range(_MAX_GATHER_TURNS):
            if len(self._pending) == seen:
                return
            seen = len(self._pending)
            await asyncio.sleep(0)

    async def _write(self, batch: list[_Queued]) -> list[Any]:
        """Each lane's items through its ``write``, lane by lane (by ``lock_order``), in one
        transaction; the results in the order of ``batch``."""
        lanes: dict[GroupCommit[Any, Any], list[int]] = {}
        for i, queued in enumerate(batch):
            lanes.setdefault(queued.lane, []).append(i)
        results: list[Any] = [None] * len(batch)
        async with self.db.uow(pinned=True) as uow:
            for lane, indexes in sorted(lanes.items(), key=lambda lane: lane[0].lock_order):
                written = await lane.write(uow, [batch[i].item for i in indexes])
                for i, result in zip(indexes, written, strict=True):
                    results[i] = result
            await uow.commit()
        for lane, indexes in lanes.items():
            lane.transactions += 1
            lane.items += len(indexes)
            lane.transactions_metric.inc()
            lane.items_metric.inc(len(indexes))
        return results

    def _resolve(self, queued: _Queued, result: Any) -> None:
        if queued.done.done():
            return
        if isinstance(result, Exception):
            queued.done.set_exception(result)
            queued.done.exception()  # a caller that went away must not leave "exception never retrieved"
            return
        queued.done.set_result(result)
        if queued.lane.after_commit is not None:
            queued.lane.after_commit(queued.item, result)

    async def drain(self, timeout_s: float = 5.0) -> None:
        writer = self._writer
        if writer is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(writer), timeout_s)
