"""Usage and route management in a real browser: headless Debian Chromium (Playwright) against a
real ``apiinone serve`` process with its own SQLite data dir, and the fake OpenAI upstream on
loopback as the upstream an admin adds in the console.

Screenshots land in ``test-artifacts/screenshots/`` (usage-*, admin-routes*, admin-usage,
admin-audit).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.fakes.fake_openai import FakeOpenAI

pytestmark = pytest.mark.e2e

from playwright.sync_api import Playwright, expect, sync_playwright  # noqa: E402

from tests.e2e.test_console_browser import (  # noqa: E402  (skips the module without Chromium)
    PHONE,
    SHOTS,
    Person,
    admin_grants,
    free_port,
    open_browser,
    shot,
    sign_up,
)

UPSTREAM_KEY = "sk-e2e-console-route-key-9f8e7d6c5b4aQRST"
MODEL = "gpt-image-1.5-official"
ADMIN_PAGES = ("/admin", "/admin/users", "/admin/codes", "/admin/orders", "/admin/models", "/admin/routes",
               "/admin/usage", "/admin/usage?days=90", "/admin/nodes", "/admin/audit")


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(api_key=UPSTREAM_KEY) as server:
        yield server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    data_dir = tmp_path_factory.mktemp("usage-serve") / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("APIINONE_", "OPENAI_", "OTEL_"))}
    env |= {"APIINONE_DATA_DIR": str(data_dir), "APIINONE_LOG_LEVEL": "WARNING", "APIINONE_WORKER_POLL_S": "0.2"}
    port = free_port()
    log = (data_dir.parent / "serve.log").open("wb")
    process = subprocess.Popen([sys.executable, "-m", "apiinone.cli", "serve", "--host", "127.0.0.1", "--port",
                                str(port)], env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise AssertionError("apiinone serve did not start: " + (data_dir.parent / "serve.log").read_text())
        time.sleep(0.2)
    yield url, data_dir
    process.terminate()
    try:
        process.wait(timeout=40)
    except subprocess.TimeoutExpired:
        process.kill()
    log.close()


@pytest.fixture(scope="module")
def pw() -> Iterator[Playwright]:
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        yield playwright


@pytest.fixture(scope="module")
def admin(pw: Playwright, server: tuple[str, Path]) -> Iterator[Person]:
    person = sign_up(pw, server[0], "operator@example.com")
    yield person
    person.context.close()


@pytest.fixture(scope="module")
def user(pw: Playwright, server: tuple[str, Path], admin: Person) -> Iterator[Person]:
    person = sign_up(pw, server[0], "reseller@example.com")
    yield person
    person.context.close()


def create_key(person: Person, base_url: str) -> str:
    page = person.page
    page.goto(f"{base_url}/console/keys")
    page.fill("input[name=name]", "usage e2e")
    page.click("form[action='/console/keys'] button[type=submit]")
    return page.inner_text("#new-key-value").strip()


def run_task(base_url: str, key: str, model: str) -> dict[str, object]:
    headers = {"Authorization": f"Bearer {key}"}
    r = httpx.post(f"{base_url}/api/v1/images/generations", headers=headers, timeout=30,
                   json={"model": model, "prompt": "usage e2e", "quality": "medium"})
    assert r.status_code == 202, r.text
    deadline = time.monotonic() + 60
    while (task := httpx.get(f"{base_url}/api/v1/tasks/{r.json()['task_id']}", headers=headers).json())[
            "status"] in ("queued", "running"):
        assert time.monotonic() < deadline, task
        time.sleep(0.2)
    return task  # type: ignore[no-any-return]


def test_admin_adds_a_route_tests_it_and_a_task_runs_through_it(
        server: tuple[str, Path], admin: Person, user: Person, fake: FakeOpenAI) -> None:
    base_url, data_dir = server
    admin_grants(admin, base_url, user.email, 100, "usage e2e")
    key = create_key(user, base_url)
    r = httpx.post(f"{base_url}/api/v1/images/generations", headers={"Authorization": f"Bearer {key}"},
                   json={"model": MODEL, "prompt": "p"}, timeout=30)
    assert r.status_code == 503, "no route of the model is configured yet"

    page = admin.page
    page.goto(f"{base_url}/admin/routes?lang=en")
    form = page.locator("form[data-testid=add-route]")
    form.locator("select[name=model]").select_option(MODEL)
    form.locator("input[name=name]").fill("fake-loopback")
    form.locator("select[name=provider]").select_option("openai")
    form.locator("input[name=base_url]").fill(fake.base_url)
    form.locator("input[name=keys]").fill(UPSTREAM_KEY)
    form.locator("button[type=submit]").click()
    expect(page.locator(".flash.ok")).to_contain_text("Route added")
    row = page.locator(f"section[data-model='{MODEL}'] tr[data-route='fake-loopback']")
    expect(row).to_contain_text("…QRST")
    assert UPSTREAM_KEY not in page.content()
    row.locator("form[action$='/test'] button").click()
    expect(page.locator("[data-testid=route-test-result]")).to_contain_text("answered")
    shot(page, "admin-routes")

    task = run_task(base_url, key, MODEL)
    assert task["status"] == "succeeded", task
    assert any(q.path.endswith("/images/generations") and q.headers.get("authorization") == f"Bearer {UPSTREAM_KEY}"
               for q in fake.requests)
    assert run_task(base_url, key, "local-typeset")["status"] == "succeeded"
    page.goto(f"{base_url}/admin/routes")
    row = page.locator(f"section[data-model='{MODEL}'] tr[data-route='fake-loopback']")
    expect(row.locator("[data-testid=route-state]")).to_have_text("closed")
    shot(page, "admin-routes-after-task")

    database = data_dir / "apiinone.db"
    wal = database.with_name("apiinone.db-wal")
    stored = database.read_bytes() + (wal.read_bytes() if wal.exists() else b"")
    assert b"fake-loopback" in stored, "the route is in the database file"
    assert UPSTREAM_KEY.encode() not in stored, "its key is not, in clear text"

    page.goto(f"{base_url}/admin/usage")
    expect(page.locator("[data-testid=top-accounts]")).to_contain_text(user.email)
    expect(page.locator("[data-testid=usage-by-route]")).to_contain_text("fake-loopback")
    shot(page, "admin-usage")
    page.goto(f"{base_url}/admin/audit")
    expect(page.locator("[data-testid=audit-log]")).to_contain_text("route.create")
    expect(page.locator("[data-testid=audit-log]")).to_contain_text("route.test")
    assert UPSTREAM_KEY not in page.content()
    shot(page, "admin-audit")


def test_user_sees_the_charts_and_the_log(pw: Playwright, server: tuple[str, Path], user: Person) -> None:
    base_url, _data_dir = server
    page = user.page
    page.goto(f"{base_url}/console/usage?lang=en")
    for chart in ("chart-credits", "chart-requests", "chart-models", "chart-keys"):
        expect(page.locator(f"[data-testid={chart}]")).to_be_visible()
    assert page.locator("svg[data-testid=chart-credits] rect").count() >= 1
    expect(page.locator("[data-testid=total-credits]")).to_have_text("11")  # 10 + 1
    log = page.locator("table[data-testid=request-log] tbody tr")
    expect(log).to_have_count(2)
    expect(page.locator("table[data-testid=request-log]")).to_contain_text(MODEL)
    shot(page, "usage")
    page.select_option("select[name=model]", "local-typeset")
    page.click("form.filters button[type=submit]")
    expect(log).to_have_count(1)
    page.click("nav.periods a:has-text('7 days')")
    expect(page.locator("nav.periods a[aria-current=true]")).to_have_text("7 days")
    with page.expect_download() as download:
        page.click("[data-testid=usage-csv]")
    lines = Path(download.value.path()).read_text().strip().splitlines()
    assert lines[0].startswith("id,created_at,type,model") and len(lines) == 2

    phone = open_browser(pw, PHONE)
    try:
        small = phone.new_page()
        small.goto(f"{base_url}/login?next=/console/usage")
        small.fill("input[name=email]", user.email)
        small.fill("input[name=password]", "correct-horse-battery")
        small.click("button[type=submit]")
        small.wait_for_url(re.compile(r"/console/usage$"))
        expect(small.locator("svg[data-testid=chart-credits]")).to_be_visible()
        width = small.evaluate("() => [document.documentElement.scrollWidth, window.innerWidth]")
        assert width[0] <= width[1], f"the page scrolls sideways on a phone: {width}"
        shot(small, "usage-phone")
        small.goto(f"{base_url}/console/usage?lang=zh-CN")
        expect(small.locator("h1")).to_have_text("用量统计")
        expect(small.locator("main")).to_contain_text("每日消耗积分")
        shot(small, "usage-phone-zh")
    finally:
        phone.close()


def test_non_admin_gets_403_on_every_admin_page(server: tuple[str, Path], user: Person) -> None:
    base_url, _data_dir = server
    for path in ADMIN_PAGES:
        response = user.page.goto(f"{base_url}{path}")
        assert response is not None and response.status == 403, path
    response = user.page.request.post(f"{base_url}/admin/routes", form={"model": MODEL, "name": "x"})
    assert response.status == 403
