"""Chat Completions: ``POST /v1/chat/completions`` (OpenAI's shapes and errors, for the official SDKs)
and ``POST /api/v1/chat/completions`` (the same body, this contract's error shape).

The answer is written by small ASGI responses that also watch the connection: a client that goes
away while the upstream is still answering stops the upstream call; a non-streamed answer is
charged only once it has been written to a client that is still there; a stream is charged for
what it produced (see :mod:`apiinone.services.direct_chat`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import orjson
import structlog
from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from apiinone.domain.accounts import Account, ApiKey
from apiinone.errors import ApiError
from apiinone.kinds.chat import ChatRequestError
from apiinone.kinds.chat.job import ChatCompletion
from apiinone.services.direct_chat import ChatStream, DirectChat, OpenedChat
from apiinone.web.deps import authenticate, container_of
from apiinone.web.routes.openai_compat import OpenAIErrorsRoute, openai_error, openai_error_for
from apiinone.web.schemas import read_json_body

log = structlog.get_logger(__name__)

_CREATE_DOC: dict[str, Any] = {
    "requestBody": {"required": True, "content": {"application/json": {"schema": {
        "type": "object", "required": ["model", "messages"],
        "description": "OpenAI's Chat Completions request; see GET /api/v1/models/{id} for a model's schema",
    }}}},
    "responses": {"200": {"description": "A chat.completion object, or with stream: true Server-Sent Events "
                                         "of chat.completion.chunk objects ending with data: [DONE]"}},
}


def chat_service(request: Request) -> DirectChat:
    state = request.app.state
    service: DirectChat | None = getattr(state, "direct_chat", None)
    if service is None:
        container = container_of(request)
        service = state.direct_chat = DirectChat(container.catalog_source, container.kinds, container.pool,
                                                 container.metering)
    return service


def _openai_error(exc: ApiError) -> Response:
    if isinstance(exc, ChatRequestError):
        return openai_error(400, exc.message, type_="invalid_request_error", code=exc.openai_code, param=exc.param)
    return openai_error_for(exc)


class _ChatErrorsRoute(OpenAIErrorsRoute):
    """OpenAI's envelope, with the chat validator's own OpenAI codes."""

    async def error_response(self, request: Request, exc: Exception) -> Response:
        if isinstance(exc, ApiError):
            return _openai_error(exc)
        return await super().error_response(request, exc)


openai_router = APIRouter(prefix="/v1", route_class=_ChatErrorsRoute, tags=["OpenAI-compatible"])
router = APIRouter(prefix="/api/v1", tags=["Chat"])
console_router = APIRouter(prefix="/console/api", include_in_schema=False)


def _parse(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ChatRequestError("We could not parse the JSON body of your request.", param=None,
                               openai_code="invalid_json") from None


async def answer_chat(request: Request, key: ApiKey | None, account: Account, route_path: str, *,
                      receipt: bool = False) -> Response:
    """The shared body of every chat route (also the console's playground)."""
    container = container_of(request)
    await container.rate_limits.check(key, account)
    body = _parse(await read_json_body(request))
    service = chat_service(request)
    opened = await service.open(account, key, body, route_path, receipt=receipt)
    if opened.stream:
        stream = await _until_disconnect(request, service.start_stream(opened), service, opened)
        if stream is None:
            return Response(status_code=499)
        return ChatStreamResponse(stream)
    answer = await _until_disconnect(request, service.complete(opened), service, opened)
    if answer is None:
        return Response(status_code=499)
    return ChatAnswerResponse(service, opened, answer)


async def _until_disconnect(request: Request, work: Any, service: DirectChat, opened: OpenedChat) -> Any:
    """Run ``work`` (the upstream call) unless the client hangs up first: then it is canceled (the
    upstream call ends and the hold is released) and None returned."""
    job = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({job, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if job.done():
        return job.result()
    job.cancel()
    try:
        value = await job
    except (asyncio.CancelledError, ApiError):
        value = None  # canceled: the service released the hold
    if isinstance(value, ChatStream):  # it finished in the same instant: nobody is there to read it
        await value.finish(client_gone=True)
    elif isinstance(value, ChatCompletion):
        await service.deliver(opened, value, delivered=False)
    log.info("chat_client_gone_before_answer", model=opened.spec.id)
    return None


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


class ChatAnswerResponse(Response):
    """A whole ``chat.completion``. It is charged just before it is written, and only if the client
    is still connected then (a client gone by then is not charged); so a client that reads its
    balance right after the answer sees the charge."""

    def __init__(self, service: DirectChat, opened: OpenedChat, answer: ChatCompletion) -> None:
        super().__init__(content=orjson.dumps(answer.body), media_type="application/json")
        self.service, self.opened, self.answer = service, opened, answer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        gone = asyncio.Event()

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            gone.set()

        watcher = asyncio.ensure_future(watch())
        try:
            await asyncio.sleep(0)  # let the watcher see a disconnect that already happened
            delivering = not gone.is_set()
            await asyncio.shield(self.service.deliver(self.opened, self.answer, delivering))
            if delivering:
                await super().__call__(scope, _never, send)
        finally:
            watcher.cancel()


async def _never() -> Any:
    await asyncio.Event().wait()


class ChatStreamResponse(Response):
    """Server-Sent Events from the upstream's chunks. A client that hangs up stops the upstream
    call; the stream is settled exactly once, when it ends, whichever way it ends. ``frames`` are
    the stream's events in another protocol's shape (default: OpenAI's, ``stream.frames()``)."""

    def __init__(self, stream: ChatStream, frames: AsyncIterator[bytes] | None = None) -> None:
        super().__init__(media_type="text/event-stream")
        self.stream = stream
        self.frames = frames if frames is not None else stream.frames()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        gone = asyncio.Event()

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            gone.set()

        async def pump() -> None:
            await send({"type": "http.response.start", "status": 200, "headers": [
                (b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache"),
                (b"x-accel-buffering", b"no")]})
            async for frame in self.frames:
                if gone.is_set():
                    return
                await send({"type": "http.response.body", "body": frame, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})

        watcher = asyncio.ensure_future(watch())
        writer = asyncio.ensure_future(pump())
        try:
            await asyncio.wait({watcher, writer}, return_when=asyncio.FIRST_COMPLETED)
            if not writer.done():
                writer.cancel()
                with contextlib.suppress(asyncio.CancelledError, OSError):
                    await writer
            elif writer.exception() is not None and not isinstance(writer.exception(), OSError):
                log.error("chat_stream_writer_failed", error=repr(writer.exception()))
        finally:
            watcher.cancel()
            writer.cancel()
            failed = writer.done() and not writer.cancelled() and writer.exception() is not None
            await asyncio.shield(self.stream.finish(client_gone=gone.is_set() or failed))


# ------------------------------------------------------------------------------------------ routes


@openai_router.post("/chat/completions", summary="Chat Completions (OpenAI shape; JSON or SSE)",
                    openapi_extra=_CREATE_DOC)
async def create_chat_completion_openai(request: Request) -> Response:
    key, account = await authenticate(request)
    return await answer_chat(request, key, account, "/v1/chat/completions")


@router.post("/chat/completions", summary="Chat Completions (this API's error shape; JSON or SSE)",
             openapi_extra=_CREATE_DOC)
async def create_chat_completion(request: Request) -> Response:
    key, account = await authenticate(request)
    return await answer_chat(request, key, account, "/api/v1/chat/completions")


@console_router.post("/chat/completions")
async def playground_chat(request: Request) -> Response:
    """The chat playground (BFF): the session's account, its CSRF token, no API key in the browser;
    the same validation, hold and metering as ``/api/v1``, plus a ``receipt`` event (the charge)."""
    from apiinone.web.routes.console_api import _session_for_write

    account = await _session_for_write(request)
    return await answer_chat(request, None, account, "/console/api/chat/completions", receipt=True)


__all__ = ["ChatAnswerResponse", "ChatStreamResponse", "answer_chat", "console_router", "openai_router", "router"]
