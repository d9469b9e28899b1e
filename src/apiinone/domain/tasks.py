"""The task state machine and the task object the API shows.

queued → running → succeeded | failed | canceled. A terminal status never changes; a running task
whose lease ran out goes back to running on another worker (``attempts`` grows) until
``max_attempts``, after which it fails with ``timeout``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from apiinone.domain.credits import format_credits


class TaskStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset({TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.CANCELED})
ACTIVE_STATUSES = frozenset({TaskStatus.QUEUED, TaskStatus.RUNNING})

ASPECT_RATIOS = ("1:1", "2:3", "3:2")
QUALITIES = ("medium", "high")
MAX_PROMPT_CHARS = 5000
MAX_INPUT_URLS = 16
DIRECT_ATTEMPTS = 1_000_000_000
"""``attempts`` of a task an API process runs itself (a synchronous route's direct call). No
worker ever leases it (it has no attempts left), and if the process dies its lease runs out and
the workers' sweep of exhausted tasks ends it as ``timeout``, releasing its hold."""


@dataclass(slots=True)
class Task:
    id: str
    account_id: str
    model: str
    type: str
    status: TaskStatus
    input: dict[str, Any]
    price: int  # µcr, as charged
    created_at: int
    api_key_id: str | None = None
    output: dict[str, Any] | None = None
    error: dict[str, str] | None = None
    charged: int = 0
    callback_url: str | None = None
    node: str | None = None
    started_at: int | None = None
    finished_at: int | None = None
    attempts: int = 0
    lease_token: str | None = None
    lease_expires_at: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    route: str | None = None
    progress: int | None = None
    remote_job: dict[str, Any] | None = None
    poll_at: int | None = None

    def to_public(self, base_url: str) -> dict[str, Any]:
        """The task object exactly as API.md describes it."""
        get_url = f"{base_url}/api/v1/tasks/{self.id}"
        return {
            "task_id": self.id,
            "object": "task",
            "type": self.type,
            "model": self.model,
            "status": self.status.value,
            "progress": self.progress,
            "input": self.input,
            "output": self.output,
            "error": self.error,
            "credits": {"price": format_credits(self.price), "charged": format_credits(self.charged)},
            "callback_url": self.callback_url,
            "node": self.node,
            "created_at": iso(self.created_at),
            "started_at": iso(self.started_at),
            "finished_at": iso(self.finished_at),
            "urls": {"get": get_url, "cancel": f"{get_url}/cancel"},
        }


def iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
