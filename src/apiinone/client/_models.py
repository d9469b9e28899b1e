"""Typed views of the API's JSON: the task object, its images, and stream events."""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

TERMINAL_STATUSES = frozenset({"succeeded", "failed", "canceled"})


@dataclass(frozen=True, slots=True)
class TaskImage:
    url: str
    width: int
    height: int
    content_type: str


@dataclass(frozen=True, slots=True)
class TaskEvent:
    """A status change: ``event`` is the status reached (``queued``, ``running``, ``succeeded``,
    ...); ``data`` is the task object for the terminal event. ``id`` is None for events a poll
    inferred rather than the server sent."""

    event: str
    data: dict[str, Any]
    id: str | None = None

    @property
    def is_terminal(self) -> bool:
        return self.event in TERMINAL_STATUSES


def _credits(value: Any) -> Decimal:
    """A JSON credit amount: its shortest decimal text is the exact amount the server formatted."""
    return Decimal(str(value))


@dataclass
class TaskData:
    """The task object (see API.md); ``raw`` keeps the JSON as the server sent it."""

    task_id: str
    status: str
    model: str
    input: dict[str, Any]
    output: dict[str, Any] | None
    error: dict[str, str] | None
    price: Decimal  # credits, exact (the server sends at most 6 decimals)
    charged: Decimal
    node: str | None
    created_at: str | None
    started_at: str | None
    finished_at: str | None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @staticmethod
    def fields_from(data: dict[str, Any]) -> dict[str, Any]:
        credits = data.get("credits") or {}
        return {
            "task_id": data["task_id"], "status": data["status"], "model": data.get("model", ""),
            "input": data.get("input") or {}, "output": data.get("output"), "error": data.get("error"),
            "price": _credits(credits.get("price", 0)), "charged": _credits(credits.get("charged", 0)),
            "node": data.get("node"), "created_at": data.get("created_at"), "started_at": data.get("started_at"),
            "finished_at": data.get("finished_at"), "raw": data,
        }

    @property
    def is_done(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @property
    def images(self) -> list[TaskImage]:
        items = (self.output or {}).get("images") or []
        return [TaskImage(url=i["url"], width=int(i["width"]), height=int(i["height"]),
                          content_type=i.get("content_type", "image/png")) for i in items]


@dataclass(frozen=True, slots=True)
class TaskPage:
    data: list[Any]
    next_cursor: str | None
