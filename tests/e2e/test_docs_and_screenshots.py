"""What a newcomer sees first, in headless Debian Chromium against a real ``apiinone serve``:

* ``/docs`` renders the API reference with the network cut off beyond loopback (the Swagger UI
  files come from the package, not a CDN);
* the admin that the README's quickstart makes with the CLI (``--admin --credits 100``) reaches
  ``/admin`` and runs the playground at once;
* the README's screenshots: the console overview and a model page with a playground result. They
  are written to ``test-artifacts/readme/``, or to ``$APIINONE_SCREENSHOTS_DIR`` (what
  ``scripts/screenshots.sh`` sets to refresh ``docs/images/``).
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tests.conftest import require

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
# Besides the request filter below, the browser itself cannot resolve any name but loopback's.
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE localhost"]
SHOTS = Path(os.environ.get("APIINONE_SCREENSHOTS_DIR") or ROOT / "test-artifacts" / "readme")
EMAIL, PASSWORD = "you@example.com", "a-long-password"
WAIT_MS = 60_000

require(Path(CHROMIUM).exists(), "Debian chromium is not installed (apt-get install chromium)",
        allow_module_level=True)

from playwright.sync_api import BrowserContext, Page, Playwright, Route, expect, sync_playwright  # noqa: E402


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str]]]:
    data_dir = tmp_path_factory.mktemp("docs-serve") / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("APIINONE_", "OPENAI_"))}
    env |= {"APIINONE_DATA_DIR": str(data_dir), "APIINONE_LOG_LEVEL": "WARNING", "APIINONE_WORKER_POLL_S": "0.2"}
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = data_dir.parent / "serve.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "apiinone.cli", "serve", "--port", str(port)], env=env,
                                   stdout=log, stderr=subprocess.STDOUT)
        wait = subprocess.run([sys.executable, "-m", "apiinone.cli", "wait", "--url", url, "--timeout", "90"],
                              env=env, capture_output=True, text=True)
        try:
            assert wait.returncode == 0, wait.stderr + log_path.read_text()
            subprocess.run([sys.executable, "-m", "apiinone.cli", "admin", "create-user", EMAIL, "--password",
                            PASSWORD, "--admin", "--credits", "100"], env=env, check=True)
            yield url, env
        finally:
            process.terminate()
            try:
                process.wait(timeout=40)
            except subprocess.TimeoutExpired:
                process.kill()


@pytest.fixture(scope="module")
def pw() -> Iterator[Playwright]:
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        yield playwright


@pytest.fixture
def offline_browser(pw: Playwright) -> Iterator[tuple[BrowserContext, list[str]]]:
    """A fresh profile whose every request beyond loopback is refused (and remembered)."""
    refused: list[str] = []
    context = pw.chromium.launch_persistent_context(
        tempfile.mkdtemp(prefix="aio-chromium-"), executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True,
        viewport={"width": 1280, "height": 800}, device_scale_factor=1, locale="en-US")
    context.set_default_timeout(WAIT_MS)

    def only_loopback(route: Route) -> None:
        if is_loopback(route.request.url) or route.request.url.startswith(("data:", "blob:")):
            route.continue_()
        else:
            refused.append(route.request.url)
            route.abort("internetdisconnected")

    context.route("**/*", only_loopback)
    yield context, refused
    context.close()


def test_docs_render_offline_from_the_package(server: tuple[str, dict[str, str]],
                                              offline_browser: tuple[BrowserContext, list[str]]) -> None:
    url, _env = server
    context, refused = offline_browser
    page = context.new_page()
    seen: list[str] = []
    page.on("request", lambda request: seen.append(request.url))
    response = page.goto(f"{url}/docs")
    assert response is not None and response.status == 200
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("apiinone")
    spec = httpx.get(f"{url}/openapi.json").json()
    operations = sum(len(ops) for ops in spec["paths"].values())
    expect(page.locator(".opblock")).to_have_count(operations)
    expect(page.locator("#operations-default-create_image_task_api_v1_images_generations_post, "
                        ".opblock-summary-path[data-path='/api/v1/images/generations']").first).to_be_visible()
    assert refused == [], f"/docs asked for something beyond loopback: {refused}"
    assert any(u.endswith("/static/swagger-ui/swagger-ui-bundle.js") for u in seen), seen
    page.screenshot(path=str(SHOTS / "api-docs.png"))


def log_in(page: Page, url: str) -> None:
    page.goto(f"{url}/login?lang=en")
    page.fill("input[name=email]", EMAIL)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r"/console$"))


def test_quickstart_admin_has_credits_and_readme_screenshots(
        server: tuple[str, dict[str, str]], offline_browser: tuple[BrowserContext, list[str]]) -> None:
    url, env = server
    context, refused = offline_browser
    page = context.new_page()
    log_in(page, url)
    expect(page.locator("nav.mainnav a[href='/admin']")).to_be_visible()
    assert page.goto(f"{url}/admin") is not None

    key = subprocess.run([sys.executable, "-m", "apiinone.cli", "admin", "create-key", EMAIL, "--name", "readme"],
                         env=env, check=True, capture_output=True, text=True).stdout.strip()
    headers = {"Authorization": f"Bearer {key}"}
    for prompt, ratio in (("Bean & Brew: a modern coffee shop logo", "1:1"), ("Sunrise over the harbour", "3:2")):
        created = httpx.post(f"{url}/api/v1/images/generations", headers={**headers, "Prefer": "wait=30"},
                             json={"model": "local-typeset", "prompt": prompt, "aspect_ratio": ratio}, timeout=40)
        assert created.status_code == 200 and created.json()["status"] == "succeeded", created.text

    page.goto(f"{url}/console")
    expect(page.locator("[data-testid=credits-available]")).to_have_text("98")
    page.wait_for_function("() => [...document.images].every(img => img.complete)")
    page.screenshot(path=str(SHOTS / "console.png"), full_page=True)

    page.goto(f"{url}/models/local-typeset")
    expect(page.locator("[data-testid=playground-price]")).to_have_text("1 credit (~$0.01)")
    page.fill("textarea[name=prompt]", "Bean & Brew, a coffee shop logo in warm brown and cream")
    page.click("#playground-form button[type=submit]")
    image = page.locator("[data-testid=playground-image]")
    expect(image).to_be_visible()
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=image.element_handle())
    expect(page.locator("[data-testid=playground-status]")).to_have_text("succeeded")
    page.evaluate("window.scrollTo(0, 0)")
    time.sleep(0.3)  # let the result's layout settle before the picture (not a pass/fail condition)
    page.screenshot(path=str(SHOTS / "model-page.png"), full_page=True,
                    clip={"x": 0, "y": 0, "width": 1280, "height": 1500})
    assert refused == [], f"the console asked for something beyond loopback: {refused}"
