"""The database is the queue. Named statements for leasing and lease upkeep.

PostgreSQL leases with ``FOR UPDATE SKIP LOCKED`` so many workers take disjoint batches without
waiting on each other; SQLite has a single writer (``BEGIN IMMEDIATE``), so the same UPDATE …
RETURNING is already exclusive there.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import orjson
from sqlalchemy import BigInteger, Integer, Update, and_, bindparam, func, insert, select, text, update
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncConnection

from apiinone.db import tables as t
from apiinone.db.repositories import task_from_row
from apiinone.domain.tasks import Task, TaskStatus

_T = t.tasks.c
_CAP_LOCK_NAMESPACE = 0x61696F  # first key of the per-model advisory locks ("aio")


class QueueRepository:
    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn
        self.is_postgres = conn.dialect.name == "postgresql"

    async def lease(self, *, node: str, token: str, limit: int, now: int, lease_ms: int,
                    max_attempts: int, models: Sequence[str] | None = None,
                    model_limits: Mapping[str, int] | None = None,
                    cluster_caps: Mapping[str, int] | None = None) -> list[Task]:
        """Take up to ``limit`` runnable tasks: queued ones, and running ones whose lease ran out
        (their worker died) while attempts remain.

        ``models`` restricts the lease to the models this node serves; ``model_limits`` caps how
        many of one model this call may take (the node's free slots for it); ``cluster_caps`` caps
        how many tasks of one model run at once across every node, because an upstream's rate limit
        is shared by the whole cluster. Capped models are counted and leased under a per-model
        transaction lock (a PostgreSQL advisory lock; SQLite's single writer already serializes),
        so two nodes leasing at the same moment can never overshoot a cap."""
        limits = {m: n for m, n in (model_limits or {}).items() if models is None or m in models}
        caps = {m: c for m, c in (cluster_caps or {}).items() if models is None or m in models}
        if caps:
            running = await self._running_counts(sorted(caps), now)
            for model, cap in caps.items():
                free = max(0, cap - running.get(model, 0))
                limits[model] = min(limits.get(model, free), free)
        lease = functools.partial(self._lease_batch, node=node, token=token, now=now, lease_ms=lease_ms,
                                  max_attempts=max_attempts)
        if not limits:
            return await lease(limit=limit, models=models)
        leased: list[Task] = []
        for model in sorted(limits):  # limited models first: they can never crowd the others out
            room = min(limits[model], limit - len(leased))
            if room > 0:
                leased += await lease(limit=room, models=[model])
        others = None if models is None else [m for m in models if m not in limits]
        if limit > len(leased) and others != []:
            leased += await lease(limit=limit - len(leased), models=others, exclude=list(limits))
        return sorted(leased, key=lambda task: (task.created_at, task.id))

    async def _running_counts(self, models: Sequence[str], now: int) -> dict[str, int]:
        """Live (unexpired) running tasks per model, after locking each model's lease slot."""
        if self.is_postgres:
            for model in models:  # sorted by the caller: every node locks in one order, no deadlock
                await self.conn.execute(text("SELECT pg_advisory_xact_lock(:ns, hashtext(:m))"),
                                        {"ns": _CAP_LOCK_NAMESPACE, "m": model})
        stmt = (
            select(_T.model, func.count())
            .where(_T.status == TaskStatus.RUNNING.value, _T.lease_expires_at >= now, _T.model.in_(list(models)))
            .group_by(_T.model)
        )
        return {str(m): int(n) for m, n in (await self.conn.execute(stmt)).all()}

    async def _lease_batch(self, *, node: str, token: str, limit: int, now: int, lease_ms: int,
                           max_attempts: int, models: Sequence[str] | None,
                           exclude: Sequence[str] = ()) -> list[Task]:
        params: dict[str, Any] = {"l_now": now, "l_max_attempts": max_attempts, "l_node": node,
                                  "l_token": token, "l_until": now + lease_ms}
        if models is not None:
            params["l_models"] = list(models)
        if exclude:
            params["l_exclude"] = list(exclude)
        rows: list[RowMapping] = []
        for expired in (True, False):  # leases that ran out first (older tasks), then the queue
            if limit - len(rows) <= 0:
                break
            stmt = _lease_statement(self.is_postgres, models is not None, bool(exclude), expired=expired)
            rows += (await self.conn.execute(stmt, {**params, "l_limit": limit - len(rows)})).mappings().all()
        return sorted((task_from_row(r) for r in rows), key=lambda task: (task.created_at, task.id))

    async def extend(self, tokens: Sequence[str], until: int, task_ids: Sequence[str] | None = None) -> int:
        """Renew the leases held under ``tokens``; with ``task_ids``, only those tasks, so a task whose
        run was abandoned (its finish failed) is not kept alive by the heartbeat and gets retried."""
        if not tokens or (task_ids is not None and not task_ids):
            return 0
        stmt = (
            update(t.tasks)
            .where(_T.lease_token.in_(list(tokens)), _T.status == TaskStatus.RUNNING.value)
            .values(lease_expires_at=until)
        )
        if task_ids is not None:
            stmt = stmt.where(_T.id.in_(list(task_ids)))
        result = await self.conn.execute(stmt)
        return int(result.rowcount or 0)

    async def requeue(self, task_id: str, token: str) -> bool:
        """Give a leased task back (graceful shutdown) without counting the attempt."""
        result = await self.conn.execute(
            update(t.tasks)
            .where(_T.id == task_id, _T.lease_token == token, _T.status == TaskStatus.RUNNING.value)
            .values(status=TaskStatus.QUEUED.value, lease_token=None, lease_expires_at=None,
                    attempts=_T.attempts - 1, node=None, started_at=None)
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
                             running: int, pid: int, hostname: str, now: int,
                             model_limits: Mapping[str, int] | None = None,
                             heartbeat_interval_ms: int | None = None) -> None:
        values = {
            "models": orjson.dumps(list(models) if models is not None else ["*"]).decode(),
            "concurrency": concurrency, "running": running, "pid": pid, "hostname": hostname,
            "heartbeat_at": now, "stopped_at": None,
            "model_limits": orjson.dumps(dict(model_limits)).decode() if model_limits else None,
            "heartbeat_interval_ms": heartbeat_interval_ms,
        }
        result = await self.conn.execute(update(t.worker_nodes).where(t.worker_nodes.c.name == name).values(**values))
        if result.rowcount == 0:
            await self.conn.execute(insert(t.worker_nodes).values(name=name, started_at=now, **values))

    async def stop_node(self, name: str, now: int) -> None:
        await self.conn.execute(
            update(t.worker_nodes).where(t.worker_nodes.c.name == name).values(stopped_at=now, running=0)
        )

    async def nodes(self) -> list[dict[str, Any]]:
        rows = (await self.conn.execute(select(t.worker_nodes).order_by(t.worker_nodes.c.name))).mappings()
        return [dict(r) | {"models": orjson.loads(r["models"]),
                           "model_limits": orjson.loads(r["model_limits"]) if r["model_limits"] else {}}
                for r in rows]



@functools.cache
def _lease_statement(is_postgres: bool, by_model: bool, excluding: bool, *, expired: bool) -> Update:
    """The lease UPDATE, built once per shape (values are bound per call): rebuilding the
    expression and its cache key for every lease was most of a lease's CPU. Expired leases and
    the queue are two statements, each ordered by its own index (``ix_tasks_lease``,
    ``ix_tasks_queue``): one statement OR-ing both made the database sort the whole queue."""
    now = bindparam("l_now", type_=BigInteger)
    if expired:
        runnable = and_(_T.status == TaskStatus.RUNNING.value, _T.lease_expires_at < now,
                        _T.attempts < bindparam("l_max_attempts", type_=Integer))
    else:
        runnable = and_(_T.status == TaskStatus.QUEUED.value, _T.run_after <= now)
    pick = select(_T.id).where(runnable)
    if by_model:
        pick = pick.where(_T.model.in_(bindparam("l_models", expanding=True)))
    if excluding:
        pick = pick.where(_T.model.not_in(bindparam("l_exclude", expanding=True)))
    pick = pick.order_by(_T.created_at, _T.id).limit(bindparam("l_limit", type_=Integer))
    if is_postgres:
        pick = pick.with_for_update(skip_locked=True)
    return (
        update(t.tasks)
        .where(_T.id.in_(pick.scalar_subquery()))
        .values(
            status=TaskStatus.RUNNING.value, node=bindparam("l_node"), lease_token=bindparam("l_token"),
            lease_expires_at=bindparam("l_until", type_=BigInteger), attempts=_T.attempts + 1,
            started_at=func.coalesce(_T.started_at, now),
        )
        .returning(*t.tasks.c)
    )
