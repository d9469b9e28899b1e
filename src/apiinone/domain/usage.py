"""The request log: one record per request that was billed or could have been (tasks and direct
calls alike), and the usage sums made from it. Credits are µcr; the public shapes format them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from apiinone.domain.credits import format_credits
from apiinone.domain.tasks import iso

REQUEST_STATUSES = ("succeeded", "failed", "canceled")
USAGE_GROUPS = ("day", "model", "key")
DAY_MS = 86_400_000


@dataclass(frozen=True)
class RequestRecord:
    """What the caller knows about a finished request; money and identity come from its hold."""

    type: str
    model: str
    status: str  # succeeded | failed | canceled
    http_status: int
    route: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    latency_ms: int | None = None
    ttft_ms: int | None = None
    task_id: str | None = None


@dataclass(frozen=True, slots=True)
class RequestLogEntry:
    """One row of the request log: whose request it was, what it cost (µcr), and its record."""

    id: str
    account_id: str
    api_key_id: str | None
    key_prefix: str | None
    credits: int
    created_at: int
    record: RequestRecord

    def to_public(self) -> dict[str, Any]:
        r = self.record
        return {
            "id": self.id, "type": r.type, "model": r.model, "status": r.status, "http_status": r.http_status,
            "credits": format_credits(self.credits), "input_tokens": r.input_tokens,
            "output_tokens": r.output_tokens, "latency_ms": r.latency_ms, "ttft_ms": r.ttft_ms,
            "key_prefix": self.key_prefix, "task_id": r.task_id, "created_at": iso(self.created_at),
        }


@dataclass(frozen=True, slots=True)
class UsageRow:
    """Sums over one group: a UTC day (``group`` is its day number since the epoch until
    ``to_public``), a model id, or a key prefix (None for calls made without a key)."""

    group: str | int | None
    requests: int
    succeeded: int
    failed: int
    credits: int
    input_tokens: int
    output_tokens: int

    def to_public(self, group_by: str) -> dict[str, Any]:
        group = self.group
        if group_by == "day" and isinstance(group, int):
            group = datetime.fromtimestamp(group * DAY_MS / 1000, tz=UTC).strftime("%Y-%m-%d")
        return {"group": group, "requests": self.requests, "succeeded": self.succeeded, "failed": self.failed,
                "credits": format_credits(self.credits), "input_tokens": self.input_tokens,
                "output_tokens": self.output_tokens}
