"""Orders and redemption-code batches: what billing reads and writes, free of SQL and HTTP."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class OrderEvent:
    status: str
    at: int
    actor: str | None = None
    note: str | None = None


@dataclass(frozen=True, slots=True)
class Order:
    id: str
    account_id: str
    pack: str
    credits: int  # µcr
    amount_cents: int
    currency: str
    provider: str
    status: str
    created_at: int
    paid_at: int | None = None
    external_id: str | None = None
    history: tuple[OrderEvent, ...] = ()
    account_email: str | None = None


@dataclass(frozen=True, slots=True)
class CodeBatch:
    batch: str
    credits: int  # µcr per code
    total: int
    redeemed: int
    created_at: int
