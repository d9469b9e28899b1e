"""Rate limits: requests per minute per API key and per account, as token buckets.

A limit of ``N`` requests/min is a bucket of ``N`` tokens refilled at ``N/60`` per second, so a
client may burst up to ``N`` and then goes at the steady rate. A request takes one token from
each bucket that applies (its key's and its account's) or none at all: the check is all or
nothing, so a refused request never spends a token.

Limits are off unless configured: ``api_keys.rate_limit_rpm`` / ``accounts.rate_limit_rpm`` on the
row, else the defaults ``APIINONE_RATE_LIMIT_KEY_RPM`` / ``APIINONE_RATE_LIMIT_ACCOUNT_RPM``. The cap
on concurrent tasks (``accounts.max_concurrent_tasks``, else ``APIINONE_MAX_CONCURRENT_TASKS``) is
counted in the database by the task service, inside the transaction that creates the task.

Where the buckets live:

* ``APIINONE_REDIS_URL`` set: in Redis. One Lua script refills and takes from every bucket of a
  request atomically, on Redis's clock, so all API processes and hosts share the limits exactly.
* otherwise: in this process (exact for one API process; with ``--workers N`` each process keeps
  its own buckets, so up to N× the limit gets through; use Redis for exact limits).
* **Redis down (documented fallback):** a failed Redis call is logged (``rate_limit_redis_unavailable``)
  and the request is checked against this process's own buckets instead, and so are the requests of
  the next ``REDIS_RETRY_S`` seconds before Redis is tried again. Requests are never refused, nor
  slowed by more than one short timeout, because Redis is down; limits are per process meanwhile.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import structlog

from apiinone.config import Settings
from apiinone.domain.accounts import Account, ApiKey
from apiinone.errors import RateLimited

log = structlog.get_logger(__name__)

REDIS_RETRY_S = 5.0
REDIS_TIMEOUT_S = 0.5
KEY_PREFIX = "apiinone:rl:"


@dataclass(frozen=True, slots=True)
class Bucket:
    """One token bucket: ``rpm`` tokens at most, refilled at ``rpm / 60`` tokens per second."""

    name: str
    rpm: int


class BucketStore(Protocol):
    async def take(self, buckets: Sequence[Bucket]) -> float:
        """Take one token from every bucket, or from none: 0 if taken, else seconds to wait."""
        ...


class LocalBuckets:
    """Buckets in this process's memory. Idle buckets refill to full, so forgetting them is free."""

    def __init__(self, clock: Any = time.monotonic, max_buckets: int = 100_000) -> None:
        self._clock = clock
        self._max_buckets = max_buckets
        self._state: dict[str, tuple[float, float]] = {}  # name -> (tokens, updated_at)

    async def take(self, buckets: Sequence[Bucket]) -> float:
        now = self._clock()
        levels = []
        wait = 0.0
        for bucket in buckets:
            tokens, updated = self._state.get(bucket.name, (float(bucket.rpm), now))
            per_s = bucket.rpm / 60.0
            tokens = min(float(bucket.rpm), tokens + (now - updated) * per_s)
            levels.append(tokens)
            if tokens < 1.0:
                wait = max(wait, (1.0 - tokens) / per_s)
        if wait > 0:
            return wait
        if len(self._state) >= self._max_buckets:
            self._forget_full(now)
        for bucket, tokens in zip(buckets, levels, strict=True):
            self._state[bucket.name] = (tokens - 1.0, now)
        return 0.0

    def _forget_full(self, now: float) -> None:
        for name, (_tokens, updated) in list(self._state.items()):
            if now - updated > 60.0:  # refilled completely by now, whatever the rate
                del self._state[name]


# KEYS: bucket keys; ARGV: the rpm of each. Returns 0 if a token was taken from every bucket,
# else the milliseconds until the emptiest one has a token. Uses the server's clock, so API hosts
# with skewed clocks still agree.
_TAKE_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local levels = {}
local wait = 0
for i, key in ipairs(KEYS) do
  local rpm = tonumber(ARGV[i])
  local per_ms = rpm / 60000
  local state = redis.call('HMGET', key, 'tokens', 'ts')
  local tokens = tonumber(state[1]) or rpm
  local ts = tonumber(state[2]) or now
  tokens = math.min(rpm, tokens + math.max(0, now - ts) * per_ms)
  levels[i] = tokens
  if tokens < 1 then
    wait = math.max(wait, math.ceil((1 - tokens) / per_ms))
  end
end
if wait > 0 then
  return wait
end
for i, key in ipairs(KEYS) do
  redis.call('HSET', key, 'tokens', tostring(levels[i] - 1), 'ts', tostring(now))
  redis.call('PEXPIRE', key, 60000)
end
return 0
"""


class RedisBuckets:
    """Buckets in Redis, shared by every API process; one atomic script per request."""

    def __init__(self, url: str) -> None:
        import redis.asyncio as aioredis

        self.client = aioredis.Redis.from_url(url, socket_connect_timeout=REDIS_TIMEOUT_S,
                                              socket_timeout=REDIS_TIMEOUT_S)
        self._script = self.client.register_script(_TAKE_LUA)

    async def take(self, buckets: Sequence[Bucket]) -> float:
        keys = [KEY_PREFIX + b.name for b in buckets]
        wait_ms = await self._script(keys=keys, args=[b.rpm for b in buckets])
        return int(wait_ms) / 1000.0

    async def aclose(self) -> None:
        await self.client.aclose()


class RateLimiter:
    """Decides, per request, which buckets apply and whether the request may go ahead."""

    def __init__(self, settings: Settings, shared: RedisBuckets | None = None,
                 local: LocalBuckets | None = None) -> None:
        self.settings = settings
        self.shared = shared
        self.local = local or LocalBuckets()
        self.redis_retry_s = REDIS_RETRY_S
        self._redis_down_until = 0.0

    @staticmethod
    def from_settings(settings: Settings) -> RateLimiter:
        return RateLimiter(settings, RedisBuckets(settings.redis_url) if settings.redis_url else None)

    def buckets_for(self, key: ApiKey | None, account: Account) -> list[Bucket]:
        buckets = []
        key_rpm = (key.rate_limit_rpm if key else None) or self.settings.rate_limit_key_rpm
        if key is not None and key_rpm:
            buckets.append(Bucket(f"key:{key.id}", key_rpm))
        account_rpm = account.rate_limit_rpm or self.settings.rate_limit_account_rpm
        if account_rpm:
            buckets.append(Bucket(f"acc:{account.id}", account_rpm))
        return buckets

    def max_active_tasks(self, account: Account) -> int | None:
        """The account's cap on queued + running tasks, or None for no cap."""
        return account.max_concurrent_tasks or self.settings.max_concurrent_tasks

    async def check(self, key: ApiKey | None, account: Account) -> None:
        """Take a token for this request from each applicable bucket, or raise ``RateLimited``."""
        buckets = self.buckets_for(key, account)
        if not buckets:
            return
        wait = await self._take(buckets)
        if wait > 0:
            names = " and ".join("API key" if b.name.startswith("key:") else "account" for b in buckets)
            raise RateLimited(f"too many requests for this {names}; retry in {math.ceil(wait)} s",
                              retry_after=math.ceil(wait))

    async def _take(self, buckets: Sequence[Bucket]) -> float:
        if self.shared is not None and time.monotonic() >= self._redis_down_until:
            try:
                return await self.shared.take(buckets)
            except Exception as exc:  # any Redis failure: fall back, never refuse for it
                self._redis_down_until = time.monotonic() + self.redis_retry_s
                log.warning("rate_limit_redis_unavailable", error=type(exc).__name__,
                            fallback="in-process buckets", retry_in_s=self.redis_retry_s)
        return await self.local.take(buckets)

    async def aclose(self) -> None:
        if self.shared is not None:
            await self.shared.aclose()
