"""Credits: integers, held on accept, captured on success, released otherwise.

Ledger sign convention (API.md): topup, grant, adjustment and capture amounts are changes to
``balance`` (capture is negative); hold (+) and release (−) change ``held``. A capture also ends
its hold, so ``held`` = Σ hold + Σ release − Σ |capture of held tasks|.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class LedgerKind(StrEnum):
    TOPUP = "topup"
    HOLD = "hold"
    CAPTURE = "capture"
    RELEASE = "release"
    GRANT = "grant"
    ADJUSTMENT = "adjustment"


BALANCE_KINDS = frozenset({LedgerKind.TOPUP, LedgerKind.GRANT, LedgerKind.ADJUSTMENT, LedgerKind.CAPTURE})


@dataclass(frozen=True, slots=True)
class Credits:
    balance: int
    held: int

    @property
    def available(self) -> int:
        return self.balance - self.held

    def to_public(self) -> dict[str, int]:
        return {"balance": self.balance, "held": self.held, "available": self.available}


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    id: int
    account_id: str
    kind: LedgerKind
    amount: int
    task_id: str | None
    note: str | None
    created_at: int
