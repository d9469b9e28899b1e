"""Speech calls end to end: the official ``openai`` SDK against a real server, in front of the fake
OpenAI speech endpoint and in front of the offline espeak-ng model; exact µcr charged, nothing
charged when the upstream fails or the client leaves, and the contract's error shapes."""

from __future__ import annotations

import asyncio
import io
import shutil
import struct
import wave
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from apiinone.domain.credits import Credits
from apiinone.kinds.speech.job import SpeechAudio, SpeechJob
from apiinone.upstreams.base import RouteTarget
from tests.conftest import Caller, needs
from tests.fakes.fake_openai import FakeOpenAI
from tests.integration.live_server import LiveServer

ESPEAK = shutil.which("espeak-ng")
needs_espeak = needs(ESPEAK is not None, "espeak-ng is not installed (scripts/test.sh installs it)")

GATED_CATALOG = """
[[models]]
id = "gated-speech"
name = "Gated speech"
type = "speech"
provider = "gated-speech"
upstream_model = "gated"
pricing = { per_mchar = 1500 }
voices = ["alloy"]
"""


class GatedSpeech:
    """Holds every call until the test opens the gate; records whether the call was stopped."""

    provider = "gated-speech"
    needs_key = False

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.gate = asyncio.Event()
        self.stopped = asyncio.Event()

    def speech_formats(self) -> frozenset[str]:
        return frozenset({"wav"})

    async def synthesize_speech(self, target: RouteTarget, job: SpeechJob) -> SpeechAudio:
        self.started.set()
        try:
            await self.gate.wait()
        except asyncio.CancelledError:
            self.stopped.set()
            raise
        return SpeechAudio(data=b"RIFF....WAVE", content_type="audio/wav")

    async def aclose(self) -> None:
        self.gate.set()


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
async def server(tmp_path: Path, database_url: str, fake: FakeOpenAI) -> AsyncIterator[LiveServer]:
    catalog = tmp_path / "models.toml"
    catalog.write_text(GATED_CATALOG)
    async with LiveServer(tmp_path, database_url, openai_api_key=fake.api_key, openai_base_url=fake.base_url,
                          models_file=catalog, route_attempts=2) as live:
        yield live


def sdk(server: LiveServer, caller: Caller) -> openai.OpenAI:
    return openai.OpenAI(api_key=caller.key, base_url=f"{server.base_url}/v1", max_retries=0,
                         http_client=httpx.Client(trust_env=False))


async def credits_of(server: LiveServer, caller: Caller) -> Credits:
    async with server.container.db.uow(write=False) as uow:
        return await uow.accounts.credits(caller.account_id)


async def request_log(server: LiveServer, caller: Caller) -> list[dict[str, Any]]:
    response = await caller.get("/api/v1/account/requests")
    assert response.status_code == 200, response.text
    data: list[dict[str, Any]] = response.json()["data"]
    return data


def wav_facts(data: bytes) -> tuple[int, int, int, float]:
    """(channels, sample width, sample rate, seconds) read back with the standard library."""
    assert data[:4] == b"RIFF" and data[8:12] == b"WAVE"
    assert struct.unpack_from("<I", data, 4)[0] == len(data) - 8  # the RIFF size is the real one
    with wave.open(io.BytesIO(data)) as w:
        frames = w.getnframes()
        return w.getnchannels(), w.getsampwidth(), w.getframerate(), frames / w.getframerate()


# ------------------------------------------------------------------------------- the openai SDK


async def test_sdk_speech_through_the_fake_is_charged_exactly(server: LiveServer, fake: FakeOpenAI) -> None:
    caller = await server.caller(credits=10)
    text = "Hello from apiinone, 你好!"
    client = sdk(server, caller)

    def call() -> Any:
        return client.audio.speech.create(model="tts-1-official", voice="nova", input=text,
                                          response_format="wav", speed=1.25)

    response = await asyncio.to_thread(call)
    audio = response.content
    assert response.response.headers["content-type"] == "audio/wav"
    channels, width, rate, seconds = wav_facts(audio)
    assert (channels, width, rate) == (1, 2, 24_000) and seconds > 0
    [sent] = fake.requests
    assert sent.path == "/v1/audio/speech"
    assert sent.headers["authorization"] == f"Bearer {fake.api_key}"
    assert sent.json == {"model": "tts-1", "input": text, "voice": "nova", "response_format": "wav", "speed": 1.25}

    price = len(text) * 1500  # 1500 credits per million characters = 1500 µcr a character
    credits = await credits_of(server, caller)
    assert (credits.balance, credits.held) == (10_000_000 - price, 0)
    assert response.response.headers["x-credits-charged"] == f"{price / 1_000_000:.6f}".rstrip("0")
    [logged] = await request_log(server, caller)
    assert (logged["type"], logged["model"], logged["status"], logged["http_status"]) == (
        "speech", "tts-1-official", "succeeded", 200)
    assert str(logged["credits"]) == response.response.headers["x-credits-charged"]


async def test_sdk_streaming_response_and_default_mp3(server: LiveServer, fake: FakeOpenAI,
                                                      tmp_path: Path) -> None:
    caller = await server.caller(credits=10)
    client = sdk(server, caller)
    out = tmp_path / "speech.mp3"

    def call() -> str:
        with client.audio.speech.with_streaming_response.create(model="tts-1", voice="alloy",
                                                                input="Streaming works.") as response:
            response.stream_to_file(out)
            return str(response.headers["content-type"])

    assert await asyncio.to_thread(call) == "audio/mpeg"
    data = out.read_bytes()
    assert data[:2] == b"\xff\xfb" and len(data) % 384 == 0  # whole MPEG-1 Layer III frames
    assert fake.requests[0].json["response_format"] == "mp3"


async def test_upstream_failure_charges_nothing(server: LiveServer, fake: FakeOpenAI) -> None:
    caller = await server.caller(credits=10)
    fake.fail_next(500, count=5)
    client = sdk(server, caller)

    def call() -> None:
        client.audio.speech.create(model="tts-1-official", voice="alloy", input="fails", response_format="wav")

    with pytest.raises(openai.APIStatusError) as raised:
        await asyncio.to_thread(call)
    assert raised.value.status_code == 502
    assert raised.value.response.headers["x-should-retry"] == "false"
    assert len(fake.requests) == 2  # route_attempts, then it gave up
    credits = await credits_of(server, caller)
    assert (credits.balance, credits.held) == (10_000_000, 0)
    [logged] = await request_log(server, caller)
    assert (logged["status"], logged["http_status"], str(logged["credits"])) == ("failed", 502, "0")


async def test_refused_request_is_not_retried_and_charges_nothing(server: LiveServer, fake: FakeOpenAI) -> None:
    caller = await server.caller(credits=10)
    fake.fail_next(400, {"error": {"message": "bad input", "type": "invalid_request_error", "param": None,
                                   "code": None}})
    response = await caller.post("/api/v1/audio/speech", json={"model": "tts-1", "voice": "alloy", "input": "x"})
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "upstream_error"
    assert len(fake.requests) == 1
    assert (await credits_of(server, caller)).available == 10_000_000


async def test_insufficient_credits_is_openai_429_and_nothing_sent(server: LiveServer, fake: FakeOpenAI) -> None:
    caller = await server.caller(credits=0)
    client = sdk(server, caller)

    def call() -> None:
        client.audio.speech.create(model="tts-1-official", voice="alloy", input="no money")

    with pytest.raises(openai.RateLimitError) as raised:
        await asyncio.to_thread(call)
    assert raised.value.code == "insufficient_quota"
    assert fake.requests == []
    api = await caller.post("/api/v1/audio/speech", json={"model": "tts-1", "voice": "alloy", "input": "x"})
    assert api.status_code == 402 and api.json()["error"]["code"] == "insufficient_credits"


async def test_validation_errors_in_both_shapes_before_anything_is_held(server: LiveServer,
                                                                        fake: FakeOpenAI) -> None:
    caller = await server.caller(credits=10)
    cases: list[tuple[dict[str, Any], str]] = [
        ({"model": "tts-1", "voice": "nobody", "input": "x"}, "voice"),
        ({"model": "tts-1", "voice": "alloy", "input": ""}, "input"),
        ({"model": "tts-1", "voice": "alloy", "input": "x" * 4097}, "input"),
        ({"model": "tts-1", "voice": "alloy", "input": "x", "speed": 4.5}, "speed"),
        ({"model": "tts-1", "voice": "alloy", "input": "x", "speed": "fast"}, "speed"),
        ({"model": "tts-1", "voice": "alloy", "input": "x", "response_format": "ogg"}, "response_format"),
        ({"model": "tts-1", "voice": "alloy", "input": "x", "colour": "red"}, "colour"),
        ({"model": "tts-1", "input": "x"}, "voice"),
        ({"model": "local-typeset", "voice": "alloy", "input": "x"}, "model"),
    ]
    for body, param in cases:
        api = await caller.post("/api/v1/audio/speech", json=body)
        assert api.status_code == 400, (body, api.text)
        assert api.json()["error"]["code"] == "invalid_parameter"
        assert api.json()["error"]["param"] == param
        compat = await caller.post("/v1/audio/speech", json=body)
        assert compat.status_code == 400
        error = compat.json()["error"]
        assert error["type"] == "invalid_request_error" and error["param"] == param
    wrong = await caller.post("/api/v1/audio/speech", json={"model": "local-typeset", "voice": "a", "input": "x"})
    assert "/api/v1/images/generations" in wrong.json()["error"]["message"]
    missing = await caller.post("/api/v1/audio/speech", json={"model": "no-such", "voice": "a", "input": "x"})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"
    not_json = await caller.post("/v1/audio/speech", content=b"{", headers={"content-type": "application/json"})
    assert not_json.status_code == 400
    assert fake.requests == []
    assert await request_log(server, caller) == []
    assert (await credits_of(server, caller)).balance == 10_000_000


async def test_client_that_leaves_stops_the_call_and_is_not_charged(server: LiveServer) -> None:
    gated = GatedSpeech()
    server.container.adapters.register("gated-speech", gated)
    caller = await server.caller(credits=10)
    call = asyncio.create_task(caller.post("/api/v1/audio/speech",
                                           json={"model": "gated-speech", "voice": "alloy", "input": "bye",
                                                 "response_format": "wav"}))
    await asyncio.wait_for(gated.started.wait(), 10)
    assert (await credits_of(server, caller)).held == 3 * 1500  # held while it runs
    call.cancel()  # the connection closes
    with pytest.raises(asyncio.CancelledError):
        await call
    await asyncio.wait_for(gated.stopped.wait(), 10)
    for _ in range(200):
        logged = await request_log(server, caller)
        if logged:
            break
        await asyncio.sleep(0.05)
    [entry] = logged
    assert (entry["status"], str(entry["credits"])) == ("canceled", "0")
    credits = await credits_of(server, caller)
    assert (credits.balance, credits.held) == (10_000_000, 0)


async def test_speech_model_is_listed_with_voices_and_price(server: LiveServer) -> None:
    body = (await server.client.get("/api/v1/models/tts-1")).json()
    assert body["type"] == "speech" and body["pricing"] == {"per_mchar": 1500}
    assert "alloy" in body["voices"]
    assert body["parameters"]["properties"]["voice"]["enum"] == body["voices"]
    local = (await server.client.get("/api/v1/models/local-speech")).json()
    assert local["available"] is (ESPEAK is not None)


# ------------------------------------------------------------------------- offline: espeak-ng


@needs_espeak
async def test_sdk_speech_from_local_speech_is_a_real_wav(server: LiveServer) -> None:
    caller = await server.caller(credits=1)
    client = sdk(server, caller)
    text = "The quick brown fox jumps over the lazy dog."

    def call(fmt: str, voice: str = "en-us", words: str = text) -> bytes:
        return client.audio.speech.create(model="local-speech", voice=voice, input=words,
                                          response_format=fmt).content  # type: ignore[arg-type]

    wav = await asyncio.to_thread(call, "wav")
    channels, width, rate, seconds = wav_facts(wav)
    assert (channels, width, rate) == (1, 2, 22_050)
    assert 1.0 < seconds < 10.0
    with wave.open(io.BytesIO(wav)) as w:
        samples = w.readframes(w.getnframes())
    assert any(samples[i:i + 2] not in (b"\x00\x00", b"\xff\xff") for i in range(0, len(samples), 2))  # not silence

    pcm = await asyncio.to_thread(call, "pcm")
    assert len(pcm) % 2 == 0
    assert abs(len(pcm) / 2 / 24_000 - seconds) < 0.05  # the same speech at OpenAI's 24 kHz

    chinese = await asyncio.to_thread(call, "wav", "zh", "你好，世界")
    assert wav_facts(chinese)[3] > 0.3

    credits = await credits_of(server, caller)
    assert credits.balance == 1_000_000 - (2 * len(text) + len("你好，世界")) * 100
    assert credits.held == 0


@needs_espeak
async def test_local_speech_refuses_formats_it_cannot_make(server: LiveServer) -> None:
    caller = await server.caller(credits=1)
    response = await caller.post("/api/v1/audio/speech", json={"model": "local-speech", "voice": "en",
                                                               "input": "hi", "response_format": "mp3"})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "response_format" and "'wav'" in error["message"] and "'pcm'" in error["message"]
    assert (await credits_of(server, caller)).balance == 1_000_000
    default = await caller.post("/api/v1/audio/speech", json={"model": "local-speech", "voice": "en", "input": "hi"})
    assert default.status_code == 200 and default.headers["content-type"] == "audio/wav"  # mp3 left out: wav


async def test_key_allowlist_and_budget_apply_before_anything_is_sent(server: LiveServer, fake: FakeOpenAI) -> None:
    caller = await server.caller(credits=10)
    only_images = await server.container.accounts.create_api_key(caller.account_id, "images",
                                                                allowed_models=["local-typeset"])
    body = {"model": "tts-1", "voice": "alloy", "input": "1234567890", "response_format": "wav"}
    refused = await server.client.post("/api/v1/audio/speech", json=body,
                                       headers={"Authorization": f"Bearer {only_images.plaintext}"})
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "forbidden"
    small = await server.container.accounts.create_api_key(caller.account_id, "small", credit_budget=10 * 1500)
    headers = {"Authorization": f"Bearer {small.plaintext}"}
    spent = await server.client.post("/api/v1/audio/speech", json=body, headers=headers)  # exactly the budget
    assert spent.status_code == 200 and spent.headers["x-credits-charged"] == "0.015"
    over = await server.client.post("/api/v1/audio/speech", json=body, headers=headers)
    assert over.status_code == 402 and over.json()["error"]["code"] == "insufficient_credits"
    assert len(fake.requests) == 1
    credits = await credits_of(server, caller)
    assert (credits.balance, credits.held) == (10_000_000 - 10 * 1500, 0)
