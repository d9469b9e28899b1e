"""Routes made in the console: stored with their keys sealed, merged with the catalog file's
routes, used by the pool at once, tested with one real call against the fake OpenAI upstream on
loopback, disabled and reordered, every change in the audit log."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from apiinone.sealing import SealError, SecretBox
from tests.conftest import AppHarness, make_settings
from tests.fakes.fake_openai import FakeOpenAI
from tests.integration.test_console_web import browser, form, signup

SECRET_UPSTREAM_KEY = "sk-console-entered-0123456789abcdefWXYZ"
MODEL = "gpt-image-1.5-official"


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(api_key=SECRET_UPSTREAM_KEY) as server:
        yield server


@pytest.fixture
async def harness_db(tmp_path: Path, sqlite_url: str) -> AsyncIterator[tuple[AppHarness, Path]]:
    async with AppHarness(make_settings(tmp_path, sqlite_url, openai_api_key=None)) as h:
        yield h, Path(sqlite_url.removeprefix("sqlite+aiosqlite:///"))


@pytest.fixture
async def admin(harness_db: tuple[AppHarness, Path]) -> AsyncIterator[httpx.AsyncClient]:
    h, _path = harness_db
    async with browser(h) as client:
        assert (await signup(client, "ops@example.com")).status_code == 303
        yield client


def _database_bytes(path: Path) -> bytes:
    """The whole SQLite file with its WAL, as someone who copied it would have it."""
    data = path.read_bytes()
    wal = path.with_name(path.name + "-wal")
    return data + (wal.read_bytes() if wal.exists() else b"")


async def test_a_console_route_serves_a_task_and_its_key_is_sealed(
        harness_db: tuple[AppHarness, Path], admin: httpx.AsyncClient, fake: FakeOpenAI) -> None:
    h, db_path = harness_db
    caller = await h.caller(credits=100)
    r = await caller.post("/api/v1/images/generations", json={"model": MODEL, "prompt": "p"})
    assert r.status_code == 503 and r.json()["error"]["code"] == "model_unavailable"  # no key for the file route

    r = await form(admin, "/admin/routes", "/admin/routes", model=MODEL, name="fake-east", provider="openai",
                   base_url=fake.base_url, keys=SECRET_UPSTREAM_KEY, priority="0", weight="1")
    assert r.status_code == 303 and r.headers["location"] == "/admin/routes?done=route_added"
    page = (await admin.get("/admin/routes")).text
    assert "fake-east" in page and "…WXYZ" in page and SECRET_UPSTREAM_KEY not in page
    assert SECRET_UPSTREAM_KEY.encode() not in _database_bytes(db_path)
    with sqlite3.connect(db_path) as conn:
        [(sealed, hint)] = conn.execute("SELECT keys_encrypted, key_hint FROM upstream_routes").fetchall()
    assert hint == "WXYZ" and SECRET_UPSTREAM_KEY not in sealed
    assert SecretBox("test-secret-key-not-a-placeholder").open(sealed) == SECRET_UPSTREAM_KEY
    with pytest.raises(SealError):
        SecretBox("another-instance-secret").open(sealed)

    r = await form(admin, "/admin/routes", f"/admin/routes/{MODEL}/fake-east/test")
    assert r.status_code == 200
    assert re.search(r'data-testid="route-test-result">\s*Route gpt-image-1.5-official/fake-east answered', r.text)
    assert len([q for q in fake.requests if q.path.endswith("/images/generations")]) == 1

    r = await caller.post("/api/v1/images/generations", json={"model": MODEL, "prompt": "a lighthouse"})
    assert r.status_code == 202, r.text
    task = await caller.wait_for(r.json()["task_id"])
    assert task["status"] == "succeeded", task
    assert fake.requests[-1].headers.get("authorization") == f"Bearer {SECRET_UPSTREAM_KEY}"
    [logged] = (await caller.get("/api/v1/account/requests")).json()["data"]
    assert logged["task_id"] == task["task_id"]
    async with h.container.db.uow(write=False) as uow:
        [row] = await uow.requests.list(caller.account_id, limit=5)
    assert row.record.route == "fake-east"

    # the state and counters of the route are on the page; the admin API never shows a key
    page = (await admin.get("/admin/routes")).text
    assert SECRET_UPSTREAM_KEY not in page

    # disabled: the model has no usable route left
    assert (await form(admin, "/admin/routes", f"/admin/routes/{MODEL}/fake-east/disable")).status_code == 303
    r = await caller.post("/api/v1/images/generations", json={"model": MODEL, "prompt": "p"})
    assert r.status_code == 503
    assert (await form(admin, "/admin/routes", f"/admin/routes/{MODEL}/fake-east/enable")).status_code == 303
    r = await caller.post("/api/v1/images/generations", json={"model": MODEL, "prompt": "p"})
    assert r.status_code == 202

    audit = (await admin.get("/admin/audit")).text
    for action in ("route.create", "route.test", "route.update"):
        assert action in audit, action
    assert SECRET_UPSTREAM_KEY not in audit and "WXYZ" in audit


async def test_routes_merge_with_the_file_and_reorder(harness_db: tuple[AppHarness, Path],
                                                      admin: httpx.AsyncClient, fake: FakeOpenAI) -> None:
    h, _db_path = harness_db
    for name, priority in (("b-second", "5"), ("a-first", "1")):
        r = await form(admin, "/admin/routes", "/admin/routes", model=MODEL, name=name, provider="openai",
                       base_url=fake.base_url, keys=SECRET_UPSTREAM_KEY, priority=priority)
        assert r.status_code == 303
    names = [(r.name, r.priority) for r in h.container.catalog.models[MODEL].effective_routes()]
    assert names == [("openai", 0), ("a-first", 1), ("b-second", 5)], "file route first, then console rows"
    ordered = [r.name for r in h.container.pool.order(h.container.pool.routes(h.container.catalog.models[MODEL]))]
    assert ordered == ["openai", "a-first", "b-second"]
    for _ in range(5):
        assert (await form(admin, "/admin/routes", f"/admin/routes/{MODEL}/b-second/up")).status_code == 303
    spec = h.container.catalog.models[MODEL]
    assert {r.name: r.priority for r in spec.effective_routes()}["b-second"] == 0
    # the file route edited from the console keeps its key variable; reverting brings the file back
    assert (await form(admin, "/admin/routes", f"/admin/routes/{MODEL}/openai/disable")).status_code == 303
    assert "openai" not in [r.name for r in h.container.catalog.models[MODEL].effective_routes()]
    assert (await form(admin, "/admin/routes", f"/admin/routes/{MODEL}/openai/delete")).status_code == 303
    file_route = next(r for r in h.container.catalog.models[MODEL].effective_routes() if r.name == "openai")
    assert not file_route.stored
    # a second process (its own refresher) sees the same routes
    async with AppHarness(h.settings, embedded_worker=False) as other:
        assert [r.name for r in other.container.catalog.models[MODEL].effective_routes()] == \
            [r.name for r in h.container.catalog.models[MODEL].effective_routes()]


@pytest.mark.parametrize(("fields", "reason"), [
    ({"name": "bad name!", "provider": "openai", "base_url": "http://127.0.0.1:9/v1"}, "name"),
    ({"name": "ok", "provider": "nope", "base_url": "http://127.0.0.1:9/v1"}, "provider"),
    ({"name": "ok", "provider": "openai", "base_url": "ftp://x"}, "base_url"),
    ({"name": "ok", "provider": "openai"}, "base_url"),
    ({"name": "ok", "provider": "openai", "base_url": "http://127.0.0.1:9/v1", "priority": "1.5"}, "priority"),
    ({"name": "ok", "provider": "openai", "base_url": "http://127.0.0.1:9/v1", "weight": "-1"}, "weight"),
    ({"name": "ok", "provider": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "nope"}, "model"),
])
async def test_a_bad_route_is_refused_and_nothing_is_stored(harness_db: tuple[AppHarness, Path],
                                                            admin: httpx.AsyncClient, fields: dict[str, str],
                                                            reason: str) -> None:
    h, _db_path = harness_db
    r = await form(admin, "/admin/routes", "/admin/routes", **({"model": MODEL} | fields))
    assert r.status_code in (400, 404), reason
    assert h.container.stored_routes() == []
    async with h.container.db.uow(write=False) as uow:
        assert await uow.routes.all() == []
        assert await uow.audit.list(limit=5) == []


async def test_a_form_without_csrf_changes_no_route(harness_db: tuple[AppHarness, Path],
                                                    admin: httpx.AsyncClient) -> None:
    h, _db_path = harness_db
    r = await admin.post("/admin/routes", data={"model": MODEL, "name": "x", "provider": "openai",
                                                "base_url": "http://127.0.0.1:9/v1"})
    assert r.status_code == 403
    r = await admin.post(f"/admin/routes/{MODEL}/openai/disable", data={"csrf_token": "forged"})
    assert r.status_code == 403
    assert h.container.stored_routes() == []
