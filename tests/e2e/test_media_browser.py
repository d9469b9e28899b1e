"""Speech playground and the audio/video players, in headless Debian Chromium against a real
``apiinone serve`` process (its own SQLite data dir, ``local-speech`` on espeak-ng).

The players are checked on stored media the browser really loads (its metadata: a duration), not
only on markup. Screenshots land in ``test-artifacts/screenshots/``.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from apiinone.kinds.speech.job import SpeechJob
from apiinone.storage.filesystem import FileSystemStorage
from apiinone.upstreams.base import RouteTarget
from apiinone.upstreams.local_speech.espeak import LocalSpeechProvider
from tests.conftest import require
from tests.e2e.test_console_browser import (
    PASSWORD,
    Playwright,
    expect,
    free_port,
    open_browser,
    shot,
    sync_playwright,
)

pytestmark = pytest.mark.e2e

require(shutil.which("espeak-ng") is not None, "espeak-ng is not installed (scripts/test.sh installs it)",
        allow_module_level=True)

EMAIL = "listener@example.com"
SPEECH_TEXT = "Hello! This is API in One speaking."  # the playground's default text (35 characters)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    data_dir = tmp_path_factory.mktemp("media-serve") / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("APIINONE_", "OPENAI_"))}
    env |= {"APIINONE_DATA_DIR": str(data_dir), "APIINONE_LOG_LEVEL": "WARNING",
            "APIINONE_STARTER_CREDITS": "10"}
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
    with sync_playwright() as playwright:
        yield playwright


@pytest.fixture(scope="module")
def listener(pw: Playwright, served: tuple[str, Path]) -> Iterator[object]:
    base_url, _ = served
    context = open_browser(pw)
    page = context.new_page()
    page.goto(f"{base_url}/signup?lang=en")
    page.fill("input[name=email]", EMAIL)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r"/console\?done=welcome$"))
    yield page
    context.close()


def run_async(coroutine: Any) -> Any:
    """Playwright's sync API holds this thread's event loop: run a coroutine on another thread."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def spoken_wav(text: str) -> bytes:
    provider = LocalSpeechProvider()
    target = RouteTarget(model_id="local-speech", route="local-speech", provider="local-speech", base_url="",
                         api_key=None, upstream_model="espeak-ng", timeout_s=60)
    job = SpeechJob(input=text, voice="en-us", response_format="wav", speed=1.0, upstream_model="espeak-ng")
    return bytes(run_async(provider.synthesize_speech(target, job)).data)


def insert_finished_task(data_dir: Path, task_id: str, type_: str, output: dict[str, object]) -> None:
    """A finished video or audio task as the media worker leaves it (output shape of the contract)."""
    with sqlite3.connect(data_dir / "apiinone.db") as db:
        (account_id,) = db.execute("SELECT id FROM accounts WHERE email = ?", (EMAIL,)).fetchone()
        now = int(time.time() * 1000)
        db.execute(
            "INSERT INTO tasks (id, account_id, type, model, status, input, output, price, charged, attempts,"
            " run_after, created_at, started_at, finished_at) VALUES (?, ?, ?, ?, 'succeeded', ?, ?, ?, ?, 1, 0,"
            " ?, ?, ?)",
            (task_id, account_id, type_, f"test-{type_}", orjson.dumps({"prompt": f"a {type_} for the player"}).decode(),
             orjson.dumps(output).decode(), 40_000_000, 40_000_000, now, now, now))


def expect_media_loaded(page: object, selector: str) -> float:
    element = page.locator(selector).first  # type: ignore[attr-defined]
    expect(element).to_be_attached()
    page.wait_for_function(  # type: ignore[attr-defined]
        "m => { if (m.readyState === 0 && m.preload !== 'metadata') m.load(); return m.readyState >= 1 && m.duration > 0; }",
        arg=element.element_handle(), timeout=60_000)
    return float(element.evaluate("m => m.duration"))


def test_speech_playground_shows_the_price_plays_the_audio_and_charges_it(served: tuple[str, Path],
                                                                        listener: object) -> None:
    base_url, _ = served
    page = listener
    page.goto(f"{base_url}/models/local-speech?lang=en")  # type: ignore[attr-defined]
    price = page.locator("[data-testid=playground-price]")  # type: ignore[attr-defined]
    expect(price).to_have_text("35 characters: 0.0035 credits (~$0.00)")  # 35 × 100 µcr, before submit
    expect(page.locator("[data-testid=model-facts]")).to_contain_text("zh")  # type: ignore[attr-defined]
    expect(page.locator("[data-testid=price-table]")).to_contain_text("Per million characters")  # type: ignore[attr-defined]
    page.fill("[data-testid=speech-input]", "Hi there")  # type: ignore[attr-defined]
    expect(price).to_have_text("8 characters: 0.0008 credits (~$0.00)")
    page.fill("[data-testid=speech-input]", SPEECH_TEXT)  # type: ignore[attr-defined]
    expect(page.locator("[data-testid=playground-available]")).to_have_text("10 credits available")  # type: ignore[attr-defined]
    page.click("#speech-playground button[type=submit]")  # type: ignore[attr-defined]

    duration = expect_media_loaded(page, "[data-testid=playground-audio]")
    assert 0.5 < duration < 10
    expect(page.locator("[data-testid=playground-status]")).to_contain_text("Charged 0.0035 credits")  # type: ignore[attr-defined]
    expect(page.locator("[data-testid=playground-available]")).to_have_text("9.9965 credits available")  # type: ignore[attr-defined]
    expect(page.locator("[data-testid=playground-download]")).to_contain_text("audio/wav")  # type: ignore[attr-defined]
    shot(page, "speech-playground")  # type: ignore[arg-type]

    page.select_option("[data-testid=speech-format]", "pcm")  # type: ignore[attr-defined]
    page.fill("[data-testid=speech-input]", "x" * 10)  # type: ignore[attr-defined]
    page.click("#speech-playground button[type=submit]")  # type: ignore[attr-defined]
    expect(page.locator("[data-testid=playground-download]")).to_contain_text("audio/pcm")  # type: ignore[attr-defined]
    expect(page.locator("[data-testid=playground-available]")).to_have_text("9.9955 credits available")  # type: ignore[attr-defined]


def test_video_and_audio_players_on_the_task_page_and_in_history(served: tuple[str, Path],
                                                                 listener: object) -> None:
    base_url, data_dir = served
    wav = spoken_wav("A clip for the players.")
    storage = FileSystemStorage(data_dir / "files", fsync=False)
    run_async(storage.put("media/clip.wav", wav, "audio/wav"))
    clip_url = f"{base_url}/files/media/clip.wav"
    insert_finished_task(data_dir, "tsk_e2e_video", "video", {
        "videos": [{"url": clip_url, "content_type": "video/mp4", "width": 1280, "height": 720, "duration_s": 2}],
        "thumbnail": {"url": f"{base_url}/static/favicon.svg", "content_type": "image/svg+xml", "width": 64,
                      "height": 64}})
    insert_finished_task(data_dir, "tsk_e2e_audio", "audio", {
        "audio": [{"url": clip_url, "content_type": "audio/wav", "duration_s": 2}]})
    page = listener

    page.goto(f"{base_url}/console/tasks/tsk_e2e_video?lang=en")  # type: ignore[attr-defined]
    video = page.locator("[data-testid=task-video]")  # type: ignore[attr-defined]
    expect(video).to_have_attribute("poster", f"{base_url}/static/favicon.svg")
    assert expect_media_loaded(page, "[data-testid=task-video]") > 0.5
    expect(page.locator(".gallery figcaption")).to_contain_text("1280×720")  # type: ignore[attr-defined]
    shot(page, "task-video")  # type: ignore[arg-type]

    page.goto(f"{base_url}/console/tasks/tsk_e2e_audio?lang=en")  # type: ignore[attr-defined]
    assert expect_media_loaded(page, "[data-testid=task-audio]") > 0.5
    shot(page, "task-audio")  # type: ignore[arg-type]

    page.goto(f"{base_url}/console/tasks?lang=en")  # type: ignore[attr-defined]
    expect(page.locator("tr[data-task-id=tsk_e2e_video] [data-testid=history-video]")).to_have_count(1)  # type: ignore[attr-defined]
    expect(page.locator("tr[data-task-id=tsk_e2e_audio] [data-testid=history-audio]")).to_have_count(1)  # type: ignore[attr-defined]
    assert expect_media_loaded(page, "tr[data-task-id=tsk_e2e_audio] [data-testid=history-audio]") > 0.5
    shot(page, "tasks-media-history")  # type: ignore[arg-type]


def test_chinese_speech_model_page(served: tuple[str, Path], listener: object) -> None:
    base_url, _ = served
    page = listener
    page.goto(f"{base_url}/models/local-speech?lang=zh-CN")  # type: ignore[attr-defined]
    expect(page.locator("[data-testid=price-table]")).to_contain_text("每百万字符")  # type: ignore[attr-defined]
    expect(page.locator("[data-testid=playground-price]")).to_contain_text("35 个字符")  # type: ignore[attr-defined]
    expect(page.locator("[data-testid=model-endpoint]")).to_have_text("/api/v1/audio/speech")  # type: ignore[attr-defined]
    shot(page, "speech-model-zh")  # type: ignore[arg-type]
    page.goto(f"{base_url}/models?lang=en")  # type: ignore[attr-defined]
    expect(page.locator("a.model-card[href='/models/local-speech']")).to_contain_text(
        "100 credits per million characters")
