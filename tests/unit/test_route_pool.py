"""The route pool and breakers on in-memory twins: pick order, weights, failover, keys, states."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest

from apiinone.domain.catalog import ModelSpec, RouteSpec
from apiinone.upstreams.base import RouteTarget, UpstreamError, UpstreamUnavailableError
from apiinone.upstreams.breaker import Admission, BreakerBoard, BreakerState, MemoryRouteHealthStore
from apiinone.upstreams.pool import RoutePool
from apiinone.upstreams.registry import AdapterRegistry


class Echo:
    provider = "echo"
    needs_key = True

    async def aclose(self) -> None:
        return None


class Clock:
    def __init__(self) -> None:
        self.ms = 1_000_000

    def __call__(self) -> int:
        return self.ms


def spec(*routes: RouteSpec) -> ModelSpec:
    return ModelSpec(id="m", name="m", type="image", provider="echo", upstream_model="up", pricing={"medium": 1},
                     routes=routes)


def pool_for(env: dict[str, str], *, attempts: int = 3, failures: int = 5,
             clock: Clock | None = None) -> RoutePool:
    registry = AdapterRegistry(None, factories={})  # type: ignore[arg-type]
    registry.register("echo", Echo())
    breakers = BreakerBoard(MemoryRouteHealthStore(), failures=failures, cooldown_s=10, clock=clock or Clock())
    return RoutePool(registry, breakers, attempts=attempts, backoff_s=0.0, environ=env.get)


def route(name: str, **kw: Any) -> RouteSpec:
    return RouteSpec(name=name, provider="echo", api_key_env=kw.pop("env", "K_" + name.upper()), **kw)


async def test_priority_first_then_failover_in_order() -> None:
    pool = pool_for({"K_A": "ka", "K_B": "kb", "K_C": "kc"})
    model = spec(route("c", priority=2), route("a", priority=0), route("b", priority=1))
    seen: list[str] = []

    async def call(adapter: Echo, target: RouteTarget) -> str:
        seen.append(target.route)
        if target.route != "c":
            raise UpstreamError("down", retryable=True)
        return target.api_key or ""

    routed = await pool.call(model, call)
    assert seen == ["a", "b", "c"] and routed.value == "kc" and routed.route == "c" and routed.attempts == 3


async def test_weights_hold_over_many_picks() -> None:
    random.seed(7)
    pool = pool_for({"K_A": "ka", "K_B": "kb"})
    model = spec(route("a", weight=3), route("b", weight=1))
    firsts: Counter[str] = Counter()

    async def call(adapter: Echo, target: RouteTarget) -> str:
        firsts[target.route] += 1
        return target.route

    for _ in range(4000):
        await pool.call(model, call)
    share = firsts["a"] / 4000
    assert 0.72 < share < 0.78, firsts  # 3:1 → 75 %


async def test_zero_weight_is_only_a_fallback() -> None:
    pool = pool_for({"K_A": "ka", "K_B": "kb"})
    model = spec(route("a", weight=0), route("b", weight=1))
    order = [pool.order(pool.routes(model))[0].name for _ in range(200)]
    assert set(order) == {"b"}


async def test_a_refusal_is_not_failed_over() -> None:
    pool = pool_for({"K_A": "ka", "K_B": "kb"})
    model = spec(route("a"), route("b", priority=1))
    seen: list[str] = []

    async def call(adapter: Echo, target: RouteTarget) -> str:
        seen.append(target.route)
        raise UpstreamError("bad request", retryable=False)

    with pytest.raises(UpstreamError, match="bad request"):
        await pool.call(model, call)
    assert seen == ["a"]


async def test_one_route_is_retried_up_to_the_attempt_budget() -> None:
    pool = pool_for({"K_A": "ka"}, attempts=4)
    calls = 0

    async def call(adapter: Echo, target: RouteTarget) -> str:
        nonlocal calls
        calls += 1
        raise UpstreamError("503", retryable=True)

    with pytest.raises(UpstreamError):
        await pool.call(spec(route("a")), call)
    assert calls == 4


async def test_keys_are_used_in_turn_and_a_refused_key_is_set_aside() -> None:
    pool = pool_for({"K_A": "k1, k2 ,k3"})
    model = spec(route("a"))
    used: list[str | None] = []

    async def call(adapter: Echo, target: RouteTarget) -> str:
        used.append(target.api_key)
        if target.api_key == "k2":
            raise UpstreamError("refused", key_refused=True)
        return "ok"

    for _ in range(5):
        assert (await pool.call(model, call)).value == "ok"
    assert used[:2] == ["k1", "k2"]  # in turn; the refused one is retried at once with the next key
    assert "k2" not in used[2:] and set(used[2:]) == {"k1", "k3"}
    assert pool.usable_keys(pool.routes(model)[0]) == ("k1", "k3")


async def test_no_key_left_means_not_configured_and_unavailable() -> None:
    pool = pool_for({"K_A": "k1"})
    model = spec(route("a"))

    async def call(adapter: Echo, target: RouteTarget) -> str:
        raise UpstreamError("refused", key_refused=True)

    with pytest.raises(UpstreamError, match="refused"):
        await pool.call(model, call)
    assert not pool.is_available(model)
    with pytest.raises(UpstreamUnavailableError):
        await pool.call(model, call)


async def test_a_route_without_its_key_is_not_configured() -> None:
    pool = pool_for({})
    assert not pool.is_available(spec(route("a")))


async def test_breaker_state_machine_with_a_clock() -> None:
    clock = Clock()
    store = MemoryRouteHealthStore()
    board = BreakerBoard(store, failures=2, cooldown_s=10, clock=clock)
    assert await board.admit("m", "a") is Admission.ALLOW
    await board.record_failure("m", "a", "e1")
    assert board.state("m", "a") is BreakerState.CLOSED
    await board.record_failure("m", "a", "e2")
    assert board.state("m", "a") is BreakerState.OPEN and board.is_open("m", "a")
    assert await board.admit("m", "a") is Admission.DENY
    clock.ms += 10_000
    assert not board.is_open("m", "a")
    assert await board.admit("m", "a") is Admission.PROBE
    other = BreakerBoard(store, failures=2, cooldown_s=10, clock=clock)  # another process
    await other.refresh()
    assert await other.admit("m", "a") is Admission.DENY  # one probe at a time, across processes
    await board.record_success("m", "a", 12)
    assert board.state("m", "a") is BreakerState.CLOSED
    await other.refresh()
    assert other.state("m", "a") is BreakerState.CLOSED and await other.admit("m", "a") is Admission.ALLOW


async def test_a_failed_probe_reopens() -> None:
    clock = Clock()
    board = BreakerBoard(MemoryRouteHealthStore(), failures=1, cooldown_s=5, clock=clock)
    await board.record_failure("m", "a", "e")
    clock.ms += 5_000
    assert await board.admit("m", "a") is Admission.PROBE
    await board.record_failure("m", "a", "still down")
    assert board.is_open("m", "a")
    snap = board.snapshot("m", "a")
    assert snap.failures == 2 and snap.last_error == "still down"


async def test_the_old_single_route_form_still_works() -> None:
    model = ModelSpec(id="m", name="m", type="image", provider="echo", upstream_model="up", pricing={},
                      api_key_env="K_OLD", base_url="http://x/v1")
    pool = pool_for({"K_OLD": "kk"})
    [r] = pool.routes(model)
    assert (r.name, r.provider, r.base_url, r.keys, r.upstream_model) == ("echo", "echo", "http://x/v1", ("kk",), "up")


async def test_a_model_without_routes_resolves_its_one_route_once() -> None:
    """The single-route form (no ``routes``) is the same route object on every call, so the pool's
    cache holds one entry however many requests it serves (it used to grow by one per call)."""
    pool = pool_for({"K_ECHO": "k"})
    model = ModelSpec(id="solo", name="solo", type="image", provider="echo", upstream_model="up",
                      pricing={"medium": 1}, api_key_env="K_ECHO")

    async def call(adapter: Echo, target: RouteTarget) -> str:
        return target.upstream_model

    for _ in range(50):
        assert pool.is_available(model)
        assert (await pool.call(model, call)).value == "up"
    assert model.effective_routes() is model.effective_routes()
    assert len(pool.routes(model)) == 1 and len(pool._resolved) == 1
