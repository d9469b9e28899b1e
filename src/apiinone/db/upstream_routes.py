"""Routes made in the console (``upstream_routes``). Keys arrive here already sealed."""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncConnection

from apiinone.db import tables as t

_U = t.upstream_routes.c


class UpstreamRouteRepository:
    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn

    async def all(self) -> list[RowMapping]:
        return list((await self.conn.execute(
            select(t.upstream_routes).order_by(_U.model_id, _U.priority, _U.name))).mappings().all())

    async def get(self, route_id: str) -> RowMapping | None:
        return (await self.conn.execute(select(t.upstream_routes).where(_U.id == route_id))).mappings().first()

    async def find(self, model_id: str, name: str) -> RowMapping | None:
        return (await self.conn.execute(select(t.upstream_routes).where(
            _U.model_id == model_id, _U.name == name))).mappings().first()

    async def add(self, values: dict[str, Any]) -> None:
        await self.conn.execute(insert(t.upstream_routes).values(**values))

    async def update(self, route_id: str, values: dict[str, Any]) -> None:
        await self.conn.execute(update(t.upstream_routes).where(_U.id == route_id).values(**values))

    async def delete(self, route_id: str) -> None:
        await self.conn.execute(delete(t.upstream_routes).where(_U.id == route_id))

    async def fingerprint(self) -> tuple[int, int]:
        """(rows, newest change): cheap to poll, changes whenever a route row does."""
        from sqlalchemy import func

        row = (await self.conn.execute(select(func.count(), func.max(_U.updated_at)))).one()
        return int(row[0]), int(row[1] or 0)
