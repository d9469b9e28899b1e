"""Metering on SQLite and PostgreSQL: exact micro-credit holds, captures and releases for direct
calls and tasks, the database's own refusal of negative balances and holds, concurrent holds that
never overdraw, and a request log whose usage sums equal the ledger's captures, per account."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from apiinone.db import tables as t
from apiinone.db.database import Database
from apiinone.domain.accounts import Account, ApiKey
from apiinone.domain.credits import BALANCE_KINDS, UCR_PER_CREDIT, Credits, LedgerKind
from apiinone.errors import InsufficientCredits
from apiinone.ids import now_ms
from apiinone.services.accounts import AccountService
from apiinone.services.metering import DirectHold, Metering, RequestRecord
from tests.conftest import AppHarness, Caller, make_settings

M = UCR_PER_CREDIT


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    database = Database(database_url, pool_size=20)
    yield database
    await database.dispose()


async def new_account(db: Database, credits: int | str) -> Account:
    return await AccountService(db).create_user(f"m-{uuid.uuid4().hex[:10]}@example.com", credits=credits)


async def state(db: Database, account_id: str) -> tuple[Credits, dict[str, int], list[Any]]:
    async with db.uow(write=False) as uow:
        credits = await uow.accounts.credits(account_id)
        sums = await uow.ledger.sums(account_id)
        rows = (await uow.conn.execute(
            select(t.request_log).where(t.request_log.c.account_id == account_id)
            .order_by(t.request_log.c.id))).mappings().all()
    return credits, sums, list(rows)


def assert_ledger_matches(credits: Credits, sums: dict[str, int]) -> None:
    assert sum(sums.get(k.value, 0) for k in BALANCE_KINDS) == credits.balance
    assert sums.get("hold", 0) + sums.get("release", 0) + sums.get("capture", 0) == credits.held
    assert credits.available >= 0


def chat(status: str = "succeeded", **kw: Any) -> RequestRecord:
    return RequestRecord(**{"type": "chat", "model": "some-chat", "status": status, "http_status": 200, **kw})


async def test_database_refuses_negative_balance_and_hold(db: Database) -> None:
    account = await new_account(db, 5)
    for values in ({"balance": -1, "held": 0}, {"held": -1}, {"held": 5 * M + 1}, {"balance": 5 * M - 1, "held": 5 * M}):
        with pytest.raises(IntegrityError):
            async with db.uow() as uow:
                await uow.conn.execute(update(t.accounts).where(t.accounts.c.id == account.id).values(**values))
                await uow.commit()
    async with db.uow() as uow:  # the edge itself is allowed: everything held, nothing available
        await uow.conn.execute(update(t.accounts).where(t.accounts.c.id == account.id).values(held=5 * M))
        await uow.commit()
    credits, _sums, _rows = await state(db, account.id)
    assert (credits.balance, credits.held, credits.available) == (5 * M, 5 * M, 0)


async def test_direct_hold_settle_and_release_are_exact(db: Database) -> None:
    metering = Metering(db)
    account = await new_account(db, "10.5")
    assert (await state(db, account.id))[0] == Credits(balance=10_500_000, held=0)

    hold = await metering.open_direct(account, None, 2_000_000)
    credits, _s, rows = await state(db, account.id)
    assert (credits.balance, credits.held) == (10_500_000, 2_000_000) and rows == []
    await metering.settle_direct(hold, 1_234_567, chat(input_tokens=1000, output_tokens=50, ttft_ms=12))

    failed = await metering.open_direct(account, None, 3_000_000)
    await metering.release_direct(failed, chat("failed", http_status=502))

    greedy = await metering.open_direct(account, None, 1_000)
    await metering.settle_direct(greedy, 5_000_000, chat())  # more than held: clamped to the hold

    credits, sums, rows = await state(db, account.id)
    assert (credits.balance, credits.held) == (10_500_000 - 1_234_567 - 1_000, 0)
    assert_ledger_matches(credits, sums)
    assert sums == {"grant": 10_500_000, "hold": 2_000_000 + 3_000_000 + 1_000,
                    "capture": -1_234_567 - 1_000, "release": -(2_000_000 - 1_234_567) - 3_000_000}
    assert [(r["id"], r["status"], r["credits"], r["http_status"]) for r in rows] == [
        (hold.request_id, "succeeded", 1_234_567, 200), (failed.request_id, "failed", 0, 502),
        (greedy.request_id, "succeeded", 1_000, 200)]
    first = rows[0]
    assert (first["type"], first["model"], first["input_tokens"], first["output_tokens"], first["ttft_ms"]) == (
        "chat", "some-chat", 1000, 50, 12)
    assert first["latency_ms"] is not None and first["latency_ms"] >= 0 and first["task_id"] is None
    async with db.uow(write=False) as uow:
        entries = await uow.ledger.list(account.id, limit=20)
    assert {e.request_id for e in entries if e.kind is not LedgerKind.GRANT} == {
        hold.request_id, failed.request_id, greedy.request_id}
    assert all(e.task_id is None for e in entries)


async def test_settling_a_hold_twice_changes_nothing(db: Database) -> None:
    metering = Metering(db)
    account = await new_account(db, 3)
    other = await metering.open_direct(account, None, 1 * M)  # so a second settle cannot hit held < 0 alone
    hold = await metering.open_direct(account, None, 1 * M)
    await metering.settle_direct(hold, 1 * M, chat())
    before = await state(db, account.id)
    with pytest.raises(IntegrityError):
        await metering.settle_direct(hold, 1 * M, chat())
    with pytest.raises(IntegrityError):
        await metering.release_direct(hold, chat("failed"))
    assert await state(db, account.id) == before
    await metering.release_direct(other, chat("canceled", http_status=499))
    credits, sums, _rows = await state(db, account.id)
    assert (credits.balance, credits.held) == (2 * M, 0)
    assert_ledger_matches(credits, sums)


async def test_key_budget_counts_holds_and_gets_the_released_part_back(db: Database) -> None:
    metering = Metering(db)
    accounts = AccountService(db)
    account = await new_account(db, 100)
    created = await accounts.create_api_key(account.id, "budget", credit_budget=3 * M)
    key = created.key
    hold = await metering.open_direct(account, key, 2 * M)
    with pytest.raises(InsufficientCredits, match="budget"):
        await metering.open_direct(account, key, 2 * M)
    await metering.settle_direct(hold, 500_000, chat())
    assert await _spent(db, key) == 500_000
    again = await metering.open_direct(account, key, 2_500_000)  # 0.5 + 2.5 = the whole budget
    await metering.release_direct(again, chat("failed"))
    assert await _spent(db, key) == 500_000
    _credits, _sums, rows = await state(db, account.id)
    assert {r["key_prefix"] for r in rows} == {key.prefix} and {r["api_key_id"] for r in rows} == {key.id}


async def _spent(db: Database, key: ApiKey) -> int:
    async with db.uow(write=False) as uow:
        keys = await uow.api_keys.list_for_account(key.account_id)
    return next(k.credits_spent for k in keys if k.id == key.id)


async def test_concurrent_direct_holds_never_overdraw(db: Database) -> None:
    metering = Metering(db)
    account = await new_account(db, "7.5")

    async def attempt() -> DirectHold | None:
        try:
            return await metering.open_direct(account, None, 1_500_000)
        except InsufficientCredits as exc:
            assert "available" in exc.message
            return None

    results = await asyncio.gather(*(attempt() for _ in range(24)))
    holds = [h for h in results if h is not None]
    assert len(holds) == 5 and results.count(None) == 19
    credits, _sums, _rows = await state(db, account.id)
    assert (credits.balance, credits.held, credits.available) == (7_500_000, 7_500_000, 0)

    await asyncio.gather(*(metering.settle_direct(h, 1_000_001, chat()) if i % 2 == 0
                           else metering.release_direct(h, chat("failed")) for i, h in enumerate(holds)))
    credits, sums, rows = await state(db, account.id)
    assert (credits.balance, credits.held) == (7_500_000 - 3 * 1_000_001, 0)
    assert_ledger_matches(credits, sums)
    assert len(rows) == 5 and sum(r["credits"] for r in rows) == -sums["capture"] == 3_000_003


async def test_insufficient_credits_message_names_exact_amounts(db: Database) -> None:
    account = await new_account(db, "0.0025")
    with pytest.raises(InsufficientCredits) as info:
        await Metering(db).open_direct(account, None, 3_000)
    assert info.value.message == "this request costs 0.003 credits but only 0.0025 are available"
    credits, sums, rows = await state(db, account.id)
    assert (credits.held, rows, "hold" in sums) == (0, [], False)


# ------------------------------------------------------------------------- over the API, with tasks


async def finish_queued_tasks(harness: AppHarness, *, fail: set[int]) -> None:
    """Play the worker: lease every queued task and succeed it, or fail the ones numbered in ``fail``."""
    async with harness.container.db.uow() as uow:
        leased = await uow.queue.lease(node="n1", token="tok", limit=100, now=now_ms(), lease_ms=60_000,
                                       max_attempts=3, models=None)
        await uow.commit()
    for i, task in enumerate(sorted(leased, key=lambda x: x.id)):
        if i in fail:
            assert await harness.container.tasks.fail_task(task, "upstream_error", "boom", lease_token="tok")
        else:
            assert await harness.container.tasks.complete_task(task, "tok", {"images": []})


@pytest.fixture
async def queued_harness(tmp_path: Path, database_url: str) -> AsyncIterator[AppHarness]:
    async with AppHarness(make_settings(tmp_path, database_url), embedded_worker=False) as h:
        yield h


async def get_all(caller: Caller, path: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        r = await caller.get(path, params={"limit": 2, **({"cursor": cursor} if cursor else {})})
        assert r.status_code == 200, r.text
        body = r.json()
        items += body["data"]
        cursor = body["next_cursor"]
        if cursor is None:
            return items


async def test_usage_sums_equal_ledger_captures_after_a_mixed_workload(queued_harness: AppHarness) -> None:
    h = queued_harness
    caller = await h.caller(credits=100)
    bystander = await h.caller(credits=100)
    for quality in ("medium", "high", "high", "medium"):
        r = await caller.post("/api/v1/images/generations", json={"model": "local-typeset", "prompt": "p",
                                                                   "quality": quality})
        assert r.status_code == 202, r.text
    canceled = r.json()["task_id"]
    assert (await caller.post(f"/api/v1/tasks/{canceled}/cancel")).status_code == 200
    await finish_queued_tasks(h, fail={1})  # of medium, high, high: the first high fails

    account = await h.container.accounts.get(caller.account_id)
    [key] = await h.container.accounts.list_api_keys(caller.account_id)
    metering = h.container.metering
    await metering.settle_direct(await metering.open_direct(account, key, 2 * M), 1_234_567,
                                 RequestRecord(type="chat", model="chat-model", status="succeeded", http_status=200,
                                               input_tokens=70_000, output_tokens=9_000, ttft_ms=40))
    await metering.release_direct(await metering.open_direct(account, None, 1 * M),
                                  RequestRecord(type="speech", model="voice", status="failed", http_status=502))

    account_body = (await caller.get("/api/v1/account")).json()
    # 1 (medium) + 2 (high) captured from tasks, 1.234567 from the chat call
    assert account_body["credits"] == {"balance": 95.765433, "held": 0, "available": 95.765433}
    ledger = await get_all(caller, "/api/v1/account/ledger")
    captured = -sum(round(e["amount"] * M) for e in ledger if e["kind"] == "capture")
    assert captured == 4_234_567
    direct_holds = [e for e in ledger if e["kind"] == "hold" and e["task_id"] is None]
    assert len(direct_holds) == 2 and all(e["request_id"].startswith("req_") for e in direct_holds)
    assert all(e["request_id"] is None for e in ledger if e["task_id"] is not None)

    requests = await get_all(caller, "/api/v1/account/requests")
    assert len(requests) == 6 and [r["id"] for r in requests] == sorted((r["id"] for r in requests), reverse=True)
    by_status: dict[str, int] = {}
    for entry in requests:
        by_status[entry["status"]] = by_status.get(entry["status"], 0) + 1
        assert entry["key_prefix"] == (None if entry["type"] == "speech" else key.prefix)
        assert set(entry) == {"id", "type", "model", "status", "http_status", "credits", "input_tokens",
                              "output_tokens", "latency_ms", "ttft_ms", "key_prefix", "task_id", "created_at"}
    assert by_status == {"succeeded": 3, "failed": 2, "canceled": 1}
    tasks_logged = {r["task_id"]: r for r in requests if r["task_id"]}
    assert tasks_logged[canceled]["status"] == "canceled" and tasks_logged[canceled]["credits"] == 0
    assert sorted(r["credits"] for r in requests) == [0, 0, 0, 1, 1.234567, 2]
    [chat_entry] = [r for r in requests if r["type"] == "chat"]
    assert (chat_entry["input_tokens"], chat_entry["output_tokens"], chat_entry["ttft_ms"]) == (70_000, 9_000, 40)

    for group_by in ("day", "model", "key"):
        r = await caller.get("/api/v1/account/usage", params={"group_by": group_by})
        assert r.status_code == 200, r.text
        rows = r.json()["data"]
        assert round(sum(row["credits"] for row in rows) * M) == captured, group_by
        assert sum(row["requests"] for row in rows) == 6
        assert (sum(row["succeeded"] for row in rows), sum(row["failed"] for row in rows)) == (3, 2)
        assert (sum(row["input_tokens"] for row in rows), sum(row["output_tokens"] for row in rows)) == (70_000, 9_000)
    by_model = {row["group"]: row for row in (await caller.get("/api/v1/account/usage?group_by=model")).json()["data"]}
    assert by_model["local-typeset"]["credits"] == 3 and by_model["local-typeset"]["requests"] == 4
    assert by_model["chat-model"]["credits"] == 1.234567 and by_model["voice"]["credits"] == 0
    by_key = {row["group"]: row["requests"] for row in (await caller.get("/api/v1/account/usage?group_by=key")).json()["data"]}
    assert by_key == {key.prefix: 5, None: 1}

    filtered = (await caller.get("/api/v1/account/requests", params={"model": "typeset"})).json()["data"]
    assert len(filtered) == 4 and {r["model"] for r in filtered} == {"local-typeset"}, "aliases resolve"
    assert [r["type"] for r in (await caller.get("/api/v1/account/requests?type=chat")).json()["data"]] == ["chat"]

    # another account sees none of it
    assert (await bystander.get("/api/v1/account/requests")).json() == {"data": [], "next_cursor": None}
    assert (await bystander.get("/api/v1/account/usage?group_by=model")).json()["data"] == []
    foreign_cursor = requests[0]["id"]
    r = await bystander.get("/api/v1/account/requests", params={"cursor": foreign_cursor})
    assert r.json()["data"] == []


@pytest.mark.parametrize(("path", "param"), [
    ("/api/v1/account/requests?limit=0", "limit"), ("/api/v1/account/requests?limit=abc", "limit"),
    ("/api/v1/account/requests?cursor=tsk_01", "cursor"), ("/api/v1/account/requests?type=movie", "type"),
    ("/api/v1/account/requests?model=" + "m" * 101, "model"),
    ("/api/v1/account/usage?group_by=week", "group_by"), ("/api/v1/account/usage?from=2026-13-01", "from"),
    ("/api/v1/account/usage?from=2026-1-01", "from"), ("/api/v1/account/usage?to=yesterday", "to"),
    ("/api/v1/account/usage?from=%D9%A2026-01-01", "from"),
    ("/api/v1/account/usage?from=2026-02-01&to=2026-01-01", "from"),
    ("/api/v1/account/usage?from=2024-01-01&to=2026-01-01", "from"),
])
async def test_request_log_and_usage_parameters_are_validated(sqlite_harness: AppHarness, path: str,
                                                               param: str) -> None:
    caller = await sqlite_harness.caller(credits=1)
    r = await caller.get(path)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "invalid_parameter" and r.json()["error"]["param"] == param


async def test_usage_by_day_uses_utc_days_and_the_range(queued_harness: AppHarness) -> None:
    caller = await queued_harness.caller(credits=10)
    account = await queued_harness.container.accounts.get(caller.account_id)
    metering = queued_harness.container.metering
    hold = await metering.open_direct(account, None, 1 * M)
    async with queued_harness.container.db.uow() as uow:  # settled at a known UTC day's last moment
        await metering.capture(uow, account_id=account.id, api_key_id=None, held=hold.amount, charged=250_000,
                               request_id=hold.request_id)
        await metering.record(uow, account_id=account.id, api_key_id=None, credits=250_000,
                              record=RequestRecord(type="chat", model="c", status="succeeded", http_status=200),
                              request_id=hold.request_id, at=1_795_564_799_999)  # 2026-11-24T23:59:59.999Z
        await uow.commit()
    r = await caller.get("/api/v1/account/usage", params={"from": "2026-11-24", "to": "2026-11-24"})
    assert r.json()["data"] == [{"group": "2026-11-24", "requests": 1, "succeeded": 1, "failed": 0,
                                 "credits": 0.25, "input_tokens": 0, "output_tokens": 0}]
    r = await caller.get("/api/v1/account/usage", params={"from": "2026-11-25", "to": "2026-11-30"})
    assert r.json()["data"] == []


async def test_request_log_and_usage_are_in_the_openapi_spec(sqlite_harness: AppHarness) -> None:
    paths = (await sqlite_harness.client.get("/openapi.json")).json()["paths"]
    assert {p["name"] for p in paths["/api/v1/account/requests"]["get"]["parameters"]} == {
        "limit", "cursor", "model", "type"}
    assert {p["name"] for p in paths["/api/v1/account/usage"]["get"]["parameters"]} == {"from", "to", "group_by"}


@pytest.mark.postgres
async def test_two_processes_group_commits_never_deadlock(pg_url: str) -> None:
    """Two API processes (two pools) hold and settle on one account and key at once: their batches
    lock rows in one order, so no batch ever fails (a deadlock would, after PostgreSQL's 1 s)."""
    from apiinone.services.group_commit import failed_batches

    one, two = Database(pg_url, pool_size=10), Database(pg_url, pool_size=10)
    try:
        account = await new_account(one, 10_000)
        created = await AccountService(one).create_api_key(account.id, "both", credit_budget=9_000 * M)
        key = created.key
        meterings = [Metering(one), Metering(two)]
        open_holds: list[list[DirectHold]] = [[], []]

        async def step(side: int, i: int) -> None:
            metering = meterings[side]
            if open_holds[side] and (i + side) % 3:  # the two sides start their batches differently
                await metering.settle_direct(open_holds[side].pop(0), 10_000 + i, chat())
            open_holds[side].append(await metering.open_direct(account, key, 1 * M))

        for round_ in range(25):
            await asyncio.gather(*(step(side, round_ * 8 + i) for side in (0, 1) for i in range(8)))
        for side in (0, 1):
            await asyncio.gather(*(meterings[side].release_direct(h, chat("canceled")) for h in open_holds[side]))
        assert failed_batches(one) == failed_batches(two) == 0
        credits, sums, rows = await state(one, account.id)
        assert credits.held == 0 and len(rows) == 2 * 25 * 8
        assert_ledger_matches(credits, sums)
    finally:
        await one.dispose()
        await two.dispose()


async def test_a_direct_hold_whose_request_was_canceled_while_it_waited_is_released(db: Database) -> None:
    """The hold is written by the group commit even if its caller is canceled meanwhile; nothing
    would ever settle it, so it is released as soon as it is written."""
    metering = Metering(db)
    account = await new_account(db, 5)
    waiting = asyncio.create_task(metering.open_direct(account, None, 2 * M))
    await asyncio.sleep(0)  # queued for the next batch
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    for _ in range(500):  # the hold's batch, then the release's
        credits, sums, _rows = await state(db, account.id)  # credits are read first: held 0 means released
        if credits.held == 0 and sums.get("hold"):
            break
        await asyncio.sleep(0.01)
    assert (credits.balance, credits.held) == (5 * M, 0)
    assert sums.get("hold") == 2 * M and sums.get("release") == -2 * M
    assert_ledger_matches(credits, sums)
