"""Metering: the one place money moves for work, queued or direct.

Every amount is integer µcr. Work is held before it runs, then either captured (all or part of
the hold; the rest is released in the same transaction) or released; each movement is a ledger
entry, and each finished request leaves one ``request_log`` row in the transaction that settles
its money. The hold is one conditional UPDATE (``balance - held >= amount``), so concurrent holds
on one account never make ``available`` negative, and the database's CHECK constraints refuse
any movement that would.

Tasks call ``hold_many`` / ``settle_many`` (or ``capture`` / ``release`` / ``record``) inside the
task service's unit of work (a task exists iff its hold does, and ends iff its capture or release
is written). Direct calls (chat, speech) have no task row: ``open_direct`` holds in the next group
commit before the upstream is called, and ``settle_direct`` / ``release_direct`` end it.

Ledger convention: hold +h, then capture −c and release −(h − c) with 0 ≤ c ≤ h, so
``held`` = Σ hold + Σ release + Σ capture and ``balance`` moves by the captures alone. A key with a
budget counts the hold against it at once and gets back whatever is released.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from apiinone.db.database import Database
from apiinone.db.repositories import ledger_row
from apiinone.db.uow import SqlUnitOfWork
from apiinone.domain.accounts import Account, ApiKey
from apiinone.domain.credits import LedgerKind, format_credits_text
from apiinone.domain.usage import REQUEST_STATUSES, RequestLogEntry, RequestRecord
from apiinone.errors import InsufficientCredits
from apiinone.ids import new_id, now_ms
from apiinone.services.group_commit import GroupCommit
from apiinone.telemetry.metrics import observe_request

__all__ = ["DirectHold", "HoldAsk", "Metering", "RequestRecord", "Settlement"]


@dataclass(frozen=True)
class DirectHold:
    """An open hold of a direct call: ``amount`` µcr held on ``account_id`` since ``started_at_ms``."""

    request_id: str
    account_id: str
    api_key_id: str | None
    key_prefix: str | None
    amount: int
    started_at_ms: int


@dataclass(frozen=True, slots=True)
class HoldAsk:
    """One hold of ``amount`` µcr for a task or a direct call (see :meth:`Metering.hold_many`)."""

    account_id: str
    api_key_id: str | None
    amount: int
    task_id: str | None = None
    request_id: str | None = None
    at: int | None = None


@dataclass(frozen=True, slots=True)
class Settlement:
    """The end of a hold of ``held`` µcr: ``charged`` of it captured (``captured``) or all of it
    released; with ``record``, the request's log row (``request_id`` is its id)."""

    account_id: str
    api_key_id: str | None
    held: int
    charged: int
    captured: bool
    at: int
    task_id: str | None = None
    request_id: str | None = None
    record: RequestRecord | None = None
    key_prefix: str | None = None
    started_at_ms: int | None = None


class Metering:
    def __init__(self, db: Database) -> None:
        self.db = db
        self.direct_holds: GroupCommit[HoldAsk, None] = GroupCommit(db, self.hold_many, name="direct-holds",
                                                                    abandoned=self._release_abandoned)
        self.direct_settlements: GroupCommit[Settlement, None] = GroupCommit(db, self._settle_all,
                                                                             name="direct-settlements")

    # --- inside a caller's unit of work ------------------------------------------------------

    async def hold_many(self, uow: SqlUnitOfWork, asks: list[HoldAsk]) -> list[Exception | None]:
        """Hold each ask in order; for each, None or the InsufficientCredits it was refused with (a
        refused ask changes nothing). The asks of one account and key are tried first as one sum,
        one conditional UPDATE for the whole batch; only if the sum does not fit are they held one
        by one, so each still gets exactly what one conditional UPDATE of its own would give it."""
        for ask in asks:
            if ask.amount < 0:
                raise ValueError("a hold is never negative")
        results: list[Exception | None] = [None] * len(asks)
        groups: dict[tuple[str, str | None], list[int]] = {}
        for i, ask in enumerate(asks):
            groups.setdefault((ask.account_id, ask.api_key_id), []).append(i)
        for (account_id, api_key_id), indexes in sorted(groups.items(), key=lambda g: (g[0][0], g[0][1] or "")):
            if await self._try_hold(uow, account_id, api_key_id, sum(asks[i].amount for i in indexes)):
                continue
            for i in indexes:
                if len(indexes) == 1 or not await self._try_hold(uow, account_id, api_key_id, asks[i].amount):
                    results[i] = await self._refusal(uow, asks[i])
        await uow.ledger.add_many([
            ledger_row(a.account_id, LedgerKind.HOLD, a.amount, task_id=a.task_id, request_id=a.request_id, at=a.at)
            for a, refused in zip(asks, results, strict=True) if refused is None])
        return results

    async def _try_hold(self, uow: SqlUnitOfWork, account_id: str, api_key_id: str | None, amount: int) -> bool:
        if not await uow.accounts.try_hold(account_id, amount):
            return False
        if api_key_id is not None and not await uow.api_keys.try_spend(api_key_id, amount):
            await uow.accounts.change(account_id, held=-amount)  # the account's part, given back
            return False
        return True

    async def _refusal(self, uow: SqlUnitOfWork, ask: HoldAsk) -> InsufficientCredits:
        available = (await uow.accounts.credits(ask.account_id)).available
        if available >= ask.amount:
            return InsufficientCredits("this API key has used up its credit budget")
        what = "task" if ask.task_id is not None else "request"
        return InsufficientCredits(f"this {what} costs {format_credits_text(ask.amount)} credits but only "
                                   f"{format_credits_text(available)} are available")

    async def capture(self, uow: SqlUnitOfWork, *, account_id: str, api_key_id: str | None, held: int,
                      charged: int, task_id: str | None = None, request_id: str | None = None,
                      at: int | None = None) -> None:
        """End a hold of ``held`` µcr by charging ``charged`` of it and releasing the rest."""
        await self.settle_many(uow, [Settlement(account_id, api_key_id, held, charged, True, at or now_ms(),
                                                task_id=task_id, request_id=request_id)])

    async def release(self, uow: SqlUnitOfWork, *, account_id: str, api_key_id: str | None, held: int,
                      task_id: str | None = None, request_id: str | None = None, at: int | None = None) -> None:
        """End a hold of ``held`` µcr with nothing charged."""
        await self.settle_many(uow, [Settlement(account_id, api_key_id, held, 0, False, at or now_ms(),
                                                task_id=task_id, request_id=request_id)])

    async def settle_many(self, uow: SqlUnitOfWork, settlements: list[Settlement]) -> None:
        """End many holds: one UPDATE for the accounts' sums, one for the keys' refunds, one INSERT
        of the ledger entries and the request-log rows (with their day sums) for all of them."""
        accounts: dict[str, tuple[int, int]] = {}
        refunds: dict[str, int] = {}
        entries: list[dict[str, object]] = []
        logged: list[RequestLogEntry] = []
        for s in settlements:
            if s.held < 0 or not 0 <= s.charged <= s.held or (s.charged and not s.captured):
                raise ValueError(f"a capture of {s.charged} does not fit a hold of {s.held}")
            released = s.held - s.charged
            balance, held = accounts.get(s.account_id, (0, 0))
            accounts[s.account_id] = (balance - s.charged, held - s.held)
            if s.captured and (s.charged or not released):  # a zero-price success still leaves its capture
                entries.append(ledger_row(s.account_id, LedgerKind.CAPTURE, -s.charged, task_id=s.task_id,
                                          request_id=s.request_id, at=s.at))
            if released or not s.captured:
                entries.append(ledger_row(s.account_id, LedgerKind.RELEASE, -released, task_id=s.task_id,
                                          request_id=s.request_id, at=s.at))
            if s.api_key_id is not None and released:
                refunds[s.api_key_id] = refunds.get(s.api_key_id, 0) + released
            if s.record is not None:
                logged.append(_log_entry(s.account_id, s.api_key_id, s.key_prefix, s.charged, s.at, s.record,
                                         s.request_id, s.started_at_ms))
        # rows are locked in one order everywhere (accounts, then keys, then the day's sums, each by
        # id): batches of two processes on PostgreSQL then wait for each other, never deadlock
        await uow.accounts.change_many(accounts)
        await uow.api_keys.refund_many(refunds)
        await uow.ledger.add_many(entries)
        await uow.requests.add_many(logged)  # a request settled twice fails here, and all rolls back
        for entry in logged:
            uow.on_commit(_observer(entry))

    async def record(self, uow: SqlUnitOfWork, *, account_id: str, api_key_id: str | None,
                     record: RequestRecord, credits: int, key_prefix: str | None = None,
                     request_id: str | None = None, started_at_ms: int | None = None,
                     at: int | None = None) -> str:
        """Write the request's one ``request_log`` row (``credits`` = µcr charged); returns its id.
        Without ``key_prefix`` the key's prefix is looked up; without ``latency_ms`` in the record it
        is the time since ``started_at_ms``."""
        if key_prefix is None and api_key_id is not None:
            key_prefix = await uow.api_keys.prefix_of(api_key_id)
        entry = _log_entry(account_id, api_key_id, key_prefix, credits, at if at is not None else now_ms(), record,
                           request_id, started_at_ms)
        await uow.requests.add(entry)
        uow.on_commit(_observer(entry))
        return entry.id

    # --- direct calls: group-committed, each step in the next shared transaction ---------------

    async def open_direct(self, account: Account, key: ApiKey | None, amount: int) -> DirectHold:
        """Hold the most the call can cost before anything is sent upstream (InsufficientCredits
        otherwise, with nothing held)."""
        now = now_ms()
        hold = DirectHold(request_id=new_id("req", now), account_id=account.id,
                          api_key_id=key.id if key else None, key_prefix=key.prefix if key else None,
                          amount=amount, started_at_ms=now)
        await self.direct_holds.submit(HoldAsk(hold.account_id, hold.api_key_id, amount,
                                               request_id=hold.request_id, at=now))
        return hold

    async def settle_direct(self, hold: DirectHold, charged: int, record: RequestRecord) -> None:
        """Capture the real usage (clamped to the hold), release the rest and log the request, in
        one transaction. Settling a hold twice fails in the database and changes nothing."""
        await self._end_direct(hold, max(0, min(charged, hold.amount)), True, record)

    async def release_direct(self, hold: DirectHold, record: RequestRecord) -> None:
        """Nothing is charged (the call failed or was never answered); the request is still logged."""
        await self._end_direct(hold, 0, False, record)

    async def _end_direct(self, hold: DirectHold, charged: int, captured: bool, record: RequestRecord) -> None:
        await self.direct_settlements.submit(Settlement(
            hold.account_id, hold.api_key_id, hold.amount, charged, captured, now_ms(),
            request_id=hold.request_id, record=record, key_prefix=hold.key_prefix,
            started_at_ms=hold.started_at_ms))

    async def _release_abandoned(self, ask: HoldAsk, _result: None) -> None:
        """A direct hold committed for a request that was canceled while it waited: nothing will
        call the upstream or settle it, so it is released (no request-log row: no call was made)."""
        await self.direct_settlements.submit(Settlement(ask.account_id, ask.api_key_id, ask.amount, 0, False,
                                                        now_ms(), request_id=ask.request_id))

    async def _settle_all(self, uow: SqlUnitOfWork, settlements: list[Settlement]) -> list[Exception | None]:
        await self.settle_many(uow, settlements)
        return [None] * len(settlements)


def _log_entry(account_id: str, api_key_id: str | None, key_prefix: str | None, credits: int, at: int,
               record: RequestRecord, request_id: str | None, started_at_ms: int | None) -> RequestLogEntry:
    """A request's log row; without ``latency_ms`` in the record it is the time since ``started_at_ms``."""
    if record.status not in REQUEST_STATUSES:
        raise ValueError(f"request status must be one of {', '.join(REQUEST_STATUSES)}")
    if record.latency_ms is None and started_at_ms is not None:
        record = replace(record, latency_ms=max(0, at - started_at_ms))
    return RequestLogEntry(id=request_id or new_id("req", at), account_id=account_id, api_key_id=api_key_id,
                           key_prefix=key_prefix, credits=credits, created_at=at, record=record)


def _observer(entry: RequestLogEntry) -> Callable[[], None]:
    r = entry.record
    return lambda: observe_request(r.type, r.model, r.status, entry.credits, r.latency_ms)
