"""The console over HTTP (in-process app, real database): sessions, cookies, CSRF, the login
throttle, language choice, key revocation, the playground's same-origin route and admin edits."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from apiinone.domain.credits import UCR_PER_CREDIT as M  # services take µcr
from tests.conftest import AppHarness, make_settings

PASSWORD = "password123"


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "no CSRF token on the page"
    return match.group(1)


def browser(h: AppHarness, base_url: str = "http://testserver") -> httpx.AsyncClient:
    """A separate cookie jar on the same app: one browser."""
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=h.app), base_url=base_url)


async def signup(client: httpx.AsyncClient, email: str | None = None) -> httpx.Response:
    email = email or f"u-{uuid.uuid4().hex[:8]}@example.com"
    token = csrf_of((await client.get("/signup")).text)
    return await client.post("/signup", data={"email": email, "password": PASSWORD, "csrf_token": token})


async def form(client: httpx.AsyncClient, page: str, target: str, /, **fields: str) -> httpx.Response:
    """Post a form the way a browser does: with the CSRF token of the page that shows it."""
    token = csrf_of((await client.get(page)).text)
    return await client.post(target, data={"csrf_token": token, **fields})


async def key_count(h: AppHarness, email: str) -> int:
    account = await h.container.accounts.get_by_email(email)
    return len(await h.container.accounts.list_api_keys(account.id))


@pytest.fixture
async def admin(harness: AppHarness) -> AsyncIterator[httpx.AsyncClient]:
    async with browser(harness) as client:
        r = await signup(client, "admin@example.com")
        assert r.status_code == 303
        yield client


async def test_first_signup_is_admin_and_logged_in(harness: AppHarness) -> None:
    async with browser(harness) as first, browser(harness) as second:
        r = await signup(first, "first@example.com")
        assert r.status_code == 303 and r.headers["location"].startswith("/console")
        cookie = r.headers["set-cookie"]
        assert "aio_session=" in cookie and "HttpOnly" in cookie and "samesite=lax" in cookie.lower()
        assert "secure" not in cookie.lower()
        assert (await first.get("/console")).status_code == 200
        assert (await first.get("/admin")).status_code == 200

        assert (await signup(second, "second@example.com")).status_code == 303
        assert (await second.get("/console")).status_code == 200
        for path in ("/admin", "/admin/users", "/admin/codes", "/admin/orders", "/admin/models", "/admin/nodes"):
            r = await second.get(path)
            assert r.status_code == 403, path
        assert (await form(second, "/console", "/admin/users/x/credits", amount="5")).status_code == 403
    assert (await harness.container.accounts.get_by_email("first@example.com")).is_admin
    assert not (await harness.container.accounts.get_by_email("second@example.com")).is_admin


async def test_logged_out_visitors_are_sent_to_login(harness: AppHarness) -> None:
    async with browser(harness) as client:
        for path in ("/console", "/console/keys", "/console/billing", "/admin"):
            r = await client.get(path)
            assert r.status_code == 303 and r.headers["location"].startswith("/login?next="), path
        r = await client.get("/models")
        assert r.status_code == 200 and "frame-ancestors 'none'" in r.headers["content-security-policy"]
        r = await client.get("/login?next=//evil.example/")
        assert 'name="next" value="/console"' in r.text


async def test_form_without_csrf_token_is_refused_and_changes_nothing(harness: AppHarness,
                                                                     admin: httpx.AsyncClient) -> None:
    assert await key_count(harness, "admin@example.com") == 0
    for data in ({"name": "evil"}, {"name": "evil", "csrf_token": "forged"}):
        r = await admin.post("/console/keys", data=data)
        assert r.status_code == 403 and "nothing was changed" in r.text
    assert await key_count(harness, "admin@example.com") == 0
    assert (await form(admin, "/console/keys", "/console/keys", name="ok")).status_code == 201
    assert await key_count(harness, "admin@example.com") == 1

    async with browser(harness) as anonymous:
        r = await anonymous.post("/signup", data={"email": "nocsrf@example.com", "password": PASSWORD})
        assert r.status_code == 403
        with pytest.raises(Exception, match="no account"):
            await harness.container.accounts.get_by_email("nocsrf@example.com")


async def test_session_cookie_is_secure_behind_https(tmp_path: Path, sqlite_url: str) -> None:
    async with AppHarness(make_settings(tmp_path, sqlite_url, public_url="https://console.example")) as h:
        async with browser(h, "https://console.example") as client:
            r = await signup(client)
            cookie = r.headers["set-cookie"].lower()
            assert "secure" in cookie and "httponly" in cookie and "samesite=lax" in cookie


async def test_login_logout_and_throttle(harness: AppHarness) -> None:
    async with browser(harness) as client:
        await signup(client, "login@example.com")
        assert (await form(client, "/console", "/logout")).status_code == 303
        assert (await client.get("/console")).status_code == 303

        async def login(password: str) -> httpx.Response:
            return await form(client, "/login", "/login", email="login@example.com", password=password,
                              next="/console/keys")

        r = await login(PASSWORD)
        assert r.status_code == 303 and r.headers["location"] == "/console/keys"
        assert (await client.get("/console/keys")).status_code == 200
        await form(client, "/console", "/logout")

        limit = harness.settings.login_max_failures
        for _ in range(limit):
            assert (await login("wrong-password")).status_code == 401
        r = await login(PASSWORD)
        assert r.status_code == 429 and int(r.headers["retry-after"]) > 0
        assert (await client.get("/console")).status_code == 303


async def test_logout_ends_the_session_on_the_server(harness: AppHarness) -> None:
    async with browser(harness) as client:
        await signup(client)
        stolen = client.cookies["aio_session"]
        await form(client, "/console", "/logout")
    async with browser(harness) as thief:
        thief.cookies.set("aio_session", stolen)
        assert (await thief.get("/console")).status_code == 303


async def test_password_change_ends_other_sessions(harness: AppHarness) -> None:
    async with browser(harness) as here, browser(harness) as there:
        await signup(here, "pw@example.com")
        await form(there, "/login", "/login", email="pw@example.com", password=PASSWORD)
        assert (await there.get("/console")).status_code == 200
        r = await form(here, "/console/settings", "/console/settings/password",
                       current_password="not-it", new_password="another-password")
        assert r.status_code == 400
        r = await form(here, "/console/settings", "/console/settings/password",
                       current_password=PASSWORD, new_password="another-password")
        assert r.status_code == 303
        assert (await here.get("/console")).status_code == 200
        assert (await there.get("/console")).status_code == 303


async def test_admin_grants_deducts_and_disables(harness: AppHarness, admin: httpx.AsyncClient) -> None:
    async with browser(harness) as user:
        await signup(user, "member@example.com")
        member = await harness.container.accounts.get_by_email("member@example.com")
        r = await form(admin, "/admin/users", f"/admin/users/{member.id}/credits", amount="70", note="welcome",
                       action="grant")
        assert r.status_code == 303
        r = await form(admin, "/admin/users", f"/admin/users/{member.id}/credits", amount="500", action="deduct")
        assert r.status_code == 400
        await form(admin, "/admin/users", f"/admin/users/{member.id}/credits", amount="20", action="deduct")
        async with harness.container.db.uow(write=False) as uow:
            entries = await uow.ledger.list(member.id, limit=10)
        admin_account = await harness.container.accounts.get_by_email("admin@example.com")
        assert [(e.kind.value, e.amount) for e in entries] == [("adjustment", -20 * M), ("grant", 70 * M)]
        assert entries[1].note == "welcome"
        billing = (await user.get("/console/billing")).text
        assert 'data-testid="credits-available">50<' in billing

        created = await harness.container.accounts.create_api_key(member.id, "k")
        headers = {"Authorization": f"Bearer {created.plaintext}"}
        assert (await user.get("/api/v1/account", headers=headers)).status_code == 200
        r = await form(admin, "/admin/users", f"/admin/users/{member.id}/disable")
        assert r.status_code == 303
        assert (await user.get("/console")).status_code == 303
        assert (await user.get("/api/v1/account", headers=headers)).status_code == 403
        assert (await form(admin, "/admin/users", f"/admin/users/{admin_account.id}/disable")).status_code == 400


async def test_revoked_key_fails_at_once(harness: AppHarness, admin: httpx.AsyncClient) -> None:
    r = await form(admin, "/console/keys", "/console/keys", name="ci", credit_budget="5",
                   models="local-typeset")
    assert r.status_code == 201
    key = re.search(r'id="new-key-value" class="secret">(aio_[^<]+)<', r.text)
    assert key
    headers = {"Authorization": f"Bearer {key.group(1)}"}
    assert (await admin.get("/api/v1/account", headers=headers)).status_code == 200
    account = await harness.container.accounts.get_by_email("admin@example.com")
    [listed] = await harness.container.accounts.list_api_keys(account.id)
    assert listed.allowed_models == ("local-typeset",) and listed.credit_budget == 5 * M
    assert key.group(1) not in (await admin.get("/console/keys")).text  # shown once only
    assert (await form(admin, "/console/keys", f"/console/keys/{listed.id}/revoke")).status_code == 303
    r = await admin.get("/api/v1/account", headers=headers)
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"


async def test_playground_route_uses_the_session_not_a_key(harness: AppHarness, admin: httpx.AsyncClient) -> None:
    account = await harness.container.accounts.get_by_email("admin@example.com")
    await harness.container.accounts.grant(account.id, 10 * M)
    body = {"model": "typeset", "prompt": "Hello red", "quality": "high", "aspect_ratio": "3:2"}
    r = await admin.post("/console/api/tasks", json=body)
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    token = csrf_of((await admin.get("/models/local-typeset")).text)
    r = await admin.post("/console/api/tasks", json=body, headers={"X-CSRF-Token": token})
    assert r.status_code == 202, r.text
    task = r.json()
    assert task["model"] == "local-typeset" and task["credits"]["price"] == 2
    r = await admin.post("/console/api/tasks", json={**body, "size": "big"}, headers={"X-CSRF-Token": token})
    assert r.status_code == 400 and r.json()["error"]["param"] == "size"
    async with browser(harness) as anonymous:
        r = await anonymous.get(f"/console/api/tasks/{task['task_id']}")
        assert r.status_code == 401
    for _ in range(300):
        done = (await admin.get(f"/console/api/tasks/{task['task_id']}")).json()
        if done["status"] not in ("queued", "running"):
            break
        await asyncio.sleep(0.05)
    assert done["status"] == "succeeded" and done["output"]["images"][0]["width"] == 1536
    stored = await harness.container.tasks.get_task(account.id, task["task_id"])
    assert stored.api_key_id is None
    page = (await admin.get(f"/console/tasks/{task['task_id']}")).text
    assert done["output"]["images"][0]["url"] in page


async def test_admin_model_override_reaches_api_and_pages(harness: AppHarness, admin: httpx.AsyncClient) -> None:
    account = await harness.container.accounts.get_by_email("admin@example.com")
    created = await harness.container.accounts.create_api_key(account.id)
    await harness.container.accounts.grant(account.id, 100 * M)
    headers = {"Authorization": f"Bearer {created.plaintext}"}
    body = {"model": "local-typeset", "prompt": "x"}

    r = await form(admin, "/admin/models", "/admin/models/local-typeset", enabled="on", price_medium="7",
                   price_high="9")
    assert r.status_code == 303
    r = await admin.post("/api/v1/images/generations", json=body, headers=headers)
    assert r.status_code == 202 and r.json()["credits"]["price"] == 7
    models = (await admin.get("/api/v1/models")).json()["data"]
    assert {m["id"]: m["pricing"] for m in models}["local-typeset"] == {"medium": 7, "high": 9}

    await form(admin, "/admin/models", "/admin/models/local-typeset", price_medium="7", price_high="9")
    assert (await admin.post("/api/v1/images/generations", json=body, headers=headers)).status_code == 404
    assert "local-typeset" not in [m["id"] for m in (await admin.get("/api/v1/models")).json()["data"]]
    assert (await admin.get("/models/local-typeset")).status_code == 404

    await form(admin, "/admin/models", "/admin/models/local-typeset", enabled="on", price_medium="1", price_high="2")
    queries = harness.container.console.queries
    assert await queries.model_overrides() == {}
    assert (await admin.get("/models/local-typeset")).status_code == 200


async def test_language_from_header_query_and_cookie(harness: AppHarness) -> None:
    async with browser(harness) as client:
        r = await client.get("/login", headers={"Accept-Language": "zh-CN,zh;q=0.9,en;q=0.5"})
        assert '<html lang="zh-CN">' in r.text and "登录" in r.text
        r = await client.get("/login?lang=en", headers={"Accept-Language": "zh-CN"})
        assert '<html lang="en">' in r.text and "aio_lang=en" in r.headers["set-cookie"]
        r = await client.get("/models", headers={"Accept-Language": "zh-CN"})
        assert '<html lang="en">' in r.text  # the switch sticks
        r = await client.get("/models/gpt-image-1.5-official?lang=zh-CN")
        assert "常见问题" in r.text and "GPT Image 1.5 的价格是多少?" in r.text and "暂不可用" in r.text


async def test_ledger_csv_and_billing_flow(harness: AppHarness, admin: httpx.AsyncClient) -> None:
    billing = harness.container.console.billing
    [code] = (await billing.create_codes(count=1, amount=30 * M)).codes
    r = await form(admin, "/console/billing", "/console/billing/redeem", code=code)
    assert r.status_code == 303
    r = await form(admin, "/console/billing", "/console/billing/redeem", code=code)
    assert r.status_code == 400
    r = await form(admin, "/console/billing", "/console/billing/orders", pack="credits-500")
    assert r.status_code == 303
    page = (await admin.get("/console/billing")).text
    assert 'data-testid="credits-balance">30<' in page and 'class="badge order-pending"' in page
    csv_text = (await admin.get("/console/billing/ledger.csv")).text
    lines = csv_text.strip().splitlines()
    assert lines[0] == "id,created_at,kind,amount,task_id,request_id,note"
    assert len(lines) == 2 and ",topup,30," in lines[1]


async def test_task_page_shows_webhook_deliveries_and_redelivers(tmp_path: Path, sqlite_url: str) -> None:
    settings = make_settings(tmp_path, sqlite_url, egress_allow="127.0.0.0/8")
    async with AppHarness(settings) as h, browser(h) as client:
        await signup(client, "hooks@example.com")
        account = await h.container.accounts.get_by_email("hooks@example.com")
        await h.container.accounts.grant(account.id, 5 * M)
        token = csrf_of((await client.get("/models/local-typeset")).text)
        r = await client.post("/console/api/tasks", headers={"X-CSRF-Token": token}, json={
            "model": "local-typeset", "prompt": "hook", "callback_url": "http://127.0.0.1:9/hook"})
        task_id = r.json()["task_id"]
        for _ in range(300):
            if (await client.get(f"/console/api/tasks/{task_id}")).json()["status"] == "succeeded":
                break
            await asyncio.sleep(0.05)
        page = (await client.get(f"/console/tasks/{task_id}")).text
        assert "http://127.0.0.1:9/hook" in page and f"/console/tasks/{task_id}/redeliver" in page
        r = await form(client, f"/console/tasks/{task_id}", f"/console/tasks/{task_id}/redeliver")
        assert r.status_code == 303 and r.headers["location"].endswith("done=redelivery_queued")
        async with browser(h) as stranger:
            await signup(stranger)
            r = await form(stranger, "/console", f"/console/tasks/{task_id}/redeliver")
            assert r.status_code == 404
            assert (await stranger.get(f"/console/tasks/{task_id}")).status_code == 404


BAD_AMOUNTS = ("abc", "-1", "+1", "1e3", "0", "0.0000001", "1.1234567", "１２", "١٢", "1,5", " ", "9" * 30)


async def test_credit_fields_take_exact_decimals_and_refuse_the_rest(harness: AppHarness,
                                                                     admin: httpx.AsyncClient) -> None:
    """Every credit amount typed into a console or admin form is parsed strictly to µcr: 400, never 500."""
    account = await harness.container.accounts.get_by_email("admin@example.com")
    users = "/admin/users"
    r = await form(admin, users, f"/admin/users/{account.id}/credits", amount="0.5", action="grant")
    assert r.status_code == 303
    r = await form(admin, users, f"/admin/users/{account.id}/credits", amount="0.000001", action="deduct")
    assert r.status_code == 303
    for bad in BAD_AMOUNTS:
        r = await form(admin, users, f"/admin/users/{account.id}/credits", amount=bad, action="grant")
        assert r.status_code == 400, bad
    async with harness.container.db.uow(write=False) as uow:
        entries = await uow.ledger.list(account.id, limit=10)
    assert [(e.kind.value, e.amount) for e in entries] == [("adjustment", -1), ("grant", 500_000)]
    page = (await admin.get("/console/billing")).text
    assert 'data-testid="credits-available">0.499999<' in page and "+0.5<" in page and "-0.000001<" in page

    r = await form(admin, "/console/keys", "/console/keys", name="half", credit_budget="2.5")
    assert r.status_code == 201
    [key] = await harness.container.accounts.list_api_keys(account.id)
    assert key.credit_budget == 2_500_000 and "0/2.5<" in (await admin.get("/console/keys")).text
    for bad in [b for b in BAD_AMOUNTS if b.strip()]:  # an empty budget is no budget
        r = await form(admin, "/console/keys", "/console/keys", name="x", credit_budget=bad)
        assert r.status_code == 400, bad
    assert len(await harness.container.accounts.list_api_keys(account.id)) == 1

    r = await form(admin, "/admin/codes", "/admin/codes", count="2", credits="0.25", batch="quarter")
    assert r.status_code == 201 and "0.25" in r.text
    [batch] = await harness.container.console.billing.code_batches()
    assert (batch.batch, batch.credits, batch.total) == ("quarter", 250_000, 2)
    for count, credits in [("2", bad) for bad in BAD_AMOUNTS] + [("١", "5"), ("0", "5"), ("1001", "5"), ("x", "5")]:
        r = await form(admin, "/admin/codes", "/admin/codes", count=count, credits=credits)
        assert r.status_code == 400, (count, credits)

    for medium in ("1.5", "abc", "-1", "١", "1000001"):
        r = await form(admin, "/admin/models", "/admin/models/local-typeset", enabled="on", price_medium=medium,
                       price_high="2")
        assert r.status_code == 400, medium
    r = await form(admin, "/admin/models", "/admin/models/local-typeset", enabled="on", price_medium="0",
                   price_high="3.000000")
    assert r.status_code == 303
    models = {m["id"]: m for m in (await admin.get("/api/v1/models")).json()["data"]}
    assert models["local-typeset"]["pricing"] == {"medium": 0, "high": 3}
