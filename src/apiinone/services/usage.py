"""Reading the request log: one account's requests, newest first, and its usage sums.

Every parameter is checked before the database is asked (a bad one is a 400 naming it), and every
query is scoped to the caller's account.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from apiinone.db.database import Database
from apiinone.domain.catalog import Catalog
from apiinone.domain.usage import DAY_MS, REQUEST_STATUSES, USAGE_GROUPS, RequestLogEntry, UsageRow
from apiinone.errors import InvalidParameter

REQUEST_TYPES = ("image", "video", "audio", "speech", "chat")
MAX_USAGE_DAYS = 366
DEFAULT_USAGE_DAYS = 30
_REQUEST_ID = re.compile(r"req_[0-9A-HJKMNP-TV-Z]{26}")
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def _day(value: str, param: str) -> date:
    if not _DATE.fullmatch(value):
        raise InvalidParameter(f"{param} must be a date as YYYY-MM-DD", param=param)
    try:
        return date.fromisoformat(value)
    except ValueError as exc:
        raise InvalidParameter(f"{param} is not a valid date", param=param) from exc


def _day_start_ms(day: date) -> int:
    return int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()) * 1000


class UsageService:
    def __init__(self, db: Database, catalog_source: Callable[[], Catalog]) -> None:
        self.db = db
        self.catalog_source = catalog_source

    async def requests(self, account_id: str, *, limit: int, cursor: str | None = None, model: str | None = None,
                       type: str | None = None, status: str | None = None,
                       key: str | None = None) -> tuple[list[RequestLogEntry], str | None]:
        if cursor and not _REQUEST_ID.fullmatch(cursor):
            raise InvalidParameter("cursor is not valid", param="cursor")
        if type and type not in REQUEST_TYPES:
            raise InvalidParameter(f"type must be one of {', '.join(REQUEST_TYPES)}", param="type")
        if status and status not in REQUEST_STATUSES:
            raise InvalidParameter(f"status must be one of {', '.join(REQUEST_STATUSES)}", param="status")
        if key and len(key) > 20:
            raise InvalidParameter("key must be a key prefix of at most 20 characters", param="key")
        if model:
            if len(model) > 100:
                raise InvalidParameter("model must be at most 100 characters", param="model")
            spec = self.catalog_source().resolve(model)
            model = spec.id if spec else model
        async with self.db.uow(write=False) as uow:
            entries = await uow.requests.list(account_id, limit=limit + 1, before_id=cursor or None,
                                              model=model or None, type=type or None, status=status or None,
                                              key_prefix=key or None)
        next_cursor = entries[limit - 1].id if len(entries) > limit else None
        return entries[:limit], next_cursor

    async def usage(self, account_id: str, *, start: str | None, end: str | None,
                    group_by: str | None) -> tuple[str, list[UsageRow]]:
        """Sums from ``start`` to ``end`` (UTC days, both included; default the last 30 days)."""
        group = group_by or "day"
        if group not in USAGE_GROUPS:
            raise InvalidParameter(f"group_by must be one of {', '.join(USAGE_GROUPS)}", param="group_by")
        last = _day(end, "to") if end else datetime.now(UTC).date()
        first = _day(start, "from") if start else last - timedelta(days=DEFAULT_USAGE_DAYS - 1)
        if first > last:
            raise InvalidParameter("from must not be after to", param="from")
        if (last - first).days >= MAX_USAGE_DAYS:
            raise InvalidParameter(f"from and to may span at most {MAX_USAGE_DAYS} days", param="from")
        async with self.db.uow(write=False) as uow:
            rows = await uow.requests.usage(account_id, start_ms=_day_start_ms(first),
                                            end_ms=_day_start_ms(last) + DAY_MS, group_by=group)
        return group, rows


    async def dashboard(self, account_id: str, days: int) -> UsageDashboard:
        """The console's charts: the last ``days`` UTC days (today included), every day present."""
        if days not in DASHBOARD_DAYS:
            raise InvalidParameter(f"days must be one of {', '.join(map(str, DASHBOARD_DAYS))}", param="days")
        last = datetime.now(UTC).date()
        first = last - timedelta(days=days - 1)
        start_ms, end_ms = _day_start_ms(first), _day_start_ms(last) + DAY_MS
        async with self.db.uow(write=False) as uow:
            by_day = {row.group: row for row in await uow.requests.usage(account_id, start_ms=start_ms,
                                                                         end_ms=end_ms, group_by="day")}
            by_model = await uow.requests.usage(account_id, start_ms=start_ms, end_ms=end_ms, group_by="model")
            by_key = await uow.requests.usage(account_id, start_ms=start_ms, end_ms=end_ms, group_by="key")
            keys = await uow.requests.key_prefixes(account_id, since_ms=_day_start_ms(last) - 365 * DAY_MS)
        first_day = start_ms // DAY_MS
        series = [by_day.get(d) or UsageRow(group=d, requests=0, succeeded=0, failed=0, credits=0, input_tokens=0,
                                             output_tokens=0) for d in range(first_day, first_day + days)]
        return UsageDashboard(days=days, by_day=series,
                              by_model=sorted(by_model, key=lambda r: (-r.credits, -r.requests, str(r.group))),
                              by_key=sorted(by_key, key=lambda r: (-r.credits, -r.requests, str(r.group))),
                              key_prefixes=keys)

    async def across_accounts(self, days: int, *, limit: int = 20) -> dict[str, Any]:
        """The admin's view: top accounts, models and routes of the last ``days`` days."""
        if days not in DASHBOARD_DAYS:
            raise InvalidParameter(f"days must be one of {', '.join(map(str, DASHBOARD_DAYS))}", param="days")
        last = datetime.now(UTC).date()
        start_ms = _day_start_ms(last - timedelta(days=days - 1))
        end_ms = _day_start_ms(last) + DAY_MS
        async with self.db.uow(write=False) as uow:
            accounts = await uow.requests.top_accounts(start_ms=start_ms, end_ms=end_ms, limit=limit)
            models = await uow.requests.by_model_all(start_ms=start_ms, end_ms=end_ms, limit=limit * 5)
            routes = await uow.requests.by_route_all(start_ms=start_ms, end_ms=end_ms, limit=limit * 5)
        for row in (*accounts, *models, *routes):
            row["credits"] = int(row["credits"] or 0)
            row["failed"] = int(row["failed"] or 0)
            row["requests"] = int(row["requests"])
            row["failure_rate"] = row["failed"] / row["requests"] if row["requests"] else 0.0
        total = sum(r["requests"] for r in models)
        failed = sum(r["failed"] for r in models)
        return {"accounts": accounts, "models": models, "routes": routes, "requests": total, "failed": failed,
                "credits": sum(r["credits"] for r in models), "failure_rate": failed / total if total else 0.0}

    async def purge(self, retention_days: int, *, batch: int = 10_000) -> int:
        """Delete request records older than ``retention_days`` days, in batches; returns how many."""
        if retention_days < 1:
            raise InvalidParameter("retention must be at least 1 day", param="days")
        from apiinone.ids import now_ms

        cutoff = now_ms() - retention_days * DAY_MS
        total = 0
        while True:
            async with self.db.uow() as uow:
                removed = await uow.requests.purge_before(cutoff, batch=batch)
                await uow.commit()
            total += removed
            if removed < batch:
                return total


DASHBOARD_DAYS = (7, 30, 90)


@dataclass(frozen=True, slots=True)
class UsageDashboard:
    days: int
    by_day: list[UsageRow]
    by_model: list[UsageRow]
    by_key: list[UsageRow]
    key_prefixes: list[str]
