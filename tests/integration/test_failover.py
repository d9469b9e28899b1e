"""Failover and circuit breakers against real fake upstreams on loopback, switched at run time.

A model with two routes (two FakeOpenAI servers) keeps working when one dies; a task is charged
once whatever the attempts; a refused key is set aside; a refused request fails at once; breakers
open after N failures, half-open after the cooldown and close on success; every route open → 503.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import AppHarness, Caller, make_settings
from tests.fakes.fake_openai import FakeOpenAI

MODEL = "fo-image"


@pytest.fixture(scope="module")
def fakes() -> Iterator[tuple[FakeOpenAI, FakeOpenAI]]:
    with FakeOpenAI(api_key="sk-good-primary-0001") as a, FakeOpenAI(api_key="sk-good-backup-0002") as b:
        yield a, b


@pytest.fixture
def upstreams(fakes: tuple[FakeOpenAI, FakeOpenAI]) -> Iterator[tuple[FakeOpenAI, FakeOpenAI]]:
    for fake in fakes:
        fake.reset()
        fake.latency_ms = 0
    yield fakes
    for fake in fakes:
        fake.reset()
        fake.latency_ms = 0


def catalog_file(tmp_path: Path, a: FakeOpenAI, b: FakeOpenAI, *, primary_keys_env: str = "FO_KEY_A") -> Path:
    path = tmp_path / "models.toml"
    path.write_text(f"""
[[models]]
id = "{MODEL}"
name = "Failover image"
type = "image"
provider = "openai"
upstream_model = "gpt-image-1.5"
pricing = {{ medium = 10, high = 28 }}

[[models.routes]]
name = "primary"
provider = "openai"
base_url = "{a.base_url}"
api_key_env = "{primary_keys_env}"
priority = 0
timeout_s = 1.0

[[models.routes]]
name = "backup"
provider = "openai"
base_url = "{b.base_url}"
api_key_env = "FO_KEY_B"
priority = 1
timeout_s = 1.0
""", encoding="utf-8")
    return path


@pytest.fixture
async def app(tmp_path: Path, database_url: str, upstreams: tuple[FakeOpenAI, FakeOpenAI],
              monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[AppHarness]:
    a, b = upstreams
    monkeypatch.setenv("FO_KEY_A", a.api_key)
    monkeypatch.setenv("FO_KEY_B", b.api_key)
    settings = make_settings(tmp_path, database_url, models_file=catalog_file(tmp_path, a, b),
                             breaker_failures=3, breaker_cooldown_s=60.0, route_attempts=3)
    async with AppHarness(settings) as harness:
        yield harness


async def run_task(caller: Caller, **body: Any) -> dict[str, Any]:
    r = await caller.post("/api/v1/images/generations", json={"model": MODEL, "prompt": "a red fox", **body})
    assert r.status_code == 202, r.text
    return await caller.wait_for(r.json()["task_id"])


def end_the_cooldown(app: AppHarness) -> None:
    """Moves the breakers' clock past the cooldown instead of sleeping through it: with a short
    cooldown slept through, a slow machine could also end it early, before the test looks."""
    board = app.container.breakers
    clock = board.clock
    board.clock = lambda: clock() + board.cooldown_ms + 1


async def balance(caller: Caller) -> dict[str, Any]:
    credits: dict[str, Any] = (await caller.get("/api/v1/account")).json()["credits"]
    return credits


@pytest.mark.parametrize("status", [500, 502, 503, 429, 408])
async def test_retryable_failure_of_the_primary_is_served_by_the_backup_and_charged_once(
        app: AppHarness, upstreams: tuple[FakeOpenAI, FakeOpenAI], status: int) -> None:
    a, b = upstreams
    caller = await app.caller(credits=100)
    a.fail_next(status, count=1)
    started = time.perf_counter()
    task = await run_task(caller)
    took_ms = (time.perf_counter() - started) * 1000
    assert task["status"] == "succeeded", task
    assert [r.status for r in a.requests] == [status]
    assert [r.status for r in b.requests] == [200]
    assert task["credits"]["charged"] == task["credits"]["price"] == 10
    assert await balance(caller) == {"balance": 90, "held": 0, "available": 90}
    print(f"failover after HTTP {status}: task done in {took_ms:.0f} ms")


async def test_a_hanging_primary_times_out_and_fails_over(app: AppHarness,
                                                          upstreams: tuple[FakeOpenAI, FakeOpenAI]) -> None:
    a, b = upstreams
    a.latency_ms = 3000  # beyond the route's timeout_s = 1.0
    caller = await app.caller(credits=100)
    task = await run_task(caller)
    assert task["status"] == "succeeded", task
    assert [r.status for r in b.requests] == [200]
    routes = {r["name"]: r for r in await app.container.routes.list_routes()}
    assert routes["primary"]["failures"] == 1 and "no answer within 1 s" in routes["primary"]["last_error"]
    assert await balance(caller) == {"balance": 90, "held": 0, "available": 90}
    await a.wait_arrived(1)  # the primary was called and abandoned after its 1 s (the fake's reset
    # before the next test keeps its late answer out of that test's record)


async def test_a_refused_request_fails_at_once_on_the_first_route_and_costs_nothing(
        app: AppHarness, upstreams: tuple[FakeOpenAI, FakeOpenAI]) -> None:
    a, b = upstreams
    a.fail_next(400, count=1)  # the fake's usual 400: moderation_blocked
    caller = await app.caller(credits=100)
    task = await run_task(caller)
    assert task["status"] == "failed" and task["error"]["code"] == "content_policy", task
    assert len(a.requests) == 1 and b.requests == []
    assert task["credits"]["charged"] == 0
    assert await balance(caller) == {"balance": 100, "held": 0, "available": 100}


async def test_every_route_failing_ends_upstream_error_after_the_attempt_budget(
        app: AppHarness, upstreams: tuple[FakeOpenAI, FakeOpenAI]) -> None:
    a, b = upstreams
    a.fail_next(500, count=10)
    b.fail_next(503, count=10)
    caller = await app.caller(credits=100)
    task = await run_task(caller)
    assert task["status"] == "failed" and task["error"]["code"] == "upstream_error", task
    assert len(a.requests) + len(b.requests) == 3  # APIINONE_ROUTE_ATTEMPTS
    assert len(a.requests) >= 1 and len(b.requests) >= 1
    assert await balance(caller) == {"balance": 100, "held": 0, "available": 100}


async def test_breaker_opens_after_n_failures_half_opens_after_cooldown_and_closes(
        app: AppHarness, upstreams: tuple[FakeOpenAI, FakeOpenAI]) -> None:
    a, b = upstreams
    caller = await app.caller(credits=1000)
    a.fail_next(500, count=3)
    for _ in range(3):  # each: primary 500 → backup 200
        assert (await run_task(caller))["status"] == "succeeded"
    assert len(a.requests) == 3
    routes = {r["name"]: r for r in await app.container.routes.list_routes()}
    assert routes["primary"]["state"] == "open" and routes["primary"]["consecutive_failures"] >= 3
    assert routes["backup"]["state"] == "closed"

    for _ in range(3):  # open: the primary is skipped entirely
        assert (await run_task(caller))["status"] == "succeeded"
    assert len(a.requests) == 3 and len(b.requests) == 6

    end_the_cooldown(app)  # the next call is the half-open probe, and it succeeds
    assert (await run_task(caller))["status"] == "succeeded"
    assert len(a.requests) == 4 and a.requests[-1].status == 200
    routes = {r["name"]: r for r in await app.container.routes.list_routes()}
    assert routes["primary"]["state"] == "closed"
    assert routes["primary"]["requests"] == 4 and routes["primary"]["failures"] == 3
    balance_after = await balance(caller)
    assert balance_after == {"balance": 1000 - 7 * 10, "held": 0, "available": 1000 - 7 * 10}


async def test_a_failed_half_open_probe_opens_the_route_again(
        app: AppHarness, upstreams: tuple[FakeOpenAI, FakeOpenAI]) -> None:
    a, _b = upstreams
    caller = await app.caller(credits=1000)
    a.fail_next(500, count=4)
    for _ in range(3):
        await run_task(caller)
    end_the_cooldown(app)
    assert (await run_task(caller))["status"] == "succeeded"  # probe fails → backup serves
    assert len(a.requests) == 4
    routes = {r["name"]: r for r in await app.container.routes.list_routes()}
    assert routes["primary"]["state"] == "open"


async def test_all_routes_open_answers_503_and_creates_nothing(
        app: AppHarness, upstreams: tuple[FakeOpenAI, FakeOpenAI]) -> None:
    a, b = upstreams
    caller = await app.caller(credits=1000)
    a.fail_next(500, count=100)
    b.fail_next(500, count=100)
    breakers = app.container.breakers
    ran = 0
    while not (breakers.is_open(MODEL, "primary") and breakers.is_open(MODEL, "backup")):
        assert ran < 5, "three failures per route should open both"
        assert (await run_task(caller))["status"] == "failed"
        ran += 1
    r = await caller.post("/api/v1/images/generations", json={"model": MODEL, "prompt": "x"})
    assert r.status_code == 503 and r.json()["error"]["code"] == "model_unavailable"
    listed = (await caller.get("/api/v1/tasks")).json()["data"]
    assert len(listed) == ran
    model = (await caller.get(f"/api/v1/models/{MODEL}")).json()
    assert model["available"] is False
    assert await balance(caller) == {"balance": 1000, "held": 0, "available": 1000}


async def test_a_refused_key_is_set_aside_and_the_next_key_used(
        tmp_path: Path, sqlite_url: str, upstreams: tuple[FakeOpenAI, FakeOpenAI],
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    a, b = upstreams
    bad = "sk-revoked-key-XYZW"
    monkeypatch.setenv("FO_KEYS_A", f"{bad},{a.api_key}")
    monkeypatch.setenv("FO_KEY_B", b.api_key)
    settings = make_settings(tmp_path, sqlite_url,
                             models_file=catalog_file(tmp_path, a, b, primary_keys_env="FO_KEYS_A"))
    async with AppHarness(settings) as harness:
        caller = await harness.caller(credits=100)
        for _ in range(3):
            assert (await run_task(caller))["status"] == "succeeded"
        statuses = [r.status for r in a.requests]
        assert statuses[0] in (200, 401) and statuses.count(401) <= 1, statuses
        assert statuses.count(200) == 3 and b.requests == []  # served by the primary's good key
        routes = {r["name"]: r for r in await harness.container.routes.list_routes()}
        assert routes["primary"]["keys"] == 2
        assert routes["primary"]["keys_usable"] == (1 if 401 in statuses else 2)
        assert bad not in caplog.text
        assert await balance(caller) == {"balance": 70, "held": 0, "available": 70}


async def test_with_every_key_refused_the_route_is_not_configured_and_the_backup_serves(
        tmp_path: Path, sqlite_url: str, upstreams: tuple[FakeOpenAI, FakeOpenAI],
        monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = upstreams
    monkeypatch.setenv("FO_KEY_A", "sk-wrong-0000")
    monkeypatch.setenv("FO_KEY_B", b.api_key)
    settings = make_settings(tmp_path, sqlite_url, models_file=catalog_file(tmp_path, a, b))
    async with AppHarness(settings) as harness:
        caller = await harness.caller(credits=100)
        assert (await run_task(caller))["status"] == "succeeded"
        assert (await run_task(caller))["status"] == "succeeded"
        assert [r.status for r in a.requests] == [401]
        assert [r.status for r in b.requests] == [200, 200]
        routes = {r["name"]: r for r in await harness.container.routes.list_routes()}
        assert routes["primary"]["configured"] is False and routes["primary"]["state"] == "closed"


@pytest.mark.postgres
async def test_two_api_processes_on_postgres_share_the_breaker_state(
        tmp_path: Path, pg_url: str, upstreams: tuple[FakeOpenAI, FakeOpenAI],
        monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = upstreams
    monkeypatch.setenv("FO_KEY_A", a.api_key)
    monkeypatch.setenv("FO_KEY_B", b.api_key)
    models = catalog_file(tmp_path, a, b)

    def settings(name: str) -> Any:
        return make_settings(tmp_path / name, pg_url, models_file=models, breaker_failures=2,
                             breaker_cooldown_s=30.0, breaker_sync_s=30.0)  # only NOTIFY can carry it fast

    async with AppHarness(settings("one")) as one, AppHarness(settings("two"), embedded_worker=False) as two:
        caller = await one.caller(credits=100)
        a.fail_next(500, count=2)
        for _ in range(2):
            assert (await run_task(caller))["status"] == "succeeded"
        assert one.container.breakers.is_open(MODEL, "primary")
        deadline = time.monotonic() + 10
        while not two.container.breakers.is_open(MODEL, "primary"):
            assert time.monotonic() < deadline, "the second process never saw the route open"
            await asyncio.sleep(0.05)
        routes = {r["name"]: r for r in await two.container.routes.list_routes()}
        assert routes["primary"]["state"] == "open"
        assert routes["primary"]["failures"] == 2
