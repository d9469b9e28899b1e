"""The ``openai`` provider: one client and connection pool for every capability of the protocol.

Each capability lives in its own module as a mixin (images, chat, speech), so the kinds that use
this protocol are added without touching each other."""

from __future__ import annotations

import httpx

from apiinone.upstreams.openai.chat import OpenAIChat
from apiinone.upstreams.openai.images import OpenAIImages
from apiinone.upstreams.openai.speech import OpenAISpeech


class OpenAIAdapter(OpenAIImages, OpenAIChat, OpenAISpeech):
    """OpenAI's HTTP API on any base URL (OpenAI itself, Azure-style proxies, compatible servers).

    One instance serves every route and key of the ``openai`` provider; each call gets its
    :class:`~apiinone.upstreams.base.RouteTarget`. It makes exactly one attempt per call: retries
    and failover are the route pool's."""

    provider = "openai"
    needs_key = True

    def __init__(self, *, timeout_s: float = 120.0, transport: httpx.AsyncBaseTransport | None = None,
                 max_connections: int = 200) -> None:
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        self._client = httpx.AsyncClient(
            transport=transport or httpx.AsyncHTTPTransport(limits=limits, http1=True, http2=False),
            timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 15.0)),
            headers={"User-Agent": "apiinone"},
            follow_redirects=False,
        )

    def __repr__(self) -> str:
        return "OpenAIAdapter()"

    @property
    def client(self) -> httpx.AsyncClient:
        return self._client

    async def aclose(self) -> None:
        await self._client.aclose()
