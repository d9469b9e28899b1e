"""The OpenAI-compatible routes driven by the official ``openai`` SDK (sync and async clients)
against a real server, with ``gpt-image-1.5-official`` served by the fake OpenAI upstream."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import operator
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from PIL import Image

from tests.conftest import Caller
from tests.fakes.fake_openai import FakeOpenAI
from tests.integration.live_server import GatedProvider, LiveServer


def png_bytes(size: tuple[int, int] = (64, 64), colour: tuple[int, ...] = (200, 30, 30), mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, colour).save(buf, format="PNG")
    return buf.getvalue()


class SDK:
    """One face for ``openai.OpenAI`` (run in a thread: the server shares this loop) and ``AsyncOpenAI``."""

    def __init__(self, kind: str, server: LiveServer, api_key: str) -> None:
        self.kind = kind
        options: dict[str, Any] = {"base_url": f"{server.base_url}/v1", "api_key": api_key, "timeout": 60,
                                   "max_retries": 0}
        self.client: Any = openai.OpenAI(**options) if kind == "sync" else openai.AsyncOpenAI(**options)

    async def call(self, method: str, **kwargs: Any) -> Any:
        fn = operator.attrgetter(method)(self.client)
        if self.kind == "sync":
            return await asyncio.to_thread(fn, **kwargs)
        return await fn(**kwargs)


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as upstream:
        yield upstream


@pytest.fixture
async def server(tmp_path: Path, sqlite_url: str, fake: FakeOpenAI) -> AsyncIterator[LiveServer]:
    async with LiveServer(tmp_path, sqlite_url, openai_api_key=fake.api_key, openai_base_url=fake.base_url) as live:
        yield live


@pytest.fixture(params=["sync", "async"])
def kind(request: pytest.FixtureRequest) -> str:
    value: str = request.param
    return value


async def _credits(caller: Caller) -> dict[str, int]:
    credits: dict[str, int] = (await caller.get("/api/v1/account")).json()["credits"]
    return credits


def _decoded(item: Any) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(item.b64_json)))


async def test_generate_n_images_at_a_size_and_charge_n_times(server: LiveServer, kind: str) -> None:
    caller = await server.caller(credits=10)
    sdk = SDK(kind, server, caller.key)
    result = await sdk.call("images.generate", model="local-typeset", prompt="Bean & Brew in red",
                            size="1024x1536", quality="high", n=2)
    assert len(result.data) == 2 and result.created > 0 and result.size == "1024x1536"
    for item in result.data:
        image = _decoded(item)
        assert (image.format, image.size) == ("PNG", (1024, 1536))
    assert await _credits(caller) == {"balance": 6, "held": 0, "available": 6}  # 2 images x 2 credits
    task = (await caller.get("/api/v1/tasks")).json()["data"][0]
    assert task["status"] == "succeeded" and task["input"]["n"] == 2 and task["input"]["aspect_ratio"] == "2:3"


async def test_url_response_format_gives_fetchable_urls(server: LiveServer, kind: str) -> None:
    caller = await server.caller()
    sdk = SDK(kind, server, caller.key)
    result = await sdk.call("images.generate", model="typeset", prompt="blue sky", response_format="url",
                            output_format="jpeg")
    assert result.data[0].b64_json is None and result.output_format == "jpeg"
    async with httpx.AsyncClient(trust_env=False) as anonymous:
        image = await anonymous.get(result.data[0].url)
    assert image.status_code == 200 and image.headers["content-type"] == "image/jpeg"


async def test_gpt_image_goes_through_the_fake_upstream(server: LiveServer, fake: FakeOpenAI, kind: str) -> None:
    caller = await server.caller(credits=30)
    sdk = SDK(kind, server, caller.key)
    result = await sdk.call("images.generate", model="gpt-image-1.5", prompt="a poster", size="1536x1024",
                            quality="low", output_format="webp", background="opaque", user="end-user-7",
                            moderation="low")
    sent = fake.requests[-1].json
    assert sent["model"] == "gpt-image-1.5" and sent["size"] == "1536x1024" and sent["quality"] == "medium"
    assert (sent["output_format"], sent["background"], sent["user"], sent["moderation"]) == (
        "webp", "opaque", "end-user-7", "low")
    assert base64.b64decode(result.data[0].b64_json) == fake.image_for("1536x1024", "webp")
    assert result.usage is not None and result.usage.total_tokens > 0
    assert await _credits(caller) == {"balance": 20, "held": 0, "available": 20}


async def test_edit_with_an_uploaded_png(server: LiveServer, kind: str) -> None:
    caller = await server.caller()
    sdk = SDK(kind, server, caller.key)
    upload = png_bytes((300, 200), (10, 200, 10))
    result = await sdk.call("images.edit", model="local-typeset", prompt="add a caption",
                            image=("photo.png", upload, "image/png"))
    assert _decoded(result.data[0]).size == (1024, 1024)
    task = (await caller.get("/api/v1/tasks")).json()["data"][0]
    files = task["input"]["input_files"]
    assert [f["role"] for f in files] == ["image"]
    stored = await server.container.storage.get(files[0]["key"])
    assert stored is not None and stored.data == upload


async def test_edit_images_and_mask_reach_the_upstream_unchanged(server: LiveServer, fake: FakeOpenAI,
                                                                 kind: str) -> None:
    caller = await server.caller()
    sdk = SDK(kind, server, caller.key)
    first, second = png_bytes(colour=(1, 2, 3)), png_bytes(colour=(4, 5, 6))
    mask = png_bytes(colour=(0, 0, 0, 0), mode="RGBA")
    result = await sdk.call("images.edit", model="gpt-image-1-5", prompt="merge them", quality="high",
                            image=[("a.png", first, "image/png"), ("b.png", second, "image/png")],
                            mask=("mask.png", mask, "image/png"), input_fidelity="high")
    assert len(result.data) == 1
    received = fake.requests[-1]
    assert received.path == "/v1/images/edits" and received.form["input_fidelity"] == "high"
    sha = [hashlib.sha256(f.data).hexdigest() for f in received.file_fields("image[]")]
    assert sha == [hashlib.sha256(first).hexdigest(), hashlib.sha256(second).hexdigest()]
    assert [f.data for f in received.file_fields("mask")] == [mask]
    assert await _credits(caller) == {"balance": 72, "held": 0, "available": 72}


async def test_list_and_retrieve_models(server: LiveServer, kind: str) -> None:
    caller = await server.caller()
    sdk = SDK(kind, server, caller.key)
    page = await sdk.call("models.list")
    ids = [m.id for m in (page.data if hasattr(page, "data") else page)]
    assert "local-typeset" in ids and "gpt-image-1.5-official" in ids
    model = await sdk.call("models.retrieve", model="gpt-image-1-5")
    assert model.id == "gpt-image-1.5-official" and model.owned_by == "apiinone"
    with pytest.raises(openai.NotFoundError):
        await sdk.call("models.retrieve", model="dall-e-9")


async def test_each_error_class(server: LiveServer, kind: str) -> None:
    caller = await server.caller(credits=100)
    sdk = SDK(kind, server, caller.key)
    generate = {"model": "local-typeset", "prompt": "hello"}

    with pytest.raises(openai.AuthenticationError) as bad_key:
        await SDK(kind, server, "aio_not_a_real_key").call("images.generate", **generate)
    assert bad_key.value.code == "invalid_api_key"

    with pytest.raises(openai.NotFoundError) as unknown:
        await sdk.call("images.generate", **{**generate, "model": "no-such-model"})
    assert unknown.value.code == "model_not_found" and unknown.value.param == "model"

    with pytest.raises(openai.BadRequestError) as bad_size:
        await sdk.call("images.generate", **generate, size="512x512")
    assert bad_size.value.param == "size" and bad_size.value.code == "invalid_value"

    with pytest.raises(openai.BadRequestError) as bad_n:
        await sdk.call("images.generate", **generate, n=11)
    assert bad_n.value.param == "n"

    broke = await server.caller(credits=0)
    with pytest.raises(openai.RateLimitError) as no_credits:
        await SDK(kind, server, broke.key).call("images.generate", **generate)
    assert no_credits.value.code == "insufficient_quota" and no_credits.value.type == "insufficient_quota"
    assert no_credits.value.response.headers["x-should-retry"] == "false"

    for who in (caller, broke):
        assert (await who.get("/api/v1/tasks")).json()["data"] == []
    assert await _credits(caller) == {"balance": 100, "held": 0, "available": 100}


async def test_unsupported_and_unknown_fields_are_400(server: LiveServer) -> None:
    caller = await server.caller()
    for body, param in [({"stream": True}, "stream"), ({"style": "vivid"}, "style"), ({"prompt": "  "}, "prompt"),
                        ({"quality": "ultra"}, "quality"), ({"n": "two"}, "n"), ({"user": 7}, "user")]:
        r = await caller.post("/v1/images/generations", json={"model": "local-typeset", "prompt": "x", **body})
        assert r.status_code == 400, (body, r.text)
        error = r.json()["error"]
        assert error["param"] == param and error["type"] == "invalid_request_error" and error["message"]
    r = await caller.post("/v1/images/generations", content=b"{nope")
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"


async def test_bad_uploads_are_400_and_leave_nothing_behind(server: LiveServer) -> None:
    caller = await server.caller()
    cases = [
        ([("image", ("a.txt", b"not an image", "text/plain"))], "image"),
        ([("image", ("a.png", b"\x89PNG\r\n\x1a\n" + b"\0" * 64, "image/png"))], "image"),
        ([("image", ("a.png", png_bytes(), "image/png")), ("mask", ("m.jpg", _jpeg(), "image/jpeg"))], "mask"),
        ([("other", ("a.png", png_bytes(), "image/png"))], "other"),
        ([], None),  # no file at all: not even multipart
    ]
    for files, param in cases:
        r = await caller.post("/v1/images/edits", data={"model": "local-typeset", "prompt": "x"}, files=files or None)
        assert r.status_code == 400, (param, r.text)
        assert r.json()["error"]["param"] == param
    assert (await caller.get("/api/v1/tasks")).json()["data"] == []
    inputs = Path(server.settings.data_dir) / "files" / "inputs"
    assert not inputs.exists() or not any(p.is_file() for p in inputs.rglob("*"))


def _jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="JPEG")
    return buf.getvalue()


async def test_upstream_moderation_is_a_bad_request_and_costs_nothing(server: LiveServer, fake: FakeOpenAI,
                                                                      kind: str) -> None:
    caller = await server.caller(credits=10)
    fake.fail_moderation()
    with pytest.raises(openai.BadRequestError) as blocked:
        await SDK(kind, server, caller.key).call("images.generate", model="gpt-image-1.5", prompt="forbidden")
    assert blocked.value.code == "moderation_blocked"
    assert blocked.value.response.headers["x-task-id"].startswith("tsk_")
    assert await _credits(caller) == {"balance": 10, "held": 0, "available": 10}


async def test_a_client_that_hangs_up_cancels_its_task(server: LiveServer) -> None:
    gated = GatedProvider()
    server.container.adapters.register("local-typeset", gated)
    caller = await server.caller(credits=10)
    request = caller.post("/v1/images/generations", json={"model": "local-typeset", "prompt": "slow"})
    pending = asyncio.create_task(request)
    await gated.started.wait()
    pending.cancel()  # closes the connection while the task is running
    with pytest.raises(asyncio.CancelledError):
        await pending
    task_id = (await caller.get("/api/v1/tasks")).json()["data"][0]["task_id"]
    done = await caller.wait_for(task_id)
    assert done["status"] == "canceled" and done["credits"]["charged"] == 0
    gated.gate.set()
    assert await _credits(caller) == {"balance": 10, "held": 0, "available": 10}


async def test_with_an_idempotency_key_a_hang_up_keeps_the_task_for_the_retry(server: LiveServer) -> None:
    gated = GatedProvider()
    server.container.adapters.register("local-typeset", gated)
    caller = await server.caller(credits=10)
    body = {"model": "local-typeset", "prompt": "slow but wanted"}
    headers = {"Idempotency-Key": "retry-me"}
    pending = asyncio.create_task(caller.post("/v1/images/generations", json=body, headers=headers))
    await gated.started.wait()
    pending.cancel()
    with pytest.raises(asyncio.CancelledError):
        await pending
    retry = asyncio.create_task(caller.post("/v1/images/generations", json=body, headers=headers))
    gated.gate.set()
    r = await retry
    assert r.status_code == 200 and r.headers["idempotent-replayed"] == "true"
    assert len(r.json()["data"]) == 1
    assert await _credits(caller) == {"balance": 9, "held": 0, "available": 9}
