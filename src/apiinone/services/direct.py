"""Direct tasks: the API process runs a synchronous request's work itself, without the queue.

The request holds its price and inserts its task in one transaction (``running``, leased by this
process, with ``DIRECT_ATTEMPTS`` so that no worker ever leases it), calls the upstream through the
route pool, answers, then ends the task. The ends of many requests are written together: every
finish asked for while a transaction is being written joins the next one (group commit), so under
load a transaction ends dozens of tasks, each still with its own compare-and-set, money movement
and request-log row.

This process renews the leases of its direct tasks while they run. If it dies, they run out and
the workers' sweep of exhausted tasks ends them as ``timeout``: the hold is released and nothing
is charged for an answer that was never sent.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Any

import structlog

from apiinone.db.database import Database
from apiinone.domain.tasks import Task, TaskStatus
from apiinone.ids import new_id, now_ms
from apiinone.services.tasks import DirectLease, TaskService

log = structlog.get_logger(__name__)


@dataclass(slots=True)
class _Finish:
    task: Task
    status: TaskStatus
    output: dict[str, Any] | None
    error: dict[str, str] | None
    route: str | None
    http_status: int
    key_prefix: str | None
    done: asyncio.Future[Task | None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class DirectTasks:
    def __init__(self, db: Database, tasks: TaskService, *, node: str, lease_s: float) -> None:
        self.db = db
        self.tasks = tasks
        self.node = node
        self.lease_ms = int(lease_s * 1000)
        self.renew_s = max(0.2, lease_s / 3)
        self._tokens: dict[str, str] = {}
        """Lease token of each direct task this process is running."""
        self._key_prefixes: dict[str, str | None] = {}
        self._pending: list[_Finish] = []
        self._writer: asyncio.Task[None] | None = None
        self.transactions = 0
        """Finish transactions written (each ends one or more tasks)."""

    @property
    def running(self) -> int:
        return len(self._tokens)

    def lease(self) -> DirectLease:
        return DirectLease(node=self.node, token=new_id("lease"), expires_at=now_ms() + self.lease_ms)

    def started(self, task: Task, key_prefix: str | None = None) -> None:
        """The task's hold committed: keep its lease alive until it ends. ``key_prefix`` goes on the
        request-log row (the caller knows it; the finish need not look it up)."""
        self._tokens[task.id] = task.lease_token or ""
        self._key_prefixes[task.id] = key_prefix

    async def finish(self, task: Task, status: TaskStatus, *, output: dict[str, Any] | None = None,
                     error: dict[str, str] | None = None, route: str | None = None,
                     http_status: int) -> Task | None:
        """End the task (capture on success, release otherwise) in the next group commit. None if
        it had already ended (canceled through the task API, or swept after its lease ran out)."""
        op = _Finish(task, status, output, error, route, http_status, self._key_prefixes.get(task.id))
        self._pending.append(op)
        if self._writer is None:
            self._writer = asyncio.create_task(self._write_pending(), name="direct-finish")
        try:
            return await asyncio.shield(op.done)  # a canceled request still ends its task
        finally:
            self._tokens.pop(task.id, None)  # ended, or failed to: either way its lease may run out
            self._key_prefixes.pop(task.id, None)

    async def _write_pending(self) -> None:
        try:
            await asyncio.sleep(0)  # finishes asked for in this loop turn join the first batch
            while self._pending:
                batch, self._pending = self._pending, []
                try:
                    finished = await self._write(batch)
                except Exception as exc:  # one bad finish must not fail the others: write each alone
                    log.warning("direct_finish_batch_failed", size=len(batch), error=str(exc))
                    for op in batch:
                        try:
                            [one] = await self._write([op])
                        except Exception as single:
                            if not op.done.done():
                                op.done.set_exception(single)
                            continue
                        self._resolve(op, one)
                    continue
                for op, one in zip(batch, finished, strict=True):
                    self._resolve(op, one)
        finally:
            self._writer = None
            if self._pending:  # asked for while this writer was stopping
                self._writer = asyncio.create_task(self._write_pending(), name="direct-finish")

    async def _write(self, batch: list[_Finish]) -> list[Task | None]:
        async with self.db.uow() as uow:
            finished = [await self.tasks.finish_in(uow, op.task, op.status, output=op.output, error=op.error,
                                                   route=op.route, http_status=op.http_status,
                                                   key_prefix=op.key_prefix) for op in batch]
            await uow.commit()
        self.transactions += 1
        return finished

    def _resolve(self, op: _Finish, finished: Task | None) -> None:
        if not op.done.done():
            op.done.set_result(finished)
        if finished is not None:
            self.tasks.on_task_finished(finished)

    async def keep_leases(self) -> None:
        """Renew this process's direct leases, all in one statement, until canceled."""
        while True:
            await asyncio.sleep(self.renew_s)
            if not self._tokens:
                continue
            ids = list(self._tokens)
            try:
                async with self.db.uow() as uow:
                    await uow.queue.extend([self._tokens[i] for i in ids if i in self._tokens],
                                           now_ms() + self.lease_ms, task_ids=ids)
                    await uow.commit()
            except Exception as exc:  # database briefly down: the next round tries again
                log.warning("direct_lease_renewal_failed", error=str(exc))

    async def drain(self, timeout_s: float = 5.0) -> None:
        """Let the last group commit land (shutdown)."""
        writer = self._writer
        if writer is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(writer), timeout_s)
