"""The audit log: one row per admin change, written in the transaction that makes the change."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from apiinone.db import tables as t
from apiinone.ids import new_id, now_ms

_A = t.audit_log.c


@dataclass(frozen=True, slots=True)
class AuditEntry:
    id: str
    actor_id: str | None
    actor_email: str | None
    action: str
    target: str
    detail: dict[str, Any]
    created_at: int


class AuditRepository:
    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn

    async def add(self, actor_id: str | None, action: str, target: str, detail: dict[str, Any] | None = None) -> str:
        now = now_ms()
        entry_id = new_id("aud", now)
        await self.conn.execute(insert(t.audit_log).values(
            id=entry_id, actor_id=actor_id, action=action, target=target[:200],
            detail=orjson.dumps(detail).decode() if detail else None, created_at=now))
        return entry_id

    async def list(self, *, limit: int, before_id: str | None = None, action: str | None = None) -> list[AuditEntry]:
        stmt = (select(t.audit_log, t.accounts.c.email)
                .outerjoin(t.accounts, t.accounts.c.id == _A.actor_id))
        if before_id:
            stmt = stmt.where(_A.id < before_id)
        if action:
            stmt = stmt.where(_A.action.like(f"{action}%"))
        rows = (await self.conn.execute(stmt.order_by(_A.id.desc()).limit(limit))).mappings().all()
        return [AuditEntry(id=r["id"], actor_id=r["actor_id"], actor_email=r["email"], action=r["action"],
                           target=r["target"], detail=orjson.loads(r["detail"]) if r["detail"] else {},
                           created_at=int(r["created_at"])) for r in rows]
