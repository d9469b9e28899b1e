"""``/console/usage``: where an account's credits went. Charts of credits and requests per day
(7, 30 or 90 days), by model and by key, drawn as SVG on the server; the request log with
filters and cursor paging; a CSV export of the filtered log. Every query is the signed-in
account's own (UsageService scopes each one)."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from apiinone.domain.credits import UCR_PER_CREDIT, format_credits_text
from apiinone.domain.tasks import iso
from apiinone.domain.usage import DAY_MS, REQUEST_STATUSES, UsageRow
from apiinone.ids import now_ms
from apiinone.services.usage import DASHBOARD_DAYS, REQUEST_TYPES, UsageService
from apiinone.web.charts import Bar, Share, bar_chart, share_bars
from apiinone.web.routes.pages import Page, render, user_page

router = APIRouter(include_in_schema=False)
LOG_PAGE = 50
CSV_MAX_ROWS = 200_000
_CURSOR = re.compile(r"req_[0-9A-HJKMNP-TV-Z]{26}")


def usage_service(page: Page) -> UsageService:
    return UsageService(page.container.db, page.container.catalog_source)


def log_filters(request: Request) -> dict[str, str]:
    """The log's filters from the query string; a value that cannot match is dropped, not an error."""
    q = request.query_params
    values = {
        "type": q.get("type", "") if q.get("type", "") in REQUEST_TYPES else "",
        "status": q.get("status", "") if q.get("status", "") in REQUEST_STATUSES else "",
        "model": q.get("model", "")[:100],
        "key": q.get("key", "")[:20],
    }
    return {k: v for k, v in values.items() if v}


def _day_label(day: int | str | None, *, with_year: bool = False) -> str:
    moment = datetime.fromtimestamp(int(day or 0) * DAY_MS / 1000, tz=UTC)
    return moment.strftime("%Y-%m-%d" if with_year else "%m-%d")


def _charts(page: Page, by_day: list[UsageRow], by_model: list[UsageRow], by_key: list[UsageRow]) -> dict[str, Any]:
    t = page.t
    credit_bars = [Bar(_day_label(r.group), (r.credits / UCR_PER_CREDIT,),
                       t("usage.bar.credits", day=_day_label(r.group, with_year=True),
                         credits=format_credits_text(r.credits))) for r in by_day]
    request_bars = [Bar(_day_label(r.group), (r.requests - r.failed, r.failed),
                        t("usage.bar.requests", day=_day_label(r.group, with_year=True), n=r.requests,
                          failed=r.failed)) for r in by_day]
    no_key = t("usage.no_key")
    return {
        "credits_chart": bar_chart(credit_bars, label=t("usage.chart.credits"), part_classes=("part-0",),
                                   testid="chart-credits"),
        "requests_chart": bar_chart(request_bars, label=t("usage.chart.requests"),
                                    part_classes=("part-0", "part-1"), testid="chart-requests"),
        "model_chart": share_bars([Share(str(r.group), r.credits / UCR_PER_CREDIT, format_credits_text(r.credits))
                                   for r in by_model], label=t("usage.by_model"), testid="chart-models"),
        "key_chart": share_bars([Share(str(r.group or no_key), r.credits / UCR_PER_CREDIT,
                                       format_credits_text(r.credits)) for r in by_key],
                                label=t("usage.by_key"), testid="chart-keys"),
    }


@router.get("/console/usage")
async def usage_page(request: Request) -> Response:
    page, account = await user_page(request)
    days_text = request.query_params.get("days", "30")
    days = int(days_text) if days_text.isdigit() and int(days_text) in DASHBOARD_DAYS else 30
    service = usage_service(page)
    dashboard = await service.dashboard(account.id, days)
    filters = log_filters(request)
    cursor = request.query_params.get("cursor", "")
    entries, next_cursor = await service.requests(
        account.id, limit=LOG_PAGE, cursor=cursor if _CURSOR.fullmatch(cursor) else None,
        model=filters.get("model"), type=filters.get("type"), status=filters.get("status"), key=filters.get("key"))
    totals = {"requests": sum(r.requests for r in dashboard.by_day),
              "succeeded": sum(r.succeeded for r in dashboard.by_day),
              "failed": sum(r.failed for r in dashboard.by_day),
              "credits": sum(r.credits for r in dashboard.by_day)}
    models = sorted({str(r.group) for r in dashboard.by_model} | {m.id for m in page.container.catalog.launched()})
    query = {"days": str(days), **filters}
    return render(
        page, "console/usage.html", section="usage", days=days, periods=DASHBOARD_DAYS, totals=totals,
        dashboard=dashboard, entries=entries,
        filters={k: filters.get(k, "") for k in ("type", "status", "model", "key")},
        types=REQUEST_TYPES, statuses=REQUEST_STATUSES,
        models=models, keys=dashboard.key_prefixes,
        older_url=f"/console/usage?{urlencode(query | {'cursor': next_cursor})}" if next_cursor else None,
        csv_url=f"/console/usage/requests.csv?{urlencode(filters)}",
        period_url=lambda d: f"/console/usage?{urlencode({**filters, 'days': str(d)})}",
        **_charts(page, dashboard.by_day, dashboard.by_model, dashboard.by_key),
    )


CSV_COLUMNS = ["id", "created_at", "type", "model", "status", "http_status", "credits", "input_tokens",
               "output_tokens", "latency_ms", "ttft_ms", "key_prefix", "task_id"]


@router.get("/console/usage/requests.csv")
async def requests_csv(request: Request) -> Response:
    page, account = await user_page(request)
    filters = log_filters(request)
    service = usage_service(page)

    async def rows() -> AsyncIterator[str]:
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(CSV_COLUMNS)
        cursor: str | None = None
        sent = 0
        while sent < CSV_MAX_ROWS:
            entries, cursor = await service.requests(
                account.id, limit=500, cursor=cursor, model=filters.get("model"), type=filters.get("type"),
                status=filters.get("status"), key=filters.get("key"))
            for e in entries:
                r = e.record
                writer.writerow([e.id, iso(e.created_at), r.type, r.model, r.status, r.http_status,
                                 format_credits_text(e.credits), _blank(r.input_tokens), _blank(r.output_tokens),
                                 _blank(r.latency_ms), _blank(r.ttft_ms), e.key_prefix or "", r.task_id or ""])
            sent += len(entries)
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
            if cursor is None:
                return

    filename = f"apiinone-requests-{iso(now_ms())}.csv".replace(":", "")
    return StreamingResponse(rows(), media_type="text/csv; charset=utf-8",
                             headers={"Content-Disposition": f'attachment; filename="{filename}"',
                                      "Cache-Control": "no-store"})


def _blank(value: int | None) -> str:
    return "" if value is None else str(value)
