"""The console in a real browser: headless Debian Chromium (Playwright) against a real
``apiinone serve`` process on a free loopback port with its own SQLite data dir.

Screenshots of the main pages (desktop and phone) land in ``test-artifacts/screenshots/``.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import require

pytestmark = pytest.mark.e2e

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "screenshots"
PASSWORD = "correct-horse-battery"
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}
WAIT_MS = 60_000

require(Path(CHROMIUM).exists(), "Debian chromium is not installed (apt-get install chromium)",
        allow_module_level=True)

from playwright.sync_api import BrowserContext, Page, Playwright, expect, sync_playwright  # noqa: E402


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    data_dir = tmp_path_factory.mktemp("console-serve") / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("APIINONE_", "OPENAI_"))}
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
    yield url
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


def open_browser(pw: Playwright, viewport: dict[str, int] = DESKTOP, **options: Any) -> BrowserContext:
    """A fresh browser profile (its own temp user-data-dir): one person's cookie jar."""
    context = pw.chromium.launch_persistent_context(
        tempfile.mkdtemp(prefix="aio-chromium-"), executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True,
        viewport=viewport, **options)
    context.set_default_timeout(WAIT_MS)
    return context


def shot(page: Page, name: str) -> None:
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


@dataclass
class Person:
    email: str
    context: BrowserContext
    page: Page


def sign_up(pw: Playwright, base_url: str, email: str) -> Person:
    context = open_browser(pw)
    page = context.new_page()
    page.goto(f"{base_url}/signup?lang=en")
    page.fill("input[name=email]", email)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r"/console\?done=welcome$"))
    return Person(email=email, context=context, page=page)


def log_in(page: Page, base_url: str, email: str, next_path: str = "/console") -> None:
    page.goto(f"{base_url}/login?next={next_path}")
    page.fill("input[name=email]", email)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(re.escape(next_path) + r"$"))


@pytest.fixture(scope="module")
def admin(pw: Playwright, base_url: str) -> Iterator[Person]:
    """The first account on this fresh install, so an administrator."""
    person = sign_up(pw, base_url, "owner@example.com")
    yield person
    person.context.close()


@pytest.fixture(scope="module")
def user(pw: Playwright, base_url: str, admin: Person) -> Iterator[Person]:
    person = sign_up(pw, base_url, "maker@example.com")
    yield person
    person.context.close()


def available_credits(page: Page, base_url: str) -> int:
    page.goto(f"{base_url}/console/billing")
    return int(page.inner_text("[data-testid=credits-available]"))


def admin_grants(admin: Person, base_url: str, email: str, credits: int, note: str) -> None:
    page = admin.page
    page.goto(f"{base_url}/admin/users?q={email}")
    row = page.locator(f"article.user-row[data-email='{email}']")
    row.locator("input[name=amount]").fill(str(credits))
    row.locator("input[name=note]").fill(note)
    row.locator("button[value=grant]").click()
    expect(page.locator(".flash.ok")).to_be_visible()


def expect_image_loaded(page: Page, selector: str) -> None:
    image = page.locator(selector).first
    expect(image).to_be_visible(timeout=WAIT_MS)
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=image.element_handle(),
                           timeout=WAIT_MS)


def test_first_account_is_admin_and_console_needs_login(pw: Playwright, base_url: str, admin: Person) -> None:
    expect(admin.page.locator("nav.mainnav a[href='/admin']")).to_be_visible()
    admin.page.goto(f"{base_url}/admin")
    expect(admin.page.locator("h1")).to_have_text("Admin")
    shot(admin.page, "admin-overview")

    visitor = open_browser(pw)
    try:
        page = visitor.new_page()
        page.goto(f"{base_url}/console?lang=en")
        assert re.search(r"/login\?next=%2Fconsole", page.url)
        expect(page.locator("form[action='/login'] input[name=csrf_token]")).to_have_count(1)
        shot(page, "login")
        page.goto(f"{base_url}/signup")
        shot(page, "signup")
    finally:
        visitor.close()


def test_key_then_api_call_then_task_with_thumbnail_in_history(base_url: str, admin: Person, user: Person) -> None:
    admin_grants(admin, base_url, user.email, 20, "e2e starter")
    page = user.page
    page.goto(f"{base_url}/console/keys")
    page.fill("input[name=name]", "e2e laptop")
    page.click("form[action='/console/keys'] button[type=submit]")
    key = page.inner_text("#new-key-value").strip()
    assert key.startswith("aio_")
    shot(page, "keys-created")

    headers = {"Authorization": f"Bearer {key}"}
    r = httpx.post(f"{base_url}/api/v1/images/generations", headers=headers, timeout=30, json={
        "model": "local-typeset", "prompt": "Hello from the e2e test, in teal and orange",
        "quality": "medium", "aspect_ratio": "1:1"})
    assert r.status_code == 202, r.text
    task_id = r.json()["task_id"]
    deadline = time.monotonic() + 60
    while (task := httpx.get(f"{base_url}/api/v1/tasks/{task_id}", headers=headers).json())["status"] in (
            "queued", "running"):
        assert time.monotonic() < deadline, task
        time.sleep(0.2)
    assert task["status"] == "succeeded"

    page.goto(f"{base_url}/console/tasks")
    row = page.locator(f"tr[data-task-id='{task_id}']")
    expect(row).to_contain_text("local-typeset")
    expect(row.locator(".badge")).to_have_text("succeeded")
    expect_image_loaded(page, f"tr[data-task-id='{task_id}'] img.thumb")
    shot(page, "tasks")

    row.locator(f"a[href='/console/tasks/{task_id}']").first.click()
    expect(page.locator("[data-testid=task-status]")).to_have_text("succeeded")
    expect_image_loaded(page, "[data-testid=task-image]")
    shot(page, "task-detail")

    page.goto(f"{base_url}/console/keys")
    assert key not in page.content()  # shown once
    expect(page.locator("tr[data-key-id]")).to_contain_text("e2e laptop")


def test_admin_grants_credits(base_url: str, admin: Person, user: Person) -> None:
    before = available_credits(user.page, base_url)
    admin_grants(admin, base_url, user.email, 15, "thanks for testing")
    shot(admin.page, "admin-users")
    assert available_credits(user.page, base_url) == before + 15
    expect(user.page.locator("[data-testid=ledger]")).to_contain_text("thanks for testing")


def test_redeem_code_raises_balance(base_url: str, admin: Person, user: Person) -> None:
    page = admin.page
    page.goto(f"{base_url}/admin/codes")
    page.fill("input[name=batch]", "e2e-batch")
    page.fill("input[name=count]", "2")
    page.fill("input[name=credits]", "25")
    page.click("form[action='/admin/codes'] button[type=submit]")
    codes = page.input_value("#new-codes").split()
    assert len(codes) == 2 and all(c.startswith("AIO-") for c in codes)
    shot(page, "admin-codes")

    before = available_credits(user.page, base_url)
    user.page.fill("input[name=code]", codes[0])
    user.page.click("form[action='/console/billing/redeem'] button[type=submit]")
    expect(user.page.locator(".flash.ok")).to_be_visible()
    assert int(user.page.inner_text("[data-testid=credits-available]")) == before + 25
    shot(user.page, "billing")

    user.page.fill("input[name=code]", codes[0])  # a code works once
    user.page.click("form[action='/console/billing/redeem'] button[type=submit]")
    expect(user.page.locator(".flash.err")).to_be_visible()
    assert int(user.page.inner_text("[data-testid=credits-available]")) == before + 25


def test_order_marked_paid_by_admin(base_url: str, admin: Person, user: Person) -> None:
    before = available_credits(user.page, base_url)
    user.page.check("input[name=pack][value='credits-500']")
    user.page.click("form[action='/console/billing/orders'] button[type=submit]")
    expect(user.page.locator(".badge.order-pending").first).to_be_visible()

    admin.page.goto(f"{base_url}/admin/orders?status=pending")
    shot(admin.page, "admin-orders")
    admin.page.locator("form[action$='/paid']").first.locator("input[name=reference]").fill("bank-transfer-1")
    admin.page.locator("form[action$='/paid'] button").first.click()
    expect(admin.page.locator(".flash.ok")).to_be_visible()
    assert available_credits(user.page, base_url) == before + 500


def test_playground_shows_price_progress_and_image(base_url: str, user: Person) -> None:
    page = user.page
    page.goto(f"{base_url}/models/local-typeset")
    expect(page.locator("[data-testid=model-live]")).to_be_visible()
    expect(page.locator("[data-testid=playground-price]")).to_contain_text("1 credit (~$0.01)")
    page.select_option("select[name=quality]", "high")
    expect(page.locator("[data-testid=playground-price]")).to_contain_text("2 credits")
    page.select_option("select[name=aspect_ratio]", "3:2")
    page.fill("textarea[name=prompt]", "Playground says hi in purple")
    page.click("#playground-form button[type=submit]")
    expect_image_loaded(page, "[data-testid=playground-image]")
    expect(page.locator("[data-testid=playground-status]")).to_have_text("succeeded")
    width = page.locator("[data-testid=playground-image]").evaluate("img => img.naturalWidth")
    assert width == 1536
    shot(page, "model-page-playground")


def test_chat_playground_streams_and_shows_tokens_and_credits(base_url: str, admin: Person, user: Person) -> None:
    admin_grants(admin, base_url, "maker@example.com", 5, "chat playground")
    page = user.page
    page.goto(f"{base_url}/models/local-echo")
    expect(page.locator("[data-testid=model-live]")).to_be_visible()
    expect(page.locator("[data-testid=context-window]")).to_contain_text("32768")
    expect(page.locator("[data-testid=sdk-example]")).to_contain_text("from openai import OpenAI")
    page.fill("#chat-playground textarea[name=message]", "Hello from a real browser")
    page.click("#chat-playground button[type=submit]")
    answer = page.locator("#chat-log .chat-msg.assistant .chat-text")
    expect(answer).to_have_text("Hello from a real browser", timeout=WAIT_MS)
    expect(page.locator("[data-testid=chat-status]")).to_contain_text("output tokens", timeout=WAIT_MS)
    expect(page.locator("[data-testid=chat-status]")).to_contain_text("credits")
    shot(page, "chat-playground")


def test_non_admin_gets_403_on_admin_pages(base_url: str, user: Person) -> None:
    for path in ("/admin", "/admin/users", "/admin/models", "/admin/nodes"):
        response = user.page.goto(f"{base_url}{path}")
        assert response is not None and response.status == 403, path
    expect(user.page.locator("h1")).to_have_text("Forbidden")
    expect(user.page.locator("nav.mainnav a[href='/admin']")).to_have_count(0)
    shot(user.page, "forbidden")


def test_form_post_without_csrf_token_is_refused(base_url: str, user: Person) -> None:
    page = user.page
    page.goto(f"{base_url}/console/keys")
    keys_before = page.locator("tr[data-key-id]").count()
    response = page.request.post(f"{base_url}/console/keys", form={"name": "forged"})
    assert response.status == 403
    response = page.request.post(f"{base_url}/console/keys", form={"name": "forged", "csrf_token": "guess"})
    assert response.status == 403
    page.reload()
    expect(page.locator("tr[data-key-id]")).to_have_count(keys_before)
    assert "forged" not in page.inner_text("main")


def test_chinese_pages_render(pw: Playwright, base_url: str, user: Person) -> None:
    context = open_browser(pw, locale="zh-CN")  # Accept-Language: zh-CN
    try:
        page = context.new_page()
        page.goto(f"{base_url}/login")
        expect(page.locator("html")).to_have_attribute("lang", "zh-CN")
        expect(page.locator("h1")).to_have_text("登录")
        log_in(page, base_url, user.email)
        expect(page.locator("h1")).to_have_text("概览")
        shot(page, "zh-console")
        page.goto(f"{base_url}/models/gpt-image-1.5-official")
        for text in ("常见问题", "接入流程", "示例请求", "暂不可用", "GPT Image 1.5 的价格是多少?"):
            expect(page.locator("main")).to_contain_text(text)
        shot(page, "zh-model-page")
        page.goto(f"{base_url}/models?lang=en")  # the switch sticks over Accept-Language
        page.goto(f"{base_url}/console/billing")
        expect(page.locator("html")).to_have_attribute("lang", "en")
        page.goto(f"{base_url}/console/billing?lang=zh-CN")
        expect(page.locator("h1")).to_have_text("积分与充值")
        shot(page, "zh-billing")
    finally:
        context.close()


PHONE_PAGES = ["/console", "/console/keys", "/console/tasks", "/console/billing", "/console/settings", "/models",
               "/models/local-typeset", "/admin", "/admin/users", "/admin/models", "/admin/nodes"]


def test_pages_fit_a_phone_screen(pw: Playwright, base_url: str, admin: Person) -> None:
    context = open_browser(pw, viewport=PHONE, is_mobile=True, has_touch=True)
    try:
        page = context.new_page()
        problems: list[str] = []
        page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: problems.append(str(e)))
        log_in(page, base_url, admin.email)
        for path in PHONE_PAGES:
            page.goto(f"{base_url}{path}?lang=en")
            overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
            assert overflow <= 0, f"{path} scrolls sideways on a phone by {overflow}px"
            shot(page, "phone-" + (path.strip("/").replace("/", "-") or "home"))
        assert not problems, problems  # no script errors, no content-security-policy violations
    finally:
        context.close()


def test_desktop_screenshots_of_the_main_pages(base_url: str, admin: Person) -> None:
    page = admin.page
    for path in ["/console", "/console/settings", "/models", "/models/gpt-image-1.5-official", "/admin/models",
                 "/admin/nodes"]:
        response = page.goto(f"{base_url}{path}?lang=en")
        assert response is not None and response.status == 200, path
        shot(page, "desktop-" + path.strip("/").replace("/", "-"))
