"""``Prefer: wait=N`` and ``GET /api/v1/tasks/{id}/events`` (Server-Sent Events): in one process,
and with the worker in another one (PostgreSQL NOTIFY, or polling on SQLite)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from apiinone.bootstrap import Container, build_container
from apiinone.config import Settings
from tests.conftest import AppHarness, Caller, make_settings
from tests.integration.live_server import GatedProvider, LiveServer

SEED = {"model": "local-typeset", "prompt": "Bean & Brew, live", "quality": "medium", "aspect_ratio": "1:1"}
CREATE = "/api/v1/images/generations"
PATIENCE_S = 60  # a safety net for a broken build, never a measurement


class EventStream:
    """One SSE connection, read event by event: ``(id, event, data)``."""

    def __init__(self, client: httpx.AsyncClient, caller: Caller, task_id: str, last_event_id: str | None = None):
        headers = {**caller.headers, "Accept": "text/event-stream"}
        if last_event_id is not None:
            headers["Last-Event-ID"] = last_event_id
        self._context = client.stream("GET", f"/api/v1/tasks/{task_id}/events", headers=headers)
        self.response: httpx.Response | None = None
        self._lines: AsyncIterator[str] | None = None

    async def __aenter__(self) -> EventStream:
        self.response = await self._context.__aenter__()
        self._lines = self.response.aiter_lines()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._context.__aexit__(None, None, None)

    async def next(self) -> tuple[str, str, dict[str, Any]] | None:
        """The next event, or None when the server ended the stream."""
        assert self._lines is not None
        fields: dict[str, str] = {}
        async with asyncio.timeout(PATIENCE_S):
            async for line in self._lines:
                if not line:
                    if "data" in fields:
                        return fields["id"], fields["event"], orjson.loads(fields["data"])
                    fields = {}
                elif not line.startswith(":"):
                    name, _, value = line.partition(": ")
                    fields[name] = value
        return None

    async def rest(self) -> list[tuple[str, str, dict[str, Any]]]:
        events = []
        while (event := await self.next()) is not None:
            events.append(event)
        return events


# ------------------------------------------------------------------------------------ Prefer: wait


async def test_prefer_wait_answers_200_with_the_finished_task(harness: AppHarness) -> None:
    caller = await harness.caller()
    r = await caller.post(CREATE, json=SEED, headers={"Prefer": "wait=30"})
    assert r.status_code == 200, r.text
    assert r.headers["preference-applied"] == "wait=30"
    assert r.headers["location"] == f"/api/v1/tasks/{r.json()['task_id']}"
    task = r.json()
    assert task["status"] == "succeeded" and task["output"]["images"] and task["credits"]["charged"] == 1


async def test_a_slow_task_answers_202_after_the_wait(sqlite_harness: AppHarness) -> None:
    gated = GatedProvider()
    sqlite_harness.container.adapters.register("local-typeset", gated)
    caller = await sqlite_harness.caller()
    r = await caller.post(CREATE, json=SEED, headers={"Prefer": "wait=1"})
    assert r.status_code == 202 and r.headers["preference-applied"] == "wait=1"
    assert r.json()["status"] in ("queued", "running")
    gated.gate.set()
    assert (await caller.wait_for(r.json()["task_id"]))["status"] == "succeeded"


@pytest.mark.parametrize(("prefer", "applied"), [
    ("wait=999", "wait=60"),
    ("respond-async, wait=5", "wait=5"),
    ('wait="7"', "wait=7"),
    ("wait=0", None),
    ("handling=lenient", None),
])
async def test_prefer_header_forms(sqlite_harness: AppHarness, prefer: str, applied: str | None) -> None:
    caller = await sqlite_harness.caller()
    r = await caller.post(CREATE, json=SEED, headers={"Prefer": prefer})
    assert r.headers.get("preference-applied") == applied
    assert r.status_code == (202 if applied is None else 200)


# ------------------------------------------------------------------------------------------- events


@pytest.fixture
async def live(tmp_path: Path, sqlite_url: str) -> AsyncIterator[LiveServer]:
    async with LiveServer(tmp_path, sqlite_url) as server:
        yield server


async def test_events_arrive_live_in_order(live: LiveServer) -> None:
    gated = GatedProvider()
    live.container.adapters.register("local-typeset", gated)
    caller = await live.caller()
    task_id = (await caller.post(CREATE, json=SEED)).json()["task_id"]
    async with EventStream(live.client, caller, task_id) as stream:
        assert stream.response is not None
        assert stream.response.headers["content-type"].startswith("text/event-stream")
        queued, running = await stream.next(), await stream.next()
        assert queued is not None and queued[:2] == ("1", "queued")
        assert running is not None and running[:2] == ("2", "running") and running[2]["node"]
        gated.gate.set()  # the task can only end now, while this stream is open
        done = await stream.next()
        assert done is not None and done[:2] == ("3", "succeeded")
        assert done[2]["task_id"] == task_id and done[2]["output"]["images"]
        assert await stream.next() is None  # the stream ends at the terminal state


async def test_a_finished_task_replays_its_whole_history(live: LiveServer) -> None:
    caller = await live.caller()
    task_id = (await caller.post(CREATE, json=SEED)).json()["task_id"]
    await caller.wait_for(task_id)
    async with EventStream(live.client, caller, task_id) as stream:
        events = await stream.rest()
    assert [(i, e) for i, e, _ in events] == [("1", "queued"), ("2", "running"), ("3", "succeeded")]


async def test_resume_after_a_disconnect_with_last_event_id(live: LiveServer) -> None:
    gated = GatedProvider()
    live.container.adapters.register("local-typeset", gated)
    caller = await live.caller()
    task_id = (await caller.post(CREATE, json=SEED)).json()["task_id"]
    async with EventStream(live.client, caller, task_id) as stream:
        seen = [await stream.next(), await stream.next()]
    assert [e[1] for e in seen if e] == ["queued", "running"]
    gated.gate.set()
    await caller.wait_for(task_id)  # it ended while nobody was listening
    async with EventStream(live.client, caller, task_id, last_event_id="2") as stream:
        missed = await stream.rest()
    assert [(i, e) for i, e, _ in missed] == [("3", "succeeded")]
    async with EventStream(live.client, caller, task_id, last_event_id="3") as stream:
        assert await stream.rest() == []


async def test_a_task_canceled_before_it_ran_has_no_running_event(tmp_path: Path, sqlite_url: str) -> None:
    async with LiveServer(tmp_path, sqlite_url, embedded_worker=False) as server:
        caller = await server.caller()
        task_id = (await caller.post(CREATE, json=SEED)).json()["task_id"]
        async with EventStream(server.client, caller, task_id) as stream:
            first = await stream.next()
            assert first is not None and first[1] == "queued"
            assert (await caller.post(f"/api/v1/tasks/{task_id}/cancel")).status_code == 200
            assert [(i, e) for i, e, _ in await stream.rest()] == [("3", "canceled")]


async def test_events_of_other_accounts_tasks_are_404(live: LiveServer) -> None:
    alice, bob = await live.caller(), await live.caller()
    task_id = (await alice.post(CREATE, json=SEED)).json()["task_id"]
    r = await bob.get(f"/api/v1/tasks/{task_id}/events")
    assert r.status_code == 404 and r.json()["error"]["code"] == "task_not_found"
    r = await live.client.get(f"/api/v1/tasks/{task_id}/events")
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"


# --------------------------------------------------------------------- the worker in another process


@contextlib.asynccontextmanager
async def worker_elsewhere(settings: Settings, provider: GatedProvider | None = None) -> AsyncIterator[Container]:
    """A worker with its own container, as a separate ``apiinone worker`` process would have: no
    in-process signal reaches the API server's waiters."""
    container = build_container(settings)
    if provider is not None:
        container.adapters.register("local-typeset", provider)
    await container.start_listeners()
    worker = container.make_worker(node="elsewhere")
    await worker.start()
    try:
        yield container
    finally:
        await worker.stop()
        await container.aclose()


@pytest.mark.postgres
async def test_postgres_notify_carries_events_and_waits_across_processes(tmp_path: Path, pg_url: str) -> None:
    """The API server polls only once an hour here, so only NOTIFY can bring these events in time."""
    gated = GatedProvider()
    async with (LiveServer(tmp_path, pg_url, embedded_worker=False, worker_poll_s=3600) as api,
                worker_elsewhere(make_settings(tmp_path, pg_url), gated)):
        caller = await api.caller()
        task_id = (await caller.post(CREATE, json=SEED)).json()["task_id"]
        async with EventStream(api.client, caller, task_id) as stream:
            assert (await stream.next() or ("", "", {}))[1] == "queued"
            running = await stream.next()
            assert running is not None and running[1] == "running" and running[2]["node"] == "elsewhere"
            gated.gate.set()
            done = await stream.next()
            assert done is not None and done[1] == "succeeded"
        async with asyncio.timeout(PATIENCE_S):
            r = await caller.post(CREATE, json=SEED, headers={"Prefer": "wait=3600"})
        assert r.status_code == 200 and r.json()["status"] == "succeeded" and r.json()["node"] == "elsewhere"


async def test_sqlite_falls_back_to_polling_when_the_worker_is_elsewhere(tmp_path: Path, sqlite_url: str) -> None:
    async with (LiveServer(tmp_path, sqlite_url, embedded_worker=False) as api,
                worker_elsewhere(make_settings(tmp_path, sqlite_url))):
        caller = await api.caller()
        r = await caller.post(CREATE, json=SEED, headers={"Prefer": "wait=30"})
        assert r.status_code == 200 and r.json()["node"] == "elsewhere"
        async with EventStream(api.client, caller, r.json()["task_id"]) as stream:
            assert [e for _, e, _ in await stream.rest()] == ["queued", "running", "succeeded"]
        assert api.container.task_events.watched_tasks == 0  # nothing left subscribed
