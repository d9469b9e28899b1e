"""The request log table: written in the transaction that moves the request's money, read newest
first by id (a time-ordered ``req_`` ULID, so the id is the cursor) and summed for usage."""

from __future__ import annotations

import builtins
import dataclasses
from typing import Any

from sqlalchemy import Select, case, delete, func, insert, select
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncConnection

from apiinone.db import hot
from apiinone.db import tables as t
from apiinone.db.dialect import insert_or_add
from apiinone.domain.usage import DAY_MS, RequestLogEntry, RequestRecord, UsageRow

_R = t.request_log.c
_INSERT = insert(t.request_log)
_RECORD_FIELDS = tuple(f.name for f in dataclasses.fields(RequestRecord))
"""The record's columns, read by name (``dataclasses.asdict`` deep-copies: 7 % of a chat call's CPU)."""


def _entry_from_row(r: RowMapping) -> RequestLogEntry:
    return RequestLogEntry(
        id=r["id"], account_id=r["account_id"], api_key_id=r["api_key_id"], key_prefix=r["key_prefix"],
        credits=int(r["credits"]), created_at=int(r["created_at"]),
        record=RequestRecord(type=r["type"], model=r["model"], status=r["status"], http_status=int(r["http_status"]),
                             route=r["route"], input_tokens=r["input_tokens"], output_tokens=r["output_tokens"],
                             latency_ms=r["latency_ms"], ttft_ms=r["ttft_ms"], task_id=r["task_id"]),
    )


_D = t.usage_daily.c
_SUMS = ("requests", "succeeded", "failed", "credits", "input_tokens", "output_tokens")


def usage_statement(account_id: str, *, start_ms: int, end_ms: int, group_by: str) -> Select[Any]:
    """The usage query over whole UTC days (bench/request_log_year.py EXPLAINs this very
    statement): a range of the ``usage_daily`` primary key, (account, day, ...)."""
    if start_ms % DAY_MS or end_ms % DAY_MS:
        raise ValueError("usage is summed over whole UTC days")
    group: Any = {"day": _D.day, "model": _D.model, "key": func.nullif(_D.key_prefix, "")}[group_by]
    label = group.label("usage_group")
    return (
        select(label, *(func.sum(_D[name]) for name in _SUMS))
        .where(_D.account_id == account_id, _D.day >= start_ms // DAY_MS, _D.day < end_ms // DAY_MS)
        .group_by(label).order_by(label.asc().nulls_last())
    )


def raw_usage_statement(account_id: str, *, start_ms: int, end_ms: int, group_by: str) -> Select[Any]:
    """The same sums straight from ``request_log`` (the bench compares; tests check they agree)."""
    group: Any = {"day": _R.created_at // DAY_MS, "model": _R.model, "key": _R.key_prefix}[group_by]
    label = group.label("usage_group")
    return (
        select(label, func.count(), func.sum(case((_R.status == "succeeded", 1), else_=0)),
               func.sum(case((_R.status == "failed", 1), else_=0)), func.sum(_R.credits),
               func.coalesce(func.sum(_R.input_tokens), 0), func.coalesce(func.sum(_R.output_tokens), 0))
        .where(_R.account_id == account_id, _R.created_at >= start_ms, _R.created_at < end_ms)
        .group_by(label).order_by(group.asc().nulls_last())
    )


class RequestLogRepository:
    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn

    async def add(self, entry: RequestLogEntry) -> None:
        """The record and its share of the day's sums, in the caller's transaction."""
        await self.add_many([entry])

    async def add_many(self, entries: builtins.list[RequestLogEntry]) -> None:
        """Many records in two statements (group commit): the rows, and the day's sums added up per
        (account, day, model, key) first, so a batch of one key's calls touches its sums row once."""
        if not entries:
            return
        sums: dict[tuple[str, int, str, str], dict[str, Any]] = {}
        for entry in entries:
            record = entry.record
            day_key = (entry.account_id, entry.created_at // DAY_MS, record.model, entry.key_prefix or "")
            row = sums.get(day_key)
            if row is None:
                row = sums[day_key] = {"account_id": day_key[0], "day": day_key[1], "model": day_key[2],
                                       "key_prefix": day_key[3], **dict.fromkeys(_SUMS, 0)}
            row["requests"] += 1
            row["succeeded"] += record.status == "succeeded"
            row["failed"] += record.status == "failed"
            row["credits"] += entry.credits
            row["input_tokens"] += record.input_tokens or 0
            row["output_tokens"] += record.output_tokens or 0
        rows = [sums[k] for k in sorted(sums)]  # in key order: see Metering.settle_many
        await hot.run(self.conn, insert_or_add(self.conn, t.usage_daily, _SUMS), rows)
        logged = [{"id": e.id, "account_id": e.account_id, "api_key_id": e.api_key_id, "key_prefix": e.key_prefix,
                   "credits": e.credits, "created_at": e.created_at,
                   **{name: getattr(e.record, name) for name in _RECORD_FIELDS}} for e in entries]
        await hot.run(self.conn, _INSERT, logged)

    async def usage(self, account_id: str, *, start_ms: int, end_ms: int, group_by: str) -> list[UsageRow]:
        """Sums per UTC day, model or key prefix over ``start_ms <= created_at < end_ms``."""
        stmt = usage_statement(account_id, start_ms=start_ms, end_ms=end_ms, group_by=group_by)
        return [
            UsageRow(group=int(g) if group_by == "day" else g, requests=int(n), succeeded=int(ok),
                     failed=int(bad), credits=int(cr), input_tokens=int(i), output_tokens=int(o))
            for g, n, ok, bad, cr, i, o in (await self.conn.execute(stmt)).all()
        ]

    async def list(self, account_id: str, *, limit: int, before_id: str | None = None,
                   model: str | None = None, type: str | None = None, status: str | None = None,
                   key_prefix: str | None = None) -> list[RequestLogEntry]:
        stmt = select(t.request_log).where(_R.account_id == account_id)
        if before_id is not None:
            stmt = stmt.where(_R.id < before_id)
        if model is not None:
            stmt = stmt.where(_R.model == model)
        if type is not None:
            stmt = stmt.where(_R.type == type)
        if status is not None:
            stmt = stmt.where(_R.status == status)
        if key_prefix is not None:
            stmt = stmt.where(_R.key_prefix == key_prefix)
        stmt = stmt.order_by(_R.id.desc()).limit(limit)
        return [_entry_from_row(r) for r in (await self.conn.execute(stmt)).mappings()]

    async def key_prefixes(self, account_id: str, *, since_ms: int) -> builtins.list[str]:
        """The keys an account used lately (the console's key filter)."""
        stmt = (select(_R.key_prefix).where(_R.account_id == account_id, _R.created_at >= since_ms,
                                            _R.key_prefix.is_not(None))
                .group_by(_R.key_prefix).order_by(_R.key_prefix).limit(200))
        return [str(p) for p in (await self.conn.execute(stmt)).scalars()]

    # --- across accounts (admin) -----------------------------------------------------------------

    async def top_accounts(self, *, start_ms: int, end_ms: int, limit: int) -> builtins.list[dict[str, Any]]:
        """Accounts by credits charged over whole UTC days, with their request and failure counts."""
        credits = func.sum(_D.credits).label("credits")
        stmt = (
            select(_D.account_id, t.accounts.c.email, func.sum(_D.requests).label("requests"),
                   func.sum(_D.failed).label("failed"), credits)
            .join(t.accounts, t.accounts.c.id == _D.account_id)
            .where(_D.day >= start_ms // DAY_MS, _D.day < end_ms // DAY_MS)
            .group_by(_D.account_id, t.accounts.c.email).order_by(credits.desc(), _D.account_id).limit(limit)
        )
        return [dict(r) for r in (await self.conn.execute(stmt)).mappings()]

    async def by_model_all(self, *, start_ms: int, end_ms: int, limit: int) -> builtins.list[dict[str, Any]]:
        """Models by requests over whole UTC days: counts, failures, credits."""
        requests = func.sum(_D.requests).label("requests")
        stmt = (
            select(_D.model, requests, func.sum(_D.failed).label("failed"), func.sum(_D.credits).label("credits"))
            .where(_D.day >= start_ms // DAY_MS, _D.day < end_ms // DAY_MS)
            .group_by(_D.model).order_by(requests.desc(), _D.model).limit(limit)
        )
        return [dict(r) for r in (await self.conn.execute(stmt)).mappings()]

    async def by_route_all(self, *, start_ms: int, end_ms: int, limit: int) -> builtins.list[dict[str, Any]]:
        requests = func.count().label("requests")
        stmt = (
            select(_R.model, _R.route, requests,
                   func.sum(case((_R.status == "failed", 1), else_=0)).label("failed"),
                   func.sum(_R.credits).label("credits"))
            .where(_R.created_at >= start_ms, _R.created_at < end_ms)
            .group_by(_R.model, _R.route).order_by(requests.desc(), _R.model).limit(limit)
        )
        return [dict(r) for r in (await self.conn.execute(stmt)).mappings()]

    async def purge_before(self, cutoff_ms: int, *, batch: int = 10_000) -> int:
        """Delete rows older than ``cutoff_ms``, at most ``batch`` of them (call until it returns 0)."""
        ids = select(_R.id).where(_R.created_at < cutoff_ms).order_by(_R.created_at).limit(batch)
        result = await self.conn.execute(delete(t.request_log).where(_R.id.in_(ids.scalar_subquery())))
        return int(result.rowcount or 0)
