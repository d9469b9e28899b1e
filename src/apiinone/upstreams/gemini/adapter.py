"""The Gemini API as a :class:`~apiinone.kinds.chat.job.ChatAdapter`.

``base_url`` is the API origin (``https://generativelanguage.googleapis.com``, the default when a
route sets none); calls go to ``{base_url}/{version}/models/{model}:generateContent`` and
``:streamGenerateContent?alt=sse``, ``version`` being route option ``api_version`` (default
``v1beta``; a base URL that already ends in ``/v1beta`` or ``/v1`` is used as it is). The key goes
in ``x-goog-api-key``, never in the URL.

Failure classification (``error_from_response``, the one place for this protocol):

* 401 / 403 ``PERMISSION_DENIED`` / ``UNAUTHENTICATED``, and 400 with reason ``API_KEY_INVALID``
  (how Gemini answers a bad key) → key refused
* 429 ``RESOURCE_EXHAUSTED``, 500 ``INTERNAL``, 503 ``UNAVAILABLE``, 504 ``DEADLINE_EXCEEDED``,
  connection errors and timeouts → retryable
* other 4xx (400 ``INVALID_ARGUMENT`` / ``FAILED_PRECONDITION``, 404 ``NOT_FOUND``) → refused
* a prompt blocked by safety filters → :class:`ContentPolicyError` (refused)
* a stream that stops without a finish reason, or an error object inside the stream → retryable
  before the first chunk; after it, the stream ends with the error (charged as produced)
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import httpx
import orjson

from apiinone.kinds.chat.canonical import ChatTranslationError
from apiinone.kinds.chat.job import ChatChunk, ChatCompletion, ChatRequest
from apiinone.upstreams.base import (
    RouteTarget,
    UpstreamError,
    error_for_status,
    retry_after_seconds,
)
from apiinone.upstreams.gemini.translate import StreamTranslator, completion_from, generate_request
from apiinone.upstreams.http import TranslatingChatAdapter, json_object

DEFAULT_BASE_URL = "https://generativelanguage.googleapis.com"
DEFAULT_VERSION = "v1beta"
_KEY_REASONS = frozenset({"API_KEY_INVALID", "API_KEY_SERVICE_BLOCKED", "API_KEY_HTTP_REFERRER_BLOCKED"})


class GeminiAdapter(TranslatingChatAdapter):
    """The ``gemini`` provider: one client and connection pool for every route and key."""

    provider = "gemini"

    async def chat(self, target: RouteTarget, request: ChatRequest) -> ChatCompletion:
        return completion_from(await self._answer(target, request), target.upstream_model)

    async def chat_stream(self, target: RouteTarget, request: ChatRequest) -> AsyncIterator[ChatChunk]:
        translator = StreamTranslator(target.upstream_model)
        events = self._events(target, request)
        try:
            async for event in events:
                for chunk in translator.feed(json_object(event.data.encode())):
                    yield chunk
        finally:
            await events.aclose()
        for chunk in translator.end():
            yield chunk

    def _error(self, target: RouteTarget, response: httpx.Response) -> UpstreamError:
        return error_from_response(target, response)

    def _request(self, target: RouteTarget, request: ChatRequest, *, stream: bool) -> httpx.Request:
        try:
            body = generate_request(request)
        except ChatTranslationError as exc:
            raise UpstreamError(f"the request cannot be sent to Gemini: {exc.message}") from None
        headers = {"content-type": "application/json"}
        if target.api_key:
            headers["x-goog-api-key"] = target.api_key
        method = "streamGenerateContent?alt=sse" if stream else "generateContent"
        url = f"{models_url(target.base_url, target.options.get('api_version'))}/" \
              f"{quote(target.upstream_model, safe='-._')}:{method}"
        return self._client.build_request("POST", url, content=orjson.dumps(body), headers=headers,
                                          timeout=target.timeout_s)


def models_url(base_url: str, version: Any = None) -> str:
    base = (base_url or DEFAULT_BASE_URL).rstrip("/")
    if base.endswith(("/v1beta", "/v1", "/v1alpha")):
        return f"{base}/models"
    return f"{base}/{version or DEFAULT_VERSION}/models"




def error_from_response(target: RouteTarget, response: httpx.Response) -> UpstreamError:
    """Classify a non-200 answer of the Gemini API (see the module docstring)."""
    status = response.status_code
    error = _error_object(response)
    grpc_status = str(error.get("status") or "")
    message = target.redact(str(error.get("message") or "").strip()[:500]) or f"HTTP {status}"
    reasons = {str(d.get("reason")) for d in error.get("details") or [] if isinstance(d, dict)}
    if status in (401, 403) or grpc_status in ("UNAUTHENTICATED", "PERMISSION_DENIED") or reasons & _KEY_REASONS:
        return UpstreamError(f"upstream refused the API key (HTTP {status} {grpc_status})".strip(),
                             key_refused=True, status=status)
    if grpc_status in ("RESOURCE_EXHAUSTED", "UNAVAILABLE", "INTERNAL", "DEADLINE_EXCEEDED"):
        return UpstreamError(f"HTTP {status} {grpc_status}: {message}", retryable=True, status=status,
                             retry_after_s=retry_after_seconds(response.headers.get("retry-after")))
    return error_for_status(status, f"{grpc_status}: {message}" if grpc_status else message,
                            retry_after_s=retry_after_seconds(response.headers.get("retry-after")))


def _error_object(response: httpx.Response) -> dict[str, Any]:
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return {"message": response.text.strip()[:500]}
    if isinstance(body, list) and body and isinstance(body[0], dict):  # some proxies wrap it in a list
        body = body[0]
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        error: dict[str, Any] = body["error"]
        return error
    return {}
