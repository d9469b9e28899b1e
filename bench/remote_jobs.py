"""How many upstream jobs one worker follows at once, and the CPU it takes.

A fal fake runs in its own process and holds every job "in progress". One worker (the production
wiring: ``build_container`` → ``make_worker``, concurrency 8) submits N video tasks, defers them,
and its remote-job poller follows all N with the default backoff (a tenth of the job's age, 1 s to
30 s, ±20 % jitter). Over a measuring window the bench counts status polls and the worker
process's CPU time; then the fake lets every job finish and the bench times until all N tasks
have copied their MP4 into storage and succeeded (each charged once).

    .venv/bin/python -m bench.remote_jobs -n 2000 --window 20 [--db postgres]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
from sqlalchemy import func, select

from apiinone.bootstrap import build_container
from apiinone.config import Settings
from apiinone.db import tables as t
from apiinone.db.migrate import upgrade
from apiinone.logging import configure_logging

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"
KEY = "fal-test-key-0001:secret"


async def _pg_url() -> str:
    import asyncpg

    name = f"apiinone_bench_{uuid.uuid4().hex[:10]}"
    conn = await asyncpg.connect(PG_ADMIN)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"


def _start_fake(tmp: Path) -> tuple[subprocess.Popen[bytes], str]:
    port_file = tmp / "fake.port"
    process = subprocess.Popen([sys.executable, "-m", "tests.fakes.fake_media", "--vendor", "fal", "--hold",
                                "--port-file", str(port_file)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not port_file.exists() or not port_file.read_text():
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("the fake fal did not start")
        time.sleep(0.05)
    return process, f"http://127.0.0.1:{port_file.read_text()}"


async def _count(container: object, status: str) -> int:
    async with container.db.uow(write=False) as uow:  # type: ignore[attr-defined]
        stmt = select(func.count()).select_from(t.tasks).where(t.tasks.c.status == status)
        return int((await uow.conn.execute(stmt)).scalar_one())


async def run(n: int, window_s: float, db: str) -> dict[str, float]:
    tmp = Path(tempfile.mkdtemp(prefix="apiinone-bench-jobs-"))
    fake, base = _start_fake(tmp)
    try:
        url = await _pg_url() if db == "postgres" else f"sqlite+aiosqlite:///{tmp / 'bench.db'}"
        upgrade(url)
        (tmp / "models.toml").write_text(f'''
[[models]]
id = "bench-video"
name = "Bench video"
type = "video"
provider = "fal"
upstream_model = "fal-ai/kling-video/v2.1/standard/text-to-video"
base_url = "{base}"
api_key_env = "BENCH_FAL_KEY"
durations = [5]
pricing = {{ per_second = {{ "720p" = 1 }} }}
''')
        os.environ["BENCH_FAL_KEY"] = KEY
        settings = Settings(env="test", data_dir=tmp / "data", database_url=url, public_url="http://bench",
                            secret_key="bench-secret-key-not-a-placeholder", models_file=tmp / "models.toml",
                            egress_allow="127.0.0.0/8", log_level=os.environ.get("BENCH_LOG", "WARNING"),
                            worker_poll_s=0.2, db_pool_size=20)
        container = build_container(settings)
        account = await container.accounts.create_user("bench@example.com", "password123", credits=n * 5 + 10)
        spec = container.catalog.resolve("bench-video")
        assert spec is not None
        kind = container.kinds.get("video")
        for i in range(n):
            task_input, price = kind.prepare(spec, {"prompt": f"clip {i}"})  # type: ignore[union-attr]
            await container.tasks.create_task(account, None, spec, task_input, price)
        worker = container.make_worker("bench", 8)
        await worker.start()
        started = time.perf_counter()
        while True:  # every task submitted and deferred: the slots are free again
            async with container.db.uow(write=False) as uow:
                deferred = int((await uow.conn.execute(select(func.count()).select_from(t.tasks).where(
                    t.tasks.c.remote_job.is_not(None)))).scalar_one())
            if deferred >= n:
                break
            await asyncio.sleep(0.2)
        submit_s = time.perf_counter() - started
        poller = worker.remote_jobs
        assert poller is not None
        looks0, cpu0, wall0 = poller.looks, time.process_time(), time.perf_counter()
        await asyncio.sleep(window_s)
        looks, cpu, wall = poller.looks - looks0, time.process_time() - cpu0, time.perf_counter() - wall0
        in_flight = n - await _count(container, "succeeded") - await _count(container, "failed")
        async with httpx.AsyncClient() as client:
            await client.post(f"{base}/_fake/release")
        released = time.perf_counter()
        while await _count(container, "succeeded") + await _count(container, "failed") < n:
            await asyncio.sleep(0.2)
        finish_s = time.perf_counter() - released
        succeeded = await _count(container, "succeeded")
        async with container.db.uow(write=False) as uow:
            credits = await uow.accounts.credits(account.id)
        await worker.stop()
        await container.aclose()
        return {"jobs": n, "in_flight": in_flight, "submit_s": submit_s, "looks_per_s": looks / wall,
                "cpu_pct": 100 * cpu / wall, "cpu_ms_per_look": 1000 * cpu / max(1, looks),
                "finish_s": finish_s, "succeeded": succeeded, "charged": n * 5 + 10 - credits.balance / 1_000_000,
                "held": credits.held / 1_000_000}
    finally:
        fake.terminate()
        fake.wait(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", type=int, default=2000)
    parser.add_argument("--window", type=float, default=20.0)
    parser.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    args = parser.parse_args()
    configure_logging("WARNING", True)
    r = asyncio.run(run(args.n, args.window, args.db))
    print(f"remote jobs ({args.db}): {r['jobs']:.0f} upstream jobs followed at once by one worker "
          f"(submitted and deferred in {r['submit_s']:.1f} s); over {args.window:.0f} s: "
          f"{r['looks_per_s']:.0f} status polls/s at {r['cpu_pct']:.0f}% of one core "
          f"({r['cpu_ms_per_look']:.2f} ms CPU per poll); all finished {r['finish_s']:.1f} s after release "
          f"({r['succeeded']:.0f} succeeded, {r['charged']:.0f} credits charged, {r['held']:.0f} held)")


if __name__ == "__main__":
    main()
