"""Anthropic's Messages API: ``POST /v1/messages``, so the official ``anthropic`` SDK and tools
built on it work with ``base_url`` pointed at us, for any chat model of the catalog.

The request is translated to the canonical chat request (:mod:`apiinone.web.compat.anthropic_messages`)
and served by the same direct-call service as ``/v1/chat/completions``: the same key, hold,
failover before the first byte, settlement to the upstream's usage, request log. The key comes in
``x-api-key`` (as the SDK sends it) or ``Authorization: Bearer``.

Errors use Anthropic's envelope ``{"type": "error", "error": {"type", "message"}}`` at the status
the SDK maps to its exception: 400 ``invalid_request_error`` (also out of credits: "Your credit
balance is too low ..."), 401 ``authentication_error``, 403 ``permission_error``, 404
``not_found_error``, 413 ``request_too_large``, 429 ``rate_limit_error``, 529 ``overloaded_error``
(no healthy upstream; ``x-should-retry: false``), 5xx ``api_error``. A stream that breaks after it
began ends with an ``error`` event and is charged for what it produced.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson
import structlog
from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from apiinone.domain.accounts import Account, ApiKey
from apiinone.errors import (
    ApiError,
    Forbidden,
    InsufficientCredits,
    InternalError,
    ModelNotFound,
    ModelUnavailable,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    Unauthorized,
    UpstreamFailed,
)
from apiinone.kinds.chat import estimate_input_tokens
from apiinone.kinds.chat.job import ChatCompletion
from apiinone.services.direct_chat import ChatStream, resolve_model
from apiinone.upstreams.base import UpstreamError
from apiinone.web.compat.anthropic_messages import (
    CREDIT_BALANCE_TOO_LOW,
    MessagesRequestError,
    MessagesStreamEncoder,
    chat_body_from_messages,
    error_body,
    message_from_completion,
)
from apiinone.web.deps import container_of
from apiinone.web.dispatch import EnvelopeRoute
from apiinone.web.responses import JsonResponse
from apiinone.web.routes.chat import ChatAnswerResponse, ChatStreamResponse, _until_disconnect, chat_service
from apiinone.web.schemas import read_json_body

log = structlog.get_logger(__name__)

ROUTE_PATH = "/v1/messages"

_DOC: dict[str, Any] = {
    "requestBody": {"required": True, "content": {"application/json": {"schema": {
        "type": "object", "required": ["model", "messages", "max_tokens"],
        "description": "Anthropic's Messages request (model, messages, max_tokens, system, tools, tool_choice, "
                       "stop_sequences, temperature, top_p, stream, metadata), for any chat model",
    }}}},
    "responses": {"200": {"description": "A message object, or with stream: true Anthropic's stream events "
                                         "(message_start ... message_stop)"}},
}


def anthropic_error(status: int, error_type: str, message: str, headers: dict[str, str] | None = None) -> JsonResponse:
    return JsonResponse(error_body(error_type, message), status_code=status, headers=headers)


def anthropic_error_for(exc: ApiError) -> JsonResponse:
    """Our error tree in Anthropic's envelope and statuses."""
    if isinstance(exc, InsufficientCredits):
        return anthropic_error(400, "invalid_request_error", CREDIT_BALANCE_TOO_LOW, {"x-should-retry": "false"})
    if isinstance(exc, Unauthorized):
        return anthropic_error(401, "authentication_error", exc.message)
    if isinstance(exc, Forbidden):
        return anthropic_error(403, "permission_error", exc.message)
    if isinstance(exc, (ModelNotFound, NotFound)):
        return anthropic_error(404, "not_found_error", exc.message)
    if isinstance(exc, PayloadTooLarge):
        return anthropic_error(413, "request_too_large", exc.message)
    if isinstance(exc, RateLimited):
        return anthropic_error(429, "rate_limit_error", exc.message, {"retry-after": str(exc.retry_after)})
    if isinstance(exc, ModelUnavailable) or (isinstance(exc, UpstreamFailed) and exc.code == "model_unavailable"):
        return anthropic_error(529, "overloaded_error", exc.message, {"x-should-retry": "false"})
    if exc.status < 500:
        return anthropic_error(400, "invalid_request_error", exc.message)
    return anthropic_error(exc.status, "api_error", exc.message)


class AnthropicErrorsRoute(EnvelopeRoute):
    """Answers every error of these routes in Anthropic's envelope, whatever raised it."""

    async def error_response(self, request: Request, exc: Exception) -> Response:
        if isinstance(exc, MessagesRequestError):
            return anthropic_error(400, "invalid_request_error", exc.message)
        if isinstance(exc, ApiError):
            return anthropic_error_for(exc)
        log.exception("unhandled_error", path=request.url.path)
        return anthropic_error_for(InternalError())


router = APIRouter(prefix="/v1", route_class=AnthropicErrorsRoute, tags=["Anthropic-compatible"])


async def authenticate_messages(request: Request) -> tuple[ApiKey, Account]:
    """The key from ``x-api-key`` (Anthropic's SDK) or ``Authorization: Bearer``."""
    container = container_of(request)
    x_api_key = request.headers.get("x-api-key")
    header = f"Bearer {x_api_key.strip()}" if x_api_key else request.headers.get("authorization")
    key, account = await container.keys.authenticate(header)
    if container.keys.due_for_touch(key.id):
        request.state.touch_key = key.id
    return key, account


def _parse(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise MessagesRequestError("There was an issue with the request body: it is not valid JSON") from None


@router.post("/messages", summary="Messages (Anthropic shape; JSON or SSE), for any chat model", openapi_extra=_DOC)
async def create_message(request: Request) -> Response:
    key, account = await authenticate_messages(request)
    container = container_of(request)
    await container.rate_limits.check(key, account)
    inbound = chat_body_from_messages(_parse(await read_json_body(request)))
    service = chat_service(request)
    opened = await service.open(account, key, inbound.body, ROUTE_PATH)
    if opened.stream:
        stream = await _until_disconnect(request, service.start_stream(opened), service, opened)
        if stream is None:
            return Response(status_code=499)
        encoder = MessagesStreamEncoder(inbound.model, opened.call.input_estimate)
        return ChatStreamResponse(stream, message_events(stream, encoder))
    answer = await _until_disconnect(request, service.complete(opened), service, opened)
    if answer is None:
        return Response(status_code=499)
    message = message_from_completion(answer.body, answer.usage, inbound.model)
    return ChatAnswerResponse(service, opened, ChatCompletion(body=message, usage=answer.usage))


@router.post("/messages/count_tokens", summary="Count a Messages request's input tokens (an estimate, free)",
             openapi_extra=_DOC)
async def count_message_tokens(request: Request) -> Response:
    """``{"input_tokens": N}``: the estimate a call's credit hold is computed with (⌈UTF-8 bytes of
    the canonical messages and tools / 4⌉). Nothing is sent upstream or charged."""
    key, account = await authenticate_messages(request)
    container = container_of(request)
    await container.rate_limits.check(key, account)
    body = _parse(await read_json_body(request))
    if isinstance(body, dict):
        body = {k: v for k, v in body.items() if k not in ("max_tokens", "stream")} | {"max_tokens": 1}
    inbound = chat_body_from_messages(body)
    resolve_model(container.catalog_source(), container.kinds, container.pool, inbound.model, key)
    return JsonResponse({"input_tokens": estimate_input_tokens(inbound.body)})


async def message_events(stream: ChatStream, encoder: MessagesStreamEncoder) -> AsyncIterator[bytes]:
    """The stream as Anthropic's events; settled before the closing events (or the ``error`` event)
    are sent, so a client that reads its balance right after sees the charge."""
    try:
        async for chunk in stream.chunks():
            for frame in encoder.feed(chunk):
                yield frame
    except UpstreamError as exc:
        await asyncio.shield(stream.finish(client_gone=False))
        error_type = "overloaded_error" if exc.retryable else "api_error"
        for frame in encoder.error(error_type, f"the upstream stream broke: {exc.message}"):
            yield frame
        return
    await asyncio.shield(stream.finish(client_gone=False))
    charged_usage = stream.usage or stream.opened.call.produced_usage(stream.output_bytes)
    for frame in encoder.end(charged_usage):
        yield frame
