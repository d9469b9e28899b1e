"""Anthropic's Messages API as a :class:`~apiinone.kinds.chat.job.ChatAdapter`.

``base_url`` is the API origin without ``/v1``, as in Anthropic's SDKs
(``https://api.anthropic.com``, the default when a route sets none); a base URL that already ends
in ``/v1`` is accepted as it is. Calls ``POST {base_url}/v1/messages`` with ``x-api-key`` and
``anthropic-version`` (route option ``anthropic_version``, default 2023-06-01; option
``anthropic_beta`` is sent as ``anthropic-beta``).

Failure classification (``error_from_response``, the one place for this protocol):

* 401 / 403 (``authentication_error``, ``permission_error``) → key refused; the upstream message is
  not echoed
* 400 whose message says the credit balance is too low → that key's account has no money: key refused
* 429 ``rate_limit_error``, 500 ``api_error``, 529 ``overloaded_error``, other 5xx, 408/409,
  connection errors and timeouts → retryable (``retry-after`` passed on; ``x-should-retry`` obeyed)
* other 4xx (``invalid_request_error``, ``not_found_error``, ``request_too_large``) → refused
* an ``error`` event inside a stream → retryable when overloaded / api / rate limit; after the
  first chunk it ends the stream (the caller charges what was produced)
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson

from apiinone.kinds.chat.canonical import ChatTranslationError
from apiinone.kinds.chat.job import ChatChunk, ChatCompletion, ChatRequest
from apiinone.upstreams.anthropic.translate import (
    StreamTranslator,
    completion_from,
    messages_request,
    parse_event_data,
)
from apiinone.upstreams.base import (
    RouteTarget,
    UpstreamError,
    error_for_status,
    retry_after_seconds,
)
from apiinone.upstreams.http import TranslatingChatAdapter

DEFAULT_BASE_URL = "https://api.anthropic.com"
DEFAULT_VERSION = "2023-06-01"


class AnthropicAdapter(TranslatingChatAdapter):
    """The ``anthropic`` provider: one client and connection pool for every route and key."""

    provider = "anthropic"

    async def chat(self, target: RouteTarget, request: ChatRequest) -> ChatCompletion:
        return completion_from(await self._answer(target, request))

    async def chat_stream(self, target: RouteTarget, request: ChatRequest) -> AsyncIterator[ChatChunk]:
        translator = StreamTranslator(target.upstream_model)
        events = self._events(target, request)
        try:
            async for event in events:
                for chunk in translator.feed(event.event, parse_event_data(event.data)):
                    yield chunk
                if translator.finished:
                    return
        finally:
            await events.aclose()
        raise UpstreamError("upstream stream ended before message_stop", retryable=True)

    def _error(self, target: RouteTarget, response: httpx.Response) -> UpstreamError:
        return error_from_response(target, response)

    def _request(self, target: RouteTarget, request: ChatRequest, *, stream: bool) -> httpx.Request:
        try:
            body = messages_request(request, target.upstream_model, stream=stream)
        except ChatTranslationError as exc:
            raise UpstreamError(f"the request cannot be sent to Anthropic: {exc.message}") from None
        headers = {"content-type": "application/json",
                   "anthropic-version": str(target.options.get("anthropic_version") or DEFAULT_VERSION)}
        if target.api_key:
            headers["x-api-key"] = target.api_key
        if target.options.get("anthropic_beta"):
            headers["anthropic-beta"] = str(target.options["anthropic_beta"])
        if stream:
            headers["accept"] = "text/event-stream"
        return self._client.build_request("POST", messages_url(target.base_url), content=orjson.dumps(body),
                                          headers=headers, timeout=target.timeout_s)


def messages_url(base_url: str) -> str:
    base = (base_url or DEFAULT_BASE_URL).rstrip("/")
    return f"{base}/messages" if base.endswith("/v1") else f"{base}/v1/messages"


def error_from_response(target: RouteTarget, response: httpx.Response) -> UpstreamError:
    """Classify a non-200 answer of the Messages API (see the module docstring)."""
    status = response.status_code
    error = _error_object(response)
    error_type = str(error.get("type") or "")
    message = target.redact(str(error.get("message") or "").strip()[:500]) or f"HTTP {status}"
    if status in (401, 403):
        return error_for_status(status, message)
    if status == 400 and "credit balance" in message.lower():
        return UpstreamError(f"upstream rejected the request: {message}", status=status, key_refused=True)
    if error_type == "overloaded_error":
        return UpstreamError(f"HTTP {status}: {message}", retryable=True, status=status,
                             retry_after_s=retry_after_seconds(response.headers.get("retry-after")))
    return error_for_status(status, f"{error_type}: {message}" if error_type else message,
                            retry_after_s=retry_after_seconds(response.headers.get("retry-after")),
                            should_retry=response.headers.get("x-should-retry"))


def _error_object(response: httpx.Response) -> dict[str, Any]:
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return {"message": response.text.strip()[:500]}
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        error: dict[str, Any] = body["error"]
        return error
    return {}
