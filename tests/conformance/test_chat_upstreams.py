"""Chat adapter conformance: the OpenAI Chat Completions adapter against its protocol-faithful fake,
and the offline ``local-echo`` model. Success (whole and streamed, text and tool calls), each failure
class and its classification (``retryable`` → next route, ``key_refused`` → next key, neither →
refused at once), and a stream cut after its first chunk (raised from the iterator, never retried)."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from apiinone.kinds.chat import estimate_input_tokens, estimate_tokens
from apiinone.kinds.chat.job import ChatChunk, ChatRequest
from apiinone.upstreams.base import RouteTarget, UpstreamError, UpstreamTimeoutError
from apiinone.upstreams.local_echo.echo import LocalEchoProvider
from apiinone.upstreams.openai.adapter import OpenAIAdapter
from apiinone.upstreams.openai.chat import iter_sse_data
from tests.fakes.fake_openai_chat import DEFAULT_REPLY, FakeOpenAIChat, openai_error

TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]


def request(stream: bool = False, **body: Any) -> ChatRequest:
    values: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "Hi there"}], **body}
    return ChatRequest(body=values, max_output_tokens=256, stream=stream)


@pytest.fixture(scope="module")
def fake_server() -> Iterator[FakeOpenAIChat]:
    with FakeOpenAIChat() as fake:
        yield fake


@dataclass
class ChatCase:
    fake: FakeOpenAIChat
    adapter: OpenAIAdapter

    def target(self, *, key: str | None = None, timeout_s: float = 5.0, base_url: str | None = None) -> RouteTarget:
        return RouteTarget(model_id="m", route="r", provider="openai", base_url=base_url or self.fake.base_url,
                           api_key=key or self.fake.api_key, upstream_model="gpt-4o-mini", timeout_s=timeout_s)


@pytest.fixture
async def case(fake_server: FakeOpenAIChat) -> AsyncIterator[ChatCase]:
    fake_server.configure(latency_ms=0, chunk_delay_ms=0, cut_after=None, stall_after=None, hang_next=False)
    fake_server.state.failures.clear()
    adapter = OpenAIAdapter(timeout_s=5.0)
    yield ChatCase(fake_server, adapter)
    await adapter.aclose()


async def collect(chunks: AsyncIterator[ChatChunk]) -> list[ChatChunk]:
    return [c async for c in chunks]


async def test_whole_answer_and_reported_usage(case: ChatCase) -> None:
    answer = await case.adapter.chat(case.target(), request())
    assert answer.body["choices"][0]["message"]["content"] == DEFAULT_REPLY
    assert (answer.usage.input_tokens, answer.usage.output_tokens, answer.usage.estimated) == (
        10, len(DEFAULT_REPLY.split()), False)
    sent = case.fake.requests[-1]
    assert sent.json["model"] == "gpt-4o-mini" and sent.json["max_completion_tokens"] == 256
    assert sent.headers["authorization"] == f"Bearer {case.fake.api_key}"


async def test_stream_keeps_raw_bytes_counts_output_and_forces_usage(case: ChatCase) -> None:
    chunks = await collect(case.adapter.chat_stream(case.target(), request(stream=True)))
    assert case.fake.requests[-1].json["stream_options"] == {"include_usage": True}
    assert all(c.raw is not None and json.loads(c.raw) == c.data for c in chunks)
    assert sum(c.output_bytes for c in chunks) == len(DEFAULT_REPLY.encode())
    assert chunks[-1].usage is not None and chunks[-1].data is not None and chunks[-1].data["choices"] == []


async def test_streamed_tool_call_arguments(case: ChatCase) -> None:
    chunks = await collect(case.adapter.chat_stream(case.target(), request(stream=True, tools=TOOLS)))
    args = "".join(d["function"].get("arguments", "") for c in chunks if c.data for ch in c.data["choices"]
                   for d in ch["delta"].get("tool_calls") or [])
    assert json.loads(args) == {"location": "Paris, France", "unit": "celsius"}
    assert chunks[-2].data is not None and chunks[-2].data["choices"][0]["finish_reason"] == "tool_calls"


@pytest.mark.parametrize("status", [429, 500, 503])
@pytest.mark.parametrize("stream", [False, True])
async def test_transient_statuses_are_retryable(case: ChatCase, status: int, stream: bool) -> None:
    case.fake.fail_next(status, headers={"retry-after": "2"} if status == 429 else None)
    with pytest.raises(UpstreamError) as caught:
        if stream:
            await collect(case.adapter.chat_stream(case.target(), request(stream=True)))
        else:
            await case.adapter.chat(case.target(), request())
    assert caught.value.retryable and not caught.value.key_refused and caught.value.status == status
    if status == 429:
        assert caught.value.retry_after_s == 2


async def test_refused_key_is_key_refused_and_never_echoed(case: ChatCase) -> None:
    secret = "sk-proj-SECRET-never-shown-5432"
    with pytest.raises(UpstreamError) as caught:
        await case.adapter.chat(case.target(key=secret), request())
    assert caught.value.key_refused and not caught.value.retryable
    assert secret not in caught.value.message and secret[-4:] not in caught.value.message


async def test_invalid_request_is_refused_at_once(case: ChatCase) -> None:
    case.fake.fail_next(400, body=openai_error("Invalid 'messages': too long.", param="messages"))
    with pytest.raises(UpstreamError) as caught:
        await case.adapter.chat(case.target(), request())
    assert caught.value.status == 400 and not caught.value.retryable and not caught.value.key_refused
    assert "too long" in caught.value.message


async def test_timeout_and_connection_refused_are_retryable(case: ChatCase) -> None:
    case.fake.configure(latency_ms=1500)
    with pytest.raises(UpstreamTimeoutError):
        await case.adapter.chat(case.target(timeout_s=0.2), request())
    case.fake.configure(latency_ms=0)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(UpstreamError) as caught:
        await case.adapter.chat(case.target(base_url=f"http://127.0.0.1:{port}/v1"), request())
    assert caught.value.retryable


async def test_a_stream_cut_after_its_first_chunk_raises_from_the_iterator(case: ChatCase) -> None:
    case.fake.configure(cut_after=3)
    got: list[ChatChunk] = []
    with pytest.raises(UpstreamError) as caught:
        async for chunk in case.adapter.chat_stream(case.target(), request(stream=True)):
            got.append(chunk)
    assert len(got) == 3 and caught.value.retryable


async def test_sse_parser_keeps_data_bytes_across_reads() -> None:
    async def reads() -> AsyncIterator[bytes]:
        for piece in (b": comment\n\ndata: {\"a\"", b": 1}\n\nevent: x\r\ndata: [DONE]\r\n\r\n"):
            yield piece

    assert [d async for d in iter_sse_data(reads())] == [b'{"a": 1}', b"[DONE]"]


# -------------------------------------------------------------------------------------- local-echo


async def test_local_echo_echoes_streams_and_counts_by_the_estimate() -> None:
    adapter = LocalEchoProvider()
    target = RouteTarget(model_id="local-echo", route="local", provider="local-echo", base_url="", api_key=None,
                         upstream_model="local-echo")
    req = request()
    answer = await adapter.chat(target, req)
    assert answer.body["choices"][0]["message"]["content"] == "Hi there"
    assert (answer.usage.input_tokens, answer.usage.output_tokens) == (
        estimate_input_tokens(req.body), estimate_tokens(len(b"Hi there")))
    chunks = await collect(adapter.chat_stream(target, request(stream=True)))
    text = "".join(c.data["choices"][0]["delta"].get("content", "") for c in chunks if c.data and c.data["choices"])
    assert text == "Hi there" and chunks[-1].usage == answer.usage
    tool = await adapter.chat(target, request(tools=TOOLS))
    [call] = tool.body["choices"][0]["message"]["tool_calls"]
    assert call["function"]["name"] == "get_weather" and json.loads(call["function"]["arguments"]) == {"echo": "Hi there"}
    assert adapter.needs_key is False
    short = await adapter.chat(target, ChatRequest(body=req.body, max_output_tokens=1))
    assert short.body["choices"][0]["finish_reason"] == "length" and short.usage.output_tokens == 1
