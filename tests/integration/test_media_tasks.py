"""Video and audio tasks through the public API on the embedded default: ``local-slideshow``
renders a real MP4 on the remote-job path (submit, defer, poll, store), on both databases."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import av
import pytest
from PIL import Image

from tests.conftest import AppHarness, make_settings

VIDEO = "/api/v1/videos/generations"
AUDIO = "/api/v1/audio/generations"


async def _fetch(harness: AppHarness, url: str) -> bytes:
    response = await harness.client.get(url.removeprefix("http://testserver"))
    assert response.status_code == 200, response.text
    return response.content


@pytest.mark.parametrize(("aspect", "duration", "size"), [("16:9", 2, (1280, 720)), ("9:16", 4, (720, 1280))])
async def test_offline_video_is_a_real_mp4_of_the_requested_duration_and_size(
        harness: AppHarness, aspect: str, duration: int, size: tuple[int, int]) -> None:
    caller = await harness.caller(credits=20)
    r = await caller.post(VIDEO, json={"model": "local-slideshow", "prompt": "A red fox in the snow",
                                       "aspect_ratio": aspect, "duration_s": duration})
    assert r.status_code == 202, r.text
    task = r.json()
    assert r.headers["location"] == f"/api/v1/tasks/{task['task_id']}"
    assert task["type"] == "video" and task["credits"] == {"price": duration, "charged": 0}
    assert task["input"]["resolution"] == "720p" and task["input"]["duration_s"] == duration
    done = await caller.wait_for(task["task_id"], timeout=60)
    assert done["status"] == "succeeded", done
    assert done["credits"] == {"price": duration, "charged": duration}
    video = done["output"]["videos"][0]
    assert (video["width"], video["height"], video["duration_s"], video["content_type"]) == (*size, duration, "video/mp4")
    data = await _fetch(harness, video["url"])
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        assert (stream.codec_context.width, stream.codec_context.height) == size
        assert container.duration is not None and abs(container.duration / 1_000_000 - duration) < 0.1
        frames = sum(1 for _ in container.decode(video=0))
    assert frames == duration * 12
    thumb = done["output"]["thumbnail"]
    image = Image.open(io.BytesIO(await _fetch(harness, thumb["url"])))
    assert image.format == "PNG" and image.size == size == (thumb["width"], thumb["height"])
    account = (await caller.get("/api/v1/account")).json()
    assert account["credits"]["balance"] == 20 - duration and account["credits"]["held"] == 0


async def test_prefer_wait_answers_the_finished_video(harness: AppHarness) -> None:
    caller = await harness.caller(credits=10)
    r = await caller.post(VIDEO, json={"model": "slideshow", "prompt": "wait for me"},
                          headers={"Prefer": "wait=60", "Idempotency-Key": "video-1"})
    assert r.status_code == 200 and r.json()["status"] == "succeeded", r.text
    assert r.json()["model"] == "local-slideshow" and r.json()["input"]["duration_s"] == 2
    again = await caller.post(VIDEO, json={"model": "slideshow", "prompt": "wait for me"},
                              headers={"Idempotency-Key": "video-1"})
    assert again.headers.get("idempotent-replayed") == "true" and again.json()["task_id"] == r.json()["task_id"]
    other = await caller.post(VIDEO, json={"model": "slideshow", "prompt": "another body"},
                              headers={"Idempotency-Key": "video-1"})
    assert other.status_code == 409
    assert (await caller.get("/api/v1/account")).json()["credits"]["balance"] == 8  # charged once


@pytest.mark.parametrize(("body", "param", "words"), [
    ({"duration_s": 3}, "duration_s", "one of 2, 4"),
    ({"duration_s": "2"}, "duration_s", "whole number"),
    ({"resolution": "1080p"}, "resolution", "one of 720p"),
    ({"aspect_ratio": "4:3"}, "aspect_ratio", "16:9, 9:16, 1:1"),
    ({"prompt": "   "}, "prompt", "1 to 5000"),
    ({"prompt": "x" * 5001}, "prompt", "1 to 5000"),
    ({"input_urls": ["https://example.com/a.png", "https://example.com/b.png"]}, "input_urls", "exactly 1"),
    ({"seconds": 4}, "seconds", "unknown field"),
    ({"model": "local-typeset"}, "model", "/api/v1/images/generations"),
    ({"model": "nope"}, "model", "does not exist"),
])
async def test_video_requests_are_validated_before_anything_is_held(
        sqlite_harness: AppHarness, body: dict[str, Any], param: str, words: str) -> None:
    caller = await sqlite_harness.caller(credits=10)
    r = await caller.post(VIDEO, json={"model": "local-slideshow", "prompt": "p"} | body)
    assert r.status_code in (400, 404), r.text
    error = r.json()["error"]
    assert error["param"] == param and words in error["message"], error
    assert (await caller.get("/api/v1/account")).json()["credits"]["held"] == 0


async def test_models_of_another_type_name_their_route(sqlite_harness: AppHarness) -> None:
    caller = await sqlite_harness.caller(credits=10)
    r = await caller.post("/api/v1/images/generations", json={"model": "local-slideshow", "prompt": "p"})
    assert r.status_code == 400 and "/api/v1/videos/generations" in r.json()["error"]["message"], r.text
    r = await caller.post(AUDIO, json={"model": "local-slideshow", "prompt": "p"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "model", r.text
    assert "/api/v1/videos/generations" in r.json()["error"]["message"]


async def test_an_inward_first_frame_url_is_refused(sqlite_harness: AppHarness) -> None:
    caller = await sqlite_harness.caller(credits=10)
    r = await caller.post(VIDEO, json={"model": "local-slideshow", "prompt": "p",
                                       "input_urls": ["http://127.0.0.1/frame.png"]})
    assert r.status_code == 400 and r.json()["error"]["code"] == "url_not_allowed", r.text


async def test_video_models_list_durations_resolutions_and_parameters(sqlite_harness: AppHarness) -> None:
    model = (await sqlite_harness.client.get("/api/v1/models/local-slideshow")).json()
    assert model["type"] == "video" and model["available"] is True and model["durations"] == [2, 4]
    assert model["pricing"] == {"per_second": {"720p": 1}}
    props = model["parameters"]["properties"]
    assert props["duration_s"]["enum"] == [2, 4] and props["resolution"]["enum"] == ["720p"]
    music = (await sqlite_harness.client.get("/api/v1/models/minimax-music")).json()
    assert music["type"] == "audio" and music["available"] is False  # FAL_KEY is not set here


async def test_insufficient_credits_create_nothing(tmp_path: Path, sqlite_url: str) -> None:
    async with AppHarness(make_settings(tmp_path, sqlite_url)) as harness:
        caller = await harness.caller(credits=3)
        r = await caller.post(VIDEO, json={"model": "local-slideshow", "prompt": "p", "duration_s": 4})
        assert r.status_code == 402, r.text
        assert (await caller.get("/api/v1/tasks")).json()["data"] == []


@pytest.mark.parametrize("model", ["local-slideshow", "minimax-music", "veo-3-fast"])
async def test_video_and_audio_model_pages_render(sqlite_harness: AppHarness, model: str) -> None:
    page = await sqlite_harness.client.get(f"/models/{model}")
    assert page.status_code == 200, page.text[:500]
    assert "/ s" in page.text or "per_request" in page.text
    assert "/api/v1/videos/generations" in page.text or "/api/v1/audio/generations" in page.text
    listing = await sqlite_harness.client.get("/models")
    assert listing.status_code == 200 and model in listing.text
