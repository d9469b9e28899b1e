"""Upstream adapter conformance: every image adapter against its protocol-faithful fake on loopback.

Each case answers a success and every failure class, and the suite checks how the adapter
classified it, because the route pool acts only on that: ``retryable`` → next route,
``key_refused`` → next key, neither → the request fails at once. Other kinds' adapters have their
own modules beside this one (chat, media), built on the same checks.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import pytest

from apiinone.kinds.image.job import ImageJob
from apiinone.upstreams.base import ContentPolicyError, RouteTarget, UpstreamError, UpstreamTimeoutError
from apiinone.upstreams.local_typeset.typeset import LocalTypesetProvider
from apiinone.upstreams.openai.adapter import OpenAIAdapter
from tests.fakes.fake_openai import FakeOpenAI, openai_error


def job(**kw: object) -> ImageJob:
    values: dict[str, object] = {"prompt": "a red fox", "aspect_ratio": "1:1", "quality": "medium",
                                 "upstream_model": "gpt-image-1.5"}
    values.update(kw)
    return ImageJob(**values)  # type: ignore[arg-type]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def fake_server() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as fake:
        yield fake


@pytest.fixture
def fake(fake_server: FakeOpenAI) -> Iterator[FakeOpenAI]:
    fake_server.reset()
    fake_server.latency_ms = 0
    yield fake_server
    fake_server.reset()
    fake_server.latency_ms = 0


@dataclass
class OpenAICase:
    fake: FakeOpenAI
    adapter: OpenAIAdapter

    def target(self, *, key: str | None = None, timeout_s: float = 5.0, base_url: str | None = None) -> RouteTarget:
        return RouteTarget(model_id="m", route="r", provider="openai", base_url=base_url or self.fake.base_url,
                           api_key=key or self.fake.api_key, upstream_model="gpt-image-1.5", timeout_s=timeout_s)


@pytest.fixture
async def openai_case(fake: FakeOpenAI) -> AsyncIterator[OpenAICase]:
    adapter = OpenAIAdapter(timeout_s=5.0)
    yield OpenAICase(fake, adapter)
    await adapter.aclose()


# ----------------------------------------------------------------------------------------- openai


async def test_openai_success_is_a_real_image_of_the_size(openai_case: OpenAICase) -> None:
    result = await openai_case.adapter.generate_images(openai_case.target(), job(aspect_ratio="3:2"))
    [image] = result.images
    assert (image.width, image.height, image.content_type) == (1536, 1024, "image/png")
    assert image.data.startswith(b"\x89PNG")
    sent = openai_case.fake.requests[-1]
    assert sent.json["model"] == "gpt-image-1.5" and sent.headers["authorization"] == f"Bearer {openai_case.fake.api_key}"


@pytest.mark.parametrize("status", [408, 409, 429, 500, 502, 503, 504])
async def test_openai_transient_statuses_are_retryable(openai_case: OpenAICase, status: int) -> None:
    openai_case.fake.fail_next(status, retry_after=2 if status == 429 else None)
    with pytest.raises(UpstreamError) as caught:
        await openai_case.adapter.generate_images(openai_case.target(), job())
    assert caught.value.retryable and not caught.value.key_refused and caught.value.status == status
    if status == 429:
        assert caught.value.retry_after_s == 2


@pytest.mark.parametrize("status", [401, 403])
async def test_openai_refused_key_is_key_refused_and_never_echoed(openai_case: OpenAICase, status: int) -> None:
    secret = "sk-proj-SECRET-never-shown-9876"
    if status == 401:
        target = openai_case.target(key=secret)
    else:
        openai_case.fake.fail_next(403, openai_error("Project does not have access", type_="invalid_request_error"))
        target = openai_case.target(key=secret)
    with pytest.raises(UpstreamError) as caught:
        await openai_case.adapter.generate_images(target, job())
    assert caught.value.key_refused and not caught.value.retryable
    assert secret not in caught.value.message and secret[-4:] not in caught.value.message


async def test_openai_insufficient_quota_sets_the_key_aside(openai_case: OpenAICase) -> None:
    openai_case.fake.fail_next(429, openai_error("You exceeded your current quota.", type_="insufficient_quota",
                                                 code="insufficient_quota"))
    with pytest.raises(UpstreamError) as caught:
        await openai_case.adapter.generate_images(openai_case.target(), job())
    assert caught.value.key_refused


async def test_openai_moderation_is_a_content_policy_refusal(openai_case: OpenAICase) -> None:
    openai_case.fake.fail_next(400)
    with pytest.raises(ContentPolicyError) as caught:
        await openai_case.adapter.generate_images(openai_case.target(), job())
    assert caught.value.code == "content_policy" and not caught.value.retryable and not caught.value.key_refused


async def test_openai_invalid_request_is_refused(openai_case: OpenAICase) -> None:
    with pytest.raises(UpstreamError) as caught:
        await openai_case.adapter.generate_images(
            RouteTarget(model_id="m", route="r", provider="openai", base_url=openai_case.fake.base_url,
                        api_key=openai_case.fake.api_key, upstream_model="dall-e-9"), job())
    assert type(caught.value) is UpstreamError and caught.value.status == 400
    assert not caught.value.retryable and not caught.value.key_refused


async def test_openai_timeout_is_retryable(openai_case: OpenAICase) -> None:
    openai_case.fake.latency_ms = 1500
    with pytest.raises(UpstreamTimeoutError) as caught:
        await openai_case.adapter.generate_images(openai_case.target(timeout_s=0.2), job())
    assert caught.value.retryable and caught.value.code == "timeout"


async def test_openai_connection_refused_is_retryable(openai_case: OpenAICase) -> None:
    with pytest.raises(UpstreamError) as caught:
        await openai_case.adapter.generate_images(
            openai_case.target(base_url=f"http://127.0.0.1:{free_port()}/v1"), job())
    assert caught.value.retryable and "could not reach upstream" in caught.value.message


# ----------------------------------------------------------------------------------- local-typeset


async def test_local_typeset_success_and_refusal() -> None:
    adapter = LocalTypesetProvider()
    target = RouteTarget(model_id="local-typeset", route="local-typeset", provider="local-typeset", base_url="",
                         api_key=None, upstream_model="local-typeset")
    result = await adapter.generate_images(target, job(aspect_ratio="2:3"))
    assert [(i.width, i.height) for i in result.images] == [(1024, 1536)]
    with pytest.raises(UpstreamError) as caught:
        await adapter.generate_images(target, job(aspect_ratio="7:5"))
    assert not caught.value.retryable and not caught.value.key_refused
    assert adapter.needs_key is False
