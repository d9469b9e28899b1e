"""The task object exactly as API.md shows it, and the state machine's terminal statuses."""

from __future__ import annotations

from typing import Any

import orjson

from apiinone.domain.tasks import TERMINAL_STATUSES, Task, TaskStatus, iso

CREATED = 1_795_548_662_123  # 2026-11-24T19:31:02.123Z, the example in API.md


def make_task(**kw: object) -> Task:
    values: dict[str, object] = {
        "id": "tsk_01ABC", "account_id": "acc_1", "model": "gpt-image-1.5-official", "type": "image",
        "status": TaskStatus.QUEUED, "price": 10_000_000, "created_at": CREATED,  # µcr
        "input": {"prompt": "p", "aspect_ratio": "1:1", "quality": "medium", "input_urls": []},
    }
    values.update(kw)
    return Task(**values)  # type: ignore[arg-type]


def public_json(task: Task, base_url: str) -> Any:
    """The task object as a client reads it (credit amounts are exact JSON numbers)."""
    return orjson.loads(orjson.dumps(task.to_public(base_url)))


def test_queued_task_object_has_exactly_the_contract_fields() -> None:
    public = public_json(make_task(), "https://host")
    assert public == {
        "task_id": "tsk_01ABC", "object": "task", "type": "image",
        "model": "gpt-image-1.5-official",
        "status": "queued", "progress": None,
        "input": {"prompt": "p", "aspect_ratio": "1:1", "quality": "medium", "input_urls": []},
        "output": None,
        "error": None,
        "credits": {"price": 10, "charged": 0},
        "callback_url": None,
        "node": None,
        "created_at": "2026-11-24T19:31:02Z", "started_at": None, "finished_at": None,
        "urls": {"get": "https://host/api/v1/tasks/tsk_01ABC", "cancel": "https://host/api/v1/tasks/tsk_01ABC/cancel"},
    }


def test_finished_task_object_shows_output_node_and_times() -> None:
    output = {"images": [{"url": "https://host/files/x.png", "width": 1024, "height": 1024,
                          "content_type": "image/png"}]}
    public = public_json(make_task(status=TaskStatus.SUCCEEDED, output=output, charged=10_000_000, node="node42",
                                   callback_url="https://example.com/hook", started_at=CREATED + 1_000,
                                   finished_at=CREATED + 61_999), "http://h")
    assert public["status"] == "succeeded" and public["output"] == output
    assert public["credits"] == {"price": 10, "charged": 10} and public["node"] == "node42"
    assert public["callback_url"] == "https://example.com/hook"
    assert (public["started_at"], public["finished_at"]) == ("2026-11-24T19:31:03Z", "2026-11-24T19:32:04Z")


def test_fractional_credits_are_exact_decimals_in_json() -> None:
    body = orjson.dumps(make_task(price=2_500, charged=99_997_475).to_public("http://h"))
    assert b'"credits":{"price":0.0025,"charged":99.997475}' in body


def test_iso_is_utc_seconds_with_z() -> None:
    assert iso(0) == "1970-01-01T00:00:00Z"
    assert iso(1_700_000_000_999) == "2023-11-14T22:13:20Z"
    assert iso(None) is None


def test_terminal_statuses() -> None:
    assert TERMINAL_STATUSES == {TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.CANCELED}
    assert [s.is_terminal for s in TaskStatus] == [False, False, True, True, True]
