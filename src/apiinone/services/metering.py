"""Metering: the one place money moves for work, queued or direct.

Every amount is integer µcr. Work is held before it runs, then either captured (all or part of
the hold; the rest is released in the same transaction) or released; each movement is a ledger
entry, and each finished request leaves one ``request_log`` row in the transaction that settles
its money. The hold is one conditional UPDATE (``balance - held >= amount``), so concurrent holds
on one account never make ``available`` negative, and the database's CHECK constraints refuse
any movement that would.

Queued tasks call ``hold`` / ``capture`` / ``release`` / ``record`` inside the task service's own
unit of work (a task exists iff its hold does, and ends iff its capture or release is written).
Direct calls (chat, speech, synchronous images) have no task row: ``open_direct`` holds in its own
transaction before the upstream is called, and ``settle_direct`` / ``release_direct`` end it.

Ledger convention: hold +h, then capture −c and release −(h − c) with 0 ≤ c ≤ h, so
``held`` = Σ hold + Σ release + Σ capture and ``balance`` moves by the captures alone. A key with a
budget counts the hold against it at once and gets back whatever is released.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from apiinone.db.database import Database
from apiinone.db.uow import SqlUnitOfWork
from apiinone.domain.accounts import Account, ApiKey
from apiinone.domain.credits import LedgerKind, format_credits_text
from apiinone.domain.usage import REQUEST_STATUSES, RequestLogEntry, RequestRecord
from apiinone.errors import InsufficientCredits
from apiinone.ids import new_id, now_ms
from apiinone.telemetry.metrics import observe_request

__all__ = ["DirectHold", "Metering", "RequestRecord"]


@dataclass(frozen=True)
class DirectHold:
    """An open hold of a direct call: ``amount`` µcr held on ``account_id`` since ``started_at_ms``."""

    request_id: str
    account_id: str
    api_key_id: str | None
    key_prefix: str | None
    amount: int
    started_at_ms: int


class Metering:
    def __init__(self, db: Database) -> None:
        self.db = db

    # --- inside a caller's unit of work ------------------------------------------------------

    async def hold(self, uow: SqlUnitOfWork, *, account_id: str, api_key_id: str | None, amount: int,
                   task_id: str | None = None, request_id: str | None = None, at: int | None = None) -> None:
        """Hold ``amount`` µcr, or raise InsufficientCredits (the account's available credits or the
        key's budget are short) leaving the caller's transaction to roll back."""
        if amount < 0:
            raise ValueError("a hold is never negative")
        if not await uow.accounts.try_hold(account_id, amount):
            available = (await uow.accounts.credits(account_id)).available
            what = "task" if task_id is not None else "request"
            raise InsufficientCredits(f"this {what} costs {format_credits_text(amount)} credits but only "
                                      f"{format_credits_text(available)} are available")
        if api_key_id is not None and not await uow.api_keys.try_spend(api_key_id, amount):
            raise InsufficientCredits("this API key has used up its credit budget")
        await uow.ledger.add(account_id, LedgerKind.HOLD, amount, task_id=task_id, request_id=request_id, at=at)

    async def capture(self, uow: SqlUnitOfWork, *, account_id: str, api_key_id: str | None, held: int,
                      charged: int, task_id: str | None = None, request_id: str | None = None,
                      at: int | None = None) -> None:
        """End a hold of ``held`` µcr by charging ``charged`` of it and releasing the rest."""
        if not 0 <= charged <= held:
            raise ValueError(f"a capture of {charged} does not fit a hold of {held}")
        released = held - charged
        await uow.accounts.change(account_id, balance=-charged, held=-held)
        if charged or not released:  # a zero-price success still leaves its capture entry
            await uow.ledger.add(account_id, LedgerKind.CAPTURE, -charged, task_id=task_id,
                                 request_id=request_id, at=at)
        if released:
            await uow.ledger.add(account_id, LedgerKind.RELEASE, -released, task_id=task_id,
                                 request_id=request_id, at=at)
            if api_key_id is not None:
                await uow.api_keys.refund(api_key_id, released)

    async def release(self, uow: SqlUnitOfWork, *, account_id: str, api_key_id: str | None, held: int,
                      task_id: str | None = None, request_id: str | None = None, at: int | None = None) -> None:
        """End a hold of ``held`` µcr with nothing charged."""
        if held < 0:
            raise ValueError("a hold is never negative")
        await uow.accounts.change(account_id, held=-held)
        await uow.ledger.add(account_id, LedgerKind.RELEASE, -held, task_id=task_id, request_id=request_id, at=at)
        if api_key_id is not None and held:
            await uow.api_keys.refund(api_key_id, held)

    async def record(self, uow: SqlUnitOfWork, *, account_id: str, api_key_id: str | None,
                     record: RequestRecord, credits: int, key_prefix: str | None = None,
                     request_id: str | None = None, started_at_ms: int | None = None,
                     at: int | None = None) -> str:
        """Write the request's one ``request_log`` row (``credits`` = µcr charged); returns its id.
        Without ``key_prefix`` the key's prefix is looked up; without ``latency_ms`` in the record it
        is the time since ``started_at_ms``."""
        if record.status not in REQUEST_STATUSES:
            raise ValueError(f"request status must be one of {', '.join(REQUEST_STATUSES)}")
        now = at if at is not None else now_ms()
        if key_prefix is None and api_key_id is not None:
            key_prefix = await uow.api_keys.prefix_of(api_key_id)
        if record.latency_ms is None and started_at_ms is not None:
            record = replace(record, latency_ms=max(0, now - started_at_ms))
        entry = RequestLogEntry(id=request_id or new_id("req", now), account_id=account_id, api_key_id=api_key_id,
                                key_prefix=key_prefix, credits=credits, created_at=now, record=record)
        await uow.requests.add(entry)
        uow.on_commit(lambda: observe_request(record.type, record.model, record.status, credits, record.latency_ms))
        return entry.id

    # --- direct calls: each step is its own transaction ----------------------------------------

    async def open_direct(self, account: Account, key: ApiKey | None, amount: int) -> DirectHold:
        """Hold the most the call can cost before anything is sent upstream (InsufficientCredits
        otherwise, with nothing held)."""
        now = now_ms()
        hold = DirectHold(request_id=new_id("req", now), account_id=account.id,
                          api_key_id=key.id if key else None, key_prefix=key.prefix if key else None,
                          amount=amount, started_at_ms=now)
        async with self.db.uow() as uow:
            await self.hold(uow, account_id=hold.account_id, api_key_id=hold.api_key_id, amount=amount,
                            request_id=hold.request_id, at=now)
            await uow.commit()
        return hold

    async def settle_direct(self, hold: DirectHold, charged: int, record: RequestRecord) -> None:
        """Capture the real usage (clamped to the hold), release the rest and log the request, in
        one transaction. Settling a hold twice fails in the database and changes nothing."""
        charged = max(0, min(charged, hold.amount))
        async with self.db.uow() as uow:
            now = now_ms()
            await self.capture(uow, account_id=hold.account_id, api_key_id=hold.api_key_id, held=hold.amount,
                               charged=charged, request_id=hold.request_id, at=now)
            await self.record(uow, account_id=hold.account_id, api_key_id=hold.api_key_id, record=record,
                              credits=charged, key_prefix=hold.key_prefix, request_id=hold.request_id,
                              started_at_ms=hold.started_at_ms, at=now)
            await uow.commit()

    async def release_direct(self, hold: DirectHold, record: RequestRecord) -> None:
        """Nothing is charged (the call failed or was never answered); the request is still logged."""
        async with self.db.uow() as uow:
            now = now_ms()
            await self.release(uow, account_id=hold.account_id, api_key_id=hold.api_key_id, held=hold.amount,
                               request_id=hold.request_id, at=now)
            await self.record(uow, account_id=hold.account_id, api_key_id=hold.api_key_id, record=record,
                              credits=0, key_prefix=hold.key_prefix, request_id=hold.request_id,
                              started_at_ms=hold.started_at_ms, at=now)
            await uow.commit()
