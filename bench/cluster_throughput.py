"""Scale-out figures on this machine, with real processes on a fresh PostgreSQL database:

1. end-to-end tasks/s with 1, 2 and 4 ``apiinone worker`` processes (concurrency 8 each) behind
   ``apiinone serve --workers 2 --no-worker``, against the fake OpenAI upstream answering in 200 ms:
   from the first create request to the last task's finish;
2. on an idle cluster (three nodes, LISTEN/NOTIFY wake-ups), the time from a task's creation to a
   worker starting it (``started_at - created_at``), p50 and p99 over sequential single tasks.

    .venv/bin/python -m bench.cluster_throughput [-n 600] [--pickups 200]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg
import httpx
from tests.e2e.cluster import ROOT, Proc, app_env, new_account_key, start_api, start_worker

from apiinone.db.migrate import upgrade

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"
GPT = {"model": "gpt-image-1.5-official", "prompt": "benchmark", "quality": "medium"}


def start_fake(workdir: Path, latency_ms: int) -> tuple[subprocess.Popen[bytes], str]:
    port_file = workdir / "fake.port"
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests/fakes/fake_openai.py"), "--port", "0",
                             "--port-file", str(port_file), "--latency-ms", str(latency_ms)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while not port_file.exists() or not port_file.read_text().strip():
        if time.monotonic() > deadline:
            raise RuntimeError("fake upstream did not start")
        time.sleep(0.05)
    return proc, f"http://127.0.0.1:{port_file.read_text().strip()}/v1"


async def fresh_database() -> str:
    name = f"apiinone_bench_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(PG_ADMIN)
    await conn.execute(f'CREATE DATABASE "{name}"')
    await conn.close()
    url = PG_ADMIN.replace("postgresql://", "postgresql+asyncpg://").rsplit("/", 1)[0] + f"/{name}"
    await asyncio.to_thread(upgrade, url)
    return url


async def drop_database(url: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN)
    await conn.execute(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')
    await conn.close()


async def db_fetch(url: str, sql: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        return list(await conn.fetch(sql))
    finally:
        await conn.close()


async def throughput(workers: int, tasks: int, fake_url: str, workdir: Path) -> float:
    url = await fresh_database()
    procs: list[Proc] = []
    try:
        env = app_env(url, workdir / "data", OPENAI_API_KEY="sk-bench", OPENAI_BASE_URL=fake_url)
        api, base = start_api(env, workdir, workers=2, name=f"api-{workers}")
        procs.append(api)
        env["APIINONE_PUBLIC_URL"] = base
        procs.extend(start_worker(env, workdir, f"bench{workers}-{i}", "--concurrency", "8") for i in range(workers))
        _account, key = await new_account_key(url, credits=10 * tasks)
        todo = iter(range(tasks))
        started = time.time()

        async def sender(client: httpx.AsyncClient) -> None:
            for _ in todo:
                r = await client.post("/api/v1/images/generations", json=GPT)
                assert r.status_code == 202, r.text

        async with httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=60) as c:
            await asyncio.gather(*(sender(c) for _ in range(16)))
        while True:
            [row] = await db_fetch(url, "SELECT count(*) FILTER (WHERE status = 'succeeded') AS done, "
                                        "count(*) AS total, max(finished_at) AS last FROM tasks")
            if row["done"] == tasks:
                [run] = await db_fetch(url, "SELECT avg(finished_at - started_at) AS run_ms, "
                                            "max(created_at) - min(created_at) AS create_ms FROM tasks")
                print(f"  ({workers} workers: mean run {float(run['run_ms']):.0f} ms per task, "
                      f"{tasks} creates took {run['create_ms']} ms)", flush=True)
                return tasks / (row["last"] / 1000 - started)
            if row["total"] - row["done"] and time.time() - started > 600:
                raise RuntimeError(f"tasks did not finish: {dict(row)}")
            await asyncio.sleep(0.2)
    finally:
        for proc in reversed(procs):
            proc.stop()
        await drop_database(url)


async def pickup_latency(samples: int, fake_url: str, workdir: Path) -> list[int]:
    url = await fresh_database()
    procs: list[Proc] = []
    try:
        env = app_env(url, workdir / "data", OPENAI_API_KEY="sk-bench", OPENAI_BASE_URL=fake_url,
                      APIINONE_WORKER_POLL_S="5")  # the poll is a safety net; NOTIFY does the waking
        api, base = start_api(env, workdir, name="api-idle")
        procs.append(api)
        env["APIINONE_PUBLIC_URL"] = base
        procs.extend(start_worker(env, workdir, node) for node in ("node41", "node42", "node43"))
        _account, key = await new_account_key(url, credits=10 * samples)
        async with httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=60) as c:
            for _ in range(samples):
                task_id = (await c.post("/api/v1/images/generations", json=GPT)).json()["task_id"]
                while (await c.get(f"/api/v1/tasks/{task_id}")).json()["status"] != "succeeded":
                    await asyncio.sleep(0.02)
                await asyncio.sleep(0.1)  # every node idle again, waiting on its wake-up
        rows = await db_fetch(url, "SELECT started_at - created_at AS ms FROM tasks")
        return sorted(int(r["ms"]) for r in rows)
    finally:
        for proc in reversed(procs):
            proc.stop()
        await drop_database(url)


def percentile(values: list[int], p: float) -> int:
    return values[min(len(values) - 1, round(p / 100 * (len(values) - 1)))]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", "--tasks", type=int, default=600)
    parser.add_argument("--pickups", type=int, default=200)
    parser.add_argument("--workers", type=int, nargs="*", default=[1, 2, 4])
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="apiinone-bench-"))
    fake, fake_url = start_fake(workdir, latency_ms=200)
    try:
        for n in args.workers:
            rate = await throughput(n, args.tasks, fake_url, workdir)
            print(f"{n} worker process(es) x concurrency 8, upstream 200 ms: {rate:7.1f} tasks/s "
                  f"({args.tasks} tasks)", flush=True)
        ms = await pickup_latency(args.pickups, fake_url, workdir)
        print(f"idle cluster, creation -> worker start ({len(ms)} tasks): p50 {percentile(ms, 50)} ms, "
              f"p99 {percentile(ms, 99)} ms, mean {statistics.mean(ms):.1f} ms, max {ms[-1]} ms")
    finally:
        fake.terminate()
        fake.wait(10)


if __name__ == "__main__":
    asyncio.run(main())
