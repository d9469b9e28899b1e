"""Shared fixtures: real SQLite files and real PostgreSQL databases, an app on each, and accounts."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from apiinone.config import Settings
from apiinone.db.migrate import upgrade
from apiinone.web.app import container_from, create_app


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def require(available: bool, what: str, *, allow_module_level: bool = False) -> None:
    """A part of the suite that cannot run here fails when ``CI=true`` and is skipped, loudly, only
    outside CI (a developer's machine without chromium, wrk or openssl)."""
    if available:
        return
    if in_ci():
        pytest.fail(f"{what}: this part of the suite must run in CI (scripts/test.sh installs it)", pytrace=False)
    print(f"\n*** SKIPPED (outside CI only): {what} ***", file=sys.stderr)
    pytest.skip(f"outside CI only: {what}", allow_module_level=allow_module_level)


def self_signed_cert(directory: Path, *, common_name: str, alt_name: str) -> tuple[Path, Path]:
    """A throwaway certificate and key made with the openssl command (``alt_name`` as in
    ``subjectAltName``: ``DNS:host`` or ``IP:127.0.0.1``); fails in CI without openssl."""
    require(shutil.which("openssl") is not None, "the openssl command is not installed")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", f"/CN={common_name}",
         "-addext", f"subjectAltName={alt_name}"],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


def needs(available: bool, what: str) -> pytest.MarkDecorator:
    """:func:`require` as a marker for single tests: skipped (loudly) outside CI only; in CI the
    test runs and fails without what it needs."""
    return pytest.mark.skipif(not available and not in_ci(), reason=f"outside CI only: {what}")


PG_ADMIN_DSN = os.environ.get("APIINONE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


async def _pg_exec(sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh, migrated PostgreSQL database for one test, dropped afterwards."""
    name = f"apiinone_t_{uuid.uuid4().hex[:12]}"
    asyncio.run(_pg_exec(f'CREATE DATABASE "{name}"'))
    url = PG_ADMIN_DSN.replace("postgresql://", "postgresql+asyncpg://").rsplit("/", 1)[0] + f"/{name}"
    upgrade(url)
    yield url
    asyncio.run(_pg_exec(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    url = f"sqlite+aiosqlite:///{tmp_path / 'apiinone.db'}"
    upgrade(url)
    return url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Runs a test once on a real SQLite file and once on the real PostgreSQL server."""
    if request.param == "sqlite":
        url: str = request.getfixturevalue("sqlite_url")
        return url
    url = request.getfixturevalue("pg_url")
    return url


def make_settings(tmp_path: Path, database_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "env": "test", "data_dir": tmp_path / "data", "database_url": database_url,
        "public_url": "http://testserver", "secret_key": "test-secret-key-not-a-placeholder",
        "worker_poll_s": 0.2, "task_lease_s": 5.0, "openai_backoff_s": 0.01, "route_backoff_s": 0.01,
        "log_json": True,
    }
    values.update(overrides)
    return Settings(**values)


@dataclass
class Caller:
    """An account with an API key, as a client of the API."""

    account_id: str
    email: str
    key: str
    client: httpx.AsyncClient

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    async def post(self, path: str, **kw: Any) -> httpx.Response:
        return await self.client.post(path, headers={**self.headers, **kw.pop("headers", {})}, **kw)

    async def get(self, path: str, **kw: Any) -> httpx.Response:
        return await self.client.get(path, headers={**self.headers, **kw.pop("headers", {})}, **kw)

    async def wait_for(self, task_id: str, timeout: float = 15.0) -> dict[str, Any]:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            body: dict[str, Any] = (await self.get(f"/api/v1/tasks/{task_id}")).json()
            if body["status"] in ("succeeded", "failed", "canceled"):
                return body
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"task {task_id} still {body['status']} after {timeout}s")
            await asyncio.sleep(0.05)


class AppHarness:
    """A real app (lifespan and embedded worker running) behind an in-process httpx client."""

    def __init__(self, settings: Settings, embedded_worker: bool = True) -> None:
        self.settings = settings
        self.app = create_app(settings, embedded_worker=embedded_worker, migrate=False)
        self.container = container_from(self.app)
        self.client = httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url="http://testserver")
        self._lifespan: Any = None

    async def __aenter__(self) -> AppHarness:
        self._lifespan = self.app.router.lifespan_context(self.app)
        await self._lifespan.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.client.aclose()
        await self._lifespan.__aexit__(None, None, None)

    async def caller(self, email: str | None = None, credits: int = 100) -> Caller:
        email = email or f"user-{uuid.uuid4().hex[:8]}@example.com"
        account = await self.container.accounts.create_user(email, "password123", credits=credits)
        created = await self.container.accounts.create_api_key(account.id, "test")
        return Caller(account_id=account.id, email=email, key=created.plaintext, client=self.client)


@pytest.fixture
async def harness(tmp_path: Path, database_url: str) -> AsyncIterator[AppHarness]:
    async with AppHarness(make_settings(tmp_path, database_url)) as h:
        yield h


@pytest.fixture
async def sqlite_harness(tmp_path: Path, sqlite_url: str) -> AsyncIterator[AppHarness]:
    async with AppHarness(make_settings(tmp_path, sqlite_url)) as h:
        yield h
