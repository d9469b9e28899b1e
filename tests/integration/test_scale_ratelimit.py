"""Rate limits: token buckets in process and in a real (private) Redis, the documented fallback
when Redis goes down, and the 429 ``rate_limited`` answers of the create route."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from apiinone.config import Settings
from apiinone.domain.accounts import Account, ApiKey
from apiinone.errors import RateLimited
from apiinone.ratelimit import KEY_PREFIX, Bucket, LocalBuckets, RateLimiter
from tests.conftest import AppHarness, make_settings
from tests.e2e.cluster import RedisServer

pytestmark = pytest.mark.scale

SEED = {"model": "local-typeset", "prompt": "rate limited", "quality": "medium"}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path).start()
    yield server
    server.stop()


def account(rpm: int | None = None) -> Account:
    return Account(id="acc_1", email="a@example.com", created_at=0, rate_limit_rpm=rpm)


def api_key(key_id: str = "key_1", rpm: int | None = None) -> ApiKey:
    return ApiKey(id=key_id, account_id="acc_1", name="k", prefix="aio_", created_at=0, rate_limit_rpm=rpm)


async def test_local_bucket_bursts_then_refills_at_the_rate() -> None:
    clock = Clock()
    buckets = LocalBuckets(clock=clock)
    per_min_6 = [Bucket("k", 6)]
    assert [await buckets.take(per_min_6) for _ in range(6)] == [0.0] * 6
    assert await buckets.take(per_min_6) == pytest.approx(10.0)  # one token every 10 s
    clock.now += 9.0
    assert await buckets.take(per_min_6) == pytest.approx(1.0)
    clock.now += 1.0
    assert await buckets.take(per_min_6) == 0.0


async def test_a_refused_request_takes_no_token_from_any_bucket() -> None:
    buckets = LocalBuckets(clock=Clock())
    key_bucket, account_bucket = Bucket("key", 10), Bucket("acc", 1)
    assert await buckets.take([key_bucket, account_bucket]) == 0.0
    assert await buckets.take([key_bucket, account_bucket]) > 0
    assert [await buckets.take([key_bucket]) for _ in range(9)] == [0.0] * 9, "the key kept its 9 tokens"


async def test_limits_are_off_unless_configured_and_rows_override_defaults() -> None:
    limiter = RateLimiter(Settings(rate_limit_key_rpm=None, rate_limit_account_rpm=None))
    assert limiter.buckets_for(api_key(), account()) == []
    for _ in range(1000):
        await limiter.check(api_key(), account())
    defaults = RateLimiter(Settings(rate_limit_key_rpm=60, rate_limit_account_rpm=600, max_concurrent_tasks=5))
    assert defaults.buckets_for(api_key(rpm=5), account()) == [Bucket("key:key_1", 5), Bucket("acc:acc_1", 600)]
    assert defaults.max_active_tasks(Account(id="a", email="e", created_at=0, max_concurrent_tasks=2)) == 2
    assert defaults.max_active_tasks(account()) == 5


@pytest.mark.redis
async def test_redis_buckets_are_shared_by_every_limiter(redis_server: RedisServer) -> None:
    """Two limiters stand for two API processes: together they let through exactly the limit."""
    settings = Settings(redis_url=redis_server.url, rate_limit_key_rpm=4)
    first, second = RateLimiter.from_settings(settings), RateLimiter.from_settings(settings)
    try:
        refused = []
        for limiter in (first, second, first, second, first):
            try:
                await limiter.check(api_key("key_shared"), account())
            except RateLimited as exc:
                refused.append(exc.retry_after)
        assert refused == [15], "one token every 15 s at 4/min"
        client = aioredis.Redis.from_url(redis_server.url)
        assert await client.exists(KEY_PREFIX + "key:key_shared") == 1
        assert 0 < await client.pttl(KEY_PREFIX + "key:key_shared") <= 60_000, "idle buckets expire"
        await client.aclose()
    finally:
        await first.aclose()
        await second.aclose()


@pytest.mark.redis
async def test_redis_down_falls_back_to_in_process_buckets_and_recovers(redis_server: RedisServer) -> None:
    limiter = RateLimiter.from_settings(Settings(redis_url=redis_server.url, rate_limit_key_rpm=2))
    try:
        await limiter.check(api_key(), account())
        await limiter.check(api_key(), account())
        with pytest.raises(RateLimited):
            await limiter.check(api_key(), account())
        redis_server.stop()
        # Redis is gone: the request is not refused for it; this process's own buckets take over
        await limiter.check(api_key(), account())
        await limiter.check(api_key(), account())
        with pytest.raises(RateLimited):
            await limiter.check(api_key(), account())
        redis_server.start()  # empty again (no persistence): its bucket for the key is full
        limiter.redis_retry_s = 0.0
        with pytest.raises(RateLimited):
            await limiter.check(api_key(), account())  # still inside the retry window set earlier
        limiter._redis_down_until = 0.0
        await limiter.check(api_key(), account())
        client = aioredis.Redis.from_url(redis_server.url)
        assert await client.exists(KEY_PREFIX + "key:key_1") == 1, "back on the shared buckets"
        await client.aclose()
    finally:
        await limiter.aclose()


@pytest.fixture
async def limited_app(tmp_path: Path, database_url: str) -> AsyncIterator[AppHarness]:
    settings = make_settings(tmp_path, database_url, rate_limit_key_rpm=3)
    async with AppHarness(settings, embedded_worker=False) as h:
        yield h


async def test_create_route_answers_429_with_retry_after_and_charges_nothing(limited_app: AppHarness) -> None:
    caller = await limited_app.caller(credits=100)
    statuses = [(await caller.post("/api/v1/images/generations", json=SEED)).status_code for _ in range(3)]
    assert statuses == [202, 202, 202]
    r = await caller.post("/api/v1/images/generations", json=SEED)
    assert r.status_code == 429 and int(r.headers["retry-after"]) == 20
    assert r.json()["error"]["code"] == "rate_limited" and r.json()["error"]["message"]
    assert len((await caller.get("/api/v1/tasks")).json()["data"]) == 3
    assert (await caller.get("/api/v1/account")).json()["credits"] == {"balance": 100, "held": 3, "available": 97}
    other = await limited_app.caller()
    assert (await other.post("/api/v1/images/generations", json=SEED)).status_code == 202, "limits are per key"


async def test_max_concurrent_tasks_counts_queued_and_running(tmp_path: Path, database_url: str) -> None:
    async with AppHarness(make_settings(tmp_path, database_url, max_concurrent_tasks=2), embedded_worker=False) as h:
        caller = await h.caller(credits=100)
        created = [await caller.post("/api/v1/images/generations", json=SEED) for _ in range(2)]
        assert [r.status_code for r in created] == [202, 202]
        r = await caller.post("/api/v1/images/generations", json=SEED)
        assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limited" and r.headers["retry-after"]
        assert (await caller.get("/api/v1/account")).json()["credits"]["held"] == 2
        await caller.post(f"/api/v1/tasks/{created[0].json()['task_id']}/cancel")
        assert (await caller.post("/api/v1/images/generations", json=SEED)).status_code == 202
