"""Credits stay exact under concurrency and worker failure, on SQLite and on PostgreSQL.

The money rules under test: a hold never makes ``available`` negative however many requests race;
a task is charged at most once even when its worker dies and another takes over; a completion that
lost its lease (stale token, cancel) charges nothing; a failed task releases its hold.
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from sqlalchemy import update

from apiinone.config import Settings
from apiinone.db import tables as t
from apiinone.db.database import Database
from apiinone.ids import now_ms
from apiinone.services.accounts import AccountService
from apiinone.web.app import create_app
from tests.conftest import AppHarness, Caller, make_settings
from tests.fakes.fake_openai import FakeOpenAI

GPT_HIGH = {"model": "gpt-image-1.5-official", "prompt": "a coffee shop logo", "quality": "high"}
GPT_MEDIUM = {"model": "gpt-image-1-5", "prompt": "a coffee shop logo", "quality": "medium"}
TYPESET = {"model": "local-typeset", "prompt": "hello", "quality": "medium"}


class LoopbackServer:
    """The real app under uvicorn on a free loopback port, in a thread with its own event loop."""

    def __init__(self, settings: Settings) -> None:
        self.app = create_app(settings, embedded_worker=False, migrate=False)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        config = uvicorn.Config(self.app, log_level="warning", access_log=False, lifespan="on", loop="asyncio")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> LoopbackServer:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=60)
        self.sock.close()


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(api_key=None) as server:
        yield server


async def new_account(database_url: str, credits: int) -> tuple[str, str]:
    """An account and API key made through the services on an engine of the test's own loop."""
    db = Database(database_url)
    try:
        accounts = AccountService(db)
        account = await accounts.create_user(f"race-{now_ms()}@example.com", credits=credits)
        key = await accounts.create_api_key(account.id, "race")
    finally:
        await db.dispose()
    return account.id, key.plaintext


async def test_twenty_concurrent_28_credit_requests_on_30_credits_accept_exactly_one(
    tmp_path: Path, database_url: str, fake: FakeOpenAI
) -> None:
    """Two server instances (two engines, as two processes would have) share the database; the 20
    requests are in flight at once over separate connections."""
    settings = make_settings(tmp_path, database_url, openai_api_key="sk-test", openai_base_url=fake.base_url,
                             db_pool_size=10)
    _account_id, key = await new_account(database_url, credits=30)
    headers = {"Authorization": f"Bearer {key}"}
    with LoopbackServer(settings) as first, LoopbackServer(settings) as second:
        limits = httpx.Limits(max_connections=40, max_keepalive_connections=40)
        async with httpx.AsyncClient(limits=limits, timeout=60, trust_env=False) as client:
            # warm both servers' key caches and pools so the race is on the hold, not on start-up
            for server in (first, second):
                assert (await client.get(f"{server.url}/api/v1/account", headers=headers)).status_code == 200
            urls = [f"{(first, second)[i % 2].url}/api/v1/images/generations" for i in range(20)]
            responses = await asyncio.gather(*(client.post(url, json=GPT_HIGH, headers=headers) for url in urls))
            statuses = sorted(r.status_code for r in responses)
            assert statuses == [202] + [402] * 19, [r.text for r in responses if r.status_code not in (202, 402)]
            for r in responses:
                if r.status_code == 402:
                    assert r.json()["error"]["code"] == "insufficient_credits"
                else:
                    assert r.json()["credits"] == {"price": 28, "charged": 0}
            account = (await client.get(f"{first.url}/api/v1/account", headers=headers)).json()
            ledger = (await client.get(f"{second.url}/api/v1/account/ledger", headers=headers)).json()["data"]
            tasks = (await client.get(f"{first.url}/api/v1/tasks", headers=headers)).json()["data"]
    assert account["credits"] == {"balance": 30, "held": 28, "available": 2}
    assert [(e["kind"], e["amount"]) for e in ledger] == [("hold", 28), ("grant", 30)]
    assert len(tasks) == 1 and tasks[0]["status"] == "queued"
    assert fake.received == 0, "no worker ran, so nothing went upstream"


@pytest.fixture
async def no_worker(tmp_path: Path, database_url: str, fake: FakeOpenAI) -> AsyncIterator[AppHarness]:
    """An app with no embedded worker: tests start or drive workers themselves."""
    settings = make_settings(tmp_path, database_url, task_lease_s=1.0, openai_api_key="sk-test",
                             openai_base_url=fake.base_url, openai_max_retries=2)
    async with AppHarness(settings, embedded_worker=False) as h:
        yield h


async def credits_and_ledger(caller: Caller) -> tuple[dict[str, int], list[tuple[str, int]]]:
    credits = (await caller.get("/api/v1/account")).json()["credits"]
    ledger = (await caller.get("/api/v1/account/ledger")).json()["data"]
    return credits, [(e["kind"], e["amount"]) for e in ledger]


async def lease_as_dead_worker(h: AppHarness, token: str, lease_ms: int) -> Any:
    async with h.container.db.uow() as uow:
        [task] = await uow.queue.lease(node="dead-node", token=token, limit=1, now=now_ms(), lease_ms=lease_ms,
                                       max_attempts=h.settings.task_max_attempts)
        await uow.commit()
    return task


async def test_task_of_a_dead_worker_is_run_again_and_charged_once(no_worker: AppHarness) -> None:
    h = no_worker
    caller = await h.caller(credits=10)
    task_id = (await caller.post("/api/v1/images/generations", json=TYPESET)).json()["task_id"]
    dead = await lease_as_dead_worker(h, "lease_dead", lease_ms=300)
    assert dead.id == task_id and dead.node == "dead-node"
    await h.container.make_worker(node="rescuer").start()
    done = await caller.wait_for(task_id, timeout=60)
    assert done["status"] == "succeeded" and done["node"] == "rescuer"
    assert done["credits"] == {"price": 1, "charged": 1}
    async with h.container.db.uow(write=False) as uow:
        stored = await uow.tasks.get(task_id)
    assert stored is not None and stored.attempts == 2
    late = await h.container.tasks.complete_task(dead, "lease_dead", {"images": []})
    assert late is None, "the dead worker's late completion must not count"
    credits, ledger = await credits_and_ledger(caller)
    assert credits == {"balance": 9, "held": 0, "available": 9}
    assert ledger == [("capture", -1), ("hold", 1), ("grant", 10)]


async def test_finish_with_a_stale_lease_token_charges_nothing(no_worker: AppHarness) -> None:
    h = no_worker
    caller = await h.caller(credits=10)
    task_id = (await caller.post("/api/v1/images/generations", json=TYPESET)).json()["task_id"]
    stale = await lease_as_dead_worker(h, "lease_stale", lease_ms=-1)  # already expired
    current = await lease_as_dead_worker(h, "lease_current", lease_ms=60_000)
    assert stale.id == current.id == task_id and current.attempts == 2
    assert await h.container.tasks.complete_task(stale, "lease_stale", {"images": []}) is None
    assert await h.container.tasks.fail_task(stale, "internal_error", "x", lease_token="lease_stale") is None
    credits, ledger = await credits_and_ledger(caller)
    assert credits == {"balance": 10, "held": 1, "available": 9}
    assert ledger == [("hold", 1), ("grant", 10)]
    finished = await h.container.tasks.complete_task(current, "lease_current", {"images": []})
    assert finished is not None and finished.charged == 1_000_000  # µcr
    credits, ledger = await credits_and_ledger(caller)
    assert credits == {"balance": 9, "held": 0, "available": 9}
    assert ledger == [("capture", -1), ("hold", 1), ("grant", 10)]


async def test_cancel_while_running_wins_over_the_workers_late_completion(
    no_worker: AppHarness, fake: FakeOpenAI
) -> None:
    h = no_worker
    caller = await h.caller(credits=30)
    task_id = (await caller.post("/api/v1/images/generations", json=GPT_MEDIUM)).json()["task_id"]
    worker = h.container.make_worker(node="slow-node")
    [task] = await worker.lease(1)
    assert (await caller.get(f"/api/v1/tasks/{task_id}")).json()["status"] == "running"
    canceled = await caller.post(f"/api/v1/tasks/{task_id}/cancel")
    assert canceled.status_code == 200 and canceled.json()["status"] == "canceled"
    await worker.run_task(task)  # the upstream call completes after the cancel
    assert fake.received == 1 and fake.requests[0].status == 200
    final = (await caller.get(f"/api/v1/tasks/{task_id}")).json()
    assert final["status"] == "canceled" and final["credits"] == {"price": 10, "charged": 0}
    assert final["output"] is None
    credits, ledger = await credits_and_ledger(caller)
    assert credits == {"balance": 30, "held": 0, "available": 30}
    assert ledger == [("release", -10), ("hold", 10), ("grant", 30)]


async def test_lease_running_out_of_attempts_fails_with_timeout_and_releases(
    tmp_path: Path, database_url: str
) -> None:
    settings = make_settings(tmp_path, database_url, task_lease_s=1.0, task_max_attempts=1)
    async with AppHarness(settings, embedded_worker=False) as h:
        caller = await h.caller(credits=10)
        task_id = (await caller.post("/api/v1/images/generations", json={**TYPESET, "quality": "high"})).json()[
            "task_id"]
        await lease_as_dead_worker(h, "lease_dead", lease_ms=200)
        await h.container.make_worker(node="watcher").start()
        done = await caller.wait_for(task_id, timeout=60)
        assert done["status"] == "failed" and done["error"]["code"] == "timeout"
        assert done["credits"] == {"price": 2, "charged": 0}
        credits, ledger = await credits_and_ledger(caller)
    assert credits == {"balance": 10, "held": 0, "available": 10}
    assert ledger == [("release", -2), ("hold", 2), ("grant", 10)]


@pytest.mark.parametrize(("failure", "code", "upstream_calls"), [
    ("server_error", "upstream_error", 3),
    ("moderation", "content_policy", 1),
])
async def test_provider_failure_fails_the_task_and_releases_the_hold(
    no_worker: AppHarness, fake: FakeOpenAI, failure: str, code: str, upstream_calls: int
) -> None:
    h = no_worker
    if failure == "server_error":
        fake.fail_next(500, count=100)
    else:
        fake.fail_moderation()
    caller = await h.caller(credits=30)
    await h.container.make_worker(node="n1").start()
    task_id = (await caller.post("/api/v1/images/generations", json=GPT_MEDIUM)).json()["task_id"]
    done = await caller.wait_for(task_id, timeout=60)
    assert done["status"] == "failed" and done["error"]["code"] == code and done["error"]["message"]
    assert done["credits"] == {"price": 10, "charged": 0} and done["output"] is None
    assert fake.received == upstream_calls, "5xx is retried (max_retries=2), moderation is not"
    assert "sk-test" not in done["error"]["message"]
    credits, ledger = await credits_and_ledger(caller)
    assert credits == {"balance": 30, "held": 0, "available": 30}
    assert ledger == [("release", -10), ("hold", 10), ("grant", 30)]


async def test_idempotency_key_older_than_a_day_starts_a_new_task(no_worker: AppHarness) -> None:
    """After 24 h a key is free again: the old record must not turn the new request into a 500."""
    h = no_worker
    caller = await h.caller(credits=10)
    headers = {"Idempotency-Key": "order-42"}
    first = await caller.post("/api/v1/images/generations", json=TYPESET, headers=headers)
    replay = await caller.post("/api/v1/images/generations", json=TYPESET, headers=headers)
    assert first.status_code == replay.status_code == 202
    assert replay.headers["idempotent-replayed"] == "true" and replay.json()["task_id"] == first.json()["task_id"]
    async with h.container.db.uow() as uow:
        await uow.conn.execute(update(t.idempotency_keys).values(created_at=now_ms() - 25 * 3600 * 1000))
        await uow.commit()
    fresh = await caller.post("/api/v1/images/generations", json=TYPESET, headers=headers)
    assert fresh.status_code == 202, fresh.text
    assert "idempotent-replayed" not in fresh.headers and fresh.json()["task_id"] != first.json()["task_id"]
    again = await caller.post("/api/v1/images/generations", json=TYPESET, headers=headers)
    assert again.headers["idempotent-replayed"] == "true" and again.json()["task_id"] == fresh.json()["task_id"]
    credits, ledger = await credits_and_ledger(caller)
    assert credits == {"balance": 10, "held": 2, "available": 8}
    assert ledger == [("hold", 1), ("hold", 1), ("grant", 10)]


async def test_graceful_stop_hands_an_unfinished_task_back_and_it_is_charged_once(
    no_worker: AppHarness, fake: FakeOpenAI
) -> None:
    h = no_worker
    caller = await h.caller(credits=30)
    fake.latency_ms = 5_000  # the upstream will not answer before the 0.2 s drain ends
    first = h.container.make_worker(node="leaving")
    first.options = dataclasses.replace(first.options, drain_s=0.2)
    await first.start()
    task_id = (await caller.post("/api/v1/images/generations", json=GPT_MEDIUM)).json()["task_id"]
    deadline = asyncio.get_running_loop().time() + 60
    while first.running_count == 0:
        assert asyncio.get_running_loop().time() < deadline, "the worker never picked the task up"
        await asyncio.sleep(0.02)
    await first.stop()
    handed_back = (await caller.get(f"/api/v1/tasks/{task_id}")).json()
    assert handed_back["status"] == "queued" and handed_back["node"] is None
    credits, _ledger = await credits_and_ledger(caller)
    assert credits == {"balance": 30, "held": 10, "available": 20}, "the hold stays with the queued task"
    async with h.container.db.uow(write=False) as uow:
        stored = await uow.tasks.get(task_id)
        nodes = {n["name"]: n for n in await uow.queue.nodes()}
    assert stored is not None and stored.attempts == 0 and stored.lease_token is None
    assert nodes["leaving"]["stopped_at"] is not None
    fake.latency_ms = 0
    await h.container.make_worker(node="staying").start()
    done = await caller.wait_for(task_id, timeout=60)
    assert done["status"] == "succeeded" and done["node"] == "staying"
    assert done["credits"] == {"price": 10, "charged": 10}
    credits, ledger = await credits_and_ledger(caller)
    assert credits == {"balance": 20, "held": 0, "available": 20}
    assert ledger == [("capture", -10), ("hold", 10), ("grant", 30)]
