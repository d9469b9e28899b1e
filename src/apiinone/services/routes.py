"""What operators see of upstream routes: configuration, breaker state and counters, never a key."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from apiinone.domain.catalog import Catalog
from apiinone.domain.tasks import iso
from apiinone.upstreams.breaker import BreakerBoard, BreakerState
from apiinone.upstreams.pool import RoutePool


class RouteStatusService:
    def __init__(self, catalog_source: Callable[[], Catalog], pool: RoutePool, breakers: BreakerBoard) -> None:
        self.catalog_source = catalog_source
        self.pool = pool
        self.breakers = breakers

    async def list_routes(self, *, refresh: bool = True) -> list[dict[str, Any]]:
        """Every route of every model, as ``GET /api/v1/admin/routes`` shows it (API.md)."""
        if refresh:  # counters of the other processes, flushed at their last sync
            await self.breakers.refresh()
        rows: list[dict[str, Any]] = []
        for spec in sorted(self.catalog_source().models.values(), key=lambda m: m.id):
            for route in self.pool.routes(spec):
                health = self.breakers.snapshot(spec.id, route.name)
                state = health.state
                if state is BreakerState.OPEN and not self.breakers.is_open(spec.id, route.name):
                    state = BreakerState.HALF_OPEN  # cooled down: the next call is its probe
                rows.append({
                    "model": spec.id, "name": route.name, "provider": route.provider,
                    "base_url": route.base_url or None, "upstream_model": route.upstream_model,
                    "priority": route.priority, "weight": route.weight,
                    "configured": self.pool.is_configured(route),
                    "keys": len(route.keys), "keys_usable": len(self.pool.usable_keys(route)),
                    "state": state.value, "consecutive_failures": health.consecutive_failures,
                    "requests": health.requests, "failures": health.failures,
                    "latency_ms_p50": health.latency_ms_p50, "last_error": health.last_error,
                    "last_error_at": iso(health.last_error_at),
                    "open_until": iso(health.open_until) if state is BreakerState.OPEN else None,
                })
        return rows
