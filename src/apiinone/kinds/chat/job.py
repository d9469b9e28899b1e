"""A chat call as upstream adapters see it, and the capability a chat adapter implements.

The canonical shape inside apiinone is OpenAI's Chat Completions: the request body, the
``chat.completion`` answer and the ``chat.completion.chunk`` stream events. Adapters of other
protocols (Anthropic Messages, Gemini) translate to and from it inside their own folder; the
inbound Anthropic route translates at the edge. So every inbound protocol meets every upstream.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from apiinone.upstreams.base import RouteTarget


@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens as the upstream reported them (or as estimated where it did not)."""

    input_tokens: int
    output_tokens: int
    cached_input_tokens: int = 0
    estimated: bool = False


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """A validated Chat Completions request. ``body`` is OpenAI's request shape with ``model`` set
    to our canonical model id (adapters send ``target.upstream_model``); ``max_output_tokens`` is
    the output cap the hold was computed with (the request's, or the model's limit)."""

    body: dict[str, Any]
    max_output_tokens: int
    stream: bool = False
    include_usage: bool = False
    """The client asked for ``stream_options.include_usage``; adapters always ask upstream for usage."""


@dataclass(frozen=True, slots=True)
class ChatCompletion:
    """A whole answer: OpenAI's ``chat.completion`` object (``model`` as the upstream named it) and
    its usage."""

    body: dict[str, Any]
    usage: Usage


@dataclass(frozen=True, slots=True)
class ChatChunk:
    """One stream event in OpenAI's ``chat.completion.chunk`` shape.

    ``raw`` is the upstream's own JSON bytes of ``data`` when the upstream speaks the same protocol
    and the chunk may be passed through unchanged (no re-serialising); ``usage`` is set on the
    chunk that carries the upstream's usage; ``output_bytes`` counts the UTF-8 bytes of generated
    text/arguments in this chunk (the basis of the charge when a stream ends without usage)."""

    data: dict[str, Any] | None
    raw: bytes | None = None
    usage: Usage | None = None
    output_bytes: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class ChatAdapter(Protocol):
    provider: str
    needs_key: bool

    async def chat(self, target: RouteTarget, request: ChatRequest) -> ChatCompletion: ...

    def chat_stream(self, target: RouteTarget, request: ChatRequest) -> AsyncIterator[ChatChunk]:
        """Raise UpstreamError before the first chunk for failures the pool may fail over; after
        the first chunk an UpstreamError ends the stream (charged as produced)."""
        ...

    async def aclose(self) -> None: ...
