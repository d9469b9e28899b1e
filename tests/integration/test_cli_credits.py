"""``apiinone admin create-user --credits`` and ``admin grant`` take exact decimal credits."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from typer.testing import CliRunner

from apiinone.cli import app
from apiinone.db.database import Database


def _env(tmp_path: Path) -> dict[str, str]:
    return {"APIINONE_DATA_DIR": str(tmp_path / "data"), "APIINONE_ENV": "development",
            "APIINONE_SECRET_KEY": "test-secret-key-not-a-placeholder"}


async def _credits_and_ledger(url: str, email: str) -> tuple[int, list[tuple[str, int]]]:
    db = Database(url)
    try:
        async with db.uow(write=False) as uow:
            account = await uow.accounts.get_by_email(email)
            assert account is not None
            entries = await uow.ledger.list(account.id, limit=10)
    finally:
        await db.dispose()
    return account.credits.balance, [(e.kind.value, e.amount) for e in entries]


def test_create_user_and_grant_take_decimal_credits(tmp_path: Path) -> None:
    runner = CliRunner()
    env = _env(tmp_path)
    r = runner.invoke(app, ["admin", "create-user", "cli@example.com", "--credits", "0.5"], env=env)
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["admin", "grant", "cli@example.com", "2.000125", "--note", "n"], env=env)
    assert r.exit_code == 0, r.output
    assert "granted 2.000125 credits" in r.output and "available now 2.500125" in r.output
    url = f"sqlite+aiosqlite:///{tmp_path / 'data' / 'apiinone.db'}"
    assert asyncio.run(_credits_and_ledger(url, "cli@example.com")) == (
        2_500_125, [("grant", 2_000_125), ("grant", 500_000)])


@pytest.mark.parametrize("amount", ["0", "-1", "1e3", "0.0000001", "١", "abc", "1000000001"])
def test_grant_refuses_bad_amounts_before_any_work(tmp_path: Path, amount: str) -> None:
    r = CliRunner().invoke(app, ["admin", "grant", "nobody@example.com", "--", amount], env=_env(tmp_path))
    assert r.exit_code == 1 and "credits must" in r.output
    assert not (tmp_path / "data" / "apiinone.db").exists(), "refused before the database is touched"


def test_create_user_refuses_bad_credits(tmp_path: Path) -> None:
    r = CliRunner().invoke(app, ["admin", "create-user", "x@example.com", "--credits", "1.1234567"],
                           env=_env(tmp_path))
    assert r.exit_code == 1 and "credits must" in r.output
