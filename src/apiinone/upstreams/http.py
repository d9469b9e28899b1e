"""What every HTTP adapter shares: its pooled client, and the classification of failures that are
the same for every vendor (no answer, no connection, a body that is not a JSON object)."""

from __future__ import annotations

from typing import Any

import httpx
import orjson

from apiinone.upstreams.base import RouteTarget, UpstreamError, UpstreamTimeoutError


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
