"""The queue as a cluster uses it, on a real SQLite file and the real PostgreSQL server: leasing,
expiry and requeue, per-node model limits and per-model caps that hold across the whole cluster.

(The general repository conformance suite is ``test_conformance.py``; this file covers what many
nodes sharing one queue rely on.)
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import text

from apiinone.db.database import Database
from apiinone.domain.accounts import Account
from apiinone.domain.tasks import Task, TaskStatus
from apiinone.ids import new_id, now_ms

pytestmark = pytest.mark.scale

T0 = 1_700_000_000_000
LEASE_MS = 1_000
GPT = "gpt-image-1.5-official"
TYPESET = "local-typeset"


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    database = Database(database_url)
    yield database
    await database.dispose()


async def new_account(db: Database) -> Account:
    account = Account(id=new_id("acc"), email=f"{new_id('u').lower()}@example.com", created_at=now_ms())
    async with db.uow() as uow:
        await uow.accounts.add(account, None)
        await uow.commit()
    return account


async def enqueue(db: Database, account: Account, models: list[str], start: int = T0) -> list[Task]:
    tasks = [
        Task(id=new_id("tsk", start + i), account_id=account.id, model=model, type="image", status=TaskStatus.QUEUED,
             input={"prompt": "p", "aspect_ratio": "1:1", "quality": "medium", "input_urls": []}, price=1,
             created_at=start + i)
        for i, model in enumerate(models)
    ]
    async with db.uow() as uow:
        for task in tasks:
            await uow.tasks.add(task)
        await uow.commit()
    return tasks


async def lease(db: Database, token: str, *, limit: int = 10, now: int = T0 + 100, **kw: object) -> list[Task]:
    async with db.uow() as uow:
        leased = await uow.queue.lease(node=f"node-{token}", token=token, limit=limit, now=now, lease_ms=LEASE_MS,
                                       max_attempts=3, **kw)  # type: ignore[arg-type]
        await uow.commit()
    return leased


async def finish(db: Database, task: Task, token: str) -> bool:
    async with db.uow() as uow:
        done = await uow.tasks.finish(task.id, status=TaskStatus.SUCCEEDED, from_statuses=[TaskStatus.RUNNING],
                                      lease_token=token, at=T0 + 200)
        await uow.commit()
    return done


async def test_batches_are_disjoint_expired_leases_return_and_requeue_gives_back(db: Database) -> None:
    account = await new_account(db)
    tasks = await enqueue(db, account, [TYPESET] * 5)
    first = await lease(db, "a", limit=3)
    second = await lease(db, "b", limit=3)
    assert [t.id for t in first] == [t.id for t in tasks[:3]] and [t.id for t in second] == [t.id for t in tasks[3:]]
    assert await lease(db, "c") == []
    # node a dies: once its leases run out node c takes its three tasks, and a's token is worthless
    reclaimed = await lease(db, "c", now=T0 + 100 + LEASE_MS + 1)
    assert {t.id for t in reclaimed} == {t.id for t in first} | {t.id for t in second}
    assert all(t.attempts == 2 and t.lease_token == "c" for t in reclaimed)
    assert not await finish(db, first[0], "a")
    assert await finish(db, reclaimed[0], "c")
    async with db.uow() as uow:
        assert await uow.queue.requeue(reclaimed[1].id, "c")
        await uow.commit()
    [back] = await lease(db, "d", now=T0 + 100 + LEASE_MS + 2)
    assert back.id == reclaimed[1].id and back.attempts == 2  # the requeue did not count an attempt


async def test_heartbeat_renews_only_the_tasks_still_running(db: Database) -> None:
    """A run abandoned by a live worker (its finish failed) must not be kept alive by its heartbeat."""
    account = await new_account(db)
    await enqueue(db, account, [TYPESET] * 2)
    running, abandoned = await lease(db, "a")
    async with db.uow() as uow:
        assert await uow.queue.extend(["a"], T0 + 10 * LEASE_MS, task_ids=[running.id]) == 1
        assert await uow.queue.extend(["a"], T0 + 10 * LEASE_MS, task_ids=[]) == 0
        await uow.commit()
    [retried] = await lease(db, "b", now=T0 + 100 + LEASE_MS + 1)
    assert retried.id == abandoned.id


async def test_cluster_cap_limits_running_tasks_of_a_model_across_nodes(db: Database) -> None:
    account = await new_account(db)
    await enqueue(db, account, [GPT, GPT, TYPESET, GPT, GPT, TYPESET])
    caps = {GPT: 2}
    a = await lease(db, "a", cluster_caps=caps)
    assert Counter(t.model for t in a) == {GPT: 2, TYPESET: 2}
    assert await lease(db, "b", cluster_caps=caps) == [], "the cap is taken by node a"
    assert [t.model for t in await lease(db, "b")] == [GPT, GPT], "an uncapped leaser is not held back"


async def test_a_finished_or_expired_task_frees_its_slot(db: Database) -> None:
    account = await new_account(db)
    tasks = await enqueue(db, account, [GPT] * 4)
    caps = {GPT: 2}
    a = await lease(db, "a", cluster_caps=caps)
    assert len(a) == 2
    assert await finish(db, a[0], "a")
    [running_on_b] = await lease(db, "b", cluster_caps=caps)
    assert running_on_b.id == tasks[2].id
    assert await lease(db, "c", cluster_caps=caps) == []
    # node a dies: its lease runs out, so its task no longer holds a slot; node c reclaims it
    after_expiry = T0 + 100 + LEASE_MS + 1
    async with db.uow() as uow:
        await uow.queue.extend(["b"], after_expiry + LEASE_MS)  # b is alive and heartbeating
        await uow.commit()
    c = await lease(db, "c", now=after_expiry, cluster_caps=caps)
    assert [t.id for t in c] == [a[1].id], "the reclaimed task takes the only free slot; the queued one waits"


async def test_node_model_limits_and_served_models(db: Database) -> None:
    account = await new_account(db)
    await enqueue(db, account, [GPT, GPT, GPT, TYPESET, TYPESET])
    leased = await lease(db, "a", models=[GPT, TYPESET], model_limits={GPT: 1})
    assert Counter(t.model for t in leased) == {GPT: 1, TYPESET: 2}
    assert await lease(db, "a", models=[TYPESET], model_limits={GPT: 5}) == [], "never a model the node does not serve"
    assert [t.model for t in await lease(db, "a", models=[GPT], model_limits={GPT: 0})] == []
    assert len(await lease(db, "a", models=[GPT], model_limits={GPT: 5}, cluster_caps={GPT: 2})) == 1


async def _wait_until_blocked(db: Database, started: list[object], leasing: asyncio.Task[object]) -> None:
    """Return once the leaser is provably waiting on the other transaction: on PostgreSQL a backend
    of this database waits on a lock; on SQLite its BEGIN IMMEDIATE started while the other write
    transaction holds the only write lock. Fails (instead of passing without overlap) otherwise."""
    deadline = asyncio.get_running_loop().time() + 30
    while True:
        assert not leasing.done(), "the second leaser finished without waiting for the first"
        if db.is_sqlite:
            if started:
                return
        else:
            async with db.uow(write=False) as uow:
                waiting = (await uow.conn.execute(text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND wait_event_type = 'Lock'"))).scalar_one()
            if waiting:
                return
        assert asyncio.get_running_loop().time() < deadline, "the second leaser never reached the queue"
        await asyncio.sleep(0.01)


async def test_a_leaser_waits_for_an_open_lease_transaction_of_a_capped_model(
        database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Node b leases while node a's lease of the same capped model is not committed yet: b must
    count a's tasks (it waits for a's transaction) instead of seeing free slots."""
    from apiinone.db import engine as engine_module

    begins: list[object] = []
    original_begin = engine_module.begin_immediate

    def recording_begin(raw: object, busy_timeout_ms: int) -> None:
        begins.append(raw)
        original_begin(raw, busy_timeout_ms)

    a_db, b_db = Database(database_url), Database(database_url)
    observer = Database(database_url)
    try:
        account = await new_account(a_db)
        await enqueue(a_db, account, [GPT] * 10)
        await b_db.ping()  # b's connection is open, so b reaches the queue while a's lease is open
        caps = {GPT: 3}
        async with a_db.uow() as uow:
            first = await uow.queue.lease(node="a", token="a", limit=10, now=T0 + 100, lease_ms=LEASE_MS,
                                          max_attempts=3, cluster_caps=caps)
            monkeypatch.setattr(engine_module, "begin_immediate", recording_begin)  # b's BEGINs only
            b_lease = asyncio.create_task(lease(b_db, "b", cluster_caps=caps))
            await _wait_until_blocked(observer, begins, b_lease)  # type: ignore[arg-type]
            await uow.commit()
        second = await b_lease
        assert (len(first), len(second)) == (3, 0)
    finally:
        await a_db.dispose()
        await b_db.dispose()
        await observer.dispose()


async def test_concurrent_leasers_never_overshoot_a_cap(database_url: str) -> None:
    """Eight nodes on their own connection pools lease at once; the cap holds, no task goes twice."""
    nodes = [Database(database_url) for _ in range(8)]
    try:
        account = await new_account(nodes[0])
        await enqueue(nodes[0], account, [GPT] * 20 + [TYPESET] * 20)
        await asyncio.gather(*(db.ping() for db in nodes))
        results = await asyncio.gather(*(
            lease(db, f"n{i}", limit=5, cluster_caps={GPT: 3}) for i, db in enumerate(nodes)
        ))
        leased = [t for batch in results for t in batch]
        assert len({t.id for t in leased}) == len(leased), "a task was handed out twice"
        assert Counter(t.model for t in leased)[GPT] == 3
    finally:
        for db in nodes:
            await db.dispose()


async def test_node_heartbeat_records_models_limits_and_interval(db: Database) -> None:
    async with db.uow() as uow:
        await uow.queue.heartbeat_node(name="node42", models=[GPT], concurrency=4, running=1, pid=7, hostname="h",
                                       now=T0, model_limits={GPT: 2}, heartbeat_interval_ms=500)
        await uow.queue.heartbeat_node(name="node43", models=None, concurrency=8, running=0, pid=8, hostname="h",
                                       now=T0)
        await uow.commit()
    async with db.uow(write=False) as uow:
        nodes = {n["name"]: n for n in await uow.queue.nodes()}
    assert nodes["node42"]["models"] == [GPT] and nodes["node42"]["model_limits"] == {GPT: 2}
    assert nodes["node42"]["heartbeat_interval_ms"] == 500
    assert nodes["node43"]["models"] == ["*"] and nodes["node43"]["model_limits"] == {}
