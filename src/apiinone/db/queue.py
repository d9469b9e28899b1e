"""The database is the queue. Named statements for leasing and lease upkeep.

PostgreSQL leases with ``FOR UPDATE SKIP LOCKED`` so many workers take disjoint batches without
waiting on each other; SQLite has a single writer (``BEGIN IMMEDIATE``), so the same UPDATE …
RETURNING is already exclusive there.
"""

from __future__ import annotations

from collections.abc import Sequence

import orjson
from sqlalchemy import and_, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from apiinone.db import tables as t
from apiinone.db.repositories import task_from_row
from apiinone.domain.tasks import Task, TaskStatus

_T = t.tasks.c


class QueueRepository:
    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn
        self.is_postgres = conn.dialect.name == "postgresql"

    async def lease(self, *, node: str, token: str, limit: int, now: int, lease_ms: int,
                    max_attempts: int, models: Sequence[str] | None = None) -> list[Task]:
        """Take up to ``limit`` runnable tasks: queued ones, and running ones whose lease ran out
        (their worker died) while attempts remain."""
        runnable = or_(
            and_(_T.status == TaskStatus.QUEUED.value, _T.run_after <= now),
            and_(_T.status == TaskStatus.RUNNING.value, _T.lease_expires_at < now, _T.attempts < max_attempts),
        )
        pick = select(_T.id).where(runnable)
        if models is not None:
            pick = pick.where(_T.model.in_(list(models)))
        pick = pick.order_by(_T.created_at).limit(limit)
        if self.is_postgres:
            pick = pick.with_for_update(skip_locked=True)
        stmt = (
            update(t.tasks)
            .where(_T.id.in_(pick.scalar_subquery()))
            .values(
                status=TaskStatus.RUNNING.value, node=node, lease_token=token,
                lease_expires_at=now + lease_ms, attempts=_T.attempts + 1,
                started_at=_coalesce_started(now),
            )
            .returning(*t.tasks.c)
        )
        rows = (await self.conn.execute(stmt)).mappings().all()
        return sorted((task_from_row(r) for r in rows), key=lambda task: task.created_at)

    async def extend(self, tokens: Sequence[str], until: int) -> int:
        if not tokens:
            return 0
        result = await self.conn.execute(
            update(t.tasks)
            .where(_T.lease_token.in_(list(tokens)), _T.status == TaskStatus.RUNNING.value)
            .values(lease_expires_at=until)
        )
        return int(result.rowcount or 0)

    async def requeue(self, task_id: str, token: str) -> bool:
        """Give a leased task back (graceful shutdown) without counting the attempt."""
        result = await self.conn.execute(
            update(t.tasks)
            .where(_T.id == task_id, _T.lease_token == token, _T.status == TaskStatus.RUNNING.value)
            .values(status=TaskStatus.QUEUED.value, lease_token=None, lease_expires_at=None,
                    attempts=_T.attempts - 1, node=None)
        )
        return result.rowcount == 1

    async def exhausted(self, *, now: int, max_attempts: int, limit: int = 100) -> list[Task]:
        """Running tasks whose lease ran out with no attempts left: they end as ``timeout``."""
        stmt = (
            select(t.tasks)
            .where(_T.status == TaskStatus.RUNNING.value, _T.lease_expires_at < now, _T.attempts >= max_attempts)
            .limit(limit)
        )
        return [task_from_row(r) for r in (await self.conn.execute(stmt)).mappings()]

    async def heartbeat_node(self, *, name: str, models: Sequence[str] | None, concurrency: int,
                             running: int, pid: int, hostname: str, now: int) -> None:
        values = {
            "models": orjson.dumps(list(models) if models is not None else ["*"]).decode(),
            "concurrency": concurrency, "running": running, "pid": pid, "hostname": hostname,
            "heartbeat_at": now, "stopped_at": None,
        }
        result = await self.conn.execute(update(t.worker_nodes).where(t.worker_nodes.c.name == name).values(**values))
        if result.rowcount == 0:
            await self.conn.execute(insert(t.worker_nodes).values(name=name, started_at=now, **values))

    async def stop_node(self, name: str, now: int) -> None:
        await self.conn.execute(
            update(t.worker_nodes).where(t.worker_nodes.c.name == name).values(stopped_at=now, running=0)
        )

    async def nodes(self) -> list[dict[str, object]]:
        rows = (await self.conn.execute(select(t.worker_nodes).order_by(t.worker_nodes.c.name))).mappings()
        return [dict(r) | {"models": orjson.loads(r["models"])} for r in rows]


def _coalesce_started(now: int):  # type: ignore[no-untyped-def]
    from sqlalchemy import func

    return func.coalesce(_T.started_at, now)
