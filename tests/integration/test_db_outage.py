"""A database outage (PostgreSQL behind a loopback TCP proxy that the test cuts) is a 503 on
``/api/v1`` and on the OpenAI-compatible ``/v1`` routes alike, in each one's error shape."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.conftest import AppHarness, make_settings

pytestmark = pytest.mark.postgres


class TcpProxy:
    """Forwards 127.0.0.1:<port> to PostgreSQL until ``cut()``: then every connection is dropped and
    new ones are refused, as when the database host goes away."""

    def __init__(self, target_port: int = 5432) -> None:
        self.target_port = target_port
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self.writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            with contextlib.suppress(Exception):
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def cut(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in list(self.writers):
            writer.transport.abort()
        self.writers.clear()
        await self.server.wait_closed()


@pytest.fixture
async def proxied(tmp_path: Path, pg_url: str) -> AsyncIterator[tuple[AppHarness, TcpProxy]]:
    proxy = TcpProxy()
    port = await proxy.start()
    url = pg_url.replace("127.0.0.1:5432", f"127.0.0.1:{port}")
    async with AppHarness(make_settings(tmp_path, url, db_pool_size=2), embedded_worker=False) as h:
        yield h, proxy


async def test_v1_and_api_v1_answer_503_during_a_database_outage(proxied: tuple[AppHarness, TcpProxy]) -> None:
    h, proxy = proxied
    caller = await h.caller()
    assert (await caller.get("/v1/models")).status_code == 200
    await proxy.cut()
    unknown = {"Authorization": "Bearer aio_" + "x" * 43}  # not in the key cache: the database is asked
    api = await h.client.get("/api/v1/account", headers=unknown)
    assert api.status_code == 503, api.text
    assert api.json()["error"]["code"] == "service_unavailable"
    for method, path, body in (("GET", "/v1/models", None),
                               ("POST", "/v1/images/generations", {"model": "local-typeset", "prompt": "x"})):
        r = await h.client.request(method, path, headers=unknown, json=body)
        assert r.status_code == 503, (path, r.text)
        error = r.json()["error"]
        assert error["type"] == "server_error" and error["code"] == "service_unavailable", error
        assert set(error) == {"message", "type", "param", "code"}
