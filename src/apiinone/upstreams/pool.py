"""Route choice and failover: every upstream call of every kind goes through :meth:`RoutePool.call`.

Per call: the model's configured routes that are not open, by ``priority`` (lower first), weighted
at random within one priority; a retryable failure moves to the next route, up to ``attempts``
calls in all, coming back round with exponential backoff (so a one-route model is retried); a
refusal of the request fails at once; a refused key is set aside and the route's next key used.
The caller's work is charged at most once because the pool only ever returns one result.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import structlog

from apiinone.domain.catalog import ModelSpec, RouteSpec
from apiinone.telemetry.metrics import observe_attempt
from apiinone.telemetry.tracing import NOOP_TRACER, Tracer
from apiinone.upstreams.base import Adapter, RouteTarget, UpstreamError, UpstreamUnavailableError
from apiinone.upstreams.breaker import Admission, BreakerBoard
from apiinone.upstreams.registry import AdapterRegistry

log = structlog.get_logger(__name__)

T = TypeVar("T")
MAX_BACKOFF_S = 30.0


@dataclass(frozen=True, slots=True)
class ResolvedRoute:
    """A catalog route with this deployment's settings applied (keys read from the environment)."""

    model_id: str
    name: str
    provider: str
    base_url: str
    keys: tuple[str, ...]
    upstream_model: str
    priority: int
    weight: int
    timeout_s: float
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Routed(Generic[T]):
    """A call's result and where it came from."""

    value: T
    route: str
    attempts: int
    latency_ms: int


@dataclass(frozen=True, slots=True)
class RouteDefaults:
    """Per-provider fallbacks for routes that leave base URL or key unset (``OPENAI_*``)."""

    base_urls: dict[str, str] = field(default_factory=dict)
    keys: dict[str, str | None] = field(default_factory=dict)
    timeout_s: float = 120.0


class RoutePool:
    def __init__(self, adapters: AdapterRegistry, breakers: BreakerBoard, *, attempts: int = 3,
                 backoff_s: float = 0.5, defaults: RouteDefaults | None = None, key_refusal_s: float = 600.0,
                 environ: Callable[[str], str | None] = os.environ.get, tracer: Tracer = NOOP_TRACER) -> None:
        self.adapters = adapters
        self.tracer = tracer
        self.breakers = breakers
        self.attempts = max(1, attempts)
        self.backoff_s = backoff_s
        self.defaults = defaults or RouteDefaults()
        self.environ = environ
        self.key_refusal_s = key_refusal_s
        self._refused: dict[tuple[str, str], dict[str, float]] = {}
        """Keys the upstream refused, per route, until when they are set aside (then tried again)."""
        self._turns: dict[tuple[str, str], itertools.count[int]] = {}
        self._resolved: dict[tuple[str, RouteSpec], ResolvedRoute] = {}

    # ------------------------------------------------------------------------------------ routes

    def resolve(self, spec: ModelSpec, route: RouteSpec) -> ResolvedRoute:
        cached = self._resolved.get((spec.id, route))
        if cached is not None:
            return cached
        if route.keys:
            raw = ",".join(route.keys)
        elif route.api_key_env:
            raw = self.environ(route.api_key_env) or ""
        else:
            raw = self.defaults.keys.get(route.provider) or ""
        keys = tuple(k.strip() for k in raw.split(",") if k.strip())
        resolved = ResolvedRoute(
            model_id=spec.id, name=route.name, provider=route.provider,
            base_url=(route.base_url or self.defaults.base_urls.get(route.provider, "")).rstrip("/"),
            keys=keys, upstream_model=route.upstream_model or spec.upstream_model,
            priority=route.priority, weight=route.weight,
            timeout_s=route.timeout_s or self.defaults.timeout_s, options=dict(route.options))
        self._resolved[(spec.id, route)] = resolved
        return resolved

    def routes(self, spec: ModelSpec) -> list[ResolvedRoute]:
        return [self.resolve(spec, r) for r in spec.effective_routes()]

    def usable_keys(self, route: ResolvedRoute) -> tuple[str, ...]:
        refused = self._refused.get((route.model_id, route.name))
        if not refused:
            return route.keys
        now = time.monotonic()
        for key in [k for k, until in refused.items() if until <= now]:
            del refused[key]  # set aside long enough: a rotated or topped-up key gets another chance
        return tuple(k for k in route.keys if k not in refused)

    def is_configured(self, route: ResolvedRoute) -> bool:
        """It has an adapter that can run here (an offline one may need a program installed: its
        ``installed`` is false without it), and a key that was not refused (or needs none)."""
        adapter = self.adapters.get(route.provider)
        if adapter is None or not getattr(adapter, "installed", True):
            return False
        return not getattr(adapter, "needs_key", True) or bool(self.usable_keys(route))

    def is_available(self, spec: ModelSpec) -> bool:
        """At least one route is configured and not open: new work may be accepted."""
        return any(self.is_configured(r) and not self.breakers.is_open(spec.id, r.name) for r in self.routes(spec))

    def order(self, routes: list[ResolvedRoute]) -> list[ResolvedRoute]:
        """Priority ascending; weighted random order within a priority (Efraimidis–Spirakis keys)."""
        def key(route: ResolvedRoute) -> tuple[int, float]:
            weight = route.weight
            draw = random.random() ** (1.0 / weight) if weight > 0 else -1.0
            return (route.priority, -draw)
        return sorted(routes, key=key)

    def target(self, spec: ModelSpec, route_name: str) -> tuple[Adapter, RouteTarget] | None:
        """The adapter and target of one named route (following a remote job where it started)."""
        for route in self.routes(spec):
            if route.name == route_name:
                adapter = self.adapters.get(route.provider)
                if adapter is None:
                    return None
                return adapter, self._target(route, self._next_key(route))
        return None

    def _next_key(self, route: ResolvedRoute) -> str | None:
        keys = self.usable_keys(route)
        if not keys:
            return None
        turn = self._turns.setdefault((route.model_id, route.name), itertools.count())
        return keys[next(turn) % len(keys)]

    def _target(self, route: ResolvedRoute, key: str | None) -> RouteTarget:
        return RouteTarget(model_id=route.model_id, route=route.name, provider=route.provider,
                           base_url=route.base_url, api_key=key, upstream_model=route.upstream_model,
                           timeout_s=route.timeout_s, options=route.options)

    def _refuse_key(self, route: ResolvedRoute, key: str | None) -> None:
        if key is None:
            return
        self._refused.setdefault((route.model_id, route.name), {})[key] = time.monotonic() + self.key_refusal_s
        log.warning("upstream_key_refused", model=route.model_id, route=route.name, key=f"...{key[-4:]}",
                    keys_left=len(self.usable_keys(route)))

    def _backoff_s(self, visit: int, retry_after_s: float | None) -> float:
        if retry_after_s is not None and 0 <= retry_after_s <= MAX_BACKOFF_S:
            return retry_after_s
        return min(MAX_BACKOFF_S, self.backoff_s * 2.0 ** (visit - 1)) * (0.75 + random.random() / 2)

    # ------------------------------------------------------------------------------------ calls

    async def call(self, spec: ModelSpec, fn: Callable[[Any, RouteTarget], Awaitable[T]]) -> Routed[T]:
        """Run ``fn(adapter, target)`` on the model's routes with failover; the first success wins.

        ``fn`` must raise :class:`UpstreamError` for upstream failures; anything else propagates
        at once. A streaming caller makes ``fn`` return once the first output has arrived, so that
        failover happens only before any output reached its client."""
        with self.tracer.span("route", {"apiinone.model": spec.id}) as span:
            routed = await self._call(spec, fn)
            span.set_attribute("apiinone.route", routed.route)
            span.set_attribute("apiinone.attempts", routed.attempts)
            return routed

    async def _call(self, spec: ModelSpec, fn: Callable[[Any, RouteTarget], Awaitable[T]]) -> Routed[T]:
        order = self.order([r for r in self.routes(spec) if self.is_configured(r)])
        visits: dict[str, int] = {}
        denied: set[str] = set()
        attempts = 0
        index = 0
        last: UpstreamError | None = None
        while attempts < self.attempts:
            candidates = [r for r in order if r.name not in denied and self.is_configured(r)]
            if not candidates:
                break
            route = candidates[index % len(candidates)]
            index += 1
            admission = await self.breakers.admit(spec.id, route.name)
            if admission is Admission.DENY:
                denied.add(route.name)
                continue
            visit = visits.get(route.name, 0)
            if visit:
                await asyncio.sleep(self._backoff_s(visit, last.retry_after_s if last else None))
            key = self._next_key(route)
            adapter = self.adapters.get(route.provider)
            if adapter is None:
                denied.add(route.name)
                continue
            target = self._target(route, key)
            visits[route.name] = visit + 1
            attempts += 1
            started = time.perf_counter()
            try:
                with self.tracer.span("upstream.call", {"apiinone.model": spec.id, "apiinone.route": route.name,
                                                        "apiinone.provider": route.provider}):
                    value = await fn(adapter, target)
            except UpstreamError as exc:
                exc.message = target.redact(exc.message)
                outcome = "key_refused" if exc.key_refused else "retryable" if exc.retryable else "refused"
                observe_attempt(spec.id, route.name, outcome, time.perf_counter() - started)
                if exc.key_refused:
                    self._refuse_key(route, key)
                    attempts -= 1  # the key, not the route or the request, failed: try the next key
                    visits[route.name] = visit
                    index -= 1
                    last = exc
                    continue
                if not exc.retryable:
                    await self.breakers.record_refusal(spec.id, route.name)
                    raise
                last = exc
                await self.breakers.record_failure(spec.id, route.name, exc.message)
                log.warning("upstream_attempt_failed", model=spec.id, route=route.name, attempt=attempts,
                            of=self.attempts, error=exc.message[:200])
                continue
            elapsed = time.perf_counter() - started
            observe_attempt(spec.id, route.name, "success", elapsed)
            latency_ms = int(elapsed * 1000)
            await self.breakers.record_success(spec.id, route.name, latency_ms)
            return Routed(value=value, route=route.name, attempts=attempts, latency_ms=latency_ms)
        if last is not None:
            raise last
        raise UpstreamUnavailableError(f"model {spec.id!r} has no configured upstream route right now")
