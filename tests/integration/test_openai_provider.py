"""OpenAIImagesProvider against the fake OpenAI server on loopback: real sockets, real HTTP, no mocks.

The fake checks requests the way OpenAI does (unknown parameters, sizes, auth), so a provider that
passes here sends what the real API accepts.
"""

from __future__ import annotations

import asyncio
import io
import logging
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from apiinone.domain.catalog import ModelSpec
from apiinone.kinds.image.job import ImageJob, ImageResult, InputImage
from apiinone.upstreams.base import ContentPolicyError, RouteTarget, UpstreamTimeoutError
from apiinone.upstreams.base import UpstreamError as ProviderError
from apiinone.upstreams.breaker import BreakerBoard, MemoryRouteHealthStore
from apiinone.upstreams.openai.adapter import OpenAIAdapter
from apiinone.upstreams.pool import RouteDefaults, RoutePool
from apiinone.upstreams.registry import AdapterRegistry
from tests.fakes.fake_openai import MODERATION_BLOCKED_BODY, FakeOpenAI, openai_error


class OpenAIImagesProvider:
    """The OpenAI adapter behind a one-route pool: what a worker calls for a one-route model
    (the pool makes ``max_retries + 1`` attempts with backoff; the adapter one per call)."""

    def __init__(self, api_key: str, base_url: str, *, timeout_s: float = 120.0, max_retries: int = 3,
                 backoff_base_s: float = 1.0) -> None:
        self.adapter = OpenAIAdapter(timeout_s=timeout_s)
        registry = AdapterRegistry(None, factories={})  # type: ignore[arg-type]
        registry.register("openai", self.adapter)
        breakers = BreakerBoard(MemoryRouteHealthStore(), failures=1000)
        self.pool = RoutePool(registry, breakers, attempts=max_retries + 1, backoff_s=backoff_base_s,
                              defaults=RouteDefaults(base_urls={"openai": base_url}, keys={"openai": api_key},
                                                     timeout_s=timeout_s))

    def __repr__(self) -> str:
        return repr(self.adapter)

    async def generate(self, job: ImageJob) -> ImageResult:
        spec = ModelSpec(id="m", name="m", type="image", provider="openai", upstream_model=job.upstream_model,
                         pricing={"medium": 1})

        async def call(adapter: OpenAIAdapter, target: RouteTarget) -> ImageResult:
            return await adapter.generate_images(target, job)

        return (await self.pool.call(spec, call)).value

    async def aclose(self) -> None:
        await self.adapter.aclose()


FAKE_SCRIPT = Path(__file__).resolve().parents[1] / "fakes" / "fake_openai.py"


@pytest.fixture(scope="module")
def fake_server() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as fake:
        yield fake


@pytest.fixture
def fake(fake_server: FakeOpenAI) -> Iterator[FakeOpenAI]:
    fake_server.reset()
    fake_server.latency_ms = 0
    fake_server.url_mode = False
    yield fake_server
    fake_server.reset()
    fake_server.latency_ms = 0
    fake_server.url_mode = False


@pytest.fixture
async def provider(fake: FakeOpenAI) -> AsyncIterator[OpenAIImagesProvider]:
    p = OpenAIImagesProvider(fake.api_key, fake.base_url, timeout_s=5, max_retries=3, backoff_base_s=0.01)
    yield p
    await p.aclose()


def job(**kw: object) -> ImageJob:
    values: dict[str, object] = {
        "prompt": "a red fox in the snow",
        "aspect_ratio": "1:1",
        "quality": "medium",
        "upstream_model": "gpt-image-1.5",
    }
    values.update(kw)
    return ImageJob(**values)  # type: ignore[arg-type]


def png_bytes(size: tuple[int, int] = (64, 48), fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (10, 200, 30)).save(buf, format=fmt)
    return buf.getvalue()


# ------------------------------------------------------------------------------------------ generation


@pytest.mark.parametrize(
    ("aspect_ratio", "size", "quality"),
    [("1:1", "1024x1024", "medium"), ("2:3", "1024x1536", "high"), ("3:2", "1536x1024", "medium")],
)
async def test_generation_sends_the_openai_request_and_returns_real_png(
    fake: FakeOpenAI, provider: OpenAIImagesProvider, aspect_ratio: str, size: str, quality: str
) -> None:
    result = await provider.generate(job(aspect_ratio=aspect_ratio, quality=quality))

    [req] = fake.requests
    assert req.path == "/v1/images/generations"
    assert req.headers["authorization"] == f"Bearer {fake.api_key}"
    assert req.headers["content-type"] == "application/json"
    assert req.json == {
        "model": "gpt-image-1.5",
        "prompt": "a red fox in the snow",
        "n": 1,
        "size": size,
        "quality": quality,
    }
    assert req.status == 200

    [image] = result.images
    w, h = (int(x) for x in size.split("x"))
    assert (image.width, image.height) == (w, h)
    assert image.content_type == "image/png"
    assert image.data == fake.image_for(size)
    with Image.open(io.BytesIO(image.data)) as decoded:
        assert decoded.format == "PNG"
        assert decoded.size == (w, h)
        decoded.load()  # a whole, valid PNG, not just a header
    assert result.usage is not None
    assert isinstance(result.usage["total_tokens"], int)
    assert result.usage["total_tokens"] > 0


async def test_generation_passes_format_background_user_and_n(
    fake: FakeOpenAI, provider: OpenAIImagesProvider
) -> None:
    result = await provider.generate(
        job(n=2, output_format="webp", background="transparent", user="acct_1", extra={"moderation": "low"})
    )

    [req] = fake.requests
    assert req.json is not None
    assert req.json["output_format"] == "webp"
    assert req.json["background"] == "transparent"
    assert req.json["user"] == "acct_1"
    assert req.json["moderation"] == "low"
    assert req.json["n"] == 2
    assert len(result.images) == 2
    assert all(img.content_type == "image/webp" for img in result.images)
    assert all((img.width, img.height) == (1024, 1024) for img in result.images)


async def test_url_results_are_downloaded_without_the_api_key(
    fake: FakeOpenAI, provider: OpenAIImagesProvider
) -> None:
    fake.url_mode = True
    result = await provider.generate(job(aspect_ratio="2:3"))

    [image] = result.images
    assert (image.width, image.height) == (1024, 1536)
    assert image.data == fake.image_for("1024x1536")
    api_call, download = fake.requests
    assert api_call.path == "/v1/images/generations"
    assert download.path.startswith("/_fake/files/")
    assert "authorization" not in download.headers


async def test_many_concurrent_generations_share_one_client(
    fake: FakeOpenAI, provider: OpenAIImagesProvider
) -> None:
    results = await asyncio.gather(*(provider.generate(job(prompt=f"fox {i}")) for i in range(40)))

    assert len(results) == 40
    assert fake.received == 40
    assert {r.json["prompt"] for r in fake.requests if r.json} == {f"fox {i}" for i in range(40)}


# ------------------------------------------------------------------------------------------------ edits


async def test_edit_sends_multipart_image_array_with_the_bytes(
    fake: FakeOpenAI, provider: OpenAIImagesProvider
) -> None:
    first, second = png_bytes((64, 48)), png_bytes((32, 32), "JPEG")
    inputs = (
        InputImage(first, "image/png", "first.png"),
        InputImage(second, "image/jpeg", "second.jpg"),
    )
    result = await provider.generate(job(inputs=inputs, aspect_ratio="3:2", quality="high"))

    [req] = fake.requests
    assert req.path == "/v1/images/edits"
    assert req.headers["content-type"].startswith("multipart/form-data")
    assert req.json is None
    assert req.form == {
        "model": "gpt-image-1.5",
        "prompt": "a red fox in the snow",
        "n": "1",
        "size": "1536x1024",
        "quality": "high",
    }
    files = req.file_fields("image[]")
    assert [(f.filename, f.content_type, f.data) for f in files] == [
        ("first.png", "image/png", first),
        ("second.jpg", "image/jpeg", second),
    ]
    [image] = result.images
    assert (image.width, image.height) == (1536, 1024)
    assert result.usage is not None


async def test_edit_is_rebuilt_for_each_retry(fake: FakeOpenAI, provider: OpenAIImagesProvider) -> None:
    data = png_bytes()
    fake.fail_next(503)
    result = await provider.generate(job(inputs=(InputImage(data, "image/png"),)))

    assert len(result.images) == 1
    assert [r.status for r in fake.requests] == [503, 200]
    assert [f.data for f in fake.requests[1].file_fields("image[]")] == [data]


# ---------------------------------------------------------------------------------------------- retries


async def test_a_500_then_success_is_retried(fake: FakeOpenAI, provider: OpenAIImagesProvider) -> None:
    fake.fail_next(500)

    result = await provider.generate(job())

    assert len(result.images) == 1
    assert [r.status for r in fake.requests] == [500, 200]


async def test_429_waits_for_retry_after(fake: FakeOpenAI, provider: OpenAIImagesProvider) -> None:
    fake.fail_next(429, retry_after=0.4)

    started = time.monotonic()
    result = await provider.generate(job())
    elapsed = time.monotonic() - started

    assert len(result.images) == 1
    assert [r.status for r in fake.requests] == [429, 200]
    assert elapsed >= 0.38  # backoff alone would be ~0.01 s


async def test_retry_after_beyond_30s_falls_back_to_backoff(
    fake: FakeOpenAI, provider: OpenAIImagesProvider
) -> None:
    fake.fail_next(429, retry_after=3600)

    started = time.monotonic()
    await provider.generate(job())

    assert time.monotonic() - started < 2
    assert [r.status for r in fake.requests] == [429, 200]


async def test_persistent_500_gives_upstream_error_after_max_retries(fake: FakeOpenAI) -> None:
    fake.fail_next(500, count=10)
    provider = OpenAIImagesProvider(fake.api_key, fake.base_url, max_retries=2, backoff_base_s=0.01)
    try:
        with pytest.raises(ProviderError) as caught:
            await provider.generate(job())
    finally:
        await provider.aclose()

    assert type(caught.value) is ProviderError
    assert caught.value.code == "upstream_error"
    assert caught.value.retryable
    assert "500" in caught.value.message
    assert [r.status for r in fake.requests] == [500, 500, 500]


async def test_insufficient_quota_429_is_not_retried(
    fake: FakeOpenAI, provider: OpenAIImagesProvider
) -> None:
    fake.fail_next(
        429,
        openai_error(
            "You exceeded your current quota.", type_="insufficient_quota", code="insufficient_quota"
        ),
        count=5,
    )

    with pytest.raises(ProviderError) as caught:
        await provider.generate(job())

    assert caught.value.code == "upstream_error"
    assert "exceeded your current quota" in caught.value.message
    assert len(fake.requests) == 1


async def test_timeouts_end_as_upstream_timeout(fake: FakeOpenAI) -> None:
    fake.latency_ms = 400
    provider = OpenAIImagesProvider(
        fake.api_key, fake.base_url, timeout_s=0.1, max_retries=1, backoff_base_s=0.01
    )
    try:
        with pytest.raises(UpstreamTimeoutError) as caught:
            await provider.generate(job())
    finally:
        await provider.aclose()

    assert caught.value.code == "timeout"
    await fake.wait_arrived(2)  # the first attempt and its retry, both abandoned after 0.1 s


async def test_the_fake_keeps_a_call_abandoned_before_its_reset_out_of_the_record(fake: FakeOpenAI) -> None:
    """A test that gives up on a slow call must not find that call in the next test's record."""
    fake.latency_ms = 300
    body = {"model": "gpt-image-1.5", "prompt": "a red fox"}
    headers = {"Authorization": f"Bearer {fake.api_key}"}
    async with httpx.AsyncClient(base_url=fake.base_url, headers=headers) as client:
        with pytest.raises(httpx.TimeoutException):
            await client.post("/images/generations", json=body, timeout=0.1)
        await fake.wait_arrived(1)  # before the reset, whatever the fake thread's lag
        fake.reset()  # what the fixture does between tests
        # the same latency: this answer comes after the abandoned call's sleep has ended
        assert (await client.post("/images/generations", json=body, timeout=30)).status_code == 200
    assert [(r.path, r.status) for r in fake.requests] == [("/v1/images/generations", 200)]
    assert fake.arrived == fake.received == 1


async def test_connection_refused_is_retried_then_upstream_error() -> None:
    provider = OpenAIImagesProvider(
        "sk-x", f"http://127.0.0.1:{unused_port()}/v1", max_retries=2, backoff_base_s=0.01
    )
    try:
        with pytest.raises(ProviderError) as caught:
            await provider.generate(job())
    finally:
        await provider.aclose()
    assert caught.value.code == "upstream_error" and caught.value.retryable
    assert "could not reach upstream" in caught.value.message


# ------------------------------------------------------------------------------------- non-retried 4xx


async def test_moderation_block_is_content_policy(fake: FakeOpenAI, provider: OpenAIImagesProvider) -> None:
    fake.fail_next(400, MODERATION_BLOCKED_BODY)

    with pytest.raises(ContentPolicyError) as caught:
        await provider.generate(job())

    assert caught.value.code == "content_policy"
    assert "rejected by the safety system" in caught.value.message
    assert len(fake.requests) == 1


async def test_other_400_is_upstream_error_with_the_upstream_message(
    fake: FakeOpenAI, provider: OpenAIImagesProvider
) -> None:
    with pytest.raises(ProviderError) as caught:
        await provider.generate(job(upstream_model="dall-e-9"))

    assert type(caught.value) is ProviderError
    assert caught.value.code == "upstream_error"
    assert caught.value.message.startswith("upstream rejected the request: Invalid value: 'dall-e-9'.")
    assert not caught.value.retryable
    assert len(fake.requests) == 1


async def test_bad_key_is_not_retried_and_never_echoed(
    fake: FakeOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "sk-proj-THIS-IS-A-SECRET-KEY-0123456789"
    provider = OpenAIImagesProvider(secret, fake.base_url, backoff_base_s=0.01)
    caplog.set_level(logging.DEBUG)
    try:
        with pytest.raises(ProviderError) as caught:
            await provider.generate(job())
    finally:
        await provider.aclose()

    assert caught.value.code == "upstream_error"
    assert "401" in caught.value.message
    [req] = fake.requests
    assert req.status == 401
    for text in (caught.value.message, str(caught.value), repr(caught.value), repr(provider), caplog.text):
        assert secret not in text
    for text in (caught.value.message, str(caught.value), repr(caught.value), repr(provider)):
        assert secret[-4:] not in text  # not even OpenAI's masked form of it
    assert caplog.text.count(secret[-4:]) == caplog.text.count("..." + secret[-4:])  # logs: last 4 at most


# ------------------------------------------------------------------------------------------ fake itself


async def test_fake_validates_like_openai(fake: FakeOpenAI) -> None:
    auth = {"Authorization": f"Bearer {fake.api_key}"}
    async with httpx.AsyncClient(base_url=fake.base_url, headers=auth) as client:
        bad_size = await client.post("/images/generations", json={"prompt": "x", "size": "512x512"})
        no_prompt = await client.post("/images/generations", json={"model": "gpt-image-1.5"})
        unknown = await client.post("/images/generations", json={"prompt": "x", "aspect": "1:1"})
        wrong_key = await client.post(
            "/images/generations", json={"prompt": "x"}, headers={"Authorization": "Bearer sk-nope-nope-nope"}
        )
        no_image = await client.post("/images/edits", data={"prompt": "x"}, files={"mask": ("m.png", b"x")})

    assert bad_size.status_code == 400
    assert bad_size.json()["error"]["param"] == "size"
    assert bad_size.json()["error"]["type"] == "invalid_request_error"
    assert no_prompt.status_code == 400
    assert no_prompt.json()["error"]["param"] == "prompt"
    assert unknown.json()["error"]["code"] == "unknown_parameter"
    assert wrong_key.status_code == 401
    assert wrong_key.json()["error"] == {
        "message": wrong_key.json()["error"]["message"],
        "type": "invalid_request_error",
        "param": None,
        "code": "invalid_api_key",
    }
    assert wrong_key.json()["error"]["message"].startswith("Incorrect API key provided: ")
    assert no_image.status_code == 400
    assert no_image.json()["error"]["param"] == "image"


async def test_fake_success_body_has_openai_shape(fake: FakeOpenAI) -> None:
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {fake.api_key}"}) as client:
        resp = await client.post(
            f"{fake.base_url}/images/generations", json={"model": "gpt-image-1.5", "prompt": "hello there"}
        )
    body = resp.json()
    assert set(body) == {"created", "background", "data", "output_format", "quality", "size", "usage"}
    assert set(body["data"][0]) == {"b64_json"}
    assert (body["background"], body["output_format"], body["quality"], body["size"]) == (
        "opaque",
        "png",
        "medium",
        "1024x1024",
    )
    usage = body["usage"]
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    assert usage["input_tokens_details"]["image_tokens"] == 0


def test_fake_runs_as_a_script(tmp_path: Path) -> None:
    port_file = tmp_path / "port"
    proc = subprocess.Popen(
        [sys.executable, str(FAKE_SCRIPT), "--port", "0", "--port-file", str(port_file), "--latency-ms", "1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 20
        while not port_file.exists():
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "fake did not write its port file"
            time.sleep(0.02)
        origin = f"http://127.0.0.1:{int(port_file.read_text())}"
        with httpx.Client(base_url=origin, headers={"Authorization": "Bearer any-key"}) as client:
            models = client.get("/v1/models")
            assert models.status_code == 200
            assert "gpt-image-1.5" in {m["id"] for m in models.json()["data"]}

            client.post("/_fake/fail_next", json={"status": 503, "count": 1})
            assert client.post("/v1/images/generations", json={"prompt": "x"}).status_code == 503
            ok = client.post("/v1/images/generations", json={"prompt": "x", "size": "1024x1536"})
            assert ok.status_code == 200
            seen = client.get("/_fake/requests").json()
            assert [r["status"] for r in seen["data"]] == [200, 503, 200]
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def unused_port() -> int:
    """A loopback port nothing listens on, for the connection-refused path."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port
