"""Video and audio rules without a server: prices, defaults, pricing validation, the poller's
backoff, progress in logs and events, and result sniffing."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from apiinone.domain.catalog import Catalog, ModelSpec
from apiinone.domain.tasks import Task, TaskStatus
from apiinone.errors import InvalidParameter
from apiinone.kinds.audio import KIND as AUDIO
from apiinone.kinds.video import KIND as VIDEO
from apiinone.kinds.video.job import percent_in
from apiinone.net.fetch import sniff_media_type
from apiinone.services.events import events_of
from apiinone.worker.remote_jobs import PollerOptions, next_interval_s


@pytest.fixture
def veo() -> ModelSpec:
    spec = Catalog.load().models["veo-3-fast"]
    return replace(spec, durations=(4, 8), pricing={"per_second": {"1080p": 30, "720p": 10}})


def test_video_price_is_duration_times_the_resolutions_price(veo: ModelSpec) -> None:
    task_input, price = VIDEO.prepare(veo, {"prompt": "p"})
    assert (task_input["duration_s"], task_input["resolution"], task_input["aspect_ratio"], price) == (4, "720p", "16:9", 40_000_000)
    assert (task_input["width"], task_input["height"]) == (1280, 720)
    task_input, price = VIDEO.prepare(veo, {"prompt": "p", "duration_s": 8, "resolution": "1080p", "aspect_ratio": "9:16"})
    assert (task_input["width"], task_input["height"], price) == (1080, 1920, 240_000_000)
    with pytest.raises(InvalidParameter) as bad:
        VIDEO.prepare(veo, {"prompt": "p", "resolution": "480p"})
    assert bad.value.param == "resolution" and "720p, 1080p" in bad.value.message  # cheapest first


def test_audio_price_per_request_or_per_second() -> None:
    music = Catalog.load().models["minimax-music"]
    assert AUDIO.prepare(music, {"prompt": "p"})[1] == 4_000_000  # µcr
    per_second = replace(music, pricing={"per_second": 2}, durations=(10, 30))
    task_input, price = AUDIO.prepare(per_second, {"prompt": "p", "duration_s": 30, "instrumental": True})
    assert price == 60_000_000 and task_input["instrumental"] is True and task_input["lyrics"] is None
    with pytest.raises(InvalidParameter):
        AUDIO.prepare(per_second, {"prompt": "p", "duration_s": 20})


@pytest.mark.parametrize(("pricing", "durations", "words"), [
    ({"medium": 1}, (4,), "per_second"),
    ({"per_second": {"4k": 1}}, (4,), "not a resolution"),
    ({"per_second": {"720p": 1.5}}, (4,), "whole"),
    ({"per_second": {"720p": 1}}, (), "durations"),
])
def test_bad_video_pricing_is_refused(veo: ModelSpec, pricing: dict[str, object], durations: tuple[int, ...],
                                      words: str) -> None:
    with pytest.raises(ValueError, match=words):
        VIDEO.validate_pricing(replace(veo, pricing=pricing, durations=durations))


def test_polls_back_off_with_age_within_bounds_and_jitter() -> None:
    options = PollerOptions(node="n", min_interval_s=1.0, max_interval_s=30.0)
    rng = random.Random(7)
    young = [next_interval_s(2, options, rng) for _ in range(200)]
    old = [next_interval_s(3600, options, rng) for _ in range(200)]
    assert 0.8 <= min(young) and max(young) <= 1.2 and len({round(v, 3) for v in young}) > 50
    assert 24 <= min(old) and max(old) <= 36
    assert 4 < next_interval_s(60, options, random.Random(1)) < 8


def test_progress_is_read_from_runner_logs() -> None:
    assert percent_in("Generating video: 10%\nGenerating video: 40%") == 40
    assert percent_in(" 37%|███▋      | 37/100 [00:05<00:09]") == 37
    assert percent_in("loading weights") is None and percent_in(None) is None
    assert percent_in("done 250% faster, then 90 %") == 90


def test_progress_moves_make_running_events_with_growing_ids() -> None:
    task = Task(id="tsk_1", account_id="acc", model="m", type="video", status=TaskStatus.RUNNING, input={},
                price=4, created_at=1, started_at=2, progress=40)
    running = events_of(task, "http://h")
    assert [(e.id, e.event) for e in running] == [(1, "queued"), (2, "running"), (1040, "running")]
    assert running[-1].data["progress"] == 40
    task.status = TaskStatus.SUCCEEDED
    assert [(e.id, e.event) for e in events_of(task, "http://h")][-1] == (2000, "succeeded")
    task.progress = None
    assert [(e.id, e.event) for e in events_of(task, "http://h")][-1] == (3, "succeeded")


@pytest.mark.parametrize(("head", "kind"), [
    (b"\x00\x00\x00\x18ftypmp42", "video/mp4"), (b"\x00\x00\x00\x18ftypM4A ", "audio/mp4"),
    (b"\x1a\x45\xdf\xa3", "video/webm"), (b"RIFF\x00\x00\x00\x00WAVEfmt ", "audio/wav"), (b"ID3\x04", "audio/mpeg"),
    (b"OggS\x00", "audio/ogg"), (b"<!doctype html>", None), (b"\x89PNG\r\n\x1a\n", "image/png"),
])
def test_result_files_are_sniffed_by_their_bytes(head: bytes, kind: str | None) -> None:
    assert sniff_media_type(head) == kind
