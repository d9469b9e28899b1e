"""The app behind a real uvicorn server on a free loopback port, for clients that need a base URL
(the ``openai`` SDK, our client and CLI, Server-Sent Events across reconnects).

The server runs as a task in the test's own event loop, so a test can reach into the container
(accounts, providers) directly; blocking clients must run in a thread (``asyncio.to_thread``).
"""

from __future__ import annotations

import asyncio
import socket
import uuid
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from apiinone.kinds.image.job import ImageJob, ImageResult
from apiinone.upstreams.base import RouteTarget
from apiinone.upstreams.local_typeset.typeset import LocalTypesetProvider
from apiinone.web.app import container_from, create_app
from tests.conftest import Caller, make_settings


def free_loopback_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(512)
    return sock


class LiveServer:
    def __init__(self, tmp_path: Path, database_url: str, *, embedded_worker: bool = True,
                 **overrides: Any) -> None:
        self.sock = free_loopback_socket()
        self.port: int = self.sock.getsockname()[1]
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.settings = make_settings(tmp_path, database_url, public_url=self.base_url, **overrides)
        self.app = create_app(self.settings, embedded_worker=embedded_worker, migrate=False)
        self.container = container_from(self.app)
        self.client = httpx.AsyncClient(base_url=self.base_url, trust_env=False, timeout=60)
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> LiveServer:
        config = uvicorn.Config(self.app, lifespan="on", log_level="warning", access_log=False,
                                timeout_graceful_shutdown=5)
        self._server = uvicorn.Server(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[self.sock]))
        while not self._server.started:
            if self._task.done():
                self._task.result()
                raise RuntimeError("the server stopped while starting")
            await asyncio.sleep(0.01)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.client.aclose()
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            await self._task
        self.sock.close()

    async def caller(self, email: str | None = None, credits: int = 100) -> Caller:
        email = email or f"user-{uuid.uuid4().hex[:8]}@example.com"
        account = await self.container.accounts.create_user(email, "password123", credits=credits)
        created = await self.container.accounts.create_api_key(account.id, "test")
        return Caller(account_id=account.id, email=email, key=created.plaintext, client=self.client)


class GatedProvider:
    """``local-typeset`` that holds every job until the test opens the gate: a task that is
    running for exactly as long as the test needs, with no sleeps."""

    provider = "gated"
    needs_key = False

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.started = asyncio.Event()
        self._inner = LocalTypesetProvider()

    async def generate_images(self, target: RouteTarget, job: ImageJob) -> ImageResult:
        self.started.set()
        await self.gate.wait()
        return await self._inner.generate(job)

    async def aclose(self) -> None:
        self.gate.set()
        await self._inner.aclose()
