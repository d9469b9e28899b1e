"""Top-ups on SQLite and PostgreSQL: redemption codes are single-use also when many requests race
for one code, orders are paid once, and every credit change is exactly one ledger entry."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import select

from apiinone.db import tables as t
from apiinone.db.database import Database
from apiinone.domain.credits import UCR_PER_CREDIT as M  # amounts in services are µcr
from apiinone.errors import InvalidParameter, NotFound
from apiinone.services.accounts import AccountService
from apiinone.services.billing import (
    BillingService,
    ManualPaymentProvider,
    OrderStateConflict,
    RedemptionFailed,
    hash_code,
    normalize_code,
    packs_from_setting,
)


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    database = Database(database_url, pool_size=20)
    yield database
    await database.dispose()


@pytest.fixture
def billing(db: Database) -> BillingService:
    return BillingService(db, packs=packs_from_setting("500,2000"))


async def _accounts(db: Database, n: int) -> list[str]:
    service = AccountService(db)
    return [(await service.create_user(f"buyer{i}@example.com", "password123")).id for i in range(n)]


async def _balance_and_topups(db: Database, account_id: str) -> tuple[int, list[int]]:
    async with db.uow(write=False) as uow:
        credits = await uow.accounts.credits(account_id)
        entries = await uow.ledger.list(account_id, limit=100, kind="topup")
    return credits.balance, [e.amount for e in entries]


async def test_codes_are_stored_hashed_and_work_once(db: Database, billing: BillingService) -> None:
    [account] = await _accounts(db, 1)
    batch = await billing.create_codes(count=3, amount=40 * M, batch="launch", actor="admin")
    assert len(set(batch.codes)) == 3 and all(c.startswith("AIO-") for c in batch.codes)
    async with db.uow(write=False) as uow:
        stored = (await uow.conn.execute(select(t.redemption_codes))).mappings().all()
    assert {r["code_hash"] for r in stored} == {hash_code(c) for c in batch.codes}
    assert not any(c in str(dict(r)) for r in stored for c in batch.codes)

    # typed by hand: lower case, spaces instead of dashes
    assert await billing.redeem(account, batch.codes[0].lower().replace("-", " ")) == 40 * M
    with pytest.raises(RedemptionFailed):
        await billing.redeem(account, batch.codes[0])
    with pytest.raises(RedemptionFailed):
        await billing.redeem(account, "AIO-0000-0000-0000-0000")
    assert await _balance_and_topups(db, account) == (40 * M, [40 * M])
    [summary] = await billing.code_batches()
    assert (summary.batch, summary.total, summary.redeemed, summary.credits) == ("launch", 3, 1, 40 * M)


async def test_concurrent_redemption_of_one_code_succeeds_exactly_once(db: Database, billing: BillingService) -> None:
    accounts = await _accounts(db, 8)
    [code] = (await billing.create_codes(count=1, amount=25 * M)).codes

    async def attempt(account_id: str) -> bool:
        try:
            await billing.redeem(account_id, code)
        except RedemptionFailed:
            return False
        return True

    results = await asyncio.gather(*(attempt(a) for a in accounts for _ in range(2)))
    assert results.count(True) == 1
    totals = [await _balance_and_topups(db, a) for a in accounts]
    assert sorted(b for b, _ in totals) == [0] * 7 + [25 * M]
    assert sum(len(entries) for _, entries in totals) == 1


async def test_order_is_paid_once_with_history(db: Database, billing: BillingService) -> None:
    [account] = await _accounts(db, 1)
    checkout = await billing.create_order(account, "credits-2000")
    assert checkout.manual and checkout.redirect_url is None
    order = checkout.order
    assert (order.status, order.credits, order.amount_cents) == ("pending", 2000 * M, 2000)

    async def pay() -> bool:
        try:
            await billing.mark_paid(order.id, actor="admin", external_id="bank-42")
        except OrderStateConflict:
            return False
        return True

    results = await asyncio.gather(*(pay() for _ in range(6)))
    assert results.count(True) == 1
    assert await _balance_and_topups(db, account) == (2000 * M, [2000 * M])
    [paid] = await billing.orders(account)
    assert paid.status == "paid" and paid.external_id == "bank-42" and paid.paid_at is not None
    assert [e.status for e in paid.history] == ["pending", "paid"]
    assert paid.history[1].actor == "admin"
    with pytest.raises(OrderStateConflict):
        await billing.cancel_order(order.id, actor="admin")


async def test_cancel_only_pending_and_only_own(db: Database, billing: BillingService) -> None:
    owner, other = await _accounts(db, 2)
    order = (await billing.create_order(owner, "credits-500")).order
    with pytest.raises(NotFound):
        await billing.cancel_order(order.id, actor=other, account_id=other)
    canceled = await billing.cancel_order(order.id, actor=owner, account_id=owner, note="changed my mind")
    assert canceled.status == "canceled" and canceled.history[-1].note == "changed my mind"
    with pytest.raises(OrderStateConflict):
        await billing.mark_paid(order.id, actor="admin")
    assert await _balance_and_topups(db, owner) == (0, [])


async def test_bad_inputs_are_refused(db: Database, billing: BillingService) -> None:
    [account] = await _accounts(db, 1)
    with pytest.raises(InvalidParameter):
        await billing.create_order(account, "credits-1")
    with pytest.raises(InvalidParameter):
        await billing.create_codes(count=0, amount=10 * M)
    with pytest.raises(InvalidParameter):
        await billing.create_codes(count=1, amount=0)
    with pytest.raises(InvalidParameter):
        await billing.create_codes(count=1, amount=10_000_000 * M + 1)
    with pytest.raises(RedemptionFailed):
        await billing.redeem(account, "x")


def test_packs_and_code_normalization() -> None:
    packs = packs_from_setting(" 500, 2000 ,")
    assert [(p.id, p.credits, p.amount_cents) for p in packs] == [
        ("credits-500", 500 * M, 500), ("credits-2000", 2000 * M, 2000)]
    assert normalize_code("aio-abcd efgh") == "AIOABCDEFGH"
    assert ManualPaymentProvider.name == "manual"

