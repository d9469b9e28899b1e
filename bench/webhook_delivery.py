"""How many webhook deliveries per second the delivery worker sustains to a local receiver.

Enqueues N finished-task deliveries (a realistic ~1 KB task object each), starts one delivery
worker with the production client (egress guard, signing, attempt log), and times until every one
is recorded as delivered. The receiver is a separate process on 127.0.0.1 answering 204, so it
does not compete for this process's event loop.

    .venv/bin/python -m bench.webhook_delivery --db sqlite --db postgres -n 3000 --accounts 1 --accounts 50
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import orjson
from sqlalchemy import func, select

from apiinone.db import tables as t
from apiinone.db.database import Database
from apiinone.db.migrate import upgrade
from apiinone.domain.accounts import Account
from apiinone.ids import new_id, now_ms
from apiinone.logging import configure_logging
from apiinone.net.egress import EgressPolicy
from apiinone.webhooks.delivery import DeliveryClients, DeliveryOptions, DeliveryWorker
from apiinone.webhooks.signing import new_webhook_secret
from apiinone.worker.wakeup import Wakeup

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"


def _payload(i: int) -> bytes:
    return orjson.dumps({
        "task_id": f"tsk_{i:08d}", "object": "task", "type": "image", "model": "gpt-image-1.5-official",
        "status": "succeeded",
        "input": {"prompt": "A modern logo design for a coffee shop called Bean & Brew" * 3,
                  "aspect_ratio": "1:1", "quality": "medium", "input_urls": []},
        "output": {"images": [{"url": f"https://files.example.com/img/{uuid.uuid4().hex}.png",
                               "width": 1024, "height": 1024, "content_type": "image/png"}]},
        "error": None, "credits": {"price": 10, "charged": 10}, "callback_url": "https://example.com/hook",
        "node": "node1", "created_at": "2026-11-24T19:31:02Z", "started_at": "2026-11-24T19:31:03Z",
        "finished_at": "2026-11-24T19:31:20Z",
        "urls": {"get": "https://host/api/v1/tasks/tsk_x", "cancel": "https://host/api/v1/tasks/tsk_x/cancel"},
    })


async def _create_pg_database() -> str:
    import asyncpg

    name = f"apiinone_bench_{uuid.uuid4().hex[:10]}"
    conn = await asyncpg.connect(PG_ADMIN)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return name


async def _drop_pg_database(name: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(PG_ADMIN)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def run_once(url: str, receiver_url: str, n: int, accounts: int,
                   options: DeliveryOptions) -> tuple[float, float]:
    """Deliveries per second, and CPU milliseconds this process spent per delivery."""
    db = Database(url)
    account_ids = [f"acc_bench_{i}" for i in range(accounts)]
    async with db.uow() as uow:
        for account_id in account_ids:
            await uow.accounts.add(Account(id=account_id, email=f"{account_id}@example.com", created_at=now_ms(),
                                           webhook_secret=new_webhook_secret()), None)
        for i in range(n):
            await uow.webhooks.enqueue(delivery_id=new_id("msg"), task_id=f"tsk_{i}",
                                       account_id=account_ids[i % accounts], url=f"{receiver_url}/hook",
                                       payload=_payload(i), at=now_ms())
        await uow.commit()
    worker = DeliveryWorker(db, DeliveryClients(EgressPolicy.from_setting("127.0.0.0/8"), options), options,
                            Wakeup())
    started, cpu_started = time.perf_counter(), time.process_time()
    await worker.start()
    delivered_stmt = select(func.count()).select_from(t.webhook_deliveries).where(
        t.webhook_deliveries.c.status == "delivered")
    while True:
        async with db.uow(write=False) as uow:
            delivered = int((await uow.conn.execute(delivered_stmt)).scalar_one())
        if delivered >= n:
            break
        await asyncio.sleep(0.05)
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    await worker.stop()
    await worker.client.aclose()
    await db.dispose()
    return n / elapsed, cpu * 1000 / n


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", action="append", choices=["sqlite", "postgres"])
    parser.add_argument("-n", type=int, default=2000, help="deliveries per run")
    parser.add_argument("--accounts", type=int, action="append", help="accounts the deliveries spread over")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--account-concurrency", type=int, default=8)
    args = parser.parse_args()
    configure_logging("WARNING")
    options = DeliveryOptions(concurrency=args.concurrency, account_concurrency=args.account_concurrency,
                              poll_s=0.2)
    with tempfile.TemporaryDirectory() as tmp:
        port_file = Path(tmp) / "port"
        receiver = subprocess.Popen([sys.executable, "-m", "tests.fakes.webhook_receiver", "--port-file",
                                     str(port_file)])
        try:
            while not port_file.exists() or not port_file.read_text():
                await asyncio.sleep(0.05)
            receiver_url = f"http://127.0.0.1:{port_file.read_text()}"
            print(f"{'database':<10} {'accounts':>8} {'deliveries':>10} {'deliveries/s':>13} {'CPU ms/delivery':>16}")
            for db_kind in args.db or ["sqlite"]:
                for accounts in args.accounts or [1, 50]:
                    if db_kind == "sqlite":
                        url = f"sqlite+aiosqlite:///{tmp}/bench-{uuid.uuid4().hex[:6]}.db"
                        upgrade(url)
                        rate, cpu_ms = await run_once(url, receiver_url, args.n, accounts, options)
                    else:
                        name = await _create_pg_database()
                        url = PG_ADMIN.replace("postgresql://", "postgresql+asyncpg://").rsplit("/", 1)[0] + f"/{name}"
                        try:
                            upgrade(url)
                            rate, cpu_ms = await run_once(url, receiver_url, args.n, accounts, options)
                        finally:
                            await _drop_pg_database(name)
                    print(f"{db_kind:<10} {accounts:>8} {args.n:>10} {rate:>13.0f} {cpu_ms:>16.2f}", flush=True)
        finally:
            receiver.terminate()
            receiver.wait()


if __name__ == "__main__":
    asyncio.run(main())
