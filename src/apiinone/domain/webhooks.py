"""Webhook deliveries as the domain sees them: a small state machine and its retry schedule.

pending → delivered (a 2xx) | stopped (a 410: the receiver asked us to stop) | failed (the retry
schedule ran out). A pending delivery is due at ``next_attempt_at``; a redelivery makes it pending
again and restarts the schedule, keeping its id (the ``webhook-id`` receivers dedupe on).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from apiinone.domain.tasks import iso

#: Seconds to wait after failed attempt 1, 2, ...: 5 s, 5 min, 30 min, 2 h, 5 h, then every 10 h
#: while the total stays within about 3 days (12 attempts over 67.6 hours).
DEFAULT_RETRY_SCHEDULE_S: tuple[float, ...] = (
    5, 300, 1800, 7200, 18000, 36000, 36000, 36000, 36000, 36000, 36000,
)


class DeliveryStatus(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"
    STOPPED = "stopped"


@dataclass(frozen=True, slots=True)
class DeliveryAttempt:
    delivery_id: str
    attempted_at: int
    duration_ms: int
    status_code: int | None = None
    error: str | None = None
    next_attempt_at: int | None = None

    def to_public(self) -> dict[str, Any]:
        return {
            "attempted_at": iso(self.attempted_at), "status_code": self.status_code,
            "duration_ms": self.duration_ms, "error": self.error, "next_attempt_at": iso(self.next_attempt_at),
        }


@dataclass(frozen=True, slots=True)
class Delivery:
    """One webhook message for one finished task. ``attempts`` counts the attempts of the current
    schedule (a redelivery resets it); the attempt log keeps every attempt ever made."""

    id: str
    task_id: str
    account_id: str
    url: str
    payload: str
    status: DeliveryStatus
    attempts: int
    created_at: int
    next_attempt_at: int | None = None
    lease_expires_at: int | None = None
    last_status_code: int | None = None
    last_error: str | None = None
    delivered_at: int | None = None
    log: tuple[DeliveryAttempt, ...] = field(default=())

    def to_public(self) -> dict[str, Any]:
        return {
            "id": self.id, "object": "webhook_delivery", "task_id": self.task_id, "url": self.url,
            "status": self.status.value, "attempt_count": len(self.log),
            "next_attempt_at": iso(self.next_attempt_at) if self.status is DeliveryStatus.PENDING else None,
            "last_status_code": self.last_status_code, "last_error": self.last_error,
            "created_at": iso(self.created_at), "delivered_at": iso(self.delivered_at),
            "attempts": [a.to_public() for a in self.log],
        }


@dataclass(frozen=True, slots=True)
class AttemptOutcome:
    """What one attempt means for its delivery: its new status and, if pending, when to retry."""

    status: DeliveryStatus
    attempts: int
    next_attempt_at: int | None


def outcome_of(status_code: int | None, *, attempts_before: int, at: int,
               schedule_s: Sequence[float]) -> AttemptOutcome:
    """Decide after an attempt: any 2xx delivers, 410 stops, anything else (including no answer)
    retries after ``schedule_s[n - 1]`` for the n-th failed attempt until the schedule runs out."""
    attempts = attempts_before + 1
    if status_code is not None and 200 <= status_code < 300:
        return AttemptOutcome(DeliveryStatus.DELIVERED, attempts, None)
    if status_code == 410:
        return AttemptOutcome(DeliveryStatus.STOPPED, attempts, None)
    if attempts > len(schedule_s):
        return AttemptOutcome(DeliveryStatus.FAILED, attempts, None)
    return AttemptOutcome(DeliveryStatus.PENDING, attempts, at + int(schedule_s[attempts - 1] * 1000))
