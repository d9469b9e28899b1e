"""``apiinone.client`` (sync and async) and ``apiinone generate`` against a real server, including
retries through a loopback proxy that breaks connections on purpose."""

from __future__ import annotations

import asyncio
import io
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from PIL import Image

from apiinone.client import (
    AsyncClient,
    AuthenticationError,
    BadRequestError,
    Client,
    InsufficientCreditsError,
    NotFoundError,
    TaskEvent,
    TaskFailedError,
    WaitTimeoutError,
)
from apiinone.kinds.image.job import ImageJob, ImageResult
from apiinone.upstreams.base import ContentPolicyError, RouteTarget
from tests.conftest import Caller
from tests.integration.live_server import GatedProvider, LiveServer

PROMPT = 'A modern logo design for a coffee shop called "Bean & Brew" with clean typography'
PATIENCE_S = 60.0  # a safety net for a broken build, never a measurement


class FlakyProxy:
    """A loopback TCP proxy in front of the server that breaks its first ``break_first``
    connections: once the server has answered (so the request was fully handled), the client's
    side is reset — after relaying the answer up to ``cut_after`` if given, else relaying nothing."""

    def __init__(self, upstream_port: int, *, break_first: int = 1, cut_after: bytes | None = None) -> None:
        self.upstream_port = upstream_port
        self.break_first = break_first
        self.cut_after = cut_after
        self.connections = 0
        self.requests: list[bytes] = []  # the first bytes each connection sent
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def __aenter__(self) -> FlakyProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        breaking = self.connections < self.break_first
        self.connections += 1
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        first = True

        async def upstream() -> None:
            nonlocal first
            while data := await reader.read(65536):
                if first:
                    self.requests.append(data)
                    first = False
                up_writer.write(data)
                await up_writer.drain()

        async def downstream() -> None:
            seen = b""
            while data := await up_reader.read(65536):
                if breaking:
                    seen += data
                    if self.cut_after is None or self.cut_after in seen:
                        if self.cut_after is not None:
                            writer.write(data)
                            await writer.drain()
                        writer.transport.abort()
                        return
                writer.write(data)
                await writer.drain()

        pumps = [asyncio.create_task(upstream()), asyncio.create_task(downstream())]
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pump in pumps:
                pump.cancel()
            up_writer.close()
            writer.close()


class RefusingProvider:
    provider = "refusing"
    needs_key = False

    async def generate_images(self, target: RouteTarget, job: ImageJob) -> ImageResult:
        raise ContentPolicyError("the prompt was refused")

    async def aclose(self) -> None:
        return None


@pytest.fixture
async def live(tmp_path: Path, sqlite_url: str) -> AsyncIterator[LiveServer]:
    async with LiveServer(tmp_path, sqlite_url) as server:
        yield server


async def _tasks_and_holds(caller: Caller) -> tuple[int, int]:
    tasks = (await caller.get("/api/v1/tasks")).json()["data"]
    ledger = (await caller.get("/api/v1/account/ledger")).json()["data"]
    return len(tasks), sum(e["kind"] == "hold" for e in ledger)


def _image(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data))


async def test_sync_client_generates_waits_live_and_downloads(live: LiveServer) -> None:
    caller = await live.caller(credits=10)
    events: list[TaskEvent] = []

    def use_client() -> bytes:
        with Client(live.base_url, caller.key) as client:
            task = client.images.generate(PROMPT, model="local-typeset", aspect_ratio="2:3", quality="high")
            assert task.status == "queued" and task.price == 2
            done = task.wait(timeout=PATIENCE_S, on_event=events.append)
            assert done.status == "succeeded" and done.charged == 2
            assert (done.images[0].width, done.images[0].height) == (1024, 1536)
            return done.download()

    data = await asyncio.to_thread(use_client)
    assert _image(data).size == (1024, 1536)
    assert [e.event for e in events] == ["queued", "running", "succeeded"]
    assert [e.id for e in events] == ["1", "2", "3"]  # from the event stream, not inferred by polling



async def test_async_client_generates_and_waits(live: LiveServer, tmp_path: Path) -> None:
    caller = await live.caller(credits=10)
    async with AsyncClient(live.base_url, caller.key) as client:
        task = await client.images.generate(PROMPT, model="typeset")
        done = await task.wait(timeout=PATIENCE_S)
        saved = await done.save(tmp_path / "out.png")
        assert _image(saved.read_bytes()).size == (1024, 1024)
        assert [t.task_id for t in (await client.tasks.list()).data] == [task.task_id]
        assert any(m["id"] == "local-typeset" for m in await client.models.list())
        quick = await client.images.generate(PROMPT, model="typeset", wait=30)
        assert quick.status == "succeeded"


async def test_polling_fallback_without_the_event_stream(live: LiveServer) -> None:
    caller = await live.caller()
    seen: list[TaskEvent] = []

    def use_client() -> str:
        with Client(live.base_url, caller.key, use_sse=False) as client:
            task = client.images.generate(PROMPT, model="local-typeset")
            return task.wait(timeout=PATIENCE_S, on_event=seen.append).status

    assert await asyncio.to_thread(use_client) == "succeeded"
    assert seen[-1].event == "succeeded" and seen[-1].data["output"]["images"]
    assert all(e.id is None for e in seen)  # inferred by polling


async def test_errors_are_typed(live: LiveServer) -> None:
    caller = await live.caller(credits=1)
    async with AsyncClient(live.base_url, "aio_wrong") as stranger:
        with pytest.raises(AuthenticationError):
            await stranger.images.generate(PROMPT, model="local-typeset")
    async with AsyncClient(live.base_url, caller.key) as client:
        with pytest.raises(NotFoundError) as unknown:
            await client.images.generate(PROMPT, model="no-such-model")
        assert unknown.value.code == "model_not_found"
        with pytest.raises(BadRequestError) as bad:
            await client.images.generate(PROMPT, model="local-typeset", aspect_ratio="4:3")
        assert bad.value.param == "aspect_ratio"
        with pytest.raises(InsufficientCreditsError):
            await client.images.generate(PROMPT, model="local-typeset", quality="high")
        with pytest.raises(NotFoundError):
            await client.tasks.wait("tsk_00000000000000000000000000")


async def test_a_failed_task_raises_with_the_task(live: LiveServer) -> None:
    live.container.adapters.register("local-typeset", RefusingProvider())
    caller = await live.caller()
    async with AsyncClient(live.base_url, caller.key) as client:
        task = await client.images.generate(PROMPT, model="local-typeset")
        with pytest.raises(TaskFailedError) as failed:
            await task.wait(timeout=PATIENCE_S)
        assert failed.value.task.error == {"code": "content_policy", "message": "the prompt was refused"}
        assert (await task.wait(timeout=PATIENCE_S, raise_on_failure=False)).status == "failed"


async def test_wait_timeout_hands_back_the_running_task(live: LiveServer) -> None:
    gated = GatedProvider()
    live.container.adapters.register("local-typeset", gated)
    caller = await live.caller()
    async with AsyncClient(live.base_url, caller.key) as client:
        task = await client.images.generate(PROMPT, model="local-typeset")
        await gated.started.wait()
        with pytest.raises(WaitTimeoutError) as timed_out:
            await task.wait(timeout=0.5)
        assert timed_out.value.task.status == "running"
        gated.gate.set()
        assert (await task.wait(timeout=PATIENCE_S)).status == "succeeded"


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_a_create_whose_answer_was_lost_is_retried_once_and_charged_once(live: LiveServer, kind: str) -> None:
    caller = await live.caller(credits=10)
    async with FlakyProxy(live.port, break_first=1) as proxy:
        if kind == "sync":
            def create() -> str:
                with Client(proxy.url, caller.key, backoff=0.05) as client:
                    return client.images.generate(PROMPT, model="local-typeset").task_id

            task_id = await asyncio.to_thread(create)
        else:
            async with AsyncClient(proxy.url, caller.key, backoff=0.05) as client:
                task_id = (await client.images.generate(PROMPT, model="local-typeset")).task_id
    assert proxy.connections >= 2
    keys = [line for r in proxy.requests for line in r.split(b"\r\n") if line.lower().startswith(b"idempotency-key")]
    assert len(keys) == 2 and keys[0] == keys[1]  # the retry carried the first attempt's key
    assert await _tasks_and_holds(caller) == (1, 1)
    assert (await caller.wait_for(task_id))["status"] == "succeeded"


async def test_the_event_stream_resumes_after_a_cut(live: LiveServer) -> None:
    gated = GatedProvider()
    live.container.adapters.register("local-typeset", gated)
    caller = await live.caller()
    task_id = (await caller.post("/api/v1/images/generations",
                                 json={"model": "local-typeset", "prompt": PROMPT})).json()["task_id"]
    seen: list[str] = []
    async with FlakyProxy(live.port, break_first=1, cut_after=b"event: queued") as proxy:
        async with AsyncClient(proxy.url, caller.key, backoff=0.05) as client:
            async with asyncio.timeout(PATIENCE_S):
                async for event in client.tasks.events(task_id):
                    seen.append(event.event)
                    if event.event == "running":
                        gated.gate.set()
    assert seen == ["queued", "running", "succeeded"]
    assert proxy.connections == 2 and b"last-event-id: " in proxy.requests[1].lower()


async def _run_cli(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "apiinone.cli", "generate", *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    async with asyncio.timeout(120):
        out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def _cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("APIINONE_", "OPENAI_"))}
    return {**env, **extra}


async def test_cli_generates_through_a_flaky_connection(live: LiveServer, tmp_path: Path) -> None:
    caller = await live.caller(credits=10)
    target = tmp_path / "out.png"
    async with FlakyProxy(live.port, break_first=1) as proxy:
        code, out, err = await _run_cli(PROMPT, "--model", "typeset", "--aspect", "2:3", "--quality", "high",
                                        "-o", str(target), "--base-url", proxy.url,
                                        env=_cli_env(APIINONE_API_KEY=caller.key))
    assert code == 0, err
    assert out.strip() == str(target)
    assert _image(target.read_bytes()).size == (1024, 1536)
    assert await _tasks_and_holds(caller) == (1, 1)
    assert (await caller.get("/api/v1/account")).json()["credits"]["balance"] == 8


async def test_cli_explains_a_missing_key_and_a_failure(live: LiveServer) -> None:
    code, _out, err = await _run_cli(PROMPT, "--base-url", live.base_url, env=_cli_env())
    assert code == 2 and "APIINONE_API_KEY" in err
    caller = await live.caller()
    code, _out, err = await _run_cli(PROMPT, "--model", "gpt-image-1-5",
                                     env=_cli_env(APIINONE_API_KEY=caller.key, APIINONE_BASE_URL=live.base_url))
    assert code == 1 and "model_unavailable" in err
