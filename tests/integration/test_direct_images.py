"""The direct execution path of ``/v1/images/*`` on SQLite and PostgreSQL: one task and one
request-log row per request, charged once and only for answers written, stored before charged,
idempotent replays, and finishes written in group commits."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from apiinone.domain.tasks import DIRECT_ATTEMPTS, TaskStatus
from apiinone.services.tasks import ImageTaskRequest
from apiinone.web.routes.openai_compat import SettledResponse
from tests.conftest import Caller
from tests.fakes.fake_openai import FakeOpenAI
from tests.integration.live_server import GatedProvider, LiveServer

GENERATE = "/v1/images/generations"


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as upstream:
        yield upstream


@pytest.fixture
async def server(tmp_path: Path, database_url: str, fake: FakeOpenAI) -> AsyncIterator[LiveServer]:
    async with LiveServer(tmp_path, database_url, openai_api_key=fake.api_key, openai_base_url=fake.base_url) as live:
        yield live


async def _credits(caller: Caller) -> dict[str, int]:
    credits: dict[str, int] = (await caller.get("/api/v1/account")).json()["credits"]
    return credits


async def _requests(caller: Caller) -> list[dict[str, Any]]:
    data: list[dict[str, Any]] = (await caller.get("/api/v1/account/requests")).json()["data"]
    return data


async def test_one_task_one_log_row_stored_then_charged(server: LiveServer, fake: FakeOpenAI) -> None:
    caller = await server.caller(credits=100)
    r = await caller.post(GENERATE, json={"model": "gpt-image-1.5", "prompt": "a red kite", "n": 2})
    assert r.status_code == 200, r.text
    task_id = r.headers["x-task-id"]
    task = (await caller.get(f"/api/v1/tasks/{task_id}")).json()
    assert task["status"] == "succeeded" and task["credits"]["charged"] == task["credits"]["price"]
    for item, image in zip(r.json()["data"], task["output"]["images"], strict=True):
        stored = await server.client.get(image["url"])  # the charged image is in storage, byte for byte
        assert stored.status_code == 200 and stored.content == base64.b64decode(item["b64_json"])
    assert fake.received == 1
    [logged] = await _requests(caller)
    assert (logged["task_id"], logged["status"], logged["http_status"]) == (task_id, "succeeded", 200)
    assert logged["key_prefix"] and caller.key.startswith(logged["key_prefix"])
    credits = await _credits(caller)
    assert credits["held"] == 0 and credits["balance"] == 100 - task["credits"]["charged"]
    assert len((await caller.get("/api/v1/tasks")).json()["data"]) == 1


async def test_the_upstream_base64_reaches_the_client_unchanged(server: LiveServer, fake: FakeOpenAI) -> None:
    caller = await server.caller()
    r = await caller.post(GENERATE, json={"model": "gpt-image-1.5", "prompt": "a blue kite"})
    assert r.status_code == 200
    assert base64.b64decode(r.json()["data"][0]["b64_json"]) == fake.image_for()


async def test_a_client_that_hangs_up_is_not_charged(server: LiveServer) -> None:
    gated = GatedProvider()
    server.container.adapters.register("local-typeset", gated)
    caller = await server.caller(credits=10)
    pending = asyncio.create_task(caller.post(GENERATE, json={"model": "local-typeset", "prompt": "slow"}))
    await gated.started.wait()
    assert (await _credits(caller))["held"] > 0
    pending.cancel()  # closes the connection while the upstream is working
    with pytest.raises(asyncio.CancelledError):
        await pending
    [task] = (await caller.get("/api/v1/tasks")).json()["data"]
    done = await caller.wait_for(task["task_id"])
    assert done["status"] == "canceled" and done["credits"]["charged"] == 0
    assert await _credits(caller) == {"balance": 10, "held": 0, "available": 10}
    [logged] = await _requests(caller)
    assert logged["status"] == "canceled" and logged["credits"] == 0


async def test_idempotent_retry_while_running_and_after_replays_one_task(server: LiveServer) -> None:
    gated = GatedProvider()
    server.container.adapters.register("local-typeset", gated)
    caller = await server.caller(credits=10)
    body, headers = {"model": "local-typeset", "prompt": "once only"}, {"Idempotency-Key": "k-1"}
    first = asyncio.create_task(caller.post(GENERATE, json=body, headers=headers))
    await gated.started.wait()
    second = asyncio.create_task(caller.post(GENERATE, json=body, headers=headers))  # waits for the first
    await asyncio.sleep(0.2)
    gated.gate.set()
    a, b = await first, await second
    third = await caller.post(GENERATE, json=body, headers=headers)
    assert a.status_code == b.status_code == third.status_code == 200
    assert "idempotent-replayed" not in a.headers
    assert b.headers["idempotent-replayed"] == third.headers["idempotent-replayed"] == "true"
    assert a.headers["x-task-id"] == b.headers["x-task-id"] == third.headers["x-task-id"]
    assert a.json()["data"] == b.json()["data"] == third.json()["data"]
    assert await _credits(caller) == {"balance": 9, "held": 0, "available": 9}
    assert len(await _requests(caller)) == 1


async def test_concurrent_requests_each_charged_once(server: LiveServer) -> None:
    caller = await server.caller(credits=100)
    responses = await asyncio.gather(*(caller.post(GENERATE, json={"model": "local-typeset", "prompt": f"n{i}"})
                                       for i in range(12)))
    assert [r.status_code for r in responses] == [200] * 12
    assert len({r.headers["x-task-id"] for r in responses}) == 12
    assert await _credits(caller) == {"balance": 88, "held": 0, "available": 88}
    logged = await _requests(caller)
    assert len(logged) == 12 and {e["status"] for e in logged} == {"succeeded"}


async def test_finishes_asked_for_together_share_one_transaction(server: LiveServer) -> None:
    caller = await server.caller(credits=100)
    container = server.container
    account = await container.accounts.get(caller.account_id)
    assert account is not None
    tasks = []
    for i in range(5):
        created = await container.tasks.create_image_task(
            account, None, ImageTaskRequest(model="local-typeset", prompt=f"batch {i}"), direct=container.direct.lease())
        assert created.task.status is TaskStatus.RUNNING and created.task.attempts == DIRECT_ATTEMPTS
        container.direct.started(created.task)
        tasks.append(created.task)
    before = container.direct.transactions
    outcomes = [TaskStatus.SUCCEEDED, TaskStatus.CANCELED] * 2 + [TaskStatus.FAILED]
    finished = await asyncio.gather(*(
        container.direct.finish(task, status, output={"images": []} if status is TaskStatus.SUCCEEDED else None,
                                error=None if status is TaskStatus.SUCCEEDED else {"code": "x", "message": "y"},
                                http_status=200)
        for task, status in zip(tasks, outcomes, strict=True)))
    assert container.direct.transactions == before + 1
    assert [f.status if f else None for f in finished] == outcomes
    assert await container.direct.finish(tasks[0], TaskStatus.SUCCEEDED, http_status=200) is None  # once only
    assert await _credits(caller) == {"balance": 98, "held": 0, "available": 98}
    assert container.direct.running == 0


async def test_an_answer_that_cannot_be_written_is_released_and_a_written_one_charged_first() -> None:
    """The charge commits between the next-to-last and the last byte; a gone client is never charged."""
    for gone_before in (True, False):
        events: list[Any] = []
        gone = asyncio.Event()
        if gone_before:
            gone.set()

        async def settle(delivered: bool, events: list[Any] = events) -> None:
            events.append(("settle", delivered))

        async def after(events: list[Any] = events) -> None:
            events.append("after")

        async def send(message: Any, events: list[Any] = events) -> None:
            events.append(message.get("body", message["type"]))

        async def receive() -> Any:
            return {"type": "http.disconnect"}

        response = SettledResponse(b'{"data":[]}', headers={}, gone=gone, settle=settle, after=after)
        await response({"type": "http"}, receive, send)
        if gone_before:
            assert events == [("settle", False), "after"]
        else:
            assert events == ["http.response.start", b'{"data":[]', ("settle", True), b"}", "after"]


async def test_the_answer_and_the_task_api_agree_on_status(server: LiveServer, fake: FakeOpenAI) -> None:
    caller = await server.caller(credits=10)
    fake.fail_moderation()
    r = await caller.post(GENERATE, json={"model": "gpt-image-1.5", "prompt": "forbidden"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "moderation_blocked"
    task = (await caller.get(f"/api/v1/tasks/{r.headers['x-task-id']}")).json()
    assert task["status"] == "failed" and task["credits"]["charged"] == 0
    assert await _credits(caller) == {"balance": 10, "held": 0, "available": 10}
    [logged] = await _requests(caller)
    assert logged["status"] == "failed" and logged["http_status"] == 400
