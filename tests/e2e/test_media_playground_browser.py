"""The video playground on a model page, in headless Debian Chromium against a real ``apiinone
serve`` process (its own SQLite data dir): price before submit, progress while the task runs, and a
``<video>`` that really loads the MP4 ``local-slideshow`` made (no API key, no upstream).

Screenshots land in ``test-artifacts/screenshots/``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.e2e.test_console_browser import (
    PASSWORD,
    Page,
    Playwright,
    expect,
    free_port,
    open_browser,
    shot,
    sync_playwright,
)

pytestmark = pytest.mark.e2e

EMAIL = "director@example.com"

# Every text the status line shows, recorded as it changes (the task's life, not a sample of it).
RECORD_STATUS = """() => {
  window.seenStatus = [];
  const box = document.getElementById("media-status"), bar = document.getElementById("media-progress");
  new MutationObserver(() => window.seenStatus.push({text: box.textContent, bar: !bar.hidden}))
    .observe(box, {childList: true, characterData: true, subtree: true});
}"""


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    data_dir = tmp_path_factory.mktemp("playground-serve") / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("APIINONE_", "OPENAI_"))}
    env |= {"APIINONE_DATA_DIR": str(data_dir), "APIINONE_LOG_LEVEL": "WARNING",
            "APIINONE_STARTER_CREDITS": "10", "APIINONE_WORKER_POLL_S": "0.2"}
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
def director(base_url: str) -> Iterator[Page]:
    with sync_playwright() as playwright:
        pw: Playwright = playwright
        context = open_browser(pw)
        page = context.new_page()
        page.goto(f"{base_url}/signup?lang=en")
        page.fill("input[name=email]", EMAIL)
        page.fill("input[name=password]", PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_url(re.compile(r"/console\?done=welcome$"))
        yield page
        context.close()


def test_video_playground_prices_submits_shows_progress_and_plays_the_mp4(base_url: str, director: Page) -> None:
    page = director
    page.goto(f"{base_url}/models/local-slideshow?lang=en")
    price = page.locator("[data-testid=playground-price]")
    expect(price).to_have_text("2 credits (~$0.02) for 2 s at 1 per second")  # before submit: durations [2, 4]
    page.select_option("[data-testid=media-duration]", "4")
    expect(price).to_have_text("4 credits (~$0.04) for 4 s at 1 per second")
    expect(page.locator("[data-testid=media-resolution] option")).to_have_text(["720p"])
    expect(page.locator("[data-testid=media-aspect] option")).to_have_text(["16:9", "9:16", "1:1"])
    page.select_option("[data-testid=media-aspect]", "9:16")
    expect(page.locator("[data-testid=playground-available]")).to_have_text("10 credits available")

    page.evaluate(RECORD_STATUS)
    page.fill("[data-testid=media-prompt]", "A lighthouse at dusk")
    page.click("#media-playground button[type=submit]")

    video = page.locator("[data-testid=playground-video]")
    expect(video).to_have_attribute("src", re.compile(r"/files/.+\.mp4$"))
    expect(video).to_have_attribute("poster", re.compile(r"/files/.+"))
    page.wait_for_function(
        "m => { if (m.readyState === 0) m.load(); return m.readyState >= 1 && m.duration > 0; }",
        arg=video.element_handle())
    duration = float(video.evaluate("m => m.duration"))
    assert 3.5 < duration < 4.5
    assert video.evaluate("m => [m.videoWidth, m.videoHeight]") == [720, 1280]  # 720p at 9:16
    expect(page.locator("[data-testid=playground-status]")).to_have_text("succeeded")
    expect(page.locator("[data-testid=playground-progress]")).to_be_hidden()
    seen = page.evaluate("window.seenStatus")
    running = [s for s in seen if s["text"] in ("queued", "running") or s["text"].endswith("%")]
    assert running and all(s["bar"] for s in running), seen  # progress shown while the task ran
    assert seen[-1] == {"text": "succeeded", "bar": False}

    src = str(video.get_attribute("src"))
    mp4 = httpx.get(src if src.startswith("http") else base_url + src, timeout=30)
    assert mp4.status_code == 200 and mp4.headers["content-type"] == "video/mp4" and mp4.content[4:8] == b"ftyp"
    account = page.evaluate("() => fetch('/console/api/account').then(r => r.json())")
    assert account["credits"]["available"] == 6  # charged duration × per_second, exactly
    expect(page.locator("[data-testid=playground-available]")).to_have_text("6 credits available")
    shot(page, "video-playground")

    page.goto(f"{base_url}/models/local-slideshow?lang=zh-CN")
    expect(page.locator("[data-testid=playground-price]")).to_have_text("2 积分(约 $0.02):2 秒 × 每秒 1 积分")
    page.goto(f"{base_url}/models/minimax-music?lang=en")  # an audio model: priced per request
    expect(page.locator("[data-testid=playground-price]")).to_have_text("4 credits per request (~$0.04)")
    expect(page.locator("[data-testid=media-instrumental]")).to_have_count(1)
