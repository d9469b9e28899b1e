"""Every lease has its own token: a worker that leases its own expired task again holds a new
lease, the earlier run can no longer finish (or charge) it, and the heartbeat keeps the new one."""

from __future__ import annotations

import asyncio
from pathlib import Path

from apiinone.domain.tasks import TaskStatus
from apiinone.ids import now_ms
from tests.conftest import AppHarness, make_settings
from tests.integration.live_server import GatedProvider


async def test_a_released_and_re_leased_task_gets_a_new_token_and_the_old_run_cannot_finish_it(
        tmp_path: Path, database_url: str) -> None:
    settings = make_settings(tmp_path, database_url, task_lease_s=0.6)
    async with AppHarness(settings, embedded_worker=False) as app:
        caller = await app.caller(credits=10)
        r = await caller.post("/api/v1/images/generations", json={"model": "local-typeset", "prompt": "p"})
        task_id = r.json()["task_id"]
        worker = app.container.make_worker(node="n1", concurrency=2)
        [first] = await worker.lease(1)
        assert first.id == task_id and first.lease_token
        await asyncio.sleep(0.7)  # the lease runs out (no heartbeat: the worker loops are not started)
        [again] = await worker.lease(1)
        assert again.id == task_id and again.lease_token and again.lease_token != first.lease_token
        assert await app.container.tasks.complete_task(first, first.lease_token, {"images": []}) is None
        async with app.container.db.uow() as uow:
            extended = await uow.queue.extend([again.lease_token], now_ms() + 60_000, task_ids=[task_id])
            await uow.commit()
        assert extended == 1
        done = await app.container.tasks.complete_task(again, again.lease_token or "", {"images": []})
        assert done is not None and done.status is TaskStatus.SUCCEEDED
        account = (await caller.get("/api/v1/account")).json()["credits"]
        assert account == {"balance": 9, "held": 0, "available": 9}  # charged exactly once


async def test_the_worker_keeps_the_lease_of_a_long_task_alive_by_its_own_token(
        tmp_path: Path, sqlite_url: str) -> None:
    settings = make_settings(tmp_path, sqlite_url, task_lease_s=1.5)  # a heartbeat each 0.5 s
    async with AppHarness(settings) as app:
        gated = GatedProvider()
        app.container.adapters.register("local-typeset", gated)
        caller = await app.caller(credits=10)
        r = await caller.post("/api/v1/images/generations", json={"model": "local-typeset", "prompt": "p"})
        await asyncio.wait_for(gated.started.wait(), 10)
        await asyncio.sleep(4.0)  # well past two leases: only heartbeats with this lease's token keep it
        task = await app.container.tasks.get_task(caller.account_id, r.json()["task_id"])
        assert task.status is TaskStatus.RUNNING and task.attempts == 1
        gated.gate.set()
        final = await caller.wait_for(task.id)
        assert final["status"] == "succeeded" and final["credits"]["charged"] == 1
