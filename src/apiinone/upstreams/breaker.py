"""Circuit breakers, one per route, shared by every API and worker process through the database.

Each process counts its own consecutive retryable failures of a route (no write per call). The
transitions are shared: the process that sees the N-th failure writes ``open`` with its cooldown;
after the cooldown exactly one process wins the half-open probe (a conditional UPDATE), and the
probe's outcome closes or reopens the route for everyone. Other processes learn a transition at
their next sync (``sync_s``) or at once through NOTIFY on PostgreSQL. Request and failure counters
and the latency median are flushed with each sync, so the admin page sees every process.

States: closed → (N consecutive retryable failures) → open → (cooldown) → half_open → one probe
call → closed on success, open again on failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Protocol

import structlog

from apiinone.ids import now_ms

log = structlog.get_logger(__name__)

class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True, slots=True)
class RouteHealth:
    """The shared record of one route: its breaker state and its counters."""

    model: str
    route: str
    state: BreakerState = BreakerState.CLOSED
    consecutive_failures: int = 0
    open_until: int | None = None
    probe_until: int | None = None
    requests: int = 0
    failures: int = 0
    latency_ms_p50: int | None = None
    last_error: str | None = None
    last_error_at: int | None = None


@dataclass(frozen=True, slots=True)
class HealthDelta:
    """What one process saw of a route since its last flush."""

    model: str
    route: str
    requests: int
    failures: int
    consecutive_failures: int
    latency_ms_p50: int | None
    last_error: str | None
    last_error_at: int | None


class RouteHealthStore(Protocol):
    """Where breaker transitions and counters are shared. SQL twin: ``db.route_health``."""

    async def load_all(self) -> list[RouteHealth]: ...

    async def open(self, model: str, route: str, *, until: int, error: str | None, at: int) -> None: ...

    async def claim_probe(self, model: str, route: str, *, now: int, probe_until: int) -> bool: ...

    async def close(self, model: str, route: str, *, at: int) -> None: ...

    async def add_counts(self, deltas: list[HealthDelta], *, at: int) -> None: ...


class MemoryRouteHealthStore:
    """The in-process twin: unit tests and single-process setups without a database."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], RouteHealth] = {}

    def _row(self, model: str, route: str) -> RouteHealth:
        return self.rows.get((model, route)) or RouteHealth(model=model, route=route)

    async def load_all(self) -> list[RouteHealth]:
        return list(self.rows.values())

    async def open(self, model: str, route: str, *, until: int, error: str | None, at: int) -> None:
        row = self._row(model, route)
        self.rows[(model, route)] = replace(row, state=BreakerState.OPEN, open_until=until, probe_until=None,
                                            last_error=error or row.last_error,
                                            last_error_at=at if error else row.last_error_at)

    async def claim_probe(self, model: str, route: str, *, now: int, probe_until: int) -> bool:
        row = self._row(model, route)
        due_open = row.state is BreakerState.OPEN and (row.open_until or 0) <= now
        stale_probe = row.state is BreakerState.HALF_OPEN and (row.probe_until or 0) <= now
        if not (due_open or stale_probe):
            return False
        self.rows[(model, route)] = replace(row, state=BreakerState.HALF_OPEN, probe_until=probe_until)
        return True

    async def close(self, model: str, route: str, *, at: int) -> None:
        row = self._row(model, route)
        self.rows[(model, route)] = replace(row, state=BreakerState.CLOSED, open_until=None, probe_until=None,
                                            consecutive_failures=0)

    async def add_counts(self, deltas: list[HealthDelta], *, at: int) -> None:
        for d in deltas:
            row = self._row(d.model, d.route)
            self.rows[(d.model, d.route)] = replace(
                row, requests=row.requests + d.requests, failures=row.failures + d.failures,
                consecutive_failures=d.consecutive_failures,
                latency_ms_p50=d.latency_ms_p50 if d.latency_ms_p50 is not None else row.latency_ms_p50,
                last_error=d.last_error or row.last_error, last_error_at=d.last_error_at or row.last_error_at)


@dataclass
class _Local:
    """This process's view of one route."""

    shared: RouteHealth
    consecutive_failures: int = 0
    requests: int = 0
    failures: int = 0
    last_error: str | None = None
    last_error_at: int | None = None
    latencies: deque[int] = field(default_factory=lambda: deque(maxlen=256))
    probing: bool = False


class Admission(StrEnum):
    ALLOW = "allow"
    PROBE = "probe"  # this call is the route's half-open probe
    DENY = "deny"


class BreakerBoard:
    """Every route's breaker in this process, kept in step with the shared store."""

    def __init__(self, store: RouteHealthStore, *, failures: int = 5, cooldown_s: float = 30.0,
                 sync_s: float = 1.0, clock: Callable[[], int] = now_ms,
                 on_transition: Callable[[], None] = lambda: None) -> None:
        self.store = store
        self.failure_threshold = max(1, failures)
        self.cooldown_ms = int(cooldown_s * 1000)
        self.sync_s = sync_s
        self.clock = clock
        self.on_transition = on_transition
        self._routes: dict[tuple[str, str], _Local] = {}
        self._sync_task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._stopping = False

    def _local(self, model: str, route: str) -> _Local:
        key = (model, route)
        local = self._routes.get(key)
        if local is None:
            local = self._routes[key] = _Local(shared=RouteHealth(model=model, route=route))
        return local

    # ------------------------------------------------------------------------------------ reads

    def state(self, model: str, route: str) -> BreakerState:
        return self._local(model, route).shared.state

    def is_open(self, model: str, route: str) -> bool:
        """Open and still cooling down: no call may go there (a due probe does not count as open)."""
        shared = self._local(model, route).shared
        now = self.clock()
        if shared.state is BreakerState.OPEN:
            return (shared.open_until or 0) > now
        if shared.state is BreakerState.HALF_OPEN:
            return (shared.probe_until or 0) > now  # a probe is out: wait for its outcome
        return False

    def snapshot(self, model: str, route: str) -> RouteHealth:
        """The shared record with this process's unflushed counts added (the admin page)."""
        local = self._local(model, route)
        s = local.shared
        p50 = int(statistics.median(local.latencies)) if local.latencies else s.latency_ms_p50
        return replace(s, requests=s.requests + local.requests, failures=s.failures + local.failures,
                       consecutive_failures=max(local.consecutive_failures, s.consecutive_failures),
                       latency_ms_p50=p50, last_error=local.last_error or s.last_error,
                       last_error_at=local.last_error_at or s.last_error_at)

    # ------------------------------------------------------------------------------------ calls

    async def admit(self, model: str, route: str) -> Admission:
        local = self._local(model, route)
        shared = local.shared
        if shared.state is BreakerState.CLOSED:
            return Admission.ALLOW
        now = self.clock()
        if shared.state is BreakerState.OPEN and (shared.open_until or 0) > now:
            return Admission.DENY
        if shared.state is BreakerState.HALF_OPEN and (shared.probe_until or 0) > now:
            return Admission.DENY
        probe_until = now + max(self.cooldown_ms, 10_000)
        try:
            won = await self.store.claim_probe(model, route, now=now, probe_until=probe_until)
        except Exception as exc:  # store down: let the call through rather than fail closed forever
            log.warning("breaker_store_failed", op="claim_probe", error=str(exc))
            won = True
        if not won:
            await self.refresh()
            return Admission.DENY
        local.shared = replace(shared, state=BreakerState.HALF_OPEN, probe_until=probe_until)
        local.probing = True
        log.info("route_half_open", model=model, route=route)
        return Admission.PROBE

    async def record_success(self, model: str, route: str, latency_ms: int) -> None:
        local = self._local(model, route)
        local.requests += 1
        local.consecutive_failures = 0
        local.latencies.append(latency_ms)
        if local.shared.state is not BreakerState.CLOSED:
            local.probing = False
            local.shared = replace(local.shared, state=BreakerState.CLOSED, open_until=None, probe_until=None,
                                   consecutive_failures=0)
            with contextlib.suppress(Exception):
                await self.store.close(model, route, at=self.clock())
            log.info("route_closed", model=model, route=route)
            self.on_transition()

    async def record_failure(self, model: str, route: str, error: str) -> None:
        """A retryable failure of the route (a refused request is not the route's fault)."""
        local = self._local(model, route)
        now = self.clock()
        local.requests += 1
        local.failures += 1
        local.consecutive_failures += 1
        local.last_error, local.last_error_at = error[:500], now
        reopen = local.probing or local.shared.state is BreakerState.HALF_OPEN
        if reopen or (local.shared.state is BreakerState.CLOSED
                      and local.consecutive_failures >= self.failure_threshold):
            until = now + self.cooldown_ms
            local.probing = False
            local.shared = replace(local.shared, state=BreakerState.OPEN, open_until=until, probe_until=None)
            try:
                await self.store.open(model, route, until=until, error=error[:500], at=now)
            except Exception as exc:
                log.warning("breaker_store_failed", op="open", error=str(exc))
            log.warning("route_opened", model=model, route=route, consecutive_failures=local.consecutive_failures,
                        cooldown_ms=self.cooldown_ms, error=error[:200])
            self.on_transition()

    async def record_refusal(self, model: str, route: str) -> None:
        """The upstream answered and refused the request: the route works; count the request only."""
        local = self._local(model, route)
        local.requests += 1
        local.consecutive_failures = 0
        if local.probing:
            await self.record_success(model, route, 0)
            local.requests -= 1

    # ------------------------------------------------------------------------------------ sync

    async def refresh(self) -> None:
        """Flush this process's counts, then take the shared transitions."""
        now = self.clock()
        deltas = []
        for (model, route), local in self._routes.items():
            if local.requests or local.failures or local.last_error:
                p50 = int(statistics.median(local.latencies)) if local.latencies else None
                deltas.append(HealthDelta(model, route, local.requests, local.failures, local.consecutive_failures,
                                          p50, local.last_error, local.last_error_at))
        if deltas:
            await self.store.add_counts(deltas, at=now)
            for d in deltas:
                local = self._routes[(d.model, d.route)]
                local.requests -= d.requests
                local.failures -= d.failures
                local.last_error = local.last_error_at = None
        for row in await self.store.load_all():
            local = self._local(row.model, row.route)
            if local.probing and row.state is BreakerState.HALF_OPEN:
                row = replace(row, probe_until=local.shared.probe_until)
            local.shared = row

    def wake(self, *_: object) -> None:
        """A NOTIFY said a route changed state in another process."""
        self._wake.set()

    async def start(self) -> None:
        with contextlib.suppress(Exception):
            await self.refresh()
        self._sync_task = asyncio.create_task(self._sync_loop(), name="breaker-sync")

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        if self._sync_task is not None:
            await asyncio.wait([self._sync_task], timeout=5)
            if not self._sync_task.done():
                self._sync_task.cancel()
        with contextlib.suppress(Exception):
            await self.refresh()

    async def _sync_loop(self) -> None:
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.sync_s)
            self._wake.clear()
            if self._stopping:
                return
            try:
                await self.refresh()
            except Exception as exc:
                log.warning("breaker_sync_failed", error=str(exc))
