"""SQL behind the console and admin pages: model overrides, dashboard counts, running and
failed tasks (the console queries service's repository)."""

from __future__ import annotations

from typing import Any

import orjson
from sqlalchemy import delete, func, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from apiinone.db import tables as t
from apiinone.db.repositories import task_from_row
from apiinone.domain.tasks import Task


class ConsoleRepository:
    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn

    async def model_overrides(self) -> list[dict[str, Any]]:
        """``{model_id, enabled (None = as the file), pricing (None = as the file), updated_at}``."""
        rows = (await self.conn.execute(select(t.model_overrides))).mappings().all()
        return [{"model_id": r["model_id"], "enabled": None if r["enabled"] is None else bool(r["enabled"]),
                 "pricing": orjson.loads(r["pricing"]) if r["pricing"] else None,
                 "updated_at": int(r["updated_at"])} for r in rows]

    async def replace_model_override(self, model_id: str, *, enabled: bool | None,
                                     pricing: dict[str, int] | None, at: int) -> None:
        await self.conn.execute(delete(t.model_overrides).where(t.model_overrides.c.model_id == model_id))
        if enabled is not None or pricing is not None:
            await self.conn.execute(insert(t.model_overrides).values(
                model_id=model_id, enabled=enabled, pricing=orjson.dumps(pricing).decode() if pricing else None,
                updated_at=at))

    async def dashboard_counts(self, since: int) -> tuple[int, dict[str, int], int]:
        """Accounts, tasks created since ``since`` by status, pending orders."""
        accounts = int((await self.conn.execute(select(func.count()).select_from(t.accounts))).scalar_one())
        rows = (await self.conn.execute(
            select(t.tasks.c.status, func.count()).where(t.tasks.c.created_at >= since)
            .group_by(t.tasks.c.status))).all()
        pending = int((await self.conn.execute(
            select(func.count()).select_from(t.orders).where(t.orders.c.status == "pending"))).scalar_one())
        return accounts, {str(s): int(n) for s, n in rows}, pending

    async def running_tasks(self, limit: int = 500) -> list[tuple[str, str, str]]:
        """``(node, task id, model)`` of running tasks."""
        rows = (await self.conn.execute(
            select(t.tasks.c.node, t.tasks.c.id, t.tasks.c.model)
            .where(t.tasks.c.status == "running").order_by(t.tasks.c.id).limit(limit))).all()
        return [(str(node), str(task_id), str(model)) for node, task_id, model in rows]

    async def recent_failures(self, limit: int) -> list[tuple[Task, str]]:
        """Failed tasks, newest first, with their account's email."""
        rows = (await self.conn.execute(
            select(t.tasks, t.accounts.c.email.label("account_email"))
            .join(t.accounts, t.accounts.c.id == t.tasks.c.account_id)
            .where(t.tasks.c.status == "failed").order_by(t.tasks.c.id.desc()).limit(limit))).mappings().all()
        return [(task_from_row(r), str(r["account_email"])) for r in rows]
