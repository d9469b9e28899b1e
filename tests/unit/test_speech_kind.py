"""The speech kind's request rules and price rule, and the offline provider's WAV/PCM handling."""

from __future__ import annotations

import itertools
import struct
from array import array
from typing import Any

import pytest

from apiinone.domain.catalog import ModelSpec
from apiinone.kinds.speech import KIND, SpeechParamError, parse_speech_request
from apiinone.upstreams.base import UpstreamError
from apiinone.upstreams.local_speech.espeak import LocalSpeechProvider, fix_wav_header, read_wav_samples, resample


def spec(**kw: Any) -> ModelSpec:
    values: dict[str, Any] = {"id": "s", "name": "s", "type": "speech", "provider": "openai",
                              "upstream_model": "tts-1", "pricing": {"per_mchar": 1500}, "voices": ("alloy",)}
    values.update(kw)
    return ModelSpec(**values)


def test_defaults_and_billed_characters_are_code_points() -> None:
    request = parse_speech_request({"model": "tts-1", "input": "你好 👋", "voice": "alloy"})
    assert (request.response_format, request.speed, request.instructions) == ("mp3", 1.0, None)
    assert request.characters == 4


@pytest.mark.parametrize(("body", "param", "code"), [
    ({"input": "x", "voice": "a"}, "model", "missing_required_parameter"),
    ({"model": "m", "voice": "a"}, "input", "missing_required_parameter"),
    ({"model": "m", "input": "x"}, "voice", "missing_required_parameter"),
    ({"model": "m", "input": 3, "voice": "a"}, "input", "invalid_type"),
    ({"model": "m", "input": "   ", "voice": "a"}, "input", "empty_string"),
    ({"model": "m", "input": "x" * 4097, "voice": "a"}, "input", "string_above_max_length"),
    ({"model": "m", "input": "x", "voice": {"id": "voice_1"}}, "voice", "invalid_type"),
    ({"model": "m", "input": "x", "voice": "a", "speed": 0.1}, "speed", "decimal_below_min_value"),
    ({"model": "m", "input": "x", "voice": "a", "speed": 4.01}, "speed", "decimal_above_max_value"),
    ({"model": "m", "input": "x", "voice": "a", "speed": True}, "speed", "invalid_type"),
    ({"model": "m", "input": "x", "voice": "a", "response_format": "ogg"}, "response_format", "invalid_value"),
    ({"model": "m", "input": "x", "voice": "a", "stream_format": "sse"}, "stream_format", "invalid_value"),
    ({"model": "m", "input": "x", "voice": "a", "n": 2}, "n", "unknown_parameter"),
])
def test_openai_rules(body: dict[str, Any], param: str, code: str) -> None:
    with pytest.raises(SpeechParamError) as raised:
        parse_speech_request(body)
    assert (raised.value.param, raised.value.openai_code, raised.value.status) == (param, code, 400)


def test_limits_are_inclusive() -> None:
    assert parse_speech_request({"model": "m", "input": "x" * 4096, "voice": "a", "speed": 4}).speed == 4.0
    assert parse_speech_request({"model": "m", "input": "x", "voice": "a", "speed": 0.25}).speed == 0.25


def test_price_is_exact_for_whole_credits_and_rounds_up_fractions() -> None:
    assert KIND.price_ucr(spec(), 4096) == 4096 * 1500
    assert KIND.price_ucr(spec(pricing={"per_mchar": "0.5"}), 3) == 2  # 0.5 µcr a character: 1.5 rounds up
    assert KIND.price_ucr(spec(pricing={"per_mchar": "0.5"}), 4) == 2
    assert KIND.price_ucr(spec(pricing={"per_mchar": 0}), 100) == 0


def test_pricing_shape_is_checked() -> None:
    KIND.validate_pricing(spec())
    for bad in ({"medium": 1}, {"per_mchar": -1}, {"per_mchar": 1, "per_second": 2}, {"per_mchar": "x"}):
        with pytest.raises(ValueError):
            KIND.validate_pricing(spec(pricing=bad))


def test_model_rules_voice_and_formats() -> None:
    request = parse_speech_request({"model": "s", "input": "x", "voice": "nova", "response_format": "wav"})
    with pytest.raises(SpeechParamError) as raised:
        KIND.check_for_model(spec(), request, {"wav"})
    assert raised.value.param == "voice" and "'alloy'" in raised.value.message
    ok = parse_speech_request({"model": "s", "input": "x", "voice": "alloy", "response_format": "mp3"})
    with pytest.raises(SpeechParamError) as raised:
        KIND.check_for_model(spec(), ok, {"wav", "pcm"})
    assert raised.value.param == "response_format" and "'wav', 'pcm'" in raised.value.message
    KIND.check_for_model(spec(voices=()), request, {"wav"})  # no catalog voices: passed on as given


def espeak_like_wav(samples: list[int], rate: int = 22_050) -> bytes:
    """A WAV as espeak-ng writes it to a pipe: placeholder sizes, then the samples."""
    pcm = array("h", samples).tobytes()
    return struct.pack("<4sI4s4sIHHIIHH4sI", b"RIFF", 0x7FFFF024, b"WAVE", b"fmt ", 16, 1, 1, rate, rate * 2, 2,
                       16, b"data", 0x7FFFF000) + pcm


def test_wav_header_gets_the_real_sizes() -> None:
    fixed = fix_wav_header(espeak_like_wav([1, 2, 3]))
    assert struct.unpack_from("<I", fixed, 4)[0] == len(fixed) - 8
    assert struct.unpack_from("<I", fixed, 40)[0] == 6
    assert read_wav_samples(fixed) == (22_050, array("h", [1, 2, 3]))
    with pytest.raises(UpstreamError):
        fix_wav_header(b"not a wav file at all, not at all")


def test_resample_to_24khz_keeps_the_duration() -> None:
    samples = array("h", range(22_050))  # one second of a rising ramp
    out = resample(samples, 22_050, 24_000)
    assert len(out) % 2 == 0 and abs(len(out) // 2 - 24_000) <= 1  # one second, give or take a sample
    values = array("h")
    values.frombytes(out)
    assert values[0] == 0 and all(b >= a for a, b in itertools.pairwise(values))  # a ramp stays a ramp


def test_local_speech_without_espeak_is_not_installed() -> None:
    provider = LocalSpeechProvider(binary="")
    assert not provider.installed and provider.speech_formats() == frozenset()
    assert LocalSpeechProvider(binary="/nonexistent/espeak-ng").installed is False
    assert (provider.wpm(1.0), provider.wpm(0.25), provider.wpm(4.0)) == (175, 80, 450)
