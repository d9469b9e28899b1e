"""The ``openai`` provider: one client and connection pool for every capability of the protocol.

Each capability lives in its own module as a mixin (images, chat, speech), so the kinds that use
this protocol are added without touching each other."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import httpx

from apiinone.upstreams.http import upstream_client
from apiinone.upstreams.http1 import LeanClient
from apiinone.upstreams.openai.chat import OpenAIChat
from apiinone.upstreams.openai.images import OpenAIImages
from apiinone.upstreams.openai.speech import OpenAISpeech

if TYPE_CHECKING:
    import aiohttp


class OpenAIAdapter(OpenAIImages, OpenAIChat, OpenAISpeech):
    """OpenAI's HTTP API on any base URL (OpenAI itself, Azure-style proxies, compatible servers).

    One instance serves every route and key of the ``openai`` provider; each call gets its
    :class:`~apiinone.upstreams.base.RouteTarget`. It makes exactly one attempt per call: retries
    and failover are the route pool's."""

    provider = "openai"
    needs_key = True

    def __init__(self, *, timeout_s: float = 120.0, transport: httpx.AsyncBaseTransport | None = None,
                 max_connections: int = 200) -> None:
        self._timeout_s = timeout_s
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None
        self._session_loop: asyncio.AbstractEventLoop | None = None
        self._lean: LeanClient | None = None
        self._lean_loop: asyncio.AbstractEventLoop | None = None
        self._plain = transport is None
        """No transport injected: JSON calls may take the lean clients (``json_client``, ``json_session``)."""
        self._client = upstream_client(timeout_s=timeout_s, transport=transport, max_connections=max_connections)

    def __repr__(self) -> str:
        return "OpenAIAdapter()"

    @property
    def client(self) -> httpx.AsyncClient:
        return self._client

    def json_client(self) -> LeanClient | None:
        """The client of JSON POSTs answered whole: images, chat answers (None when a test injected
        an httpx transport). Measured with ``bench/upstream_clients.py``: 65 µs of CPU per small
        answer (aiohttp 130, httpx 1,069) and 1.4 ms per 1.6 MB one (aiohttp 2.4, httpx 7.2); one
        keep-alive pool per origin, so each route's connections stay warm. Made in the loop that
        uses it."""
        if not self._plain:
            return None
        loop = asyncio.get_running_loop()
        if self._lean is None or self._lean_loop is not loop:
            self._lean = LeanClient(max_connections=self._max_connections)
            self._lean_loop = loop
        return self._lean

    def json_session(self) -> aiohttp.ClientSession | None:
        """The aiohttp session for streamed answers (None when a test injected an httpx transport).

        aiohttp spends about a tenth of httpx's CPU per call; its connector keeps one keep-alive
        pool per host. Created on first use, in the loop that uses it. It ignores proxy variables
        and netrc (reading netrc per call cost ~2 % of the server's samples): upstream base URLs
        are the operator's own."""
        if not self._plain:
            return None
        import aiohttp  # on first use: it weighs on the idle server's memory

        loop = asyncio.get_running_loop()
        if self._session is None or self._session.closed or self._session_loop is not loop:
            connector = aiohttp.TCPConnector(limit=self._max_connections, keepalive_timeout=30, ttl_dns_cache=60)
            self._session = aiohttp.ClientSession(
                connector=connector, headers={"User-Agent": "apiinone"}, trust_env=False, auto_decompress=True,
                timeout=aiohttp.ClientTimeout(total=self._timeout_s, connect=min(self._timeout_s, 15.0)))
            self._session_loop = loop
        return self._session

    async def aclose(self) -> None:
        if self._lean is not None:
            await self._lean.aclose()
            self._lean = None
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None
        await self._client.aclose()
