"""Direct chat calls: validate → resolve the model → hold → upstream (failover) → answer → settle.

Money rules (API.md, "Direct calls"): the hold is made before anything is sent upstream; the
capture is the upstream's reported usage, or, when a stream ends without it (client gone, upstream
cut), the output produced (⌈bytes / 4⌉) and the input estimate; at most the hold; exactly once.
An answer the client never got (the upstream failed, the client left before a non-streamed
answer was written) is released, not charged. Each call leaves one request-log row.

The web layer owns the sockets: it calls :meth:`DirectChat.open`, then :meth:`complete` or
:meth:`start_stream`, writes what they return, and reports the outcome back (``deliver`` /
``ChatStream.finish``), which is where the money is settled.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import structlog

from apiinone.domain.accounts import Account, ApiKey
from apiinone.domain.catalog import Catalog, ModelSpec
from apiinone.domain.credits import format_credits
from apiinone.errors import Forbidden, InvalidParameter, ModelNotFound, ModelUnavailable, UpstreamFailed
from apiinone.kinds import KindRegistry
from apiinone.kinds.chat import KIND as CHAT
from apiinone.kinds.chat import ChatCall, validate_body
from apiinone.kinds.chat.job import ChatAdapter, ChatChunk, ChatCompletion, Usage
from apiinone.services.metering import DirectHold, Metering, RequestRecord
from apiinone.upstreams.base import ContentPolicyError, RouteTarget, UpstreamError, UpstreamTimeoutError
from apiinone.upstreams.pool import RoutePool

log = structlog.get_logger(__name__)

DONE_EVENT = b"data: [DONE]\n\n"


def resolve_model(catalog: Catalog, kinds: KindRegistry, pool: RoutePool, name: str, key: ApiKey | None,
                  kind: str = "chat") -> ModelSpec:
    """The launched model ``name`` of type ``kind`` this key may use and an upstream can serve."""
    spec = catalog.resolve(name)
    if spec is None or not spec.launched or not spec.enabled:
        raise ModelNotFound(f"The model '{name}' does not exist; see GET /api/v1/models", param="model")
    if spec.type != kind:
        other = kinds.get(spec.type)
        route = other.create_path if other is not None else "its own route"
        raise InvalidParameter(f"model {spec.id!r} is a {spec.type} model; call it with POST {route}", param="model")
    if key is not None and not key.may_use(spec.id):
        raise Forbidden(f"this API key may not use model {spec.id!r}")
    if not pool.is_available(spec):
        raise ModelUnavailable(f"model {spec.id!r} has no configured or healthy upstream right now")
    return spec


def upstream_failure(exc: UpstreamError) -> UpstreamFailed:
    if isinstance(exc, ContentPolicyError):
        return UpstreamFailed(exc.message, code="content_policy", status=400)
    if isinstance(exc, UpstreamTimeoutError):
        return UpstreamFailed(exc.message, code="timeout", status=504)
    if exc.code == "model_unavailable" or exc.key_refused:  # our upstream keys, not the caller's request
        return UpstreamFailed(exc.message, code="model_unavailable", status=503)
    if not exc.retryable and exc.status is not None and 400 <= exc.status < 500:
        return UpstreamFailed(exc.message, code="upstream_error", status=400)  # the request itself was refused
    return UpstreamFailed(exc.message)


@dataclass
class OpenedChat:
    """A validated, held call: what the answer is written against."""

    spec: ModelSpec
    call: ChatCall
    hold: DirectHold
    route_path: str
    started: float = field(default_factory=time.perf_counter)
    route: str | None = None
    settled: bool = False
    charged: int = 0
    receipt: bool = False
    """Send the console's receipt event (the charge) before ``[DONE]``; never on the public routes."""

    @property
    def stream(self) -> bool:
        return self.call.request.stream

    def elapsed_ms(self) -> int:
        return int((time.perf_counter() - self.started) * 1000)


class DirectChat:
    def __init__(self, catalog_source: Callable[[], Catalog], kinds: KindRegistry, pool: RoutePool,
                 metering: Metering) -> None:
        self.catalog_source = catalog_source
        self.kinds = kinds
        self.pool = pool
        self.metering = metering

    async def open(self, account: Account, key: ApiKey | None, body: Any, route_path: str, *,
                   receipt: bool = False) -> OpenedChat:
        """Validate, resolve and hold (InsufficientCredits with nothing sent upstream)."""
        fields = validate_body(body)
        spec = resolve_model(self.catalog_source(), self.kinds, self.pool, fields["model"], key)
        call = CHAT.prepare(spec, fields)
        hold = await self.metering.open_direct(account, key, call.hold)
        return OpenedChat(spec=spec, call=call, hold=hold, route_path=route_path, receipt=receipt)

    # ------------------------------------------------------------------------------ whole answers

    async def complete(self, opened: OpenedChat) -> ChatCompletion:
        """The upstream's answer (failover inside); on failure the hold is released and
        UpstreamFailed raised. The caller then calls :meth:`deliver` once it knows the outcome."""
        request = opened.call.request

        async def ask(adapter: ChatAdapter, target: RouteTarget) -> ChatCompletion:
            return await adapter.chat(target, request)

        try:
            routed = await self.pool.call(opened.spec, ask)
        except UpstreamError as exc:
            failure = upstream_failure(exc)
            await self.release(opened, "failed", failure.status)
            raise failure from None
        except BaseException:
            await asyncio.shield(self.release(opened, "canceled", 499))
            raise
        opened.route = routed.route
        return routed.value

    async def deliver(self, opened: OpenedChat, answer: ChatCompletion, delivered: bool) -> None:
        """Charge the reported usage if the answer reached the client, else release."""
        if not delivered:
            await self.release(opened, "canceled", 499, usage=answer.usage)
            return
        await self.settle(opened, answer.usage, "succeeded", 200)

    # ----------------------------------------------------------------------------------- streams

    async def start_stream(self, opened: OpenedChat) -> ChatStream:
        """Open the upstream stream and read its first chunk; failover happens only up to here."""
        request = opened.call.request

        async def first(adapter: ChatAdapter, target: RouteTarget) -> tuple[AsyncIterator[ChatChunk], ChatChunk]:
            chunks = adapter.chat_stream(target, request)
            try:
                head = await chunks.__anext__()
            except StopAsyncIteration:
                raise UpstreamError("the upstream stream ended before any output", retryable=True) from None
            return chunks, head

        try:
            routed = await self.pool.call(opened.spec, first)
        except UpstreamError as exc:
            failure = upstream_failure(exc)
            await self.release(opened, "failed", failure.status)
            raise failure from None
        except BaseException:
            await asyncio.shield(self.release(opened, "canceled", 499))
            raise
        opened.route = routed.route
        chunks, head = routed.value
        return ChatStream(self, opened, chunks, head)

    # ------------------------------------------------------------------------------------ money

    async def settle(self, opened: OpenedChat, usage: Usage, status: str, http_status: int,
                     ttft_ms: int | None = None) -> int:
        if opened.settled:
            return 0
        opened.settled = True
        charged = opened.charged = opened.call.charge(usage)
        record = self._record(opened, status, http_status, usage, ttft_ms)
        await self.metering.settle_direct(opened.hold, charged, record)
        log.debug("chat_settled", model=opened.spec.id, route=opened.route, status=status, charged_ucr=charged,
                 input_tokens=usage.input_tokens, output_tokens=usage.output_tokens, estimated=usage.estimated)
        return charged

    async def release(self, opened: OpenedChat, status: str, http_status: int, usage: Usage | None = None) -> None:
        if opened.settled:
            return
        opened.settled = True
        await self.metering.release_direct(opened.hold, self._record(opened, status, http_status, usage, None))

    def _record(self, opened: OpenedChat, status: str, http_status: int, usage: Usage | None,
                ttft_ms: int | None) -> RequestRecord:
        return RequestRecord(type="chat", model=opened.spec.id, status=status, http_status=http_status,
                             route=opened.route, input_tokens=usage.input_tokens if usage else None,
                             output_tokens=usage.output_tokens if usage else None,
                             latency_ms=opened.elapsed_ms(), ttft_ms=ttft_ms)


class ChatStream:
    """One streamed answer as SSE frames. The writer iterates :meth:`frames` and calls
    :meth:`finish` exactly once, saying whether the client went away; ``finish`` settles."""

    def __init__(self, service: DirectChat, opened: OpenedChat, chunks: AsyncIterator[ChatChunk],
                 head: ChatChunk) -> None:
        self.service = service
        self.opened = opened
        self._chunks = chunks
        self._head: ChatChunk | None = head
        self.output_bytes = 0
        self.usage: Usage | None = None
        self.completed = False
        self.error: UpstreamError | None = None
        self.ttft_ms: int | None = None

    async def chunks(self) -> AsyncIterator[ChatChunk]:
        """The upstream's chunks in order, counted as they pass (output bytes, usage, time to first
        token). An upstream break is kept in ``error`` and raised; a stream that ends normally sets
        ``completed``. The writer of each protocol's frames iterates this (:meth:`frames` is OpenAI's,
        the Anthropic Messages route has its own)."""
        try:
            while True:
                if self._head is not None:
                    chunk, self._head = self._head, None
                else:
                    try:
                        chunk = await self._chunks.__anext__()
                    except StopAsyncIteration:
                        break
                self.output_bytes += chunk.output_bytes
                if chunk.usage is not None:
                    self.usage = chunk.usage
                if self.ttft_ms is None and not _usage_only(chunk):
                    self.ttft_ms = self.opened.elapsed_ms()
                yield chunk
        except UpstreamError as exc:
            self.error = exc
            log.warning("chat_stream_cut", model=self.opened.spec.id, route=self.opened.route, error=exc.message[:200])
            raise
        self.completed = True

    async def frames(self) -> AsyncIterator[bytes]:
        """SSE frames for the client: chunks passed through as the upstream sent them, the usage
        chunk only if the client asked, ``[DONE]`` at the end, or an error event if the upstream broke."""
        include_usage = self.opened.call.request.include_usage
        try:
            async for chunk in self.chunks():
                if chunk.usage is not None and _usage_only(chunk) and not include_usage:
                    continue
                yield b"data: " + (chunk.raw if chunk.raw is not None else orjson.dumps(chunk.data)) + b"\n\n"
        except UpstreamError as exc:
            body = {"error": {"message": f"the upstream stream broke: {exc.message}", "type": "server_error",
                              "param": None, "code": "upstream_error"}}
            await asyncio.shield(self.finish(client_gone=False))  # charged as produced, before the event is sent
            if self.opened.receipt:
                yield self._receipt()
            yield b"data: " + orjson.dumps(body) + b"\n\n"
            return
        await asyncio.shield(self.finish(client_gone=False))  # charged before [DONE] reaches the client
        if self.opened.receipt:
            yield self._receipt()
        yield DONE_EVENT

    def _receipt(self) -> bytes:
        usage = self.usage or self.opened.call.produced_usage(self.output_bytes)
        body = {"object": "apiinone.receipt", "request_id": self.opened.hold.request_id,
                "model": self.opened.spec.id, "credits": format_credits(self.opened.charged),
                "input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens,
                "estimated": usage.estimated, "ttft_ms": self.ttft_ms}
        return b"event: receipt\ndata: " + orjson.dumps(body) + b"\n\n"

    async def aclose(self) -> None:
        """Stop the upstream call (closing its iterator closes its HTTP stream)."""
        closer = getattr(self._chunks, "aclose", None)
        if closer is not None:
            try:
                await closer()
            except Exception as exc:  # closing a broken stream may raise; the call is over either way
                log.debug("chat_stream_close_failed", error=type(exc).__name__)

    async def finish(self, *, client_gone: bool) -> int:
        """Stop the upstream and settle: the reported usage if it came, else what was produced.
        Called when the stream ends, whichever way; a second call does nothing."""
        if self.opened.settled:
            return 0
        await self.aclose()
        usage = self.usage or self.opened.call.produced_usage(self.output_bytes)
        if self.usage is not None and not self.completed:
            # usage arrived but the stream did not finish: never charge less output than produced
            produced = self.opened.call.produced_usage(self.output_bytes)
            usage = Usage(self.usage.input_tokens, max(self.usage.output_tokens, produced.output_tokens),
                          self.usage.cached_input_tokens)
        if self.error is not None:
            status = "failed"
        elif client_gone and not self.completed:
            status = "canceled"
        else:
            status = "succeeded"
        return await self.service.settle(self.opened, usage, status, 200, ttft_ms=self.ttft_ms)


def _usage_only(chunk: ChatChunk) -> bool:
    return chunk.data is not None and not chunk.data.get("choices")
