"""Outages of the engines a cluster leans on, with real processes:

* PostgreSQL restarts under load: requests fail fast with 503 while it is down, the service
  recovers by itself, and no task or credit is lost. The test runs its own throwaway PostgreSQL
  cluster (initdb on a free port), never the shared server.
* Rate limits across two API processes (`serve --workers 2`) share one Redis: N+1 requests in a
  window get exactly one 429 with Retry-After; with Redis stopped the service keeps serving.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from apiinone.db.migrate import upgrade
from tests.e2e.cluster import (
    Proc,
    RedisServer,
    ThrowawayPostgres,
    app_env,
    assert_exactly_once,
    audit_account,
    new_account_key,
    start_api,
    start_worker,
)
from tests.fakes.fake_openai import FakeOpenAI

pytestmark = [pytest.mark.e2e, pytest.mark.scale]

GPT = {"model": "gpt-image-1.5-official", "prompt": "outage drill", "quality": "medium"}
TYPESET = {"model": "local-typeset", "prompt": "rate limits", "quality": "medium"}


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    started: list[Proc] = []
    yield started
    for proc in reversed(started):
        proc.stop()


@pytest.fixture
def private_pg() -> Iterator[ThrowawayPostgres]:
    pg = ThrowawayPostgres().init()
    yield pg
    pg.destroy()


CLIENT_TIMEOUT_S = 15.0
"""Three times the database connect timeout: a 503 must come from that timeout or sooner."""


async def test_postgres_restart_under_load_fails_fast_and_recovers(tmp_path: Path, private_pg: ThrowawayPostgres,
                                                                   procs: list[Proc]) -> None:
    url = await private_pg.create_database("apiinone")
    upgrade(url)
    with FakeOpenAI(latency_ms=200) as fake:
        env = app_env(url, tmp_path / "data", OPENAI_API_KEY=fake.api_key, OPENAI_BASE_URL=fake.base_url,
                      APIINONE_TASK_LEASE_S="3")
        api, base = start_api(env, tmp_path, workers=2)
        procs.append(api)
        procs.extend(start_worker(env, tmp_path, node, "--concurrency", "4") for node in ("node41", "node42"))
        account_id, key = await new_account_key(url, credits=100_000)
        accepted: list[str] = []
        outcomes: Counter[str] = Counter()
        phase = {"name": "before"}
        slowest_503 = {"s": 0.0}

        async def load(client: httpx.AsyncClient) -> None:
            while phase["name"] != "done":
                started = asyncio.get_running_loop().time()
                try:
                    r = await client.post("/api/v1/images/generations", json=GPT)
                except httpx.TransportError as exc:
                    outcomes[f"{phase['name']}:{type(exc).__name__}"] += 1
                    await asyncio.sleep(0.05)
                    continue
                outcomes[f"{phase['name']}:{r.status_code}"] += 1
                if r.status_code == 202:
                    accepted.append(r.json()["task_id"])
                else:
                    assert r.status_code == 503, r.text
                    assert r.json()["error"]["code"] == "service_unavailable"
                    slowest_503["s"] = max(slowest_503["s"], asyncio.get_running_loop().time() - started)
                    await asyncio.sleep(0.05)

        async def until(done: Callable[[], bool], what: str, limit_s: float = 120) -> None:
            deadline = asyncio.get_running_loop().time() + limit_s
            while not done():
                assert asyncio.get_running_loop().time() < deadline, f"{what}: {dict(outcomes)}"
                await asyncio.sleep(0.1)

        headers = {"Authorization": f"Bearer {key}"}
        # A request that hangs instead of failing fast hits this client timeout and is counted as one.
        async with httpx.AsyncClient(base_url=base, headers=headers, timeout=CLIENT_TIMEOUT_S) as client:
            senders = [asyncio.create_task(load(client)) for _ in range(4)]
            await until(lambda: len(accepted) >= 40, "no tasks accepted before the outage")
            phase["name"] = "down"
            await asyncio.to_thread(private_pg.stop)
            await until(lambda: outcomes["down:503"] >= 20, "no 503s while PostgreSQL is down")
            await asyncio.to_thread(private_pg.start)
            phase["name"] = "after"
            deadline = asyncio.get_running_loop().time() + 120
            while outcomes["after:202"] < 40:
                assert asyncio.get_running_loop().time() < deadline, f"no recovery: {outcomes}"
                await asyncio.sleep(0.1)
            phase["name"] = "done"
            await asyncio.gather(*senders)

        assert outcomes["down:503"] >= 20 and outcomes["after:202"] >= 40, outcomes
        print(f"outcomes {dict(outcomes)}; slowest 503 {slowest_503['s'] * 1000:.0f} ms")
        # Failing fast: no request waited for the client to give up, and none outlasted the database
        # connect timeout (5 s, db/engine.py) by more than the client's patience allows.
        assert not [o for o in outcomes if "Timeout" in o], outcomes
        assert slowest_503["s"] < CLIENT_TIMEOUT_S, slowest_503
        deadline = asyncio.get_running_loop().time() + 300
        while True:
            audit = await audit_account(url, account_id)
            if set(audit["statuses"]) <= {"succeeded", "failed"}:
                break
            assert asyncio.get_running_loop().time() < deadline, f"tasks stuck: {audit['statuses']}"
            await asyncio.sleep(0.5)
        assert set(accepted) <= set(audit["tasks"]), "an accepted task was lost"
        assert audit["statuses"] == {"succeeded": len(audit["tasks"])}, audit["statuses"]
        assert_exactly_once(audit)
        assert audit["balance"] == (100_000 - 10 * len(audit["tasks"])) * 1_000_000  # µcr


async def test_rate_limit_is_shared_by_two_api_processes_and_survives_redis_stopping(
        tmp_path: Path, pg_url: str, procs: list[Proc]) -> None:
    redis = RedisServer(tmp_path).start()
    try:
        env = app_env(pg_url, tmp_path / "data", APIINONE_REDIS_URL=redis.url, APIINONE_RATE_LIMIT_KEY_RPM="5")
        api, base = start_api(env, tmp_path, workers=2)
        procs.append(api)
        _account_id, key = await new_account_key(pg_url, credits=1000)
        headers = {"Authorization": f"Bearer {key}"}

        async def burst(n: int) -> list[httpx.Response]:
            # a fresh connection per request, so the requests spread over both processes
            async def one() -> httpx.Response:
                async with httpx.AsyncClient(base_url=base, headers=headers, timeout=30) as client:
                    return await client.post("/api/v1/images/generations", json=TYPESET)

            return list(await asyncio.gather(*(one() for _ in range(n))))

        answers = await burst(6)
        assert sorted(r.status_code for r in answers) == [202] * 5 + [429]
        [limited] = [r for r in answers if r.status_code == 429]
        assert limited.json()["error"]["code"] == "rate_limited" and int(limited.headers["retry-after"]) >= 1

        redis.stop()
        # documented fallback: each process limits on its own buckets, and nothing else breaks
        answers = await burst(4)
        assert {r.status_code for r in answers} == {202}, [r.text for r in answers]
        async with httpx.AsyncClient(base_url=base, headers=headers, timeout=30) as client:
            listed = await client.get("/api/v1/tasks", params={"limit": 100})
            assert listed.status_code == 200 and len(listed.json()["data"]) == 9
            assert (await client.get("/readyz")).status_code == 200
    finally:
        redis.stop()
