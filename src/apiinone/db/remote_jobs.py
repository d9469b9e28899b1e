"""Statements of the remote-job poller: lease due jobs, reschedule them, count those in flight.

A job is due when its task is ``running`` with a ``remote_job`` and ``poll_at <= now``. Leasing
moves ``poll_at`` past the lease and stamps a fresh ``lease_token``, in one UPDATE: no other
poller sees the row until the lease runs out (a poller that died mid-poll is replaced then), and
only the holder of the token can reschedule or finish it. PostgreSQL picks rows with
``FOR UPDATE SKIP LOCKED`` so pollers never wait on each other; SQLite's single writer is exclusive.
``lease_expires_at`` stays NULL, so the task queue never mistakes a followed job for a dead worker's.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

from sqlalchemy import BigInteger, Integer, Update, and_, bindparam, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from apiinone.db import tables as t
from apiinone.db.repositories import task_from_row
from apiinone.domain.tasks import Task, TaskStatus

_T = t.tasks.c


class RemoteJobRepository:
    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn
        self.is_postgres = conn.dialect.name == "postgresql"

    async def lease_due(self, *, node: str, token: str, limit: int, now: int, lease_ms: int,
                        models: Sequence[str] | None = None) -> list[Task]:
        params = {"r_now": now, "r_until": now + lease_ms, "r_token": token, "r_node": node, "r_limit": limit}
        if models is not None:
            params["r_models"] = list(models)
        rows = (await self.conn.execute(_lease_statement(self.is_postgres, models is not None), params)).mappings()
        return sorted((task_from_row(r) for r in rows), key=lambda task: (task.poll_at or 0, task.id))

    async def reschedule(self, task_id: str, *, token: str, poll_at: int, progress: int | None) -> bool:
        """Hand the job back to the schedule (``poll_at``) with its latest progress, iff still ours."""
        values: dict[str, object] = {"poll_at": poll_at, "lease_token": None}
        if progress is not None:
            values["progress"] = progress
        result = await self.conn.execute(
            update(t.tasks)
            .where(_T.id == task_id, _T.lease_token == token, _T.status == TaskStatus.RUNNING.value)
            .values(**values))
        return result.rowcount == 1

    async def in_flight(self) -> int:
        stmt = select(func.count()).select_from(t.tasks).where(
            _T.status == TaskStatus.RUNNING.value, _T.remote_job.is_not(None))
        return int((await self.conn.execute(stmt)).scalar_one())

    async def next_due_at(self) -> int | None:
        stmt = select(func.min(_T.poll_at)).where(_T.status == TaskStatus.RUNNING.value, _T.remote_job.is_not(None))
        value = (await self.conn.execute(stmt)).scalar_one_or_none()
        return int(value) if value is not None else None


@functools.cache
def _lease_statement(is_postgres: bool, by_model: bool) -> Update:
    now = bindparam("r_now", type_=BigInteger)
    pick = select(_T.id).where(and_(_T.status == TaskStatus.RUNNING.value, _T.remote_job.is_not(None),
                                    _T.poll_at <= now))
    if by_model:
        pick = pick.where(_T.model.in_(bindparam("r_models", expanding=True)))
    pick = pick.order_by(_T.poll_at, _T.id).limit(bindparam("r_limit", type_=Integer))
    if is_postgres:
        pick = pick.with_for_update(skip_locked=True)
    return (
        update(t.tasks)
        .where(_T.id.in_(pick.scalar_subquery()))
        .values(poll_at=bindparam("r_until", type_=BigInteger), lease_token=bindparam("r_token"),
                node=bindparam("r_node"))
        .returning(*t.tasks.c)
    )
