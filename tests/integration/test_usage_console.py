"""``/console/usage`` and the admin's usage, routes and audit pages over HTTP (in-process app, real
database): the page's sums equal the ledger, every page and export is the signed-in account's
own, and only admins reach the admin pages."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from apiinone.domain.credits import UCR_PER_CREDIT as M
from apiinone.services.metering import RequestRecord
from tests.conftest import AppHarness, Caller, make_settings
from tests.integration.test_console_web import PASSWORD, browser, csrf_of, form, signup

ADMIN_PAGES = ("/admin/routes", "/admin/usage", "/admin/usage?days=90", "/admin/audit")


@pytest.fixture
async def queued_harness(tmp_path: Path, database_url: str) -> AsyncIterator[AppHarness]:
    async with AppHarness(make_settings(tmp_path, database_url), embedded_worker=False) as h:
        yield h


async def login(client: httpx.AsyncClient, email: str) -> None:
    token = csrf_of((await client.get("/login")).text)
    r = await client.post("/login", data={"email": email, "password": PASSWORD, "csrf_token": token})
    assert r.status_code == 303, r.text


async def finish_queued(h: AppHarness, fail: set[int]) -> None:
    from apiinone.ids import now_ms

    async with h.container.db.uow() as uow:
        leased = await uow.queue.lease(node="n1", token="tok", limit=100, now=now_ms(), lease_ms=60_000,
                                       max_attempts=3, models=None)
        await uow.commit()
    for i, task in enumerate(sorted(leased, key=lambda x: x.id)):
        if i in fail:
            assert await h.container.tasks.fail_task(task, "upstream_error", "boom", lease_token="tok")
        else:
            assert await h.container.tasks.complete_task(task, "tok", {"images": []})


async def mixed_workload(h: AppHarness, caller: Caller) -> None:
    """Tasks that succeed, fail and are canceled, a direct call settled by usage, one released."""
    for quality in ("medium", "high", "high", "medium"):
        r = await caller.post("/api/v1/images/generations", json={"model": "local-typeset", "prompt": "p",
                                                                   "quality": quality})
        assert r.status_code == 202, r.text
    assert (await caller.post(f"/api/v1/tasks/{r.json()['task_id']}/cancel")).status_code == 200
    await finish_queued(h, fail={1})
    account = await h.container.accounts.get(caller.account_id)
    [key] = await h.container.accounts.list_api_keys(caller.account_id)
    metering = h.container.metering
    await metering.settle_direct(await metering.open_direct(account, key, 2 * M), 1_234_567,
                                 RequestRecord(type="chat", model="chat-model", status="succeeded", http_status=200,
                                               input_tokens=70_000, output_tokens=9_000, ttft_ms=40))
    await metering.release_direct(await metering.open_direct(account, None, 1 * M),
                                  RequestRecord(type="speech", model="voice", status="failed", http_status=502))


def _text(html: str, testid: str) -> str:
    match = re.search(rf'data-testid="{testid}"[^>]*>([^<]*)<', html)
    assert match, testid
    return match.group(1).strip()


async def test_usage_page_sums_equal_the_ledger_after_a_mixed_workload(queued_harness: AppHarness) -> None:
    h = queued_harness
    caller = await h.caller(email="spender@example.com", credits=100)
    await mixed_workload(h, caller)
    async with h.container.db.uow(write=False) as uow:
        sums = await uow.ledger.sums(caller.account_id)
    captured = -sums["capture"]
    assert captured == 4_234_567  # 1 + 2 from tasks, 1.234567 from the chat call

    async with browser(h) as client:
        await login(client, caller.email)
        for days in ("7", "30", "90"):
            r = await client.get(f"/console/usage?days={days}")
            assert r.status_code == 200
            assert _text(r.text, "total-credits") == "4.234567"
            assert _text(r.text, "total-requests") == "6"
        html = r.text
        for chart in ("chart-credits", "chart-requests", "chart-models", "chart-keys"):
            assert f'data-testid="{chart}"' in html
        assert len(re.findall(r'<tr data-request="req_', html)) == 6
        assert "chat-model" in html and "1.234567" in html

        await _rollup_matches_the_records(h, caller.account_id)
        dashboard = await _dashboard(h, caller.account_id)
        assert sum(row.credits for row in dashboard.by_day) == captured
        assert sum(row.credits for row in dashboard.by_model) == captured
        assert sum(row.credits for row in dashboard.by_key) == captured
        assert len(dashboard.by_day) == 90

        r = await client.get("/console/usage/requests.csv")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
        rows = list(csv.DictReader(io.StringIO(r.text)))
        assert len(rows) == 6
        assert sum(round(float(row["credits"]) * M) for row in rows) == captured
        assert sorted(row["status"] for row in rows) == ["canceled", "failed", "failed", "succeeded", "succeeded",
                                                         "succeeded"]

        r = await client.get("/console/usage?status=failed")
        assert len(re.findall(r'<tr data-request="req_', r.text)) == 2
        r = await client.get("/console/usage/requests.csv?type=chat")
        assert [row["model"] for row in csv.DictReader(io.StringIO(r.text))] == ["chat-model"]
        [key] = await h.container.accounts.list_api_keys(caller.account_id)
        r = await client.get(f"/console/usage?key={key.prefix}")
        assert len(re.findall(r'<tr data-request="req_', r.text)) == 5
        for bad in ("?days=abc", "?days=-1", "?type=movie", "?status=%00", "?cursor=nope", "?model=" + "m" * 500,
                    "?key=" + "k" * 100, "?cursor=req_" + "Z" * 26):
            assert (await client.get("/console/usage" + bad)).status_code == 200, bad
            assert (await client.get("/console/usage/requests.csv" + bad)).status_code == 200, bad


async def _rollup_matches_the_records(h: AppHarness, account_id: str) -> None:
    """usage_daily (what usage reads) and request_log (the records) give the same sums."""
    from apiinone.db.request_log import raw_usage_statement, usage_statement
    from apiinone.domain.usage import DAY_MS
    from apiinone.ids import now_ms

    window = {"start_ms": now_ms() // DAY_MS * DAY_MS - 2 * DAY_MS, "end_ms": now_ms() // DAY_MS * DAY_MS + DAY_MS}
    async with h.container.db.uow(write=False) as uow:
        for group_by in ("day", "model", "key"):
            fast = (await uow.conn.execute(usage_statement(account_id, group_by=group_by, **window))).all()
            slow = (await uow.conn.execute(raw_usage_statement(account_id, group_by=group_by, **window))).all()
            assert [tuple(int(v) if v is not None and str(v).isdigit() else v for v in r) for r in fast] == \
                [tuple(int(v) if v is not None and str(v).isdigit() else v for v in r) for r in slow], group_by
            assert len(fast) >= (1 if group_by == "day" else 2)


async def _dashboard(h: AppHarness, account_id: str):  # type: ignore[no-untyped-def]
    from apiinone.services.usage import UsageService

    return await UsageService(h.container.db, h.container.catalog_source).dashboard(account_id, 90)


async def test_usage_pages_paginate_with_a_cursor(queued_harness: AppHarness) -> None:
    h = queued_harness
    caller = await h.caller(credits=1000)
    account = await h.container.accounts.get(caller.account_id)
    for _ in range(55):
        await h.container.metering.settle_direct(
            await h.container.metering.open_direct(account, None, M), M,
            RequestRecord(type="chat", model="m", status="succeeded", http_status=200))
    async with browser(h) as client:
        await login(client, caller.email)
        first = (await client.get("/console/usage")).text
        ids = re.findall(r'<tr data-request="(req_[^"]+)"', first)
        older = re.search(r'href="([^"]+)#log" data-testid="log-older"', first)
        assert len(ids) == 50 and older
        second = (await client.get(older.group(1).replace("&amp;", "&"))).text
        rest = re.findall(r'<tr data-request="(req_[^"]+)"', second)
        assert len(rest) == 5 and not set(rest) & set(ids) and max(rest) < min(ids)


async def test_usage_pages_and_exports_show_only_the_accounts_own_requests(queued_harness: AppHarness) -> None:
    h = queued_harness
    spender = await h.caller(email="a@example.com", credits=100)
    other = await h.caller(email="b@example.com", credits=100)
    await mixed_workload(h, spender)
    spender_ids = [r["id"] for r in (await spender.get("/api/v1/account/requests?limit=100")).json()["data"]]
    [spender_key] = await h.container.accounts.list_api_keys(spender.account_id)
    assert len(spender_ids) == 6
    async with browser(h) as client:
        await login(client, other.email)
        pages = ["/console/usage", "/console/usage?days=90", f"/console/usage?key={spender_key.prefix}",
                 "/console/usage?model=local-typeset", f"/console/usage?cursor={spender_ids[0]}",
                 "/console/usage/requests.csv", f"/console/usage/requests.csv?key={spender_key.prefix}"]
        for path in pages:
            r = await client.get(path)
            assert r.status_code == 200, path
            shown = re.findall(r'data-request="(req_[^"]+)"', r.text) + re.findall(r"^(req_\w+),", r.text, re.M)
            assert shown == [], path
            assert f'<option value="{spender_key.prefix}"' not in r.text, path  # not among this account's keys
            assert '<tr data-request="' not in r.text and "\nreq_" not in r.text, path
            assert "chat-model" not in r.text, path
        assert _text((await client.get("/console/usage")).text, "total-credits") == "0"
        assert len(list(csv.reader(io.StringIO((await client.get("/console/usage/requests.csv")).text)))) == 1
    # the API routes likewise
    assert (await other.get("/api/v1/account/requests")).json()["data"] == []
    assert (await other.get("/api/v1/account/usage?group_by=key")).json()["data"] == []
    async with browser(h) as anonymous:
        for path in ("/console/usage", "/console/usage/requests.csv"):
            r = await anonymous.get(path)
            assert r.status_code == 303 and r.headers["location"].startswith("/login"), path


async def test_admin_pages_are_for_admins_only_and_usage_spans_accounts(queued_harness: AppHarness) -> None:
    h = queued_harness
    async with browser(h) as admin, browser(h) as user:
        assert (await signup(admin, "boss@example.com")).status_code == 303
        assert (await signup(user, "user@example.com")).status_code == 303
        for path in ADMIN_PAGES:
            assert (await admin.get(path)).status_code == 200, path
            r = await user.get(path)
            assert r.status_code == 403, path
        for target in ("/admin/routes", "/admin/routes/local-typeset/local-typeset/disable",
                       "/admin/routes/local-typeset/local-typeset/test", "/admin/routes/local-typeset/x"):
            r = await form(user, "/console", target, model="local-typeset", name="x", provider="openai",
                           base_url="http://127.0.0.1:9/v1")
            assert r.status_code == 403, target
        assert h.container.stored_routes() == []
        spender = await h.caller(email="big@example.com", credits=100)
        await mixed_workload(h, spender)
        html = (await admin.get("/admin/usage")).text
        assert "big@example.com" in html and "local-typeset" in html and "chat-model" in html
        assert _text(html, "admin-total-credits") == "4.234567"


async def test_admin_changes_are_in_the_audit_log(queued_harness: AppHarness) -> None:
    h = queued_harness
    async with browser(h) as admin:
        assert (await signup(admin, "boss@example.com")).status_code == 303
        target = await h.caller(email="t@example.com", credits=0)
        r = await form(admin, "/admin/users", f"/admin/users/{target.account_id}/credits", amount="2.5", note="gift")
        assert r.status_code == 303
        r = await form(admin, "/admin/users", f"/admin/users/{target.account_id}/disable")
        assert r.status_code == 303
        r = await form(admin, "/admin/models", "/admin/models/local-typeset", enabled="on", price_medium="3",
                       price_high="4")
        assert r.status_code == 303
        r = await form(admin, "/admin/routes", "/admin/routes/local-typeset/local-typeset/up")
        assert r.status_code == 303
        html = (await admin.get("/admin/audit")).text
        for action in ("credits.grant", "account.disable", "model.update", "route.edit_file"):
            assert action in html, action
        assert "boss@example.com" in html and "2.5" in html
        only_routes = (await admin.get("/admin/audit?action=route")).text
        assert "route.edit_file" in only_routes and "credits.grant" not in only_routes


def test_migration_fills_the_daily_sums_from_existing_records(tmp_path: Path) -> None:
    """Records written before 0004 (no usage_daily yet) are summed by the upgrade."""
    import asyncio

    from alembic import command
    from sqlalchemy import text

    from apiinone.db.database import Database
    from apiinone.db.migrate import alembic_config, upgrade

    url = f"sqlite+aiosqlite:///{tmp_path / 'old.db'}"
    command.upgrade(alembic_config(url), "0003_micro_credits")
    day = 20_000 * 86_400_000

    async def seed_and_read() -> list[tuple[object, ...]]:
        db = Database(url)
        try:
            async with db.uow() as uow:
                await uow.conn.execute(text(
                    "INSERT INTO accounts (id, email, is_admin, disabled, balance, held, created_at) "
                    "VALUES ('acc_1', 'a@example.com', 0, 0, 0, 0, 0)"))
                for i, (status, credits, key) in enumerate([("succeeded", 5, "k1"), ("failed", 0, "k1"),
                                                            ("succeeded", 7, None), ("canceled", 0, "k1")]):
                    await uow.conn.execute(text(
                        "INSERT INTO request_log (id, account_id, key_prefix, type, model, status, http_status, "
                        "credits, input_tokens, created_at) VALUES (:id, 'acc_1', :key, 'chat', 'm', :status, 200, "
                        ":credits, :tokens, :at)"),
                        {"id": f"req_{i}", "key": key, "status": status, "credits": credits, "tokens": i or None,
                         "at": day + i})
                await uow.commit()
        finally:
            await db.dispose()
        upgrade(url)
        db = Database(url)
        try:
            async with db.uow(write=False) as uow:
                rows = (await uow.conn.execute(text(
                    "SELECT key_prefix, requests, succeeded, failed, credits, input_tokens FROM usage_daily "
                    "ORDER BY key_prefix"))).all()
                by_day = await uow.requests.usage("acc_1", start_ms=day, end_ms=day + 86_400_000, group_by="day")
        finally:
            await db.dispose()
        assert [(r.requests, r.credits) for r in by_day] == [(4, 12)]
        return [tuple(r) for r in rows]

    assert asyncio.run(seed_and_read()) == [("", 1, 1, 0, 7, 2), ("k1", 3, 1, 1, 5, 4)]
