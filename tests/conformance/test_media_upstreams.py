"""Each media-job adapter (fal, Replicate, Veo) against its protocol-faithful fake, end to end
through the API, the worker, the remote-job poller, storage and the ledger: success, upstream
failure, cancel, a slow job that reports progress, and result files that are too large or of the
wrong type. Plus each adapter's failure classification, and the vendors' official SDKs driven
once against the fakes (so the fakes speak what real clients expect)."""

from __future__ import annotations

import asyncio
import functools
import io
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import av
import pytest

from apiinone.kinds.video.job import JobState, MediaJob
from apiinone.upstreams.base import RouteTarget, UpstreamError
from apiinone.upstreams.fal.adapter import FalAdapter
from apiinone.upstreams.replicate.adapter import ReplicateAdapter
from apiinone.upstreams.veo.adapter import VeoAdapter
from tests.conftest import AppHarness, Caller, make_settings
from tests.fakes.fake_media import FakeMediaUpstream
from tests.waiting import until as wait_until

VIDEO = "/api/v1/videos/generations"
AUDIO = "/api/v1/audio/generations"
UPSTREAM_MODELS = {"fal": "fal-ai/kling-video/v2.1/standard/text-to-video",
                   "replicate": "wan-video/wan-2.2-t2v-fast", "veo": "veo-3.0-fast-generate-001"}
VENDORS = list(UPSTREAM_MODELS)
ADAPTERS = {"fal": FalAdapter, "replicate": ReplicateAdapter, "veo": VeoAdapter}
KEY_ENV = "FAKE_MEDIA_UPSTREAM_KEY"


def catalog_for(vendor: str, fake: FakeMediaUpstream, path: Path) -> Path:
    text = f'''
[[models]]
id = "fake-video"
name = "Fake video"
type = "video"
provider = "{vendor}"
upstream_model = "{UPSTREAM_MODELS[vendor]}"
base_url = "{fake.base_url}"
api_key_env = "{KEY_ENV}"
durations = [4, 8]
pricing = {{ per_second = {{ "720p" = 3, "1080p" = 5 }} }}

[[models]]
id = "fake-music"
name = "Fake music"
type = "audio"
provider = "{vendor}"
upstream_model = "{'fal-ai/minimax-music' if vendor == 'fal' else 'minimax/music-1.5'}"
base_url = "{fake.base_url}"
api_key_env = "{KEY_ENV}"
pricing = {{ per_request = 4 }}
'''
    path.write_text(text)
    return path


@pytest.fixture(params=VENDORS)
def fake(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeMediaUpstream]:
    with FakeMediaUpstream(request.param) as server:
        monkeypatch.setenv(KEY_ENV, server.api_key)
        yield server


def media_settings(tmp_path: Path, database_url: str, fake: FakeMediaUpstream, **overrides: Any) -> Any:
    return make_settings(tmp_path, database_url, models_file=catalog_for(fake.vendor, fake, tmp_path / "models.toml"),
                         egress_allow="127.0.0.0/8", remote_job_poll_s=0.05, remote_job_min_interval_s=0.02,
                         remote_job_max_interval_s=0.05, **overrides)


@pytest.fixture
async def media(tmp_path: Path, database_url: str, fake: FakeMediaUpstream) -> AsyncIterator[AppHarness]:
    async with AppHarness(media_settings(tmp_path, database_url, fake, remote_result_max_bytes=2_000_000)) as h:
        yield h


@pytest.fixture
async def media_sqlite(tmp_path: Path, sqlite_url: str, fake: FakeMediaUpstream) -> AsyncIterator[AppHarness]:
    async with AppHarness(media_settings(tmp_path, sqlite_url, fake, remote_result_max_bytes=2_000_000)) as h:
        yield h


async def credits(caller: Caller) -> dict[str, Any]:
    body: dict[str, Any] = (await caller.get("/api/v1/account")).json()["credits"]
    return body


until = functools.partial(wait_until, timeout=30.0, interval=0.02)


# ------------------------------------------------------------------------- through the whole stack


async def test_success_stores_the_video_and_charges_once(media: AppHarness, fake: FakeMediaUpstream) -> None:
    caller = await media.caller(credits=50)
    r = await caller.post(VIDEO, json={"model": "fake-video", "prompt": "a lighthouse at dusk", "duration_s": 8})
    assert r.status_code == 202, r.text
    assert r.json()["credits"]["price"] == 24  # 8 s x 3 credits (720p, the cheapest)
    done = await caller.wait_for(r.json()["task_id"], timeout=30)
    assert done["status"] == "succeeded", done
    assert done["credits"] == {"price": 24, "charged": 24}
    video = done["output"]["videos"][0]
    assert video["content_type"] == "video/mp4" and (video["width"], video["height"]) == (640, 360)
    assert video["url"].startswith("http://testserver/files/") and video["duration_s"] == 2
    stored = await media.client.get(video["url"].removeprefix("http://testserver"))
    with av.open(io.BytesIO(stored.content)) as container:
        assert container.streams.video[0].codec_context.width == 640
    assert done["output"]["thumbnail"]["content_type"] == "image/png"
    assert await credits(caller) == {"balance": 26, "held": 0, "available": 26}
    assert fake.calls("POST", "") == 1  # one submit, whatever the number of polls
    submitted = next(iter(fake.state.jobs.values())).input
    assert "a lighthouse at dusk" in str(submitted) and "8" in str(submitted)


async def test_upstream_failure_fails_the_task_and_releases(media: AppHarness, fake: FakeMediaUpstream) -> None:
    fake.configure(outcome="fail")
    caller = await media.caller(credits=50)
    task_id = (await caller.post(VIDEO, json={"model": "fake-video", "prompt": "p"})).json()["task_id"]
    done = await caller.wait_for(task_id, timeout=30)
    assert done["status"] == "failed" and done["error"]["code"] == "upstream_error", done
    assert done["credits"]["charged"] == 0 and done["output"] is None
    assert await credits(caller) == {"balance": 50, "held": 0, "available": 50}


async def test_cancel_cancels_upstream_where_the_protocol_allows(media_sqlite: AppHarness,
                                                                 fake: FakeMediaUpstream) -> None:
    fake.configure(hold=True)
    caller = await media_sqlite.caller(credits=50)
    task_id = (await caller.post(VIDEO, json={"model": "fake-video", "prompt": "p"})).json()["task_id"]

    async def polled() -> bool:
        return any(job.polls >= 2 for job in fake.state.jobs.values())
    await until(polled, "the job to be followed upstream")
    r = await caller.post(f"/api/v1/tasks/{task_id}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "canceled", r.text
    job = next(iter(fake.state.jobs.values()))
    if fake.vendor == "veo":  # the Gemini API has no cancel for Veo operations: nothing is sent
        assert not job.canceled
    else:
        assert job.canceled and fake.calls("PUT" if fake.vendor == "fal" else "POST", "/cancel") == 1
    assert await credits(caller) == {"balance": 50, "held": 0, "available": 50}
    fake.release()
    polls = job.polls
    await asyncio.sleep(0.3)  # a canceled task is not followed any more (a lease lost is dropped)
    assert job.polls <= polls + 1
    assert (await caller.get(f"/api/v1/tasks/{task_id}")).json()["status"] == "canceled"


async def test_a_slow_job_reports_progress(media_sqlite: AppHarness, fake: FakeMediaUpstream) -> None:
    fake.configure(hold=True)
    caller = await media_sqlite.caller(credits=50)
    task_id = (await caller.post(VIDEO, json={"model": "fake-video", "prompt": "p"})).json()["task_id"]

    async def progress_at_least_30() -> bool:
        return ((await caller.get(f"/api/v1/tasks/{task_id}")).json()["progress"] or 0) >= 30

    async def polled_five_times() -> bool:
        return any(job.polls >= 5 for job in fake.state.jobs.values())

    if fake.vendor == "veo":  # Veo's operations carry no progress: it stays null while it runs
        await until(polled_five_times, "five polls")
        task = (await caller.get(f"/api/v1/tasks/{task_id}")).json()
        assert task["status"] == "running" and task["progress"] is None
    else:
        await until(progress_at_least_30, "progress to reach 30")
        task = (await caller.get(f"/api/v1/tasks/{task_id}")).json()
        assert task["status"] == "running" and 30 <= task["progress"] <= 95
    fake.release()
    done = await caller.wait_for(task_id, timeout=30)
    assert done["status"] == "succeeded" and done["credits"]["charged"] == 12


@pytest.mark.parametrize(("outcome", "words"), [("big", "larger than"), ("wrong_type", "not")])
async def test_a_result_too_large_or_of_the_wrong_type_fails_uncharged(
        media_sqlite: AppHarness, fake: FakeMediaUpstream, outcome: str, words: str) -> None:
    fake.configure(outcome=outcome, big_bytes=3_000_000)
    caller = await media_sqlite.caller(credits=50)
    task_id = (await caller.post(VIDEO, json={"model": "fake-video", "prompt": "p"})).json()["task_id"]
    done = await caller.wait_for(task_id, timeout=30)
    assert done["status"] == "failed" and words in done["error"]["message"], done
    assert done["credits"]["charged"] == 0
    assert await credits(caller) == {"balance": 50, "held": 0, "available": 50}
    assert media_sqlite.container.storage is not None


async def test_music_on_the_same_path(media_sqlite: AppHarness, fake: FakeMediaUpstream) -> None:
    if fake.vendor == "veo":  # Veo makes videos only: the submit is refused, nothing is charged
        caller = await media_sqlite.caller(credits=50)
        r = await caller.post(AUDIO, json={"model": "fake-music", "prompt": "p"})
        done = await caller.wait_for(r.json()["task_id"], timeout=30)
        assert done["status"] == "failed" and done["credits"]["charged"] == 0
        return
    caller = await media_sqlite.caller(credits=50)
    r = await caller.post(AUDIO, json={"model": "fake-music", "prompt": "lo-fi piano", "lyrics": "la la",
                                       "instrumental": False, "duration_s": 30})
    assert r.status_code == 202 and r.json()["type"] == "audio" and r.json()["credits"]["price"] == 4, r.text
    done = await caller.wait_for(r.json()["task_id"], timeout=30)
    assert done["status"] == "succeeded", done
    audio = done["output"]["audio"][0]
    assert audio["content_type"] == "audio/wav" and audio["duration_s"] == 1
    assert (await media_sqlite.client.get(audio["url"].removeprefix("http://testserver"))).content[:4] == b"RIFF"
    assert await credits(caller) == {"balance": 46, "held": 0, "available": 46}


# ------------------------------------------------------------------------------ classification


def target_for(fake: FakeMediaUpstream, key: str | None = None) -> RouteTarget:
    return RouteTarget(model_id="fake-video", route=fake.vendor, provider=fake.vendor, base_url=fake.base_url,
                       api_key=fake.api_key if key is None else key, upstream_model=UPSTREAM_MODELS[fake.vendor],
                       timeout_s=10)


JOB = MediaJob(kind="video", prompt="p", upstream_model="", duration_s=4, aspect_ratio="16:9", resolution="720p")
TRANSIENT = {"fal": {"detail": "Service Unavailable"}, "replicate": {"title": "Service unavailable", "status": 503},
             "veo": {"error": {"code": 503, "message": "The model is overloaded.", "status": "UNAVAILABLE"}}}
REFUSED = {"fal": {"detail": [{"msg": "duration must be 5 or 10"}]},
           "replicate": {"title": "Input validation failed", "detail": "duration", "status": 422},
           "veo": {"error": {"code": 400, "message": "durationSeconds out of bound", "status": "INVALID_ARGUMENT"}}}


async def test_each_failure_class_is_classified_once(fake: FakeMediaUpstream) -> None:
    adapter = ADAPTERS[fake.vendor]()
    try:
        with pytest.raises(UpstreamError) as refused_key:
            await adapter.submit_job(target_for(fake, key="wrong-key-1234"), JOB)
        assert refused_key.value.key_refused and not refused_key.value.retryable
        assert "wrong-key-1234" not in refused_key.value.message
        for status in (503, 429):
            fake.fail_next(status, TRANSIENT[fake.vendor])
            with pytest.raises(UpstreamError) as transient:
                await adapter.submit_job(target_for(fake), JOB)
            assert transient.value.retryable and not transient.value.key_refused
        fake.fail_next(422 if fake.vendor != "veo" else 400, REFUSED[fake.vendor])
        with pytest.raises(UpstreamError) as refusal:
            await adapter.submit_job(target_for(fake), JOB)
        assert not refusal.value.retryable and not refusal.value.key_refused
        job = await adapter.submit_job(target_for(fake), JOB)
        states = [(await adapter.poll_job(target_for(fake), job.handle)).state for _ in range(3)]
        assert states[0] in (JobState.QUEUED, JobState.RUNNING) and states[-1] is JobState.SUCCEEDED
        fake.fail_next(503, TRANSIENT[fake.vendor])
        with pytest.raises(UpstreamError) as poll_error:  # a poll that fails is looked at again later
            await adapter.poll_job(target_for(fake), job.handle)
        assert poll_error.value.retryable
    finally:
        await adapter.aclose()


async def test_a_failed_submit_fails_over_and_is_charged_once(tmp_path: Path, sqlite_url: str,
                                                              fake: FakeMediaUpstream) -> None:
    fake.fail_next(503, TRANSIENT[fake.vendor])
    async with AppHarness(media_settings(tmp_path, sqlite_url, fake)) as harness:
        caller = await harness.caller(credits=50)
        task_id = (await caller.post(VIDEO, json={"model": "fake-video", "prompt": "p"})).json()["task_id"]
        done = await caller.wait_for(task_id, timeout=30)
        assert done["status"] == "succeeded" and done["credits"]["charged"] == 12, done
        assert len(fake.state.jobs) == 1 and await credits(caller) == {"balance": 38, "held": 0, "available": 38}
