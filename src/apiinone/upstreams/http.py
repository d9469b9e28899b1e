"""What every HTTP adapter shares: its pooled client, and the classification of failures that are
the same for every vendor (no answer, no connection, a body that is not a JSON object)."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING, Any

import httpx
import orjson

from apiinone.upstreams.base import RouteTarget, UpstreamError, UpstreamTimeoutError
from apiinone.upstreams.sse import ServerSentEvent, read_events

if TYPE_CHECKING:
    from apiinone.kinds.chat.job import ChatRequest


def upstream_client(*, timeout_s: float = 120.0, transport: httpx.AsyncBaseTransport | None = None,
                    max_connections: int = 200) -> httpx.AsyncClient:
    """One pooled client per adapter, shared by every route and key of its protocol; keys go in
    per request. No redirects (a key must not follow one), no proxy settings from the environment."""
    limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
    return httpx.AsyncClient(
        transport=transport or httpx.AsyncHTTPTransport(limits=limits, http1=True, http2=False),
        timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 15.0)),
        headers={"User-Agent": "apiinone"}, follow_redirects=False, trust_env=False)


def transport_error(target: RouteTarget, exc: Exception) -> UpstreamError:
    """No answer in time, or no connection: retryable on every protocol (the key is redacted)."""
    if isinstance(exc, httpx.TimeoutException | TimeoutError):
        return UpstreamTimeoutError(f"no answer within {target.timeout_s:g} s ({type(exc).__name__})")
    return UpstreamError(target.redact(f"could not reach upstream ({type(exc).__name__}: {exc})"), retryable=True)


def json_object(content: bytes) -> dict[str, Any]:
    """A 200 answer's body, which must be a JSON object; anything else is worth trying elsewhere."""
    try:
        payload = orjson.loads(content)
    except orjson.JSONDecodeError:
        raise UpstreamError("upstream returned a body that is not JSON", retryable=True) from None
    if not isinstance(payload, dict):
        raise UpstreamError("upstream returned an unexpected JSON body", retryable=True)
    return payload


class TranslatingChatAdapter:
    """What the chat adapters of other protocols (Anthropic, Gemini) share: one pooled client per
    provider, one attempt per call (retries and failover are the route pool's), a whole answer's
    JSON and a stream's server-sent events, with failures classified by the protocol's
    ``_error``. Each protocol builds its own request (``_request``) and translates what comes back."""

    provider: str
    needs_key = True

    def __init__(self, *, timeout_s: float = 120.0, transport: httpx.AsyncBaseTransport | None = None,
                 max_connections: int = 200) -> None:
        self._client = upstream_client(timeout_s=timeout_s, transport=transport, max_connections=max_connections)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    async def aclose(self) -> None:
        await self._client.aclose()

    def _request(self, target: RouteTarget, request: ChatRequest, *, stream: bool) -> httpx.Request:
        raise NotImplementedError

    def _error(self, target: RouteTarget, response: httpx.Response) -> UpstreamError:
        raise NotImplementedError

    async def _answer(self, target: RouteTarget, request: ChatRequest) -> dict[str, Any]:
        try:
            response = await self._client.send(self._request(target, request, stream=False))
        except httpx.HTTPError as exc:
            raise transport_error(target, exc) from None
        if response.status_code != 200:
            raise self._error(target, response)
        return json_object(response.content)

    async def _events(self, target: RouteTarget, request: ChatRequest) -> AsyncGenerator[ServerSentEvent, None]:
        """The stream's events; the upstream call ends when the caller stops reading (aclose)."""
        try:
            response = await self._client.send(self._request(target, request, stream=True), stream=True)
        except httpx.HTTPError as exc:
            raise transport_error(target, exc) from None
        try:
            if response.status_code != 200:
                await response.aread()
                raise self._error(target, response)
            try:
                async for event in read_events(response.aiter_lines()):
                    yield event
            except httpx.HTTPError as exc:
                raise transport_error(target, exc) from None
        finally:
            await response.aclose()
