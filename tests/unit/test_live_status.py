"""Pure pieces of live status and the OpenAI mapping: events derived from a task, the Prefer
header, NOTIFY payloads, the signal hub, the client's SSE decoder and OpenAI parameter mapping."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from apiinone.client._sse import SSEDecoder
from apiinone.db.database import Database
from apiinone.domain.tasks import Task, TaskStatus
from apiinone.errors import InsufficientCredits, InvalidParameter, ModelNotFound, RateLimited, Unauthorized
from apiinone.kinds.image.job import GeneratedImage
from apiinone.services.events import TaskEvents, events_of, notify_payloads
from apiinone.web.routes.events import format_sse, prefer_wait
from apiinone.web.routes.openai_compat import (
    EDIT_FIELDS,
    GENERATION_FIELDS,
    OpenAIInvalidRequest,
    openai_error_for,
    parse_image_params,
)


def _task(status: TaskStatus, *, started: bool) -> Task:
    return Task(id="tsk_1", account_id="acc_1", model="local-typeset", type="image", status=status,
                input={"prompt": "p"}, price=1, created_at=1_700_000_000_000,
                started_at=1_700_000_001_000 if started else None, node="node42" if started else None)


@pytest.mark.parametrize(("status", "started", "expected"), [
    (TaskStatus.QUEUED, False, [(1, "queued")]),
    (TaskStatus.RUNNING, True, [(1, "queued"), (2, "running")]),
    (TaskStatus.SUCCEEDED, True, [(1, "queued"), (2, "running"), (3, "succeeded")]),
    (TaskStatus.CANCELED, False, [(1, "queued"), (3, "canceled")]),
])
def test_events_are_derived_from_the_task(status: TaskStatus, started: bool, expected: list[tuple[int, str]]) -> None:
    events = events_of(_task(status, started=started), "http://h")
    assert [(e.id, e.event) for e in events] == expected
    if status.is_terminal:
        assert events[-1].data["task_id"] == "tsk_1" and events[-1].data["object"] == "task"


def test_sse_wire_format() -> None:
    event = events_of(_task(TaskStatus.QUEUED, started=False), "http://h")[0]
    assert format_sse(event).startswith(b"id: 1\nevent: queued\ndata: {")
    assert format_sse(event).endswith(b"}\n\n")
    assert format_sse(None) == b": keep-alive\n\n"


@pytest.mark.parametrize(("header", "seconds"), [
    (None, None), ("", None), ("wait=10", 10), ("WAIT=10", 10), ("wait=61", 60), ("respond-async, wait=3", 3),
    ("wait=4; foo=bar", 4), ('wait="5"', 5), ("wait=0", None), ("return=minimal", None),
])
def test_prefer_wait(header: str | None, seconds: int | None) -> None:
    assert prefer_wait(header) == seconds


@pytest.mark.parametrize("header", ["wait=-1", "wait=1.5", "wait=²", "wait=١", "wait=", "wait=9" * 30])
def test_prefer_wait_refuses_what_is_not_an_ascii_integer(header: str) -> None:
    with pytest.raises(InvalidParameter) as caught:
        prefer_wait(header)
    assert caught.value.param == "Prefer"


def test_notify_payloads_stay_under_postgres_limit() -> None:
    ids = [f"tsk_{i:026d}" for i in range(600)]
    payloads = notify_payloads("running", ids)
    assert len(payloads) > 1 and all(len(p) < 8000 for p in payloads)
    assert [i for p in payloads for i in p.split()[1:]] == ids and all(p.startswith("running ") for p in payloads)
    assert notify_payloads("running", []) == []


async def test_hub_signals_only_the_watchers_of_a_task(tmp_path: Path) -> None:
    hub = TaskEvents(Database(f"sqlite+aiosqlite:///{tmp_path / 'unused.db'}"), poll_s=60)
    try:
        with hub.watch("tsk_1") as one, hub.watch("tsk_2") as two:
            hub.on_notify("succeeded tsk_1")
            assert await one.changed(0) and not await two.changed(0)
            finished = _task(TaskStatus.SUCCEEDED, started=True)
            hub.publish(finished)
            assert await one.changed(0) and one.latest is finished
            hub.on_notify("")  # the listener reconnected: everyone looks again
            assert await one.changed(0) and await two.changed(0)
            assert hub.watched_tasks == 2
        assert hub.watched_tasks == 0
    finally:
        await hub.db.dispose()


async def test_offered_images_reach_only_the_watchers_of_their_task(tmp_path: Path) -> None:
    hub = TaskEvents(Database(f"sqlite+aiosqlite:///{tmp_path / 'unused.db'}"), poll_s=60)
    image = GeneratedImage(data=b"png", content_type="image/png", width=1, height=1, b64=b"cG5n")
    try:
        hub.offer_images("tsk_1", {"http://x/files/a.png": image})  # nobody waits: nothing is kept
        with hub.watch("tsk_1") as one, hub.watch("tsk_2") as two:
            assert one.images == {}
            hub.offer_images("tsk_1", {"http://x/files/a.png": image})
            assert one.images == {"http://x/files/a.png": image} and two.images == {}
    finally:
        await hub.db.dispose()


async def test_a_watch_waits_until_signalled(tmp_path: Path) -> None:
    hub = TaskEvents(Database(f"sqlite+aiosqlite:///{tmp_path / 'unused.db'}"), poll_s=60)
    try:
        with hub.watch("tsk_1") as watch:
            waiting = asyncio.create_task(watch.changed(60))
            await asyncio.sleep(0)
            assert not waiting.done()
            hub.wake("tsk_1")
            assert await waiting
    finally:
        await hub.db.dispose()


def test_sse_decoder() -> None:
    decoder = SSEDecoder()
    lines = ["retry: 2000", "", ": keep-alive", "", "id: 1", "event: queued", 'data: {"a":', "data: 1}", "",
             "data: no id or event", ""]
    events = [e for line in lines if (e := decoder.feed(line)) is not None]
    assert [(e.id, e.event, e.data) for e in events] == [("1", "queued", '{"a":\n1}'), ("1", "message", "no id or event")]
    assert decoder.retry_ms == 2000 and decoder.last_event_id == "1"


@pytest.mark.parametrize(("fields", "aspect", "quality"), [
    ({}, "1:1", "medium"),
    ({"size": "auto", "quality": "auto"}, "1:1", "medium"),
    ({"size": "1024x1536", "quality": "low"}, "2:3", "medium"),
    ({"size": "1536x1024", "quality": "high"}, "3:2", "high"),
])
def test_openai_sizes_and_qualities_map_to_ours(fields: dict[str, object], aspect: str, quality: str) -> None:
    params = parse_image_params({"model": "m", "prompt": "p", **fields}, GENERATION_FIELDS)
    assert (params.aspect_ratio, params.quality, params.n, params.response_format) == (aspect, quality, 1, "b64_json")


def test_openai_options_pass_through_and_multipart_text_is_typed() -> None:
    params = parse_image_params({"model": "m", "prompt": "p", "n": "3", "output_format": "webp",
                                 "background": "transparent", "user": "u", "output_compression": "80",
                                 "input_fidelity": "high"}, EDIT_FIELDS)
    assert params.n == 3
    assert params.options == {"output_format": "webp", "background": "transparent", "user": "u",
                              "output_compression": 80, "input_fidelity": "high"}
    assert parse_image_params({"model": "m", "prompt": "p", "background": "auto"}, GENERATION_FIELDS).options == {}


@pytest.mark.parametrize(("fields", "param", "code"), [
    ({"size": "256x256"}, "size", "invalid_value"),
    ({"n": 0}, "n", "integer_out_of_range"),
    ({"n": True}, "n", "invalid_type"),
    ({"background": "transparent", "output_format": "jpeg"}, "background", "invalid_value"),
    ({"moderation": "high"}, "moderation", "invalid_value"),
    ({"input_fidelity": "high"}, "input_fidelity", "unknown_parameter"),  # edits only
    ({"prompt": None}, "prompt", "missing_required_parameter"),
])
def test_openai_parameter_errors(fields: dict[str, object], param: str, code: str) -> None:
    body = {k: v for k, v in {"model": "m", "prompt": "p", **fields}.items() if v is not None}
    with pytest.raises(OpenAIInvalidRequest) as error:
        parse_image_params(body, GENERATION_FIELDS)
    assert (error.value.param, error.value.openai_code) == (param, code)


def test_our_errors_in_openai_shape() -> None:
    no_credits = openai_error_for(InsufficientCredits("not enough"))
    assert no_credits.status_code == 429 and no_credits.headers["x-should-retry"] == "false"
    assert b'"type":"insufficient_quota"' in no_credits.body and b'"code":"insufficient_quota"' in no_credits.body
    assert openai_error_for(Unauthorized()).status_code == 401
    assert b'"code":"invalid_api_key"' in openai_error_for(Unauthorized()).body
    unknown = openai_error_for(ModelNotFound("no", param="model"))
    assert unknown.status_code == 404 and b'"param":"model"' in unknown.body
    limited = openai_error_for(RateLimited(retry_after=7))
    assert limited.status_code == 429 and limited.headers["retry-after"] == "7"
