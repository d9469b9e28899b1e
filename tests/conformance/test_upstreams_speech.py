"""Speech adapter conformance: the ``openai`` adapter's speech call against the fake OpenAI server
on loopback, and the offline ``local-speech`` adapter against the real espeak-ng: the request sent,
the audio returned, and how each failure is classified (``retryable`` → next route,
``key_refused`` → next key, neither → the call fails at once), which is all the route pool reads."""

from __future__ import annotations

import io
import shutil
import socket
import stat
import wave
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from apiinone.kinds.speech.job import SpeechJob
from apiinone.upstreams.base import RouteTarget, UpstreamError, UpstreamTimeoutError
from apiinone.upstreams.local_speech.espeak import LocalSpeechProvider
from apiinone.upstreams.openai.adapter import OpenAIAdapter
from tests.conftest import needs
from tests.fakes.fake_openai import FakeOpenAI


def speech_target(base_url: str, api_key: str | None, timeout_s: float = 5.0) -> RouteTarget:
    """A route target for the adapter in front of a fake (what the conformance suite needs)."""
    return RouteTarget(model_id="tts-1-official", route="openai", provider="openai", base_url=base_url,
                       api_key=api_key, upstream_model="tts-1", timeout_s=timeout_s)


def job(**kw: object) -> SpeechJob:
    values: dict[str, object] = {"input": "Hello there.", "voice": "alloy", "response_format": "wav", "speed": 1.0,
                                 "upstream_model": "tts-1"}
    values.update(kw)
    return SpeechJob(**values)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def fake_server() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as fake:
        yield fake


@pytest.fixture
def fake(fake_server: FakeOpenAI) -> Iterator[FakeOpenAI]:
    fake_server.reset()
    yield fake_server
    fake_server.reset()


@pytest.fixture
async def adapter() -> AsyncIterator[OpenAIAdapter]:
    a = OpenAIAdapter(timeout_s=5)
    yield a
    await a.aclose()


async def test_success_sends_openai_request_and_returns_the_audio(fake: FakeOpenAI, adapter: OpenAIAdapter) -> None:
    audio = await adapter.synthesize_speech(speech_target(fake.base_url, fake.api_key),
                                            job(speed=2.0, instructions=None))
    [sent] = fake.requests
    assert sent.json == {"model": "tts-1", "input": "Hello there.", "voice": "alloy", "response_format": "wav",
                         "speed": 2.0}
    assert sent.headers["accept"] == "application/octet-stream"
    assert audio.content_type == "audio/wav"
    with wave.open(io.BytesIO(audio.data)) as w:
        assert w.getframerate() == 24_000 and w.getnframes() > 0
    pcm = await adapter.synthesize_speech(speech_target(fake.base_url, fake.api_key), job(response_format="pcm"))
    assert pcm.content_type == "audio/pcm" and pcm.data[:4] != b"RIFF"
    assert len(pcm.data) == 2 * (len(audio.data) - 44)  # headerless, and twice as long at half the speed


async def test_refused_key_is_classified_as_key_refused(fake: FakeOpenAI, adapter: OpenAIAdapter) -> None:
    with pytest.raises(UpstreamError) as raised:
        await adapter.synthesize_speech(speech_target(fake.base_url, "sk-wrong-key-1234"), job())
    assert raised.value.key_refused and not raised.value.retryable
    assert "1234" not in raised.value.message  # OpenAI's message holds a masked key: never echoed


@pytest.mark.parametrize(("status", "retryable"), [(429, True), (500, True), (503, True), (400, False), (404, False)])
async def test_failures_are_classified(fake: FakeOpenAI, adapter: OpenAIAdapter, status: int, retryable: bool) -> None:
    fake.fail_next(status, {"error": {"message": "scripted", "type": "x", "param": None, "code": None}},
                   retry_after=2 if status == 429 else None)
    with pytest.raises(UpstreamError) as raised:
        await adapter.synthesize_speech(speech_target(fake.base_url, fake.api_key), job())
    assert (raised.value.retryable, raised.value.status, raised.value.key_refused) == (retryable, status, False)
    if status == 429:
        assert raised.value.retry_after_s == 2


async def test_invalid_request_is_refused_with_openais_message(fake: FakeOpenAI, adapter: OpenAIAdapter) -> None:
    with pytest.raises(UpstreamError) as raised:
        await adapter.synthesize_speech(speech_target(fake.base_url, fake.api_key), job(voice="nobody"))
    assert not raised.value.retryable and "Invalid value: 'nobody'" in raised.value.message


async def test_slow_upstream_is_a_retryable_timeout(fake: FakeOpenAI, adapter: OpenAIAdapter) -> None:
    fake.fail_next(500, delay_s=3)
    with pytest.raises(UpstreamTimeoutError) as raised:
        await adapter.synthesize_speech(speech_target(fake.base_url, fake.api_key, timeout_s=0.3), job())
    assert raised.value.retryable


async def test_unreachable_upstream_is_retryable(adapter: OpenAIAdapter) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens there once closed
    with pytest.raises(UpstreamError) as raised:
        await adapter.synthesize_speech(speech_target(f"http://127.0.0.1:{port}/v1", "sk-x"), job())
    assert raised.value.retryable


# ---------------------------------------------------------------------------------- local-speech

needs_espeak = needs(shutil.which("espeak-ng") is not None, "espeak-ng is not installed (scripts/test.sh installs it)")


def local_target(timeout_s: float = 30.0) -> RouteTarget:
    return RouteTarget(model_id="local-speech", route="local-speech", provider="local-speech", base_url="",
                       api_key=None, upstream_model="espeak-ng", timeout_s=timeout_s)


@needs_espeak
async def test_local_speech_success_is_real_speech() -> None:
    provider = LocalSpeechProvider()
    assert provider.installed and provider.speech_formats() == {"wav", "pcm"}
    audio = await provider.synthesize_speech(local_target(), job(voice="en-us", input="-v xx; rm -rf / $(echo)"))
    with wave.open(io.BytesIO(audio.data)) as w:  # the text is spoken, never read as options or a shell line
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 22_050)
        assert w.getnframes() / w.getframerate() > 1.0


@needs_espeak
async def test_local_speech_unknown_voice_is_refused_not_retried() -> None:
    with pytest.raises(UpstreamError) as raised:
        await LocalSpeechProvider().synthesize_speech(local_target(), job(voice="nonexist"))
    assert not raised.value.retryable and not raised.value.key_refused


async def test_local_speech_overrun_is_killed_and_retryable(tmp_path: Path) -> None:
    slow = tmp_path / "espeak-ng"  # a stand-in binary that never finishes
    slow.write_text("#!/bin/sh\nexec sleep 60\n")
    slow.chmod(slow.stat().st_mode | stat.S_IEXEC)
    with pytest.raises(UpstreamTimeoutError) as raised:
        await LocalSpeechProvider(binary=str(slow)).synthesize_speech(local_target(timeout_s=0.5), job())
    assert raised.value.retryable


async def test_local_speech_without_the_binary_is_not_configured() -> None:
    provider = LocalSpeechProvider(binary="")
    assert not provider.installed
    with pytest.raises(UpstreamError) as raised:
        await provider.synthesize_speech(local_target(), job())
    assert raised.value.retryable
    with pytest.raises(UpstreamError) as refused:  # a format it cannot make: refused at once
        await LocalSpeechProvider().synthesize_speech(local_target(), job(response_format="mp3"))
    assert not refused.value.retryable
