"""Account creation under concurrency (real SQLite and PostgreSQL), closed sign-up, and the
password change that ends other sessions in the same transaction."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from apiinone.db.sessions import SessionRepository
from apiinone.errors import InvalidParameter
from tests.conftest import AppHarness, make_settings
from tests.integration.test_console_web import PASSWORD, browser, csrf_of, form, signup


async def test_exactly_one_first_admin_when_many_sign_up_at_once(harness: AppHarness) -> None:
    accounts = harness.container.accounts
    created = await asyncio.gather(*(accounts.create_user(f"racer{i}@example.com", first_is_admin=True)
                                     for i in range(12)))
    assert sum(a.is_admin for a in created) == 1
    async with harness.container.db.uow(write=False) as uow:
        stored = [await uow.accounts.get(a.id) for a in created]
    assert sum(bool(a and a.is_admin) for a in stored) == 1
    later = await accounts.create_user("later@example.com", first_is_admin=True)
    assert not later.is_admin  # an admin exists: nobody else becomes one by signing up


async def test_duplicate_email_race_is_a_400_never_a_500(harness: AppHarness) -> None:
    accounts = harness.container.accounts
    results = await asyncio.gather(*(accounts.create_user("same@example.com") for _ in range(10)),
                                   return_exceptions=True)
    made = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, BaseException)]
    assert len(made) == 1
    assert all(isinstance(r, InvalidParameter) and r.param == "email" for r in refused), refused


async def test_concurrent_console_signups_one_admin_no_500(harness: AppHarness) -> None:
    clients = [browser(harness) for _ in range(6)]
    try:
        tokens = [csrf_of((await c.get("/signup")).text) for c in clients]
        responses = await asyncio.gather(*(
            c.post("/signup", data={"email": "dup@example.com" if i % 2 else f"s{i}@example.com",
                                    "password": PASSWORD, "csrf_token": t})
            for i, (c, t) in enumerate(zip(clients, tokens, strict=True))))
    finally:
        for c in clients:
            await c.aclose()
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [303, 303, 303, 303, 400, 400], statuses
    admins = [e for e in ("s0@example.com", "s2@example.com", "s4@example.com", "dup@example.com")
              if (await harness.container.accounts.get_by_email(e)).is_admin]
    assert len(admins) == 1


async def test_closed_signup_refuses_with_a_clear_page(tmp_path: Path, sqlite_url: str) -> None:
    async with AppHarness(make_settings(tmp_path, sqlite_url, signup="closed")) as h, browser(h) as client:
        page = await client.get("/signup")
        assert page.status_code == 403 and "Sign-up is closed" in page.text
        login = await client.get("/login")
        token = csrf_of(login.text)
        assert 'href="/signup"' not in login.text
        r = await client.post("/signup", data={"email": "new@example.com", "password": PASSWORD, "csrf_token": token})
        assert r.status_code == 403
        async with h.container.db.uow(write=False) as uow:
            assert await uow.accounts.count() == 0
        zh = await client.get("/signup?lang=zh-CN")
        assert zh.status_code == 403 and "注册已关闭" in zh.text
        # accounts still come from admins and the CLI
        made = await h.container.accounts.create_user("cli@example.com", PASSWORD)
        assert made.email == "cli@example.com"


async def test_password_change_and_ending_sessions_are_one_transaction(
        sqlite_harness: AppHarness, monkeypatch: pytest.MonkeyPatch) -> None:
    h = sqlite_harness
    async with browser(h) as here, browser(h) as there:
        assert (await signup(here, "pw@example.com")).status_code == 303
        assert (await form(there, "/login", "/login", email="pw@example.com", password=PASSWORD)).status_code == 303

        async def broken(*_args: object, **_kw: object) -> int:
            raise RuntimeError("injected: sessions could not be ended")

        monkeypatch.setattr(SessionRepository, "delete_for_account", broken)
        with pytest.raises(RuntimeError, match="injected"):  # the in-process transport re-raises the 500
            await form(here, "/console/settings", "/console/settings/password",
                       current_password=PASSWORD, new_password="another-password")
        monkeypatch.undo()
        # nothing changed: the old password still logs in, the other session still works
        assert (await there.get("/console/settings")).status_code == 200
        await h.container.accounts.authenticate_password("pw@example.com", PASSWORD)

        r = await form(here, "/console/settings", "/console/settings/password",
                       current_password=PASSWORD, new_password="another-password")
        assert r.status_code == 303
        assert (await there.get("/console/settings")).status_code == 303  # logged out
        assert (await here.get("/console/settings")).status_code == 200
        await h.container.accounts.authenticate_password("pw@example.com", "another-password")


async def test_failed_logins_from_an_attacker_do_not_lock_the_owner_out(sqlite_harness: AppHarness) -> None:
    import httpx

    h = sqlite_harness
    await h.container.accounts.create_user("owner@example.com", PASSWORD)

    def client_at(address: str) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=h.app, client=(address, 40000)),
                                 base_url="http://testserver")

    async with client_at("203.0.113.5") as attacker, client_at("198.51.100.7") as owner:
        for _ in range(h.settings.login_max_failures):
            r = await form(attacker, "/login", "/login", email="owner@example.com", password="guess-guess")
            assert r.status_code == 401
        r = await form(attacker, "/login", "/login", email="owner@example.com", password=PASSWORD)
        assert r.status_code == 429  # the attacker's address is locked for this email
        r = await form(owner, "/login", "/login", email="owner@example.com", password=PASSWORD)
        assert r.status_code == 303 and (await owner.get("/console")).status_code == 200
