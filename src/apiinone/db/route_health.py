"""The shared record of every route's circuit breaker (``route_health``): SQL for
:class:`apiinone.upstreams.breaker.RouteHealthStore`. Each method is one short transaction."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import and_, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from apiinone.db import tables as t
from apiinone.db.channels import ROUTES_CHANNEL
from apiinone.db.dialect import insert_or_ignore
from apiinone.upstreams.breaker import BreakerState, HealthDelta, RouteHealth

if TYPE_CHECKING:
    from apiinone.db.database import Database

_R = t.route_health.c


class RouteHealthRepository:
    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn

    async def ensure(self, model: str, route: str, at: int) -> None:
        await self.conn.execute(insert_or_ignore(self.conn, t.route_health, {
            "model": model, "route": route, "state": BreakerState.CLOSED.value, "consecutive_failures": 0,
            "requests": 0, "failures": 0, "updated_at": at}))

    async def all(self) -> list[RouteHealth]:
        rows = (await self.conn.execute(select(t.route_health))).mappings()
        return [RouteHealth(model=r["model"], route=r["route"], state=BreakerState(r["state"]),
                            consecutive_failures=int(r["consecutive_failures"]), open_until=r["open_until"],
                            probe_until=r["probe_until"], requests=int(r["requests"]),
                            failures=int(r["failures"]), latency_ms_p50=r["latency_ms_p50"],
                            last_error=r["last_error"], last_error_at=r["last_error_at"]) for r in rows]

    async def set_open(self, model: str, route: str, *, until: int, error: str | None, at: int) -> None:
        await self.ensure(model, route, at)
        values: dict[str, object] = {"state": BreakerState.OPEN.value, "open_until": until, "probe_until": None,
                                     "updated_at": at}
        if error:
            values |= {"last_error": error, "last_error_at": at}
        await self.conn.execute(update(t.route_health).where(_R.model == model, _R.route == route).values(**values))

    async def claim_probe(self, model: str, route: str, *, now: int, probe_until: int) -> bool:
        result = await self.conn.execute(
            update(t.route_health)
            .where(_R.model == model, _R.route == route,
                   or_(and_(_R.state == BreakerState.OPEN.value, _R.open_until <= now),
                       and_(_R.state == BreakerState.HALF_OPEN.value, _R.probe_until <= now)))
            .values(state=BreakerState.HALF_OPEN.value, probe_until=probe_until, updated_at=now))
        return result.rowcount == 1

    async def set_closed(self, model: str, route: str, *, at: int) -> None:
        await self.conn.execute(
            update(t.route_health).where(_R.model == model, _R.route == route)
            .values(state=BreakerState.CLOSED.value, open_until=None, probe_until=None, consecutive_failures=0,
                    updated_at=at))

    async def add_counts(self, delta: HealthDelta, *, at: int) -> None:
        await self.ensure(delta.model, delta.route, at)
        values: dict[str, object] = {
            "requests": _R.requests + delta.requests, "failures": _R.failures + delta.failures,
            "consecutive_failures": delta.consecutive_failures, "updated_at": at}
        if delta.latency_ms_p50 is not None:
            values["latency_ms_p50"] = delta.latency_ms_p50
        if delta.last_error:
            values |= {"last_error": delta.last_error, "last_error_at": delta.last_error_at}
        await self.conn.execute(
            update(t.route_health).where(_R.model == delta.model, _R.route == delta.route).values(**values))


class SqlRouteHealthStore:
    """:class:`RouteHealthStore` on the database; transitions NOTIFY the other processes."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def load_all(self) -> list[RouteHealth]:
        async with self.db.uow(write=False) as uow:
            return await uow.route_health.all()

    async def open(self, model: str, route: str, *, until: int, error: str | None, at: int) -> None:
        async with self.db.uow() as uow:
            await uow.route_health.set_open(model, route, until=until, error=error, at=at)
            await uow.notify(ROUTES_CHANNEL)
            await uow.commit()

    async def claim_probe(self, model: str, route: str, *, now: int, probe_until: int) -> bool:
        async with self.db.uow() as uow:
            won = await uow.route_health.claim_probe(model, route, now=now, probe_until=probe_until)
            await uow.commit()
        return won

    async def close(self, model: str, route: str, *, at: int) -> None:
        async with self.db.uow() as uow:
            await uow.route_health.set_closed(model, route, at=at)
            await uow.notify(ROUTES_CHANNEL)
            await uow.commit()

    async def add_counts(self, deltas: list[HealthDelta], *, at: int) -> None:
        async with self.db.uow() as uow:
            for delta in deltas:
                await uow.route_health.add_counts(delta, at=at)
            await uow.commit()
