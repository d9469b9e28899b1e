"""One conformance suite for the persistence layer (repositories, queue, unit of work), run against a
real SQLite file and the real PostgreSQL server through the ``database_url`` fixture.

Each test states a behaviour the services rely on; a driver that passes here can back the app.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import update
from sqlalchemy.exc import IntegrityError

from apiinone.db import tables as t
from apiinone.db.database import Database
from apiinone.domain.accounts import Account, ApiKey
from apiinone.domain.catalog import Catalog
from apiinone.domain.credits import BALANCE_KINDS, UCR_PER_CREDIT, LedgerKind
from apiinone.domain.tasks import Task, TaskStatus
from apiinone.errors import InvalidParameter, RateLimited
from apiinone.ids import new_id, now_ms
from apiinone.services.accounts import AccountService
from apiinone.services.tasks import ImageTaskRequest, TaskService

T0 = 1_700_000_000_000  # a fixed clock for queue tests, so "expired" never depends on wall time
LEASE_MS = 1_000


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    database = Database(database_url)
    yield database
    await database.dispose()


async def add_account(db: Database, *, balance: int = 0, email: str | None = None) -> Account:
    account = Account(id=new_id("acc"), email=email or f"{new_id('u').lower()}@example.com", created_at=now_ms())
    async with db.uow() as uow:
        await uow.accounts.add(account, "hash")
        if balance:
            await uow.accounts.change(account.id, balance=balance)
            await uow.ledger.add(account.id, LedgerKind.GRANT, balance)
        await uow.commit()
    return account


def make_task(account_id: str, *, created_at: int, model: str = "local-typeset", price: int = 1,
              status: TaskStatus = TaskStatus.QUEUED) -> Task:
    return Task(id=new_id("tsk", created_at), account_id=account_id, model=model, type="image", status=status,
                input={"prompt": "p", "aspect_ratio": "1:1", "quality": "medium", "input_urls": []},
                price=price, created_at=created_at)


async def add_tasks(db: Database, account_id: str, count: int, *, start: int = T0, **kw: Any) -> list[Task]:
    tasks = [make_task(account_id, created_at=start + i, **kw) for i in range(count)]
    async with db.uow() as uow:
        for task in tasks:
            await uow.tasks.add(task)
        await uow.commit()
    return tasks


async def lease(db: Database, *, token: str = "tok-a", node: str = "n1", limit: int = 10, now: int = T0 + 100,
                max_attempts: int = 3, models: list[str] | None = None) -> list[Task]:
    async with db.uow() as uow:
        leased = await uow.queue.lease(node=node, token=token, limit=limit, now=now, lease_ms=LEASE_MS,
                                       max_attempts=max_attempts, models=models)
        await uow.commit()
    return leased


async def get_task(db: Database, task_id: str) -> Task:
    async with db.uow(write=False) as uow:
        task = await uow.tasks.get(task_id)
    assert task is not None
    return task


# ------------------------------------------------------------------------------------------ accounts


async def test_account_add_get_and_lookup_by_email(db: Database) -> None:
    account = await add_account(db, email="alice@example.com")
    async with db.uow(write=False) as uow:
        got = await uow.accounts.get(account.id)
        by_email = await uow.accounts.get_by_email("  Alice@Example.COM ")
        missing = await uow.accounts.get("acc_nope")
        assert await uow.accounts.count() == 1
    assert got is not None and by_email is not None and missing is None
    assert (got.id, got.email, got.is_admin, got.disabled) == (account.id, "alice@example.com", False, False)
    assert by_email.id == account.id
    assert (got.credits.balance, got.credits.held, got.credits.available) == (0, 0, 0)


async def test_account_email_is_unique(db: Database) -> None:
    await add_account(db, email="dup@example.com")
    with pytest.raises(IntegrityError):
        await add_account(db, email="dup@example.com")


async def test_try_hold_never_lets_available_go_below_zero(db: Database) -> None:
    account = await add_account(db, balance=10)
    async with db.uow() as uow:
        assert await uow.accounts.try_hold(account.id, 6)
        assert not await uow.accounts.try_hold(account.id, 5)
        assert await uow.accounts.try_hold(account.id, 4)
        assert not await uow.accounts.try_hold(account.id, 1)
        credits = await uow.accounts.credits(account.id)
        await uow.commit()
    assert (credits.balance, credits.held, credits.available) == (10, 10, 0)
    assert not await _try_hold_committed(db, "acc_unknown", 0)


async def _try_hold_committed(db: Database, account_id: str, amount: int) -> bool:
    async with db.uow() as uow:
        ok = await uow.accounts.try_hold(account_id, amount)
        await uow.commit()
    return ok


async def test_change_and_try_debit(db: Database) -> None:
    account = await add_account(db, balance=10)
    async with db.uow() as uow:
        await uow.accounts.change(account.id, held=7)
        assert not await uow.accounts.try_debit(account.id, 4), "a debit may not eat into held credits"
        assert await uow.accounts.try_debit(account.id, 3)
        await uow.accounts.change(account.id, balance=-2, held=-2)
        credits = await uow.accounts.credits(account.id)
        await uow.commit()
    assert (credits.balance, credits.held, credits.available) == (5, 5, 0)


async def test_concurrent_holds_from_many_connections_and_engines(database_url: str) -> None:
    """20 holds of 28 against 30 credits, from 4 engines (think: 4 processes) at once: exactly one wins."""
    engines = [Database(database_url) for _ in range(4)]
    try:
        account = await add_account(engines[0], balance=30)

        async def hold(db: Database) -> bool:
            async with db.uow() as uow:
                ok = await uow.accounts.try_hold(account.id, 28)
                await asyncio.sleep(0)  # let other transactions interleave while this one is open
                await uow.commit()
            return ok

        results = await asyncio.gather(*(hold(engines[i % 4]) for i in range(20)))
        async with engines[1].uow(write=False) as uow:
            credits = await uow.accounts.credits(account.id)
    finally:
        for engine in engines:
            await engine.dispose()
    assert results.count(True) == 1
    assert (credits.balance, credits.held, credits.available) == (30, 28, 2)


# ------------------------------------------------------------------------------------------ API keys


async def test_api_key_add_lookup_revoke(db: Database) -> None:
    account, other = await add_account(db), await add_account(db)
    key = ApiKey(id=new_id("key"), account_id=account.id, name="ci", prefix="aio_abcdefgh", created_at=now_ms(),
                 allowed_models=("local-typeset",), credit_budget=None)
    async with db.uow() as uow:
        await uow.api_keys.add(key, "h" * 64)
        await uow.commit()
    async with db.uow(write=False) as uow:
        found = await uow.api_keys.get_by_hash("h" * 64)
        assert await uow.api_keys.get_by_hash("x" * 64) is None
        assert await uow.api_keys.hash_of(key.id) == "h" * 64
        listed = await uow.api_keys.list_for_account(account.id)
    assert found is not None
    got_key, got_account = found
    assert (got_key.id, got_key.prefix, got_key.allowed_models, got_key.revoked) == (
        key.id, "aio_abcdefgh", ("local-typeset",), False)
    assert got_account.id == account.id
    assert [k.id for k in listed] == [key.id]
    async with db.uow() as uow:
        assert not await uow.api_keys.revoke(other.id, key.id), "another account may not revoke this key"
        assert await uow.api_keys.revoke(account.id, key.id)
        assert not await uow.api_keys.revoke(account.id, key.id), "revoking twice reports nothing to do"
        await uow.api_keys.touch([key.id], 1234)
        await uow.commit()
    async with db.uow(write=False) as uow:
        found = await uow.api_keys.get_by_hash("h" * 64)
    assert found is not None and found[0].revoked and found[0].last_used_at == 1234


async def test_api_key_budget_spend_and_refund(db: Database) -> None:
    account = await add_account(db)
    budgeted = ApiKey(id=new_id("key"), account_id=account.id, name="b", prefix="aio_1", created_at=1,
                      credit_budget=30)
    unlimited = ApiKey(id=new_id("key"), account_id=account.id, name="u", prefix="aio_2", created_at=2)
    async with db.uow() as uow:
        await uow.api_keys.add(budgeted, "b" * 64)
        await uow.api_keys.add(unlimited, "u" * 64)
        assert await uow.api_keys.try_spend(budgeted.id, 28)
        assert not await uow.api_keys.try_spend(budgeted.id, 3)
        assert await uow.api_keys.try_spend(budgeted.id, 2)
        assert await uow.api_keys.try_spend(unlimited.id, 10**9)
        await uow.api_keys.refund(budgeted.id, 28)
        assert await uow.api_keys.try_spend(budgeted.id, 28)
        await uow.commit()
    async with db.uow(write=False) as uow:
        found = await uow.api_keys.get_by_hash("b" * 64)
    assert found is not None and found[0].credits_spent == 30


# ---------------------------------------------------------------------------------------------- ledger


async def test_ledger_list_pages_newest_first_and_sums_by_kind(db: Database) -> None:
    account, other = await add_account(db), await add_account(db, balance=5)
    async with db.uow() as uow:
        for kind, amount in [(LedgerKind.GRANT, 100), (LedgerKind.HOLD, 10), (LedgerKind.CAPTURE, -10),
                             (LedgerKind.HOLD, 28), (LedgerKind.RELEASE, -28), (LedgerKind.TOPUP, 50),
                             (LedgerKind.ADJUSTMENT, -5)]:
            await uow.ledger.add(account.id, kind, amount, task_id="tsk_x", note=kind.value, actor="test", at=T0)
        await uow.commit()
    async with db.uow(write=False) as uow:
        page1 = await uow.ledger.list(account.id, limit=3)
        page2 = await uow.ledger.list(account.id, limit=3, before_id=page1[-1].id)
        page3 = await uow.ledger.list(account.id, limit=3, before_id=page2[-1].id)
        holds = await uow.ledger.list(account.id, limit=10, kind="hold")
        sums = await uow.ledger.sums(account.id)
        other_entries = await uow.ledger.list(other.id, limit=10)
    kinds = [e.kind.value for e in page1 + page2 + page3]
    assert kinds == ["adjustment", "topup", "release", "hold", "capture", "hold", "grant"]
    ids = [e.id for e in page1 + page2 + page3]
    assert ids == sorted(ids, reverse=True) and len(set(ids)) == 7
    assert [e.amount for e in holds] == [28, 10]
    assert page1[0].task_id == "tsk_x" and page1[0].note == "adjustment" and page1[0].created_at == T0
    assert sums == {"grant": 100, "hold": 38, "capture": -10, "release": -28, "topup": 50, "adjustment": -5}
    assert [(e.kind, e.amount) for e in other_entries] == [(LedgerKind.GRANT, 5)]


# ----------------------------------------------------------------------------------------------- tasks


async def test_task_get_is_filtered_by_tenant(db: Database) -> None:
    alice, bob = await add_account(db), await add_account(db)
    [task] = await add_tasks(db, alice.id, 1)
    async with db.uow(write=False) as uow:
        own = await uow.tasks.get(task.id, alice.id)
        foreign = await uow.tasks.get(task.id, bob.id)
        unscoped = await uow.tasks.get(task.id)
    assert own is not None and unscoped is not None and foreign is None
    assert (own.status, own.input, own.price, own.charged, own.attempts, own.node) == (
        TaskStatus.QUEUED, task.input, 1, 0, 0, None)


async def test_task_list_cursor_and_filters(db: Database) -> None:
    alice, bob = await add_account(db), await add_account(db)
    tasks = await add_tasks(db, alice.id, 5)
    await add_tasks(db, alice.id, 2, start=T0 + 10, model="gpt-image-1.5-official")
    await add_tasks(db, bob.id, 3, start=T0 + 20)
    newest_first = [task.id for task in sorted(tasks, key=lambda x: x.id, reverse=True)]
    async with db.uow(write=False) as uow:
        page1 = await uow.tasks.list(alice.id, limit=2, model="local-typeset")
        page2 = await uow.tasks.list(alice.id, limit=2, model="local-typeset", before_id=page1[-1].id)
        page3 = await uow.tasks.list(alice.id, limit=2, model="local-typeset", before_id=page2[-1].id)
        all_alice = await uow.tasks.list(alice.id, limit=100)
        everyone = await uow.tasks.list(None, limit=100)
        gpt = await uow.tasks.list(alice.id, limit=100, model="gpt-image-1.5-official")
        succeeded = await uow.tasks.list(alice.id, limit=100, status="succeeded")
        assert await uow.tasks.count_active(alice.id) == 7
    assert [x.id for x in page1 + page2 + page3] == newest_first
    assert len(all_alice) == 7 and len(everyone) == 10
    assert {x.account_id for x in all_alice} == {alice.id}
    assert len(gpt) == 2 and succeeded == []


async def test_finish_is_compare_and_set_on_status_and_lease_token(db: Database) -> None:
    account = await add_account(db)
    queued, leased_task = await add_tasks(db, account.id, 2)
    async with db.uow() as uow:
        [leased] = await uow.queue.lease(node="n1", token="tok-right", limit=1, now=T0 + 100,
                                         lease_ms=LEASE_MS, max_attempts=3, models=None)
        await uow.commit()
    assert leased.id == queued.id
    async with db.uow() as uow:
        assert not await uow.tasks.finish(queued.id, status=TaskStatus.SUCCEEDED, from_statuses=[TaskStatus.RUNNING],
                                          lease_token="tok-wrong", charged=1, at=T0 + 200)
        assert not await uow.tasks.finish(leased_task.id, status=TaskStatus.SUCCEEDED,
                                          from_statuses=[TaskStatus.RUNNING], charged=1, at=T0 + 200)
        assert await uow.tasks.finish(queued.id, status=TaskStatus.SUCCEEDED, from_statuses=[TaskStatus.RUNNING],
                                      lease_token="tok-right", output={"images": []}, charged=1, at=T0 + 200)
        assert not await uow.tasks.finish(queued.id, status=TaskStatus.FAILED, from_statuses=[TaskStatus.RUNNING],
                                          lease_token="tok-right", at=T0 + 300), "a terminal status never changes"
        assert await uow.tasks.finish(leased_task.id, status=TaskStatus.CANCELED,
                                      from_statuses=[TaskStatus.QUEUED, TaskStatus.RUNNING],
                                      error={"code": "canceled", "message": "m"}, at=T0 + 400)
        await uow.commit()
    done, canceled = await get_task(db, queued.id), await get_task(db, leased_task.id)
    assert (done.status, done.charged, done.output, done.finished_at) == (
        TaskStatus.SUCCEEDED, 1, {"images": []}, T0 + 200)
    assert done.lease_token is None and done.lease_expires_at is None and done.node == "n1"
    assert (canceled.status, canceled.error, canceled.charged) == (
        TaskStatus.CANCELED, {"code": "canceled", "message": "m"}, 0)


# ----------------------------------------------------------------------------------------------- queue


async def test_lease_is_fifo_and_respects_limit(db: Database) -> None:
    account = await add_account(db)
    tasks = await add_tasks(db, account.id, 6)
    one_by_one = [await lease(db, limit=1, token="tok-1", node="n1") for _ in range(2)]
    pair = await lease(db, limit=2, token="tok-2", node="n2")
    rest = await lease(db, limit=10, token="tok-3", node="n3")
    assert [batch[0].id for batch in one_by_one] == [tasks[0].id, tasks[1].id]
    assert {x.id for x in pair} == {tasks[2].id, tasks[3].id}
    assert {x.id for x in rest} == {tasks[4].id, tasks[5].id}
    assert await lease(db) == []
    first = one_by_one[0][0]
    assert (first.status, first.node, first.lease_token, first.attempts) == (TaskStatus.RUNNING, "n1", "tok-1", 1)
    assert first.lease_expires_at == T0 + 100 + LEASE_MS and first.started_at == T0 + 100


async def test_lease_is_fifo_within_one_millisecond(db: Database) -> None:
    """Tasks created in the same millisecond still leave the queue in the order they were made."""
    account = await add_account(db)
    tasks = [make_task(account.id, created_at=T0) for _ in range(5)]
    async with db.uow() as uow:
        for task in reversed(tasks):  # insertion order must not matter
            await uow.tasks.add(task)
        await uow.commit()
    leased = [(await lease(db, limit=1))[0].id for _ in range(5)]
    assert leased == [task.id for task in tasks]


async def test_lease_waits_for_run_after(db: Database) -> None:
    account = await add_account(db)
    later, now_task = await add_tasks(db, account.id, 2)
    async with db.uow() as uow:
        await uow.conn.execute(update(t.tasks).where(t.tasks.c.id == later.id).values(run_after=T0 + 500))
        await uow.commit()
    assert [x.id for x in await lease(db, now=T0 + 100)] == [now_task.id]
    assert await lease(db, now=T0 + 499) == []
    assert [x.id for x in await lease(db, now=T0 + 500)] == [later.id]


async def test_lease_filters_by_model(db: Database) -> None:
    account = await add_account(db)
    typeset = await add_tasks(db, account.id, 2)
    gpt = await add_tasks(db, account.id, 2, start=T0 + 10, model="gpt-image-1.5-official")
    assert [x.id for x in await lease(db, models=["gpt-image-1.5-official"])] == [x.id for x in gpt]
    assert await lease(db, models=["other"]) == []
    assert [x.id for x in await lease(db, models=["local-typeset", "other"])] == [x.id for x in typeset]


async def test_expired_lease_is_leased_again_until_attempts_run_out(db: Database) -> None:
    account = await add_account(db)
    [task] = await add_tasks(db, account.id, 1)
    t1 = T0 + 100
    await lease(db, token="dead-1", node="n1", now=t1, max_attempts=2)
    assert await lease(db, token="tok-2", now=t1 + LEASE_MS - 1, max_attempts=2) == [], "lease still valid"
    [again] = await lease(db, token="tok-2", node="n2", now=t1 + LEASE_MS + 1, max_attempts=2)
    assert (again.id, again.attempts, again.node, again.lease_token) == (task.id, 2, "n2", "tok-2")
    assert again.started_at == t1, "the first start time is kept"
    t2 = t1 + LEASE_MS + 1
    expired_at = t2 + LEASE_MS + 1
    assert await lease(db, token="tok-3", now=expired_at, max_attempts=2) == [], "attempts are used up"
    async with db.uow(write=False) as uow:
        exhausted = await uow.queue.exhausted(now=expired_at, max_attempts=2)
        assert await uow.queue.exhausted(now=t2 + LEASE_MS - 1, max_attempts=2) == []
    assert [(x.id, x.lease_token, x.attempts) for x in exhausted] == [(task.id, "tok-2", 2)]


async def test_an_expired_lease_goes_before_the_queue_and_each_lease_is_oldest_first(db: Database) -> None:
    account = await add_account(db)
    [old] = await add_tasks(db, account.id, 1)
    await lease(db, token="dead", now=T0 + 100)  # its worker dies: the lease runs out at T0 + 1100
    queued = await add_tasks(db, account.id, 3, start=T0 + 10)
    after = T0 + 100 + LEASE_MS + 1
    first = await lease(db, token="tok-b", limit=2, now=after)
    assert [x.id for x in first] == [old.id, queued[0].id] and first[0].attempts == 2
    assert [x.id for x in await lease(db, token="tok-c", limit=5, now=after)] == [queued[1].id, queued[2].id]


async def test_a_lease_reads_the_queue_in_index_order_without_sorting_it(sqlite_url: str) -> None:
    """The queue is read in its index's order: a plan that sorts would sort the whole queue
    (measured: 3.5 ms a lease with 5,000 queued tasks, against 0.02 ms in index order). SQLite
    only: its plan is fixed without statistics, PostgreSQL's depends on them."""
    from apiinone.db.queue import _lease_statement

    db = Database(sqlite_url)

    for expired in (True, False):
        statement = _lease_statement(False, False, False, expired=expired)
        compiled = statement.compile(dialect=db.engine.dialect)
        values = {"l_now": T0, "l_max_attempts": 3, "l_limit": 8, "l_node": "n", "l_token": "t", "l_until": T0}
        async with db.uow(write=False) as uow:
            plan = (await uow.conn.exec_driver_sql(
                "EXPLAIN QUERY PLAN " + str(compiled),
                tuple(compiled.construct_params(values)[n] for n in compiled.positiontup or ()))).all()
        details = " | ".join(str(row[-1]) for row in plan)
        if expired:  # it sorts what its index found: the leases that ran out, few by nature
            assert "ix_tasks_lease" in details, details
        else:
            assert "ix_tasks_queue" in details and "TEMP B-TREE" not in details, details
    await db.dispose()


@pytest.mark.parametrize("pinned", [False, True])
async def test_a_transaction_that_cannot_begin_gives_the_write_lock_back(sqlite_url: str, pinned: bool) -> None:
    """Another process holds SQLite's write lock past the busy timeout: BEGIN fails, and the next
    unit of work of this process must still get the in-process write lock (it once kept it)."""
    import asyncio
    import sqlite3

    from sqlalchemy.exc import OperationalError

    db = Database(sqlite_url, busy_timeout_ms=50)
    other = sqlite3.connect(sqlite_url.split(":///", 1)[1], isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises((OperationalError, sqlite3.OperationalError), match="locked") as refused:
            async with db.uow(pinned=pinned) as uow:
                await uow.commit()
    finally:
        other.execute("ROLLBACK")
        other.close()
    # the failure is still at hand (as in the group commit's retry, inside its except block), so
    # nothing the garbage collector might finish late can hand the lock back in its place
    account = await asyncio.wait_for(add_account(db), 5)  # a write: it needs the lock back
    async with asyncio.timeout(5), db.uow(pinned=pinned) as uow:
        assert await uow.accounts.get(account.id) is not None
        await uow.commit()
    assert refused.value is not None
    await db.dispose()


async def test_extend_keeps_a_lease_alive_and_requeue_gives_it_back(db: Database) -> None:
    account = await add_account(db)
    a, b = await add_tasks(db, account.id, 2)
    await lease(db, token="tok-1", limit=1, now=T0 + 100)
    await lease(db, token="tok-2", limit=1, now=T0 + 100)
    async with db.uow() as uow:
        assert await uow.queue.extend(["tok-1"], T0 + 10_000) == 1
        assert await uow.queue.extend([], T0 + 10_000) == 0
        assert await uow.queue.extend(["tok-unknown"], T0 + 10_000) == 0
        await uow.commit()
    assert (await get_task(db, a.id)).lease_expires_at == T0 + 10_000
    assert [x.id for x in await lease(db, token="tok-3", now=T0 + 5_000)] == [b.id], "only b's lease ran out"
    assert (await get_task(db, a.id)).lease_token == "tok-1"
    async with db.uow() as uow:
        assert not await uow.queue.requeue(a.id, "tok-wrong")
        assert await uow.queue.requeue(a.id, "tok-1")
        await uow.commit()
    back = await get_task(db, a.id)
    assert (back.status, back.lease_token, back.node, back.attempts) == (TaskStatus.QUEUED, None, None, 0)
    assert back.started_at is None, "a task handed back has not started"
    [again] = await lease(db, token="tok-4", now=T0 + 6_000)
    assert again.id == a.id and again.attempts == 1 and again.started_at == T0 + 6_000


async def test_concurrent_leases_never_hand_out_a_task_twice(database_url: str) -> None:
    engines = [Database(database_url) for _ in range(3)]
    try:
        account = await add_account(engines[0])
        tasks = await add_tasks(engines[0], account.id, 30)
        results = await asyncio.gather(*(
            lease(engines[i % 3], token=f"tok-{i}", node=f"n{i}", limit=3) for i in range(12)))
    finally:
        for engine in engines:
            await engine.dispose()
    leased_ids = [task.id for batch in results for task in batch]
    assert len(leased_ids) == len(set(leased_ids)) == 30
    assert set(leased_ids) == {task.id for task in tasks}


async def test_node_heartbeat_upserts_and_stop_marks_it(db: Database) -> None:
    async with db.uow() as uow:
        await uow.queue.heartbeat_node(name="node42", models=None, concurrency=4, running=1, pid=10,
                                       hostname="h", now=T0)
        await uow.queue.heartbeat_node(name="node42", models=["local-typeset"], concurrency=8, running=3, pid=11,
                                       hostname="h", now=T0 + 5)
        await uow.queue.heartbeat_node(name="node7", models=None, concurrency=1, running=0, pid=12,
                                       hostname="h2", now=T0 + 6)
        await uow.commit()
    async with db.uow() as uow:
        await uow.queue.stop_node("node7", T0 + 9)
        await uow.commit()
    async with db.uow(write=False) as uow:
        nodes = {n["name"]: n for n in await uow.queue.nodes()}
    assert list(nodes) == ["node42", "node7"]
    n42 = nodes["node42"]
    assert (n42["models"], n42["concurrency"], n42["running"], n42["pid"]) == (["local-typeset"], 8, 3, 11)
    assert (n42["started_at"], n42["heartbeat_at"], n42["stopped_at"]) == (T0, T0 + 5, None)
    assert (nodes["node7"]["models"], nodes["node7"]["stopped_at"], nodes["node7"]["running"]) == (["*"], T0 + 9, 0)
    async with db.uow() as uow:
        await uow.queue.heartbeat_node(name="node7", models=None, concurrency=1, running=0, pid=13,
                                       hostname="h2", now=T0 + 20)
        await uow.commit()
    async with db.uow(write=False) as uow:
        restarted = {n["name"]: n for n in await uow.queue.nodes()}["node7"]
    assert restarted["stopped_at"] is None and restarted["started_at"] == T0 + 6


# ----------------------------------------------------------------------------------------- idempotency


async def test_idempotency_add_get_conflict_and_purge(db: Database) -> None:
    account = await add_account(db)
    async with db.uow() as uow:
        await uow.idempotency.add(account.id, "k1", route="r", request_hash="a" * 64, status_code=202,
                                  response_body=b'{"ok":true}', task_id="tsk_1", at=T0)
        await uow.idempotency.add(account.id, "k2", route="r", request_hash="b" * 64, status_code=202,
                                  response_body=b"{}", task_id=None, at=T0 + 1_000)
        await uow.commit()
    async with db.uow(write=False) as uow:
        row = await uow.idempotency.get(account.id, "k1")
        assert await uow.idempotency.get("acc_other", "k1") is None
    assert row is not None
    assert (row["request_hash"], row["status_code"], row["response_body"], row["task_id"]) == (
        "a" * 64, 202, '{"ok":true}', "tsk_1")
    with pytest.raises(IntegrityError):
        async with db.uow() as uow:
            await uow.idempotency.add(account.id, "k1", route="r", request_hash="c" * 64, status_code=202,
                                      response_body=b"{}", task_id=None, at=T0)
            await uow.commit()
    async with db.uow() as uow:
        assert await uow.idempotency.purge_older_than(T0 + 500) == 1
        await uow.commit()
    async with db.uow(write=False) as uow:
        assert await uow.idempotency.get(account.id, "k1") is None
        assert await uow.idempotency.get(account.id, "k2") is not None


# -------------------------------------------------------------------------------------- unit of work


async def test_unit_of_work_rolls_back_on_exception(db: Database) -> None:
    account = await add_account(db, balance=10)
    with pytest.raises(RuntimeError):
        async with db.uow() as uow:
            assert await uow.accounts.try_hold(account.id, 10)
            await add_tasks_in(uow, account.id)
            await uow.ledger.add(account.id, LedgerKind.HOLD, 10)
            raise RuntimeError("half way")
    await _assert_untouched(db, account.id)


async def test_unit_of_work_without_commit_persists_nothing(db: Database) -> None:
    account = await add_account(db, balance=10)
    async with db.uow() as uow:
        assert await uow.accounts.try_hold(account.id, 10)
        await add_tasks_in(uow, account.id)
        await uow.ledger.add(account.id, LedgerKind.HOLD, 10)
    await _assert_untouched(db, account.id)
    async with db.uow() as uow:  # the connection went back to the pool usable
        assert await uow.accounts.try_hold(account.id, 10)
        await uow.commit()
    async with db.uow(write=False) as uow:
        assert (await uow.accounts.credits(account.id)).held == 10


async def add_tasks_in(uow: Any, account_id: str) -> None:
    await uow.tasks.add(make_task(account_id, created_at=T0))


async def _assert_untouched(db: Database, account_id: str) -> None:
    async with db.uow(write=False) as uow:
        credits = await uow.accounts.credits(account_id)
        tasks = await uow.tasks.list(account_id, limit=10)
        ledger = await uow.ledger.list(account_id, limit=10)
    assert (credits.balance, credits.held) == (10, 0)
    assert tasks == []
    assert [e.kind for e in ledger] == [LedgerKind.GRANT]


# ---------------------------------------------------------------------------------- balance invariant


async def test_balance_equals_sum_of_balance_kinds_after_every_kind_of_movement(db: Database) -> None:
    """balance = Σ topup, grant, adjustment, capture; held = Σ hold, release, capture (API.md), in µcr."""
    ucr = UCR_PER_CREDIT
    accounts = AccountService(db)
    service = TaskService(db, Catalog.load, is_available=lambda _spec: True, base_url=lambda: "http://x")
    account = await accounts.create_user("inv@example.com", credits=20)
    await accounts.grant(account.id, 15 * ucr, kind=LedgerKind.TOPUP, note="order")
    await accounts.grant(account.id, -3 * ucr, kind=LedgerKind.ADJUSTMENT, note="correction")
    request = ImageTaskRequest(model="typeset", prompt="p", quality="high")
    created = [(await service.create_image_task(account, None, request)).task for _ in range(4)]
    leased = await lease(db, token="tok", now=now_ms(), limit=3)
    assert [x.id for x in leased] == [x.id for x in created[:3]]
    assert await service.complete_task(leased[0], "tok", {"images": []}) is not None
    assert await service.complete_task(leased[0], "tok", {"images": []}) is None, "captured once"
    assert await service.fail_task(leased[1], "upstream_error", "boom", lease_token="tok") is not None
    await service.cancel_task(account.id, leased[2].id)
    await service.cancel_task(account.id, created[3].id)
    more = (await service.create_image_task(account, None, request)).task
    with pytest.raises(InvalidParameter):
        await accounts.grant(account.id, -100 * ucr, kind=LedgerKind.ADJUSTMENT)
    async with db.uow(write=False) as uow:
        credits = await uow.accounts.credits(account.id)
        sums = await uow.ledger.sums(account.id)
        entries = await uow.ledger.list(account.id, limit=100)
    assert sum(sums.get(kind.value, 0) for kind in BALANCE_KINDS) == credits.balance == (20 + 15 - 3 - 2) * ucr
    assert sums["hold"] + sums.get("release", 0) + sums["capture"] == credits.held == more.price == 2 * ucr
    assert credits.available == credits.balance - credits.held >= 0
    captures = [e for e in entries if e.kind is LedgerKind.CAPTURE]
    assert [(e.task_id, e.amount) for e in captures] == [(created[0].id, -2 * ucr)]


async def test_the_active_task_limit_holds_across_processes(database_url: str) -> None:
    """Two API processes (two engines) create tasks for one account at once, each through its own
    group commit: the holds lock the account's row before the active tasks are counted, so the
    limit is never exceeded, whichever process's batch comes first."""
    engines = [Database(database_url, pool_size=10), Database(database_url, pool_size=10)]
    try:
        account = await AccountService(engines[0]).create_user("limit@example.com", credits=1000)
        services = [TaskService(db, Catalog.load, is_available=lambda _spec: True, base_url=lambda: "http://x")
                    for db in engines]
        request = ImageTaskRequest(model="typeset", prompt="p", quality="high")

        async def create(service: TaskService) -> bool:
            try:
                await service.create_image_task(account, None, request, max_active_tasks=5)
            except RateLimited:
                return False
            return True

        made = await asyncio.gather(*(create(services[i % 2]) for i in range(24)))
        async with engines[0].uow(write=False) as uow:
            active = await uow.tasks.count_active(account.id)
        assert sum(made) == active == 5
    finally:
        for db in engines:
            await db.dispose()
