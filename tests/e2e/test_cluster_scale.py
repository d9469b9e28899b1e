"""A PostgreSQL-backed cluster of real processes: `apiinone serve --workers 2 --no-worker` and
`apiinone worker` nodes, against the fake OpenAI upstream on loopback.

* 1,000 tasks through three worker processes: each ends exactly once and the credits are exact.
* `kill -9` of a node in the middle of a slow task: another node finishes it after the lease runs
  out, it is charged once, and the dead node shows as down to an admin.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.cluster import (
    Proc,
    app_env,
    assert_exactly_once,
    audit_account,
    new_account_key,
    start_api,
    start_worker,
    wait_until,
)
from tests.fakes.fake_openai import FakeOpenAI

pytestmark = [pytest.mark.e2e, pytest.mark.scale, pytest.mark.postgres]

GPT = {"model": "gpt-image-1.5-official", "prompt": "a lighthouse, node42", "quality": "medium"}


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    started: list[Proc] = []
    yield started
    for proc in reversed(started):
        proc.stop()


async def create_tasks(base: str, key: str, count: int, senders: int = 16) -> list[str]:
    ids: list[str] = []
    queue = iter(range(count))

    async def sender(client: httpx.AsyncClient) -> None:
        for _ in queue:
            r = await client.post("/api/v1/images/generations", json=GPT, headers={"Authorization": f"Bearer {key}"})
            assert r.status_code == 202, r.text
            ids.append(r.json()["task_id"])

    async with httpx.AsyncClient(base_url=base, timeout=60) as client:
        await asyncio.gather(*(sender(client) for _ in range(senders)))
    return ids


async def wait_all_ended(database_url: str, account_id: str, total: int, timeout: float) -> dict[str, Any]:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        audit = await audit_account(database_url, account_id)
        ended = sum(n for s, n in audit["statuses"].items() if s in ("succeeded", "failed", "canceled"))
        if ended == total:
            return audit
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"only {ended} of {total} tasks ended: {audit['statuses']}")
        await asyncio.sleep(0.5)


async def test_thousand_tasks_through_three_worker_processes(tmp_path: Path, pg_url: str,
                                                             procs: list[Proc]) -> None:
    with FakeOpenAI() as fake:
        env = app_env(pg_url, tmp_path / "data", OPENAI_API_KEY=fake.api_key, OPENAI_BASE_URL=fake.base_url)
        api, base = start_api(env, tmp_path, workers=2)
        procs.append(api)
        env["APIINONE_PUBLIC_URL"] = base  # workers write image URLs under the API's public address
        for node in ("node41", "node42", "node43"):
            procs.append(start_worker(env, tmp_path, node, "--concurrency", "8"))
        account_id, key = await new_account_key(pg_url, credits=10 * 1000)
        ids = await create_tasks(base, key, 1000)
        assert len(set(ids)) == 1000
        audit = await wait_all_ended(pg_url, account_id, 1000, timeout=600)
        assert audit["statuses"] == {"succeeded": 1000}
        assert set(audit["tasks"]) == set(ids)
        assert_exactly_once(audit)
        assert audit["balance"] == 0 and audit["captured"] == 10 * 1000 * 1_000_000  # µcr
        assert all(row["attempts"] == 1 for row in audit["tasks"].values()), "no task ran twice"
        generations = [r for r in fake.requests if r.path.endswith("/images/generations")]
        assert len(generations) == 1000, "the upstream was called once per task"
        by_node = Counter(row["node"] for row in audit["tasks"].values())
        assert set(by_node) == {"node41", "node42", "node43"}, by_node
        # the images are really there, served by the API processes from the shared storage
        async with httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {key}"}) as client:
            task = (await client.get(f"/api/v1/tasks/{ids[-1]}")).json()
            image = await client.get(task["output"]["images"][0]["url"])
            assert image.status_code == 200 and image.content[:4] == b"\x89PNG"


async def test_kill9_node_mid_task_another_node_finishes_it_once(tmp_path: Path, pg_url: str,
                                                                 procs: list[Proc]) -> None:
    with FakeOpenAI(latency_ms=3000) as fake:
        env = app_env(pg_url, tmp_path / "data", OPENAI_API_KEY=fake.api_key, OPENAI_BASE_URL=fake.base_url,
                      APIINONE_TASK_LEASE_S="2")
        api, base = start_api(env, tmp_path)
        procs.append(api)
        doomed = start_worker(env, tmp_path, "node41")
        procs.append(doomed)
        account_id, key = await new_account_key(pg_url, credits=100)
        _admin_id, admin_key = await new_account_key(pg_url, credits=0, admin=True)
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            auth = {"Authorization": f"Bearer {key}"}
            task_id = (await client.post("/api/v1/images/generations", json=GPT, headers=auth)).json()["task_id"]

            async def task() -> dict[str, Any]:
                body: dict[str, Any] = (await client.get(f"/api/v1/tasks/{task_id}", headers=auth)).json()
                return body

            async def poll(check: Any, what: str, timeout: float = 60) -> dict[str, Any]:
                deadline = asyncio.get_running_loop().time() + timeout
                while True:
                    body = await task()
                    if check(body):
                        return body
                    assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}: {body}"
                    await asyncio.sleep(0.05)

            await poll(lambda b: b["status"] == "running" and b["node"] == "node41", "node41 to start the task")
            # in flight: arrived, not yet answered (received counts answers, after the 3 s latency,
            # and node41 could complete in the moment between the answer and the kill)
            wait_until(lambda: fake.arrived >= 1, 30, "node41 to call the upstream")
            assert fake.received == 0
            doomed.kill9()
            procs.append(start_worker(env, tmp_path, "node42"))
            done = await poll(lambda b: b["status"] in ("succeeded", "failed"), "the task to end", timeout=120)
            assert done["status"] == "succeeded" and done["node"] == "node42", done
            assert done["credits"] == {"price": 10, "charged": 10}
            account = (await client.get("/api/v1/account", headers=auth)).json()
            assert account["credits"] == {"balance": 90, "held": 0, "available": 90}
            audit = await audit_account(pg_url, account_id)
            assert_exactly_once(audit)
            assert audit["tasks"][task_id]["attempts"] == 2
            assert len(fake.requests) == 2, "node41's call was cut off; node42 called again"

            admin = {"Authorization": f"Bearer {admin_key}"}
            forbidden = await client.get("/api/v1/admin/nodes", headers=auth)
            assert forbidden.status_code == 403 and forbidden.json()["error"]["code"] == "forbidden"

            async def nodes() -> dict[str, dict[str, Any]]:
                r = await client.get("/api/v1/admin/nodes", headers=admin)
                assert r.status_code == 200, r.text
                return {n["name"]: n for n in r.json()["data"]}

            deadline = asyncio.get_running_loop().time() + 60
            while (shown := await nodes())["node41"]["status"] != "down":
                assert asyncio.get_running_loop().time() < deadline, shown
                await asyncio.sleep(0.2)
            assert shown["node42"]["status"] == "up" and shown["node42"]["models"] == ["*"]
            assert shown["node41"]["pid"] == doomed.pid
