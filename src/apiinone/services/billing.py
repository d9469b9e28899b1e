"""Top-ups: redemption codes and orders for credit packs, behind a ``PaymentProvider`` protocol.

Amounts are integer µcr (``domain.credits``). Every credit change is a ``topup`` ledger entry
written in the same transaction as the state change that earns it (a code marked redeemed, an
order marked paid), and both state changes are compare-and-set updates: a code is redeemed once
and an order is paid once, however many requests race for it.

Order states: ``pending`` → ``paid`` | ``canceled``; each change is appended to the order's
history with its time and actor.

To add card payments, implement ``PaymentProvider.begin`` (create the checkout session at the
processor and return its redirect URL), verify the processor's signed webhook in a route, and call
``BillingService.mark_paid(order_id, actor=provider.name, external_id=...)`` from it.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass, field
from typing import Protocol

from apiinone.db.billing import BillingRepository
from apiinone.db.database import Database
from apiinone.domain.billing import CodeBatch, Order, OrderEvent
from apiinone.domain.credits import UCR_PER_CREDIT, LedgerKind, credits_to_ucr, format_credits_text
from apiinone.errors import ApiError, InvalidParameter, NotFound
from apiinone.ids import new_id, now_ms

CODE_PREFIX = "AIO"
_CODE_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # Crockford base32: no I, L, O, U
MAX_CODES_PER_BATCH = 1000
MAX_CODE_CREDITS = 10_000_000


class RedemptionFailed(InvalidParameter):
    """Unknown and already-used codes get the same answer, so codes cannot be probed."""

    default_message = "this code is not valid or has already been used"

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message, param="code")


class OrderStateConflict(ApiError):
    status, code, default_message = 409, "order_state_conflict", "the order is no longer pending"


@dataclass(frozen=True, slots=True)
class CreditPack:
    id: str
    credits: int  # µcr
    amount_cents: int
    currency: str = "USD"


def packs_from_setting(value: str) -> list[CreditPack]:
    """``"500,2000,10000"`` (whole credits) → packs at the list price of 1 credit = USD 0.01."""
    packs = []
    for part in value.split(","):
        part = part.strip()
        if part:
            if not (part.isascii() and part.isdigit()) or int(part) <= 0:
                raise ValueError("credit packs must be positive whole numbers of credits")
            credits = int(part)
            packs.append(CreditPack(id=f"credits-{credits}", credits=credits_to_ucr(credits), amount_cents=credits))
    return packs


@dataclass(frozen=True, slots=True)
class Checkout:
    """What the buyer does next: follow ``redirect_url`` (card processors) or read the manual
    payment instructions (the offline provider)."""

    order: Order
    redirect_url: str | None = None
    manual: bool = False


class PaymentProvider(Protocol):
    name: str

    async def begin(self, order: Order) -> Checkout: ...


class ManualPaymentProvider:
    """Offline payment (bank transfer, invoice): an administrator marks the order paid."""

    name = "manual"

    async def begin(self, order: Order) -> Checkout:
        return Checkout(order=order, manual=True)


@dataclass(frozen=True, slots=True)
class CreatedBatch:
    batch: str
    credits: int  # µcr per code
    codes: list[str] = field(default_factory=list)


def normalize_code(code: str) -> str:
    return "".join(ch for ch in code.upper() if ch.isalnum())


def hash_code(code: str) -> str:
    """Codes carry 80 random bits, so a plain SHA-256 of the normalized code is enough."""
    return hashlib.sha256(normalize_code(code).encode()).hexdigest()


def new_code() -> str:
    body = "".join(secrets.choice(_CODE_ALPHABET) for _ in range(16))
    return f"{CODE_PREFIX}-" + "-".join(body[i:i + 4] for i in range(0, 16, 4))


class BillingService:
    def __init__(self, db: Database, *, packs: list[CreditPack],
                 providers: dict[str, PaymentProvider] | None = None) -> None:
        self.db = db
        self.packs = {p.id: p for p in packs}
        self.providers: dict[str, PaymentProvider] = providers or {"manual": ManualPaymentProvider()}

    async def create_codes(self, *, count: int, amount: int, batch: str = "",
                           actor: str | None = None) -> CreatedBatch:
        """A batch of single-use codes worth ``amount`` µcr each. The plaintext is returned once;
        only hashes are stored."""
        if not 1 <= count <= MAX_CODES_PER_BATCH:
            raise InvalidParameter(f"count must be from 1 to {MAX_CODES_PER_BATCH}", param="count")
        if not 1 <= amount <= MAX_CODE_CREDITS * UCR_PER_CREDIT:
            raise InvalidParameter(f"credits must be from 0.000001 to {MAX_CODE_CREDITS}", param="credits")
        now = now_ms()
        label = batch.strip()[:60] or new_id("batch", now)
        codes = [new_code() for _ in range(count)]
        async with self.db.uow() as uow:
            await BillingRepository(uow.conn).add_codes(
                [(hash_code(c), c[:8]) for c in codes], batch=label, credits=amount, actor=actor, at=now)
            await uow.audit.add(actor, "codes.create", label, {"count": count, "credits": format_credits_text(amount)})
            await uow.commit()
        return CreatedBatch(batch=label, credits=amount, codes=codes)

    async def redeem(self, account_id: str, code: str) -> int:
        """Credit the code's value to the account, once per code; returns the µcr added."""
        normalized = normalize_code(code)
        if not 8 <= len(normalized) <= 64:
            raise RedemptionFailed()
        now = now_ms()
        async with self.db.uow() as uow:
            claimed = await BillingRepository(uow.conn).claim_code(hash_code(normalized), account_id, now)
            if claimed is None:
                raise RedemptionFailed()
            credits, prefix = claimed
            await uow.accounts.change(account_id, balance=credits)
            await uow.ledger.add(account_id, LedgerKind.TOPUP, credits, note=f"redemption code {prefix}…",
                                 actor=account_id, at=now)
            await uow.commit()
        return credits

    async def code_batches(self) -> list[CodeBatch]:
        async with self.db.uow(write=False) as uow:
            return await BillingRepository(uow.conn).batches()

    async def create_order(self, account_id: str, pack_id: str, *, provider: str = "manual") -> Checkout:
        pack = self.packs.get(pack_id)
        if pack is None:
            raise InvalidParameter("unknown credit pack", param="pack")
        payment = self.providers.get(provider)
        if payment is None:
            raise InvalidParameter("unknown payment provider", param="provider")
        now = now_ms()
        order = Order(id=new_id("ord", now), account_id=account_id, pack=pack.id, credits=pack.credits,
                      amount_cents=pack.amount_cents, currency=pack.currency, provider=provider,
                      status="pending", created_at=now,
                      history=(OrderEvent(status="pending", at=now, actor=account_id),))
        async with self.db.uow() as uow:
            await BillingRepository(uow.conn).add_order(order)
            await uow.commit()
        return await payment.begin(order)

    async def mark_paid(self, order_id: str, *, actor: str, note: str | None = None,
                        external_id: str | None = None) -> Order:
        """pending → paid and the pack's credits as a topup, in one transaction, at most once."""
        now = now_ms()
        async with self.db.uow() as uow:
            repo = BillingRepository(uow.conn)
            order = await repo.get_order(order_id)
            if order is None:
                raise NotFound("order not found")
            event = OrderEvent(status="paid", at=now, actor=actor, note=note)
            if order.status != "pending" or not await repo.move_order(order, "paid", event, external_id=external_id):
                raise OrderStateConflict()
            await uow.accounts.change(order.account_id, balance=order.credits)
            await uow.ledger.add(order.account_id, LedgerKind.TOPUP, order.credits, note=f"order {order.id}",
                                 actor=actor, at=now)
            paid = await repo.get_order(order_id)
            await uow.audit.add(actor, "order.paid", order.id, {"account": order.account_id, "note": note,
                                                                "credits": format_credits_text(order.credits)})
            await uow.commit()
        assert paid is not None
        return paid

    async def cancel_order(self, order_id: str, *, actor: str, account_id: str | None = None,
                           note: str | None = None) -> Order:
        """pending → canceled. With ``account_id``, only that account's own order (user cancel)."""
        now = now_ms()
        async with self.db.uow() as uow:
            repo = BillingRepository(uow.conn)
            order = await repo.get_order(order_id)
            if order is None or (account_id is not None and order.account_id != account_id):
                raise NotFound("order not found")
            event = OrderEvent(status="canceled", at=now, actor=actor, note=note)
            if order.status != "pending" or not await repo.move_order(order, "canceled", event):
                raise OrderStateConflict()
            canceled = await repo.get_order(order_id)
            if account_id is None:  # an admin's cancel (a user's own is not an admin change)
                await uow.audit.add(actor, "order.cancel", order.id, {"account": order.account_id, "note": note})
            await uow.commit()
        assert canceled is not None
        return canceled

    async def orders(self, account_id: str | None, *, status: str | None = None, limit: int = 50) -> list[Order]:
        async with self.db.uow(write=False) as uow:
            return await BillingRepository(uow.conn).list_orders(account_id, status=status, limit=limit)
