"""Model pages for every price shape: rows, the list's one-line summary, and the facts shown."""

from __future__ import annotations

from typing import Any

from apiinone.domain.catalog import ModelSpec
from apiinone.web import model_pages
from apiinone.web.i18n import Translator


def spec(type_: str, pricing: dict[str, Any], **kw: Any) -> ModelSpec:
    return ModelSpec(id=f"m-{type_}", name="m", type=type_, provider="p", upstream_model="u", pricing=pricing, **kw)


def test_video_prices_per_second_by_resolution_with_durations() -> None:
    video = spec("video", {"per_second": {"720p": 10, "1080p": "30.5"}}, durations=(4, 8, 12))
    en, zh = Translator("en"), Translator("zh-CN")
    assert model_pages.price_rows(video, en) == [{"label": "Per second, 720p", "ucr": 10_000_000},
                                                 {"label": "Per second, 1080p", "ucr": 30_500_000}]
    assert model_pages.price_rows(video, zh)[0]["label"] == "每秒(720p)"
    assert model_pages.price_summary(video, en) == "from 10 credits per second"
    assert model_pages.facts(video, None) == {"durations": ["4 s", "8 s", "12 s"], "resolutions": ["720p", "1080p"]}
    assert model_pages.base_price_ucr(video) == 10_000_000
    assert model_pages.pricing_ucr_json(video) == '{"per_second":{"720p":10000000,"1080p":30500000}}'


def test_speech_audio_and_image_prices() -> None:
    en = Translator("en")
    speech = spec("speech", {"per_mchar": 1500}, voices=("alloy", "nova"))
    assert model_pages.price_rows(speech, en) == [{"label": "Per million characters", "ucr": 1_500_000_000}]
    assert model_pages.price_summary(speech, en) == "1500 credits per million characters"
    assert model_pages.speech_price_examples(speech) == [(100, 150_000), (1000, 1_500_000), (4096, 6_144_000)]
    assert model_pages.facts(speech, frozenset({"wav", "mp3"})) == {"voices": ["alloy", "nova"],
                                                                    "formats": ["mp3", "wav"]}
    audio = spec("audio", {"per_request": 8})
    assert model_pages.price_summary(audio, en) == "8 credits per request"
    image = spec("image", {"medium": 10, "high": 28})
    assert model_pages.price_summary(image, en) == "10–28 credits per image"
    assert [r["label"] for r in model_pages.price_rows(image, en)] == ["medium", "high"]


def test_curl_examples_use_the_kind_route() -> None:
    speech = spec("speech", {"per_mchar": 100}, voices=("en-us",), aliases=("espeak",))
    curl = model_pages.curl_example(speech, "http://h", "/api/v1/audio/speech", "p", frozenset({"wav", "pcm"}))
    assert curl.startswith("curl -X POST http://h/api/v1/audio/speech")
    assert '"voice": "en-us"' in curl and '"model": "espeak"' in curl and curl.endswith("-o speech.wav")
    video = spec("video", {"per_second": {"720p": 1}}, durations=(4,))
    assert '"duration_s": 4' in model_pages.curl_example(video, "http://h", "/api/v1/videos/generations", "p")
