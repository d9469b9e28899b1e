"""The request log table: written in the transaction that moves the request's money, read newest
first by id (a time-ordered ``req_`` ULID, so the id is the cursor) and summed for usage."""

from __future__ import annotations

import dataclasses
from typing import Any

from sqlalchemy import case, func, insert, select
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncConnection

from apiinone.db import tables as t
from apiinone.domain.usage import DAY_MS, RequestLogEntry, RequestRecord, UsageRow

_R = t.request_log.c
_INSERT = insert(t.request_log)


def _entry_from_row(r: RowMapping) -> RequestLogEntry:
    return RequestLogEntry(
        id=r["id"], account_id=r["account_id"], api_key_id=r["api_key_id"], key_prefix=r["key_prefix"],
        credits=int(r["credits"]), created_at=int(r["created_at"]),
        record=RequestRecord(type=r["type"], model=r["model"], status=r["status"], http_status=int(r["http_status"]),
                             route=r["route"], input_tokens=r["input_tokens"], output_tokens=r["output_tokens"],
                             latency_ms=r["latency_ms"], ttft_ms=r["ttft_ms"], task_id=r["task_id"]),
    )


class RequestLogRepository:
    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn

    async def add(self, entry: RequestLogEntry) -> None:
        await self.conn.execute(_INSERT, {
            "id": entry.id, "account_id": entry.account_id, "api_key_id": entry.api_key_id,
            "key_prefix": entry.key_prefix, "credits": entry.credits, "created_at": entry.created_at,
            **dataclasses.asdict(entry.record),
        })

    async def usage(self, account_id: str, *, start_ms: int, end_ms: int, group_by: str) -> list[UsageRow]:
        """Sums per UTC day, model or key prefix over ``start_ms <= created_at < end_ms``."""
        group: Any = {"day": _R.created_at // DAY_MS, "model": _R.model, "key": _R.key_prefix}[group_by]
        label = group.label("usage_group")
        stmt = (
            select(label, func.count(), func.sum(case((_R.status == "succeeded", 1), else_=0)),
                   func.sum(case((_R.status == "failed", 1), else_=0)), func.sum(_R.credits),
                   func.coalesce(func.sum(_R.input_tokens), 0), func.coalesce(func.sum(_R.output_tokens), 0))
            .where(_R.account_id == account_id, _R.created_at >= start_ms, _R.created_at < end_ms)
            .group_by(label).order_by(group.asc().nulls_last())
        )
        return [
            UsageRow(group=int(g) if group_by == "day" else g, requests=int(n), succeeded=int(ok),
                     failed=int(bad), credits=int(cr), input_tokens=int(i), output_tokens=int(o))
            for g, n, ok, bad, cr, i, o in (await self.conn.execute(stmt)).all()
        ]

    async def list(self, account_id: str, *, limit: int, before_id: str | None = None,
                   model: str | None = None, type: str | None = None) -> list[RequestLogEntry]:
        stmt = select(t.request_log).where(_R.account_id == account_id)
        if before_id is not None:
            stmt = stmt.where(_R.id < before_id)
        if model is not None:
            stmt = stmt.where(_R.model == model)
        if type is not None:
            stmt = stmt.where(_R.type == type)
        stmt = stmt.order_by(_R.id.desc()).limit(limit)
        return [_entry_from_row(r) for r in (await self.conn.execute(stmt)).mappings()]
