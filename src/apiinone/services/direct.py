"""Direct tasks: the API process runs a synchronous request's work itself, without the queue.

The request holds its price and inserts its task in one transaction (``running``, leased by this
process, with ``DIRECT_ATTEMPTS`` so that no worker ever leases it), calls the upstream through the
route pool, answers, then ends the task. The ends of many requests are written together
(``services/group_commit.py``): every finish asked for while a transaction is being written joins
the next one, so under load a transaction ends dozens of tasks, each still with its own
compare-and-set, money movement and request-log row, in a handful of statements.

This process renews the leases of its direct tasks while they run. If it dies, they run out and
the workers' sweep of exhausted tasks ends them as ``timeout``: the hold is released and nothing
is charged for an answer that was never sent.
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog

from apiinone.db.database import Database
from apiinone.domain.tasks import Task, TaskStatus
from apiinone.ids import new_id, now_ms
from apiinone.services.group_commit import GroupCommit
from apiinone.services.tasks import DirectLease, LeasedFinish, TaskService

log = structlog.get_logger(__name__)


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
        self._finishes: GroupCommit[LeasedFinish, Task | None] = GroupCommit(
            db, tasks.finish_leased_many, name="direct-finish", after_commit=self._finished, lock_order=0)

    @property
    def transactions(self) -> int:
        """Finish transactions written (each ends one or more tasks)."""
        return self._finishes.transactions

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
        op = LeasedFinish(task, status, output, error, route, http_status, self._key_prefixes.get(task.id))
        try:
            return await self._finishes.submit(op)  # a canceled request still ends its task
        finally:
            self._tokens.pop(task.id, None)  # ended, or failed to: either way its lease may run out
            self._key_prefixes.pop(task.id, None)

    def _finished(self, _op: LeasedFinish, finished: Task | None) -> None:
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
