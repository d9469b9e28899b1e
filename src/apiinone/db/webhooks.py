"""Webhook deliveries: the table is the delivery queue, and ``webhook_attempts`` its log.

A delivery is enqueued in the transaction that ends its task, so it exists iff the task ended.
A worker leases due deliveries by setting ``lease_expires_at``; that value doubles as the fencing
token, because a row is leased again only after its lease passed, so each new lease is larger than
the last and ``WHERE lease_expires_at = :lease`` is a compare-and-set a stale worker cannot win.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from sqlalchemy import insert, or_, select, update
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncConnection

from apiinone.db import tables as t
from apiinone.domain.webhooks import AttemptOutcome, Delivery, DeliveryAttempt, DeliveryStatus
from apiinone.webhooks.signing import new_webhook_secret

_D = t.webhook_deliveries.c
_A = t.webhook_attempts.c


def delivery_from_row(r: RowMapping, log: Sequence[DeliveryAttempt] = ()) -> Delivery:
    return Delivery(
        id=r["id"], task_id=r["task_id"], account_id=r["account_id"], url=r["url"], payload=r["payload"],
        status=DeliveryStatus(r["status"]), attempts=int(r["attempts"]), created_at=int(r["created_at"]),
        next_attempt_at=r["next_attempt_at"], lease_expires_at=r["lease_expires_at"],
        last_status_code=r["last_status_code"], last_error=r["last_error"], delivered_at=r["delivered_at"],
        log=tuple(log),
    )


def _attempt_from_row(r: RowMapping) -> DeliveryAttempt:
    return DeliveryAttempt(
        delivery_id=r["delivery_id"], attempted_at=int(r["attempted_at"]), duration_ms=int(r["duration_ms"]),
        status_code=r["status_code"], error=r["error"], next_attempt_at=r["next_attempt_at"],
    )


class WebhookRepository:
    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn
        self.is_postgres = conn.dialect.name == "postgresql"

    async def enqueue(self, *, delivery_id: str, task_id: str, account_id: str, url: str, payload: bytes,
                      at: int) -> None:
        """Called inside the transaction that finishes the task; the first attempt is due at once."""
        await self.conn.execute(insert(t.webhook_deliveries).values(
            id=delivery_id, task_id=task_id, account_id=account_id, url=url, payload=payload.decode(),
            status=DeliveryStatus.PENDING.value, attempts=0, next_attempt_at=at, created_at=at,
        ))

    async def upcoming(self, *, now: int, limit: int,
                       exclude_accounts: Collection[str] = ()) -> list[tuple[str, str, int]]:
        """Pending, unleased deliveries as ``(id, account_id, next_attempt_at)``, soonest first.

        Accounts that already use all their delivery slots are left out, so their backlog cannot
        crowd other accounts out of the batch. On PostgreSQL the rows are locked ``SKIP LOCKED``
        until the lease commits, so concurrent workers pick disjoint batches without waiting."""
        stmt = (
            select(_D.id, _D.account_id, _D.next_attempt_at)
            .where(_D.status == DeliveryStatus.PENDING.value,
                   or_(_D.lease_expires_at.is_(None), _D.lease_expires_at < now))
            .order_by(_D.next_attempt_at).limit(limit)
        )
        if exclude_accounts:
            stmt = stmt.where(_D.account_id.not_in(list(exclude_accounts)))
        if self.is_postgres:
            stmt = stmt.with_for_update(skip_locked=True)
        return [(str(r[0]), str(r[1]), int(r[2])) for r in (await self.conn.execute(stmt)).all()]

    async def lease(self, ids: Sequence[str], *, now: int, lease_until: int) -> list[Delivery]:
        """Lease those of ``ids`` that are still due and unleased (rechecked here, atomically)."""
        if not ids:
            return []
        stmt = (
            update(t.webhook_deliveries)
            .where(_D.id.in_(list(ids)), _D.status == DeliveryStatus.PENDING.value, _D.next_attempt_at <= now,
                   or_(_D.lease_expires_at.is_(None), _D.lease_expires_at < now))
            .values(lease_expires_at=lease_until)
            .returning(*t.webhook_deliveries.c)
        )
        return [delivery_from_row(r) for r in (await self.conn.execute(stmt)).mappings().all()]

    async def signing_secrets(self, account_ids: Collection[str], *, now: int) -> dict[str, list[str]]:
        """The secrets that sign each account's deliveries: the current one, plus the previous one
        while its rotation grace period lasts. An account without a secret gets one here."""
        if not account_ids:
            return {}
        acc = t.accounts.c
        rows = (await self.conn.execute(
            select(acc.id, acc.webhook_secret, acc.webhook_secret_prev, acc.webhook_secret_prev_until)
            .where(acc.id.in_(list(account_ids)))
        )).all()
        secrets: dict[str, list[str]] = {}
        for account_id, current, previous, previous_until in rows:
            if not current:
                current = new_webhook_secret()
                await self.conn.execute(update(t.accounts).where(acc.id == account_id, acc.webhook_secret.is_(None))
                                        .values(webhook_secret=current))
            keys = [current]
            if previous and previous_until is not None and previous_until > now and previous != current:
                keys.append(previous)
            secrets[str(account_id)] = keys
        return secrets

    async def record_attempts(self, results: Sequence[tuple[Delivery, DeliveryAttempt, AttemptOutcome]]) -> list[bool]:
        """Log attempts and move their deliveries on, each iff its worker still holds the lease
        (``Delivery.lease_expires_at``). The attempt is logged either way: it did reach, or try to
        reach, the receiver. Returns, per result, whether the delivery was moved on."""
        if not results:
            return []
        await self.conn.execute(insert(t.webhook_attempts), [
            {"delivery_id": d.id, "attempted_at": a.attempted_at, "status_code": a.status_code,
             "duration_ms": a.duration_ms, "error": a.error, "next_attempt_at": a.next_attempt_at}
            for d, a, _o in results
        ])
        kept = []
        for delivery, attempt, outcome in results:
            delivered = outcome.status is DeliveryStatus.DELIVERED
            result = await self.conn.execute(
                update(t.webhook_deliveries)
                .where(_D.id == delivery.id, _D.lease_expires_at == delivery.lease_expires_at)
                .values(status=outcome.status.value, attempts=outcome.attempts,
                        next_attempt_at=outcome.next_attempt_at, lease_expires_at=None,
                        last_status_code=attempt.status_code, last_error=attempt.error,
                        delivered_at=attempt.attempted_at if delivered else None)
            )
            kept.append(result.rowcount == 1)
        return kept

    async def release(self, leases: Sequence[tuple[str, int]]) -> None:
        """Hand leased deliveries back unattempted (shutdown), so they go out without waiting for
        their lease to run out."""
        for delivery_id, lease in leases:
            await self.conn.execute(
                update(t.webhook_deliveries).where(_D.id == delivery_id, _D.lease_expires_at == lease)
                .values(lease_expires_at=None)
            )

    async def list_for_task(self, task_id: str, account_id: str) -> list[Delivery]:
        """A task's deliveries, newest first, each with its full attempt log (oldest first)."""
        rows = (await self.conn.execute(
            select(t.webhook_deliveries)
            .where(_D.task_id == task_id, _D.account_id == account_id)
            .order_by(_D.created_at.desc(), _D.id.desc())
        )).mappings().all()
        if not rows:
            return []
        logs: dict[str, list[DeliveryAttempt]] = {str(r["id"]): [] for r in rows}
        attempts = (await self.conn.execute(
            select(t.webhook_attempts).where(_A.delivery_id.in_(list(logs))).order_by(_A.id)
        )).mappings()
        for a in attempts:
            logs[a["delivery_id"]].append(_attempt_from_row(a))
        return [delivery_from_row(r, logs[str(r["id"])]) for r in rows]

    async def restart(self, delivery_id: str, *, now: int) -> None:
        """Make a delivery due now with a fresh retry schedule (a redelivery). An attempt in flight
        keeps its lease and may still settle the delivery when it ends."""
        await self.conn.execute(
            update(t.webhook_deliveries).where(_D.id == delivery_id)
            .values(status=DeliveryStatus.PENDING.value, attempts=0, next_attempt_at=now)
        )

    async def get(self, delivery_id: str) -> Delivery | None:
        row = (await self.conn.execute(
            select(t.webhook_deliveries).where(_D.id == delivery_id))).mappings().first()
        return delivery_from_row(row) if row else None


__all__ = ["WebhookRepository", "delivery_from_row"]
