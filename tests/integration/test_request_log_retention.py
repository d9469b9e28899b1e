"""``apiinone admin purge-requests``: request records older than the retention go, newer ones and
the ledger stay (on both databases for the query; the command itself on embedded SQLite)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from typer.testing import CliRunner

from apiinone.cli import app
from apiinone.db.database import Database
from apiinone.domain.usage import DAY_MS, RequestLogEntry, RequestRecord
from apiinone.ids import new_id, now_ms
from apiinone.services.usage import UsageService
from tests.conftest import AppHarness


def _entry(account_id: str, age_days: float) -> RequestLogEntry:
    at = now_ms() - int(age_days * DAY_MS)
    return RequestLogEntry(id=new_id("req", at), account_id=account_id, api_key_id=None, key_prefix=None, credits=5,
                           created_at=at, record=RequestRecord(type="chat", model="m", status="succeeded",
                                                               http_status=200))


async def _seed(db: Database, account_id: str, ages: list[float]) -> None:
    async with db.uow() as uow:
        for age in ages:
            await uow.requests.add(_entry(account_id, age))
        await uow.commit()


async def test_purge_removes_only_records_older_than_the_retention(harness: AppHarness) -> None:
    h = harness
    caller = await h.caller(credits=1)
    await _seed(h.container.db, caller.account_id, [0, 1, 29.9, 30.1, 45, 400] * 5)
    service = UsageService(h.container.db, h.container.catalog_source)
    assert await service.purge(30, batch=4) == 15  # several batches
    async with h.container.db.uow(write=False) as uow:
        left = await uow.requests.list(caller.account_id, limit=100)
    assert len(left) == 15 and all(now_ms() - e.created_at < 30 * DAY_MS for e in left)
    assert await service.purge(30) == 0


def test_purge_requests_command(tmp_path: Path) -> None:
    runner = CliRunner()
    env = {"APIINONE_DATA_DIR": str(tmp_path / "data"), "APIINONE_SECRET_KEY": "test-secret-key-not-a-placeholder"}
    r = runner.invoke(app, ["admin", "create-user", "log@example.com"], env=env)
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["admin", "purge-requests"], env=env)
    assert r.exit_code == 1 and "APIINONE_REQUEST_LOG_RETENTION_DAYS" in r.output
    url = f"sqlite+aiosqlite:///{tmp_path / 'data' / 'apiinone.db'}"

    async def seed() -> None:
        db = Database(url)
        try:
            async with db.uow(write=False) as uow:
                account = await uow.accounts.get_by_email("log@example.com")
            assert account is not None
            await _seed(db, account.id, [1, 10, 100, 200])
        finally:
            await db.dispose()

    asyncio.run(seed())
    r = runner.invoke(app, ["admin", "purge-requests"], env=env | {"APIINONE_REQUEST_LOG_RETENTION_DAYS": "50"})
    assert r.exit_code == 0, r.output
    assert r.stdout.strip().splitlines()[-1] == "2"
    r = runner.invoke(app, ["admin", "purge-requests", "--days", "5"], env=env)
    assert r.exit_code == 0 and r.stdout.strip().splitlines()[-1] == "1"
    r = runner.invoke(app, ["admin", "purge-requests", "--days", "0"], env=env)
    assert r.exit_code != 0
