"""``kill -9`` of the API process between a synchronous image's hold and its answer.

A real ``apiinone serve`` (SQLite in its data dir, or a fresh PostgreSQL database) calls the fake
OpenAI upstream directly from the API process; the upstream holds its answer, and the server is
killed while the task is running and its price held. After a restart the lease of that direct task
runs out, the worker's sweep ends it as ``timeout`` and releases the hold: nothing is charged,
nothing stays held, the request log has the request, and the next request is served and charged.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.test_webhook_restart import Server, until
from tests.fakes.fake_openai import FakeOpenAI

pytestmark = pytest.mark.e2e

MICRO = 1_000_000


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as upstream:
        yield upstream


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database(request: pytest.FixtureRequest) -> str | None:
    """None: the server's own SQLite file in its data dir."""
    if request.param == "sqlite":
        return None
    url: str = request.getfixturevalue("pg_url")
    return url


async def test_kill_between_hold_and_answer_releases_the_hold(tmp_path: Path, fake: FakeOpenAI,
                                                              database: str | None) -> None:
    server = Server(tmp_path / "data")
    server.env |= {"OPENAI_API_KEY": fake.api_key, "OPENAI_BASE_URL": fake.base_url,
                   "APIINONE_TASK_LEASE_S": "1", "APIINONE_WORKER_POLL_S": "0.2"}
    if database is not None:
        server.env["APIINONE_DATABASE_URL"] = database
    try:
        server.cli("admin", "create-user", "crash@example.com", "--password", "password123", "--credits", "100")
        key = server.cli("admin", "create-key", "crash@example.com")
        await server.start()
        fake.latency_ms = 60_000  # the upstream is still "generating" when the server dies
        async with httpx.AsyncClient(base_url=server.url, headers={"Authorization": f"Bearer {key}"},
                                     timeout=120) as api:
            body = {"model": "gpt-image-1.5", "prompt": "a lighthouse at dusk"}
            pending = asyncio.create_task(api.post("/v1/images/generations", json=body))

            async def held() -> dict[str, Any] | None:
                credits: dict[str, Any] = (await api.get("/api/v1/account")).json()["credits"]
                return credits if credits["held"] else None

            # the hold and the running task commit together, just before the upstream call
            assert (await until(held, "the price to be held"))["balance"] == 100
            [running] = (await api.get("/api/v1/tasks")).json()["data"]
            assert running["status"] == "running"
            server.kill()
            with pytest.raises(httpx.TransportError):
                await pending
        fake.latency_ms = 0

        await server.start()
        async with httpx.AsyncClient(base_url=server.url, headers={"Authorization": f"Bearer {key}"},
                                     timeout=120) as api:
            async def ended() -> dict[str, Any] | None:
                task: dict[str, Any] = (await api.get(f"/api/v1/tasks/{running['task_id']}")).json()
                return task if task["status"] != "running" else None

            task = await until(ended, "the swept task to end")
            assert task["status"] == "failed" and task["error"]["code"] == "timeout"
            assert task["credits"]["charged"] == 0
            assert (await api.get("/api/v1/account")).json()["credits"] == {
                "balance": 100, "held": 0, "available": 100}
            [logged] = (await api.get("/api/v1/account/requests")).json()["data"]
            assert logged["task_id"] == running["task_id"] and logged["credits"] == 0

            r = await api.post("/v1/images/generations", json=body)  # served as usual after the restart
            assert r.status_code == 200 and len(r.json()["data"]) == 1
            assert r.headers["x-task-id"] != running["task_id"]
            credits = (await api.get("/api/v1/account")).json()["credits"]
            assert credits["held"] == 0 and credits["balance"] < 100
    finally:
        server.kill()
