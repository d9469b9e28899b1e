"""SQL of orders and redemption codes (the billing service's repository)."""

from __future__ import annotations

from typing import Any

import orjson
from sqlalchemy import and_, func, insert, select, update
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncConnection

from apiinone.db import tables as t
from apiinone.domain.billing import CodeBatch, Order, OrderEvent


def _order_from_row(r: RowMapping) -> Order:
    history = tuple(OrderEvent(**e) for e in orjson.loads(r["history"] or "[]"))
    return Order(id=r["id"], account_id=r["account_id"], pack=r["pack"], credits=int(r["credits"]),
                 amount_cents=int(r["amount_cents"]), currency=r["currency"], provider=r["provider"],
                 status=r["status"], created_at=int(r["created_at"]), paid_at=r["paid_at"],
                 external_id=r["external_id"], history=history,
                 account_email=r.get("email"))


def _history_json(history: tuple[OrderEvent, ...]) -> str:
    return orjson.dumps([{"status": e.status, "at": e.at, "actor": e.actor, "note": e.note}
                         for e in history]).decode()


class BillingRepository:
    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn

    async def add_codes(self, hashes: list[tuple[str, str]], *, batch: str, credits: int, actor: str | None,
                        at: int) -> None:
        await self.conn.execute(insert(t.redemption_codes), [
            {"code_hash": h, "batch": batch, "code_prefix": prefix, "credits": credits, "created_by": actor,
             "created_at": at}
            for h, prefix in hashes
        ])

    async def claim_code(self, code_hash: str, account_id: str, at: int) -> tuple[int, str] | None:
        """Mark the code redeemed iff nobody has: the one compare-and-set that makes it single-use."""
        result = await self.conn.execute(
            update(t.redemption_codes)
            .where(t.redemption_codes.c.code_hash == code_hash, t.redemption_codes.c.redeemed_by.is_(None))
            .values(redeemed_by=account_id, redeemed_at=at)
        )
        if result.rowcount != 1:
            return None
        row = (await self.conn.execute(
            select(t.redemption_codes.c.credits, t.redemption_codes.c.code_prefix)
            .where(t.redemption_codes.c.code_hash == code_hash))).one()
        return int(row[0]), str(row[1])

    async def batches(self, limit: int = 100) -> list[CodeBatch]:
        c = t.redemption_codes.c
        stmt = (select(c.batch, func.max(c.credits), func.count(), func.count(c.redeemed_by), func.min(c.created_at))
                .group_by(c.batch).order_by(func.min(c.created_at).desc()).limit(limit))
        return [CodeBatch(batch=str(b), credits=int(cr), total=int(n), redeemed=int(r), created_at=int(at))
                for b, cr, n, r, at in (await self.conn.execute(stmt)).all()]

    async def add_order(self, order: Order) -> None:
        await self.conn.execute(insert(t.orders).values(
            id=order.id, account_id=order.account_id, pack=order.pack, credits=order.credits,
            amount_cents=order.amount_cents, currency=order.currency, provider=order.provider,
            status=order.status, history=_history_json(order.history), created_at=order.created_at))

    async def get_order(self, order_id: str) -> Order | None:
        row = (await self.conn.execute(select(t.orders).where(t.orders.c.id == order_id))).mappings().first()
        return _order_from_row(row) if row else None

    async def list_orders(self, account_id: str | None, *, status: str | None = None,
                          limit: int = 50) -> list[Order]:
        stmt = (select(t.orders, t.accounts.c.email)
                .join(t.accounts, t.accounts.c.id == t.orders.c.account_id)
                .order_by(t.orders.c.id.desc()).limit(limit))
        if account_id is not None:
            stmt = stmt.where(t.orders.c.account_id == account_id)
        if status:
            stmt = stmt.where(t.orders.c.status == status)
        return [_order_from_row(r) for r in (await self.conn.execute(stmt)).mappings()]

    async def move_order(self, order: Order, new_status: str, event: OrderEvent, *,
                         external_id: str | None = None) -> bool:
        """Compare-and-set the order out of the status it was read in, appending to its history."""
        values: dict[str, Any] = {"status": new_status, "history": _history_json((*order.history, event))}
        if new_status == "paid":
            values["paid_at"] = event.at
        if external_id is not None:
            values["external_id"] = external_id
        result = await self.conn.execute(
            update(t.orders).where(and_(t.orders.c.id == order.id, t.orders.c.status == order.status))
            .values(**values))
        return result.rowcount == 1
