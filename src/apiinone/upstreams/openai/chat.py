"""Chat Completions for the ``openai`` provider (OpenAI and every OpenAI-compatible server).

The request goes out as the client sent it (already validated), with ``model`` set to the route's
upstream model, an explicit output cap (the one the hold was computed with) and, for streams,
``stream_options.include_usage`` forced on so the capture uses the upstream's own usage.
Stream events are parsed just enough to count output and find usage; each chunk keeps its own
``data`` bytes (``ChatChunk.raw``) so an OpenAI client gets them unchanged.

Failures are classified by :func:`~apiinone.upstreams.openai.images.error_from_response`, the one
place for this protocol; a stream that breaks after its first chunk raises ``UpstreamError`` from
the iterator (the caller ends its client's stream and charges what was produced).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from typing import TYPE_CHECKING, Any

import httpx
import orjson

from apiinone.kinds.chat.job import ChatChunk, ChatCompletion, ChatRequest, Usage
from apiinone.upstreams.base import RouteTarget, UpstreamError, UpstreamTimeoutError
from apiinone.upstreams.http import json_object, transport_error
from apiinone.upstreams.http1 import LeanClient
from apiinone.upstreams.openai.images import auth_headers, error_from_response, post_json

if TYPE_CHECKING:
    import aiohttp

__all__ = ["OpenAIChat", "iter_sse_data", "output_bytes_of", "usage_from"]

_MAX_EVENT_BYTES = 8 * 1024 * 1024


class OpenAIChat:
    """The Chat Completions half of :class:`~apiinone.upstreams.openai.adapter.OpenAIAdapter`.

    An answer is one POST on the adapter's lean client (``json_client``, half of aiohttp's CPU per
    call, a twentieth of httpx's), a stream goes through its aiohttp session (``json_session``),
    and both go through httpx only where a test injected an httpx transport."""

    _client: httpx.AsyncClient

    def json_session(self) -> aiohttp.ClientSession | None: ...

    def json_client(self) -> LeanClient | None: ...

    async def chat(self, target: RouteTarget, request: ChatRequest) -> ChatCompletion:
        body = orjson.dumps(_chat_body(target, request, stream=False))
        url = f"{target.base_url}/chat/completions"
        client = self.json_client()
        if client is not None:
            payload = await post_json(client, target, url, body)
        else:
            try:
                response = await self._client.post(url, content=body, timeout=target.timeout_s,
                                                   headers={**auth_headers(target), "Content-Type": "application/json"})
            except httpx.TransportError as exc:
                raise transport_error(target, exc) from None
            if response.status_code != 200:
                raise error_from_response(target, response)
            payload = json_object(response.content)
        if not isinstance(payload.get("choices"), list):
            raise UpstreamError("upstream returned an unexpected chat completion", retryable=True)
        usage = usage_from(payload.get("usage"))
        if usage is None:  # some compatible servers omit it: count what came back
            usage = Usage(input_tokens=0, output_tokens=-(-_completion_bytes(payload) // 4), estimated=True)
        return ChatCompletion(body=payload, usage=usage)

    async def chat_stream(self, target: RouteTarget, request: ChatRequest) -> AsyncIterator[ChatChunk]:
        body = orjson.dumps(_chat_body(target, request, stream=True))
        session = self.json_session()
        events = (_aiohttp_events(session, target, body) if session is not None
                  else _httpx_events(self._client, target, body))
        try:
            async for data in events:
                if data == b"[DONE]":
                    return
                yield _chunk_of(target, data)
            raise UpstreamError("the upstream stream ended before [DONE]", retryable=True)
        finally:
            await events.aclose()  # also when the consumer stops early: the upstream call ends


def _chat_body(target: RouteTarget, request: ChatRequest, *, stream: bool) -> dict[str, Any]:
    body: dict[str, Any] = dict(request.body)
    body["model"] = target.upstream_model
    if body.get("max_tokens") is None and body.get("max_completion_tokens") is None:
        body[str(target.options.get("max_tokens_param", "max_completion_tokens"))] = request.max_output_tokens
    if stream:
        body["stream"] = True
        body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
    else:
        body.pop("stream", None)
        body.pop("stream_options", None)
    return body


def _stream_headers(target: RouteTarget) -> dict[str, str]:
    return {**auth_headers(target), "Content-Type": "application/json", "Accept": "text/event-stream"}


def _chunk_of(target: RouteTarget, data: bytes) -> ChatChunk:
    try:
        parsed = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise UpstreamError("upstream sent a stream event that is not JSON", retryable=True) from None
    if not isinstance(parsed, dict):
        raise UpstreamError("upstream sent an unexpected stream event", retryable=True)
    if "error" in parsed and "choices" not in parsed:
        err = parsed["error"] if isinstance(parsed["error"], dict) else {"message": str(parsed["error"])}
        raise UpstreamError(target.redact(f"upstream stream error: {err.get('message') or err}")[:500],
                            retryable=True)
    return ChatChunk(data=parsed, raw=data, usage=usage_from(parsed.get("usage")), output_bytes=output_bytes_of(parsed))


async def _aiohttp_events(session: aiohttp.ClientSession, target: RouteTarget,
                          body: bytes) -> AsyncGenerator[bytes, None]:
    """The stream's event data over aiohttp: no overall deadline, but ``timeout_s`` between reads
    (a stalled stream), as httpx's read timeout does."""
    import aiohttp

    timeout = aiohttp.ClientTimeout(total=None, sock_connect=min(target.timeout_s, 15.0), sock_read=target.timeout_s)
    opened = False
    try:
        async with session.post(f"{target.base_url}/chat/completions", data=body, headers=_stream_headers(target),
                                timeout=timeout) as response:
            if response.status != 200:
                raw = await response.read()
                raise error_from_response(target, httpx.Response(response.status, content=raw,
                                                                 headers=list(response.headers.items())))
            opened = True
            async for data in iter_sse_data(response.content.iter_any()):
                yield data
    except TimeoutError:
        if opened:
            raise UpstreamTimeoutError(f"the upstream stream stalled for {target.timeout_s:g} s") from None
        raise UpstreamTimeoutError(f"no answer within {target.timeout_s:g} s") from None
    except aiohttp.ClientError as exc:
        if opened:
            raise UpstreamError(f"the upstream stream broke ({type(exc).__name__})", retryable=True) from None
        raise UpstreamError(target.redact(f"could not reach upstream ({type(exc).__name__}: {exc})"),
                            retryable=True) from None


async def _httpx_events(client: httpx.AsyncClient, target: RouteTarget, body: bytes) -> AsyncGenerator[bytes, None]:
    """The same over httpx (an injected test transport)."""
    request = client.build_request("POST", f"{target.base_url}/chat/completions", content=body,
                                   headers=_stream_headers(target), timeout=target.timeout_s)
    try:
        response = await client.send(request, stream=True)
    except httpx.TimeoutException as exc:
        raise UpstreamTimeoutError(f"no answer within {target.timeout_s:g} s ({type(exc).__name__})") from None
    except httpx.TransportError as exc:
        raise UpstreamError(target.redact(f"could not reach upstream ({type(exc).__name__}: {exc})"),
                            retryable=True) from None
    try:
        if response.status_code != 200:
            await response.aread()
            raise error_from_response(target, response)
        async for data in iter_sse_data(response.aiter_bytes()):
            yield data
    except httpx.TimeoutException:
        raise UpstreamTimeoutError(f"the upstream stream stalled for {target.timeout_s:g} s") from None
    except httpx.TransportError as exc:
        raise UpstreamError(f"the upstream stream broke ({type(exc).__name__})", retryable=True) from None
    finally:
        await response.aclose()


async def iter_sse_data(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """The ``data`` of each Server-Sent Event, as the bytes that came over the wire (lines of one
    event joined by ``\\n``); comments, ``event:`` and ``id:`` lines are skipped."""
    buffer = b""
    async for chunk in chunks:
        buffer += chunk
        if len(buffer) > _MAX_EVENT_BYTES:
            raise UpstreamError("upstream sent a stream event that is too large", retryable=True)
        while True:
            cut, sep = _event_end(buffer)
            if cut < 0:
                break
            event, buffer = buffer[:cut], buffer[cut + sep:]
            data = _event_data(event)
            if data is not None:
                yield data
    if buffer.strip():
        data = _event_data(buffer)
        if data is not None:
            yield data


def _event_end(buffer: bytes) -> tuple[int, int]:
    found = [(i, len(s)) for s in (b"\n\n", b"\r\n\r\n", b"\r\r") if (i := buffer.find(s)) >= 0]
    return min(found) if found else (-1, 0)


def _event_data(event: bytes) -> bytes | None:
    lines = [line[5:].removeprefix(b" ") for line in event.splitlines() if line.startswith(b"data:")]
    return b"\n".join(lines) if lines else None


def usage_from(value: Any) -> Usage | None:
    """OpenAI's ``usage`` object as our Usage (None where absent or malformed)."""
    if not isinstance(value, dict):
        return None
    prompt, completion = value.get("prompt_tokens"), value.get("completion_tokens")
    if not isinstance(prompt, int) or not isinstance(completion, int):
        return None
    details = value.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    return Usage(input_tokens=max(0, prompt), output_tokens=max(0, completion),
                 cached_input_tokens=cached if isinstance(cached, int) and cached > 0 else 0)


def output_bytes_of(chunk: dict[str, Any]) -> int:
    """UTF-8 bytes of generated text, refusals and tool-call names/arguments in one chunk."""
    size = 0
    for choice in chunk.get("choices") or ():
        delta = choice.get("delta") if isinstance(choice, dict) else None
        if isinstance(delta, dict):
            size += _message_bytes(delta)
    return size


def _completion_bytes(payload: dict[str, Any]) -> int:
    size = 0
    for choice in payload.get("choices") or ():
        message = choice.get("message") if isinstance(choice, dict) else None
        if isinstance(message, dict):
            size += _message_bytes(message)
    return size


def _message_bytes(message: dict[str, Any]) -> int:
    size = 0
    for key in ("content", "refusal"):
        if isinstance(message.get(key), str):
            size += len(message[key].encode())
    for call in message.get("tool_calls") or ():
        fn = call.get("function") if isinstance(call, dict) else None
        if isinstance(fn, dict):
            for key in ("name", "arguments"):
                if isinstance(fn.get(key), str):
                    size += len(fn[key].encode())
    return size
