"""Reading the request log: one account's requests, newest first, and its usage sums.

Every parameter is checked before the database is asked (a bad one is a 400 naming it), and every
query is scoped to the caller's account.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta

from apiinone.db.database import Database
from apiinone.domain.catalog import Catalog
from apiinone.domain.usage import DAY_MS, USAGE_GROUPS, RequestLogEntry, UsageRow
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
                       type: str | None = None) -> tuple[list[RequestLogEntry], str | None]:
        if cursor and not _REQUEST_ID.fullmatch(cursor):
            raise InvalidParameter("cursor is not valid", param="cursor")
        if type and type not in REQUEST_TYPES:
            raise InvalidParameter(f"type must be one of {', '.join(REQUEST_TYPES)}", param="type")
        if model:
            if len(model) > 100:
                raise InvalidParameter("model must be at most 100 characters", param="model")
            spec = self.catalog_source().resolve(model)
            model = spec.id if spec else model
        async with self.db.uow(write=False) as uow:
            entries = await uow.requests.list(account_id, limit=limit + 1, before_id=cursor or None,
                                              model=model or None, type=type or None)
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
