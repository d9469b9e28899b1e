"""Every translating chat adapter (Anthropic Messages, Gemini) against its vendor's fake on loopback:
real sockets, real HTTP. (The OpenAI adapter and local-echo have their suite in test_chat_upstreams.py.)

One suite, parametrised by vendor (``CHAT_UPSTREAMS``): a plain answer, a stream (usage on the
last chunk, ``output_bytes`` per chunk), a tool call and its result, and each failure class with
the classification the route pool acts on (retryable / key refused / refused; after the first
chunk a broken stream raises instead of ending quietly)."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from apiinone.kinds.chat.canonical import chunk_data
from apiinone.kinds.chat.job import ChatAdapter, ChatChunk, ChatRequest
from apiinone.upstreams.anthropic.adapter import AnthropicAdapter
from apiinone.upstreams.base import RouteTarget, UpstreamError, UpstreamTimeoutError
from apiinone.upstreams.gemini.adapter import GeminiAdapter
from apiinone.upstreams.gemini.translate import carried_by
from tests.fakes.fake_anthropic import FakeAnthropic
from tests.fakes.fake_gemini import FakeGemini
from tests.fakes.loopback import LoopbackFake


@dataclass(frozen=True)
class ChatUpstream:
    """How to run one adapter against its fake (also used by other suites and benchmarks)."""

    provider: str
    fake: Callable[[], LoopbackFake]
    adapter: Callable[[float], ChatAdapter]
    upstream_model: str
    error_event: dict[str, Any] | None
    """The vendor's in-stream error payload (None: the protocol has none)."""
    statuses: dict[str, tuple[int, ...]]
    cut_after: int
    """Stream events to let through before a cut, so that some text has been sent."""


CHAT_UPSTREAMS = [
    ChatUpstream("anthropic", FakeAnthropic, lambda t: AnthropicAdapter(timeout_s=t), "claude-sonnet-4-5",
                 {"type": "overloaded_error", "message": "Overloaded"},
                 {"retryable": (429, 500, 529), "key_refused": (401, 403), "refused": (400, 404, 413)}, 5),
    ChatUpstream("gemini", FakeGemini, lambda t: GeminiAdapter(timeout_s=t), "gemini-2.5-flash",
                 {"error": {"code": 503, "message": "The model is overloaded.", "status": "UNAVAILABLE"}},
                 {"retryable": (429, 500, 503), "key_refused": (401, 403), "refused": (400, 404)}, 2),
]


@pytest.fixture(params=CHAT_UPSTREAMS, ids=lambda u: u.provider)
def upstream(request: pytest.FixtureRequest) -> ChatUpstream:
    value: ChatUpstream = request.param
    return value


@pytest.fixture
def fake(upstream: ChatUpstream) -> Iterator[LoopbackFake]:
    server = upstream.fake()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def adapter(upstream: ChatUpstream) -> AsyncIterator[ChatAdapter]:
    made = upstream.adapter(5.0)
    yield made
    await made.aclose()


def target_for(upstream: ChatUpstream, fake: LoopbackFake, *, key: str | None = None,
               timeout_s: float = 5.0, base_url: str | None = None) -> RouteTarget:
    return RouteTarget(model_id="m", route="r1", provider=upstream.provider,
                       base_url=base_url or fake.origin, api_key=key or fake.api_key,
                       upstream_model=upstream.upstream_model, timeout_s=timeout_s)


def chat_request(text: str = "hello there", *, stream: bool = False, max_tokens: int = 64,
                 **extra: Any) -> ChatRequest:
    body = {"model": "m", "messages": [{"role": "system", "content": "Be brief."},
                                       {"role": "user", "content": text}], **extra}
    return ChatRequest(body=body, max_output_tokens=max_tokens, stream=stream)


WEATHER_TOOL = {"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                               "required": ["city"]}}}


async def collect(adapter: ChatAdapter, target: RouteTarget, request: ChatRequest) -> list[ChatChunk]:
    return [chunk async for chunk in adapter.chat_stream(target, request)]


def streamed_text(chunks: list[ChatChunk]) -> str:
    out = []
    for chunk in chunks:
        for choice in chunk_data(chunk).get("choices", []):
            out.append(choice["delta"].get("content") or "")
    return "".join(out)


# ---------------------------------------------------------------------------------------- answers


async def test_plain_answer(upstream: ChatUpstream, fake: LoopbackFake, adapter: ChatAdapter) -> None:
    completion = await adapter.chat(target_for(upstream, fake), chat_request("hello there"))
    choice = completion.body["choices"][0]
    assert completion.body["object"] == "chat.completion"
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"] == "Echo: hello there"
    assert choice["finish_reason"] == "stop"
    assert completion.usage.output_tokens == 3  # "Echo: ", "hello ", "there"
    assert completion.usage.input_tokens > 0
    usage = completion.body["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert fake.requests[-1].status == 200


async def test_length_and_stop_sequences(upstream: ChatUpstream, fake: LoopbackFake,
                                         adapter: ChatAdapter) -> None:
    target = target_for(upstream, fake)
    cut = await adapter.chat(target, chat_request("one two three four five", max_tokens=2))
    assert cut.body["choices"][0]["finish_reason"] == "length"
    assert cut.usage.output_tokens == 2
    stopped = await adapter.chat(target, chat_request("one two three", stop=["three"]))
    assert stopped.body["choices"][0]["finish_reason"] == "stop"
    assert stopped.body["choices"][0]["message"]["content"] == "Echo: one two "


async def test_stream(upstream: ChatUpstream, fake: LoopbackFake, adapter: ChatAdapter) -> None:
    chunks = await collect(adapter, target_for(upstream, fake), chat_request("stream me please", stream=True))
    assert streamed_text(chunks) == "Echo: stream me please"
    assert all(chunk_data(c)["object"] == "chat.completion.chunk" for c in chunks)
    assert chunk_data(chunks[0])["choices"][0]["delta"]["role"] == "assistant"
    finishes = [ch["finish_reason"] for c in chunks for ch in chunk_data(c)["choices"] if ch["finish_reason"]]
    assert finishes == ["stop"]
    assert chunks[-1].usage is not None and chunks[-1].usage.output_tokens == 4
    assert chunk_data(chunks[-1])["choices"] == []
    assert [c for c in chunks[:-1] if c.usage is not None] == []
    assert sum(c.output_bytes for c in chunks) == len(b"Echo: stream me please")


async def test_tool_call_and_result(upstream: ChatUpstream, fake: LoopbackFake, adapter: ChatAdapter) -> None:
    target = target_for(upstream, fake)
    request = chat_request("weather in Paris?", tools=[WEATHER_TOOL], tool_choice="required")
    first = await adapter.chat(target, request)
    choice = first.body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    (call,) = choice["message"]["tool_calls"]
    assert call["function"]["name"] == "get_weather"
    assert call["function"]["arguments"] == '{"city":"Paris"}'
    assert call["id"]
    follow = ChatRequest(body={"model": "m", "tools": [WEATHER_TOOL], "messages": [
        *request.body["messages"], choice["message"],
        {"role": "tool", "tool_call_id": call["id"], "content": "sunny, 21 C"}]}, max_output_tokens=64)
    second = await adapter.chat(target, follow)
    assert second.body["choices"][0]["message"]["content"] == "Tool said: sunny, 21 C"
    assert second.body["choices"][0]["finish_reason"] == "stop"


async def test_streamed_tool_call(upstream: ChatUpstream, fake: LoopbackFake, adapter: ChatAdapter) -> None:
    request = chat_request("weather?", stream=True, tools=[WEATHER_TOOL], tool_choice="required")
    chunks = await collect(adapter, target_for(upstream, fake), request)
    calls = [tc for c in chunks for ch in chunk_data(c)["choices"] for tc in ch["delta"].get("tool_calls", [])]
    assert calls[0]["id"] and calls[0]["function"]["name"] == "get_weather"
    assert {tc["index"] for tc in calls} == {0}
    assert "".join(tc["function"].get("arguments", "") for tc in calls) == '{"city":"Paris"}'
    finishes = [ch["finish_reason"] for c in chunks for ch in chunk_data(c)["choices"] if ch["finish_reason"]]
    assert finishes == ["tool_calls"]
    assert chunks[-1].usage is not None and chunks[-1].usage.output_tokens > 0


async def test_image_in_message(upstream: ChatUpstream, fake: LoopbackFake, adapter: ChatAdapter) -> None:
    png = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
    request = ChatRequest(body={"model": "m", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{png}"}}]}]}, max_output_tokens=32)
    completion = await adapter.chat(target_for(upstream, fake), request)
    assert completion.body["choices"][0]["message"]["content"] == "Echo: what is this? [1 image]"


# --------------------------------------------------------------------------------------- failures


@pytest.mark.parametrize("kind", ["retryable", "key_refused", "refused"])
async def test_failure_classes(upstream: ChatUpstream, fake: LoopbackFake, adapter: ChatAdapter,
                               kind: str) -> None:
    target = target_for(upstream, fake)
    for status in upstream.statuses[kind]:
        for stream in (False, True):
            fake.fail_next(status)
            with pytest.raises(UpstreamError) as caught:
                if stream:
                    await collect(adapter, target, chat_request(stream=True))
                else:
                    await adapter.chat(target, chat_request())
            err = caught.value
            assert (err.retryable, err.key_refused) == (kind == "retryable", kind == "key_refused"), (status, stream)
            assert err.status == status
            assert fake.api_key not in err.message


async def test_wrong_key_is_refused_key(upstream: ChatUpstream, fake: LoopbackFake, adapter: ChatAdapter) -> None:
    with pytest.raises(UpstreamError) as caught:
        await adapter.chat(target_for(upstream, fake, key="not-the-key-1234"), chat_request())
    assert caught.value.key_refused and not caught.value.retryable
    assert "not-the-key-1234" not in caught.value.message


async def test_hang_is_a_retryable_timeout(upstream: ChatUpstream, fake: LoopbackFake) -> None:
    adapter = upstream.adapter(0.3)
    try:
        fake.hang_next(30)
        with pytest.raises(UpstreamTimeoutError) as caught:
            await adapter.chat(target_for(upstream, fake, timeout_s=0.3), chat_request())
        assert caught.value.retryable
        fake.hang_next(30)
        with pytest.raises(UpstreamTimeoutError):
            await collect(adapter, target_for(upstream, fake, timeout_s=0.3), chat_request(stream=True))
    finally:
        await adapter.aclose()


async def test_connection_refused_is_retryable(upstream: ChatUpstream, fake: LoopbackFake,
                                               adapter: ChatAdapter) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    target = target_for(upstream, fake, base_url=f"http://127.0.0.1:{closed_port}")
    with pytest.raises(UpstreamError) as caught:
        await adapter.chat(target, chat_request())
    assert caught.value.retryable and not caught.value.key_refused


async def test_stream_cut_after_first_chunk_raises(upstream: ChatUpstream, fake: LoopbackFake,
                                                   adapter: ChatAdapter) -> None:
    fake.cut_next(after_events=upstream.cut_after)
    received: list[ChatChunk] = []
    with pytest.raises(UpstreamError):
        async for chunk in adapter.chat_stream(target_for(upstream, fake), chat_request("a b c d e f", stream=True)):
            received.append(chunk)
    assert received, "the cut came after some output"
    assert all(c.usage is None for c in received)
    assert sum(c.output_bytes for c in received) > 0


async def test_error_event_mid_stream_raises(upstream: ChatUpstream, fake: LoopbackFake,
                                             adapter: ChatAdapter) -> None:
    assert upstream.error_event is not None
    fake.cut_next(after_events=2, error=upstream.error_event)
    received: list[ChatChunk] = []
    with pytest.raises(UpstreamError) as caught:
        async for chunk in adapter.chat_stream(target_for(upstream, fake), chat_request("a b c d e f", stream=True)):
            received.append(chunk)
    assert received
    assert "overloaded" in caught.value.message.lower()


async def test_error_event_before_output_is_retryable(upstream: ChatUpstream, fake: LoopbackFake,
                                                      adapter: ChatAdapter) -> None:
    assert upstream.error_event is not None
    fake.cut_next(after_events=0, error=upstream.error_event)
    with pytest.raises(UpstreamError) as caught:
        await collect(adapter, target_for(upstream, fake), chat_request(stream=True))
    assert caught.value.retryable


async def test_gemini_thought_signatures_go_back_with_their_calls() -> None:
    """Gemini 3 refuses function calls sent back without their ``thoughtSignature``; the canonical
    tool call id carries it, so a plain OpenAI-shaped conversation round-trips."""
    with FakeGemini() as fake:
        adapter = GeminiAdapter(timeout_s=5)
        try:
            target = RouteTarget(model_id="m", route="r", provider="gemini", base_url=fake.origin,
                                 api_key=fake.api_key, upstream_model="gemini-3-pro-preview")
            request = chat_request("weather?", tools=[WEATHER_TOOL], tool_choice="required")
            first = await adapter.chat(target, request)
            message = first.body["choices"][0]["message"]
            (call,) = message["tool_calls"]
            assert set(call["id"]) <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")
            follow = ChatRequest(body={"model": "m", "tools": [WEATHER_TOOL], "messages": [
                *request.body["messages"], message,
                {"role": "tool", "tool_call_id": call["id"], "content": "sunny"}]}, max_output_tokens=64)
            second = await adapter.chat(target, follow)
            assert second.body["choices"][0]["message"]["content"] == "Tool said: sunny"
            sent = fake.requests[-1].json["contents"][1]["parts"][0]
            _, signature = carried_by(call["id"])
            assert signature and sent == {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}},
                                          "thoughtSignature": signature}
            stripped = {**message, "tool_calls": [{**call, "id": "call_plain"}]}
            with pytest.raises(UpstreamError) as refused:
                await adapter.chat(target, ChatRequest(body={"model": "m", "messages": [
                    *request.body["messages"], stripped,
                    {"role": "tool", "tool_call_id": "call_plain", "content": "sunny"}]}, max_output_tokens=64))
            assert "thought_signature" in refused.value.message and not refused.value.retryable
        finally:
            await adapter.aclose()
