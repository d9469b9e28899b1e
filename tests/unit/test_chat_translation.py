"""Every chat translation, both ways: canonical (OpenAI Chat Completions) ⇄ Anthropic Messages
(outbound adapter and inbound route) and canonical → Gemini, for requests, answers, stream events,
tool calls and results, images, stop reasons and usage."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from apiinone.kinds.chat.canonical import ChatTranslationError, ChunkWriter, chunk_data
from apiinone.kinds.chat.job import ChatChunk, ChatRequest, Usage
from apiinone.upstreams.anthropic import translate as anthropic
from apiinone.upstreams.base import ContentPolicyError, UpstreamError
from apiinone.upstreams.gemini import translate as gemini
from apiinone.web.compat import anthropic_messages as inbound

PNG_B64 = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
                          "additionalProperties": False, "$schema": "http://json-schema.org/draft-07/schema#"}}}

CONVERSATION: list[dict[str, Any]] = [
    {"role": "system", "content": "Be brief."},
    {"role": "developer", "content": [{"type": "text", "text": "Answer in English."}]},
    {"role": "user", "content": [{"type": "text", "text": "What is in this picture, and the weather?"},
                                 {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_B64}"}},
                                 {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}}]},
    {"role": "assistant", "content": "Let me check.", "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}},
        {"id": "call_2", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Rome"}'}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    {"role": "tool", "tool_call_id": "call_2", "content": '{"sky": "rain"}'},
    {"role": "user", "content": "Thanks. And tomorrow?"},
]


def request(messages: list[dict[str, Any]] | None = None, **extra: Any) -> ChatRequest:
    return ChatRequest(body={"model": "m", "messages": messages or CONVERSATION, **extra}, max_output_tokens=256)


def texts(chunks: list[ChatChunk]) -> str:
    return "".join(c["delta"].get("content") or "" for ch in chunks for c in chunk_data(ch)["choices"])


# ------------------------------------------------------------------------------ → Anthropic


def test_anthropic_request_roles_system_images_tools() -> None:
    body = anthropic.messages_request(request(tools=[WEATHER], tool_choice="required", stop="END",
                                              temperature=1.7, top_p=0.9, user="u-1"),
                                      "claude-x", stream=True)
    assert body["model"] == "claude-x" and body["max_tokens"] == 256 and body["stream"] is True
    assert body["system"] == "Be brief.\n\nAnswer in English."
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]
    user = body["messages"][0]["content"]
    assert user[0] == {"type": "text", "text": "What is in this picture, and the weather?"}
    assert user[1] == {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG_B64}}
    assert user[2] == {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}}
    assistant = body["messages"][1]["content"]
    assert assistant[0] == {"type": "text", "text": "Let me check."}
    assert assistant[1] == {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}}
    results = body["messages"][2]["content"]
    assert results[:2] == [{"type": "tool_result", "tool_use_id": "call_1", "content": "sunny"},
                           {"type": "tool_result", "tool_use_id": "call_2", "content": '{"sky": "rain"}'}]
    assert results[2] == {"type": "text", "text": "Thanks. And tomorrow?"}
    assert body["tools"] == [{"name": "get_weather", "description": "Weather of a city",
                              "input_schema": WEATHER["function"]["parameters"]}]
    assert body["tool_choice"] == {"type": "any"}
    assert body["stop_sequences"] == ["END"]
    assert body["temperature"] == 1.0  # Anthropic's range ends at 1
    assert "top_p" not in body  # current models refuse temperature and top_p together
    assert body["metadata"] == {"user_id": "u-1"}
    assert anthropic.messages_request(request(top_p=0.5), "c", stream=False)["top_p"] == 0.5


@pytest.mark.parametrize(("choice", "parallel", "expected"), [
    ("auto", None, {"type": "auto"}), ("none", None, {"type": "none"}),
    ({"type": "function", "function": {"name": "get_weather"}}, False,
     {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True}),
    (None, False, {"type": "auto", "disable_parallel_tool_use": True}),
])
def test_anthropic_tool_choice(choice: Any, parallel: Any, expected: dict[str, Any]) -> None:
    extra: dict[str, Any] = {"tools": [WEATHER]}
    if choice is not None:
        extra["tool_choice"] = choice
    if parallel is not None:
        extra["parallel_tool_calls"] = parallel
    assert anthropic.messages_request(request(**extra), "c", stream=False)["tool_choice"] == expected


def test_anthropic_request_refuses_what_it_cannot_say() -> None:
    with pytest.raises(ChatTranslationError):
        anthropic.messages_request(request([{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/bmp;base64,AAAA"}}]}]), "c", stream=False)
    with pytest.raises(ChatTranslationError):
        anthropic.messages_request(request([{"role": "assistant", "content": None, "tool_calls": [
            {"id": "x", "type": "function", "function": {"name": "f", "arguments": "not json"}}]}]), "c", stream=False)
    with pytest.raises(ChatTranslationError):
        anthropic.messages_request(request([{"role": "system", "content": "only a system prompt"}]), "c",
                                   stream=False)


@pytest.mark.parametrize(("stop_reason", "finish"), [
    ("end_turn", "stop"), ("stop_sequence", "stop"), ("max_tokens", "length"), ("tool_use", "tool_calls"),
    ("refusal", "content_filter"), ("pause_turn", "stop")])
def test_anthropic_answer(stop_reason: str, finish: str) -> None:
    message = {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x", "content": [
        {"type": "thinking", "thinking": "hmm", "signature": "s"},
        {"type": "text", "text": "Checking."},
        {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}],
        "stop_reason": stop_reason, "stop_sequence": None,
        "usage": {"input_tokens": 10, "cache_creation_input_tokens": 5, "cache_read_input_tokens": 100,
                  "output_tokens": 7}}
    completion = anthropic.completion_from(message)
    choice = completion.body["choices"][0]
    assert choice["finish_reason"] == finish
    assert choice["message"]["content"] == "Checking."
    assert choice["message"]["tool_calls"] == [{"id": "toolu_1", "type": "function", "function": {
        "name": "get_weather", "arguments": '{"city":"Paris"}'}}]
    assert completion.usage == Usage(input_tokens=115, output_tokens=7, cached_input_tokens=100)
    assert completion.body["usage"] == {"prompt_tokens": 115, "completion_tokens": 7, "total_tokens": 122,
                                        "prompt_tokens_details": {"cached_tokens": 100}}
    assert completion.body["model"] == "claude-x" and completion.body["id"] == "msg_1"


def test_anthropic_answer_not_a_message() -> None:
    with pytest.raises(UpstreamError):
        anthropic.completion_from({"type": "error"})


def test_anthropic_stream_events() -> None:
    translator = anthropic.StreamTranslator("fallback")
    events: list[tuple[str, dict[str, Any]]] = [
        ("message_start", {"type": "message_start", "message": {"id": "msg_9", "model": "claude-x", "usage": {
            "input_tokens": 20, "cache_read_input_tokens": 4, "output_tokens": 1}}}),
        ("content_block_start", {"type": "content_block_start", "index": 0,
                                 "content_block": {"type": "text", "text": ""}}),
        ("ping", {"type": "ping"}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                 "delta": {"type": "text_delta", "text": "Héllo"}}),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ("content_block_start", {"type": "content_block_start", "index": 1, "content_block": {
            "type": "tool_use", "id": "toolu_2", "name": "get_weather", "input": {}}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 1,
                                 "delta": {"type": "input_json_delta", "partial_json": '{"city":'}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 1,
                                 "delta": {"type": "input_json_delta", "partial_json": '"Paris"}'}}),
        ("content_block_stop", {"type": "content_block_stop", "index": 1}),
        ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "tool_use"},
                           "usage": {"output_tokens": 12}}),
        ("message_stop", {"type": "message_stop"}),
    ]
    chunks = [c for name, data in events for c in translator.feed(name, data)]
    assert translator.finished
    first = chunk_data(chunks[0])
    assert first["id"] == "msg_9" and first["model"] == "claude-x"
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert texts(chunks) == "Héllo"
    calls = [tc for ch in chunks for c in chunk_data(ch)["choices"] for tc in c["delta"].get("tool_calls", [])]
    assert calls[0] == {"index": 0, "id": "toolu_2", "type": "function",
                        "function": {"name": "get_weather", "arguments": ""}}
    assert "".join(tc["function"]["arguments"] for tc in calls) == '{"city":"Paris"}'
    assert [c["finish_reason"] for ch in chunks for c in chunk_data(ch)["choices"] if c["finish_reason"]] == [
        "tool_calls"]
    assert chunks[-1].usage == Usage(input_tokens=24, output_tokens=12, cached_input_tokens=4)
    assert chunk_data(chunks[-1])["choices"] == []
    assert sum(c.output_bytes for c in chunks) == len("Héllo".encode()) + len("get_weather") + len('{"city":"Paris"}')
    assert len({chunk_data(c)["id"] for c in chunks}) == 1


def test_anthropic_stream_error_event() -> None:
    translator = anthropic.StreamTranslator("m")
    with pytest.raises(UpstreamError) as caught:
        translator.feed("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
    assert caught.value.retryable
    with pytest.raises(UpstreamError) as refused:
        translator.feed("error", {"type": "error", "error": {"type": "invalid_request_error", "message": "bad"}})
    assert not refused.value.retryable


# --------------------------------------------------------------------------------- → Gemini


def test_gemini_request() -> None:
    body = gemini.generate_request(request(tools=[WEATHER], tool_choice={"type": "function", "function": {
        "name": "get_weather"}}, stop=["END"], temperature=1.5, top_p=0.5, seed=7,
        response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {
            "type": "object", "properties": {"a": {"type": ["string", "null"]}}, "additionalProperties": False}}}))
    assert body["systemInstruction"] == {"parts": [{"text": "Be brief.\n\nAnswer in English."}]}
    assert [c["role"] for c in body["contents"]] == ["user", "model", "user"]
    user = body["contents"][0]["parts"]
    assert user[1] == {"inlineData": {"mimeType": "image/png", "data": PNG_B64}}
    assert user[2] == {"fileData": {"mimeType": "image/jpeg", "fileUri": "https://example.com/cat.jpg"}}
    model = body["contents"][1]["parts"]
    assert model == [{"text": "Let me check."}, {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}},
                     {"functionCall": {"name": "get_weather", "args": {"city": "Rome"}}}]
    responses = body["contents"][2]["parts"]
    assert responses[0] == {"functionResponse": {"name": "get_weather", "response": {"result": "sunny"}}}
    assert responses[1] == {"functionResponse": {"name": "get_weather", "response": {"sky": "rain"}}}
    assert responses[2] == {"text": "Thanks. And tomorrow?"}
    (declarations,) = body["tools"]
    assert declarations["functionDeclarations"] == [{
        "name": "get_weather", "description": "Weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]
    assert body["toolConfig"] == {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}}
    config = body["generationConfig"]
    assert config["maxOutputTokens"] == 256 and config["temperature"] == 1.5 and config["topP"] == 0.5
    assert config["stopSequences"] == ["END"] and config["seed"] == 7
    assert config["responseMimeType"] == "application/json"
    assert config["responseSchema"] == {"type": "object", "properties": {"a": {"type": "string", "nullable": True}}}


@pytest.mark.parametrize(("choice", "mode"), [("auto", "AUTO"), ("none", "NONE"), ("required", "ANY")])
def test_gemini_tool_config(choice: str, mode: str) -> None:
    body = gemini.generate_request(request(tools=[WEATHER], tool_choice=choice))
    assert body["toolConfig"] == {"functionCallingConfig": {"mode": mode}}


def test_gemini_tool_message_needs_its_call() -> None:
    with pytest.raises(ChatTranslationError):
        gemini.generate_request(request([{"role": "user", "content": "hi"},
                                         {"role": "tool", "tool_call_id": "nowhere", "content": "x"}]))


@pytest.mark.parametrize(("reason", "finish"), [
    ("STOP", "stop"), ("MAX_TOKENS", "length"), ("SAFETY", "content_filter"), ("RECITATION", "content_filter"),
    ("OTHER", "stop")])
def test_gemini_answer(reason: str, finish: str) -> None:
    payload = {"candidates": [{"content": {"role": "model", "parts": [
        {"text": "thinking...", "thought": True}, {"text": "Hello "}, {"text": "there"}]},
        "finishReason": reason}], "usageMetadata": {"promptTokenCount": 30, "candidatesTokenCount": 5,
                                                     "thoughtsTokenCount": 9, "cachedContentTokenCount": 10},
        "modelVersion": "gemini-x", "responseId": "r1"}
    completion = gemini.completion_from(payload, "fallback")
    choice = completion.body["choices"][0]
    assert choice["message"]["content"] == "Hello there" and choice["finish_reason"] == finish
    assert completion.usage == Usage(input_tokens=30, output_tokens=14, cached_input_tokens=10)
    assert completion.body["model"] == "gemini-x"


def test_gemini_function_call_answer() -> None:
    payload = {"candidates": [{"content": {"role": "model", "parts": [
        {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}}]}, "finishReason": "STOP"}],
        "usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": 2}}
    completion = gemini.completion_from(payload, "gemini-x")
    choice = completion.body["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    (call,) = choice["message"]["tool_calls"]
    assert call["id"].startswith("call_") and call["function"] == {"name": "get_weather",
                                                                   "arguments": '{"city":"Paris"}'}


def test_gemini_blocked_prompt_is_content_policy() -> None:
    with pytest.raises(ContentPolicyError):
        gemini.completion_from({"promptFeedback": {"blockReason": "SAFETY"}}, "m")


def test_gemini_stream() -> None:
    translator = gemini.StreamTranslator("gemini-x")
    chunks = translator.feed({"candidates": [{"content": {"parts": [{"text": "Hel"}], "role": "model"}}],
                              "usageMetadata": {"promptTokenCount": 8}, "responseId": "r2"})
    chunks += translator.feed({"candidates": [{"content": {"parts": [
        {"text": "lo"}, {"functionCall": {"name": "f", "args": {"a": 1}}}], "role": "model"},
        "finishReason": "STOP"}], "usageMetadata": {"promptTokenCount": 8, "candidatesTokenCount": 4}})
    chunks += translator.end()
    assert chunk_data(chunks[0])["choices"][0]["delta"]["role"] == "assistant"
    assert texts(chunks) == "Hello"
    calls = [tc for ch in chunks for c in chunk_data(ch)["choices"] for tc in c["delta"].get("tool_calls", [])]
    assert calls[0]["index"] == 0 and calls[0]["function"] == {"name": "f", "arguments": '{"a":1}'}
    assert [c["finish_reason"] for ch in chunks for c in chunk_data(ch)["choices"] if c["finish_reason"]] == [
        "tool_calls"]
    assert chunks[-1].usage == Usage(8, 4)


def test_gemini_stream_without_finish_is_an_error() -> None:
    translator = gemini.StreamTranslator("m")
    translator.feed({"candidates": [{"content": {"parts": [{"text": "Hel"}]}}]})
    with pytest.raises(UpstreamError):
        translator.end()
    with pytest.raises(UpstreamError):
        gemini.StreamTranslator("m").feed({"error": {"code": 503, "status": "UNAVAILABLE", "message": "x"}})


# ------------------------------------------------------------------------ inbound Anthropic


ANTHROPIC_REQUEST: dict[str, Any] = {
    "model": "claude-test", "max_tokens": 300, "system": [{"type": "text", "text": "Be brief."}],
    "temperature": 0.5, "top_p": 0.9, "top_k": 40, "stop_sequences": ["END"], "metadata": {"user_id": "u-7"},
    "tools": [{"name": "get_weather", "description": "Weather", "input_schema": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}],
    "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
    "messages": [
        {"role": "user", "content": [{"type": "text", "text": "Look:"}, {"type": "image", "source": {
            "type": "base64", "media_type": "image/png", "data": PNG_B64}}, {"type": "image", "source": {
                "type": "url", "url": "https://example.com/a.png"}}]},
        {"role": "assistant", "content": [{"type": "thinking", "thinking": "..", "signature": "s"},
                                          {"type": "text", "text": "Checking."},
                                          {"type": "tool_use", "id": "toolu_1", "name": "get_weather",
                                           "input": {"city": "Paris"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": [
            {"type": "text", "text": "sunny"}]}, {"type": "text", "text": "and now?"}]},
    ],
}


def test_inbound_request() -> None:
    translated = inbound.chat_body_from_messages(ANTHROPIC_REQUEST)
    body = translated.body
    assert translated.model == "claude-test" and not translated.stream
    assert body["max_tokens"] == 300 and body["temperature"] == 0.5 and body["top_p"] == 0.9
    assert body["stop"] == ["END"] and body["user"] == "u-7" and "top_k" not in body
    assert body["messages"][0] == {"role": "system", "content": "Be brief."}
    assert body["messages"][1] == {"role": "user", "content": [
        {"type": "text", "text": "Look:"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_B64}"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]}
    assert body["messages"][2] == {"role": "assistant", "content": "Checking.", "tool_calls": [
        {"id": "toolu_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}]}
    assert body["messages"][3] == {"role": "tool", "tool_call_id": "toolu_1", "content": "sunny"}
    assert body["messages"][4] == {"role": "user", "content": "and now?"}
    assert body["tools"] == [{"type": "function", "function": {
        "name": "get_weather", "description": "Weather",
        "parameters": ANTHROPIC_REQUEST["tools"][0]["input_schema"]}}]
    assert body["tool_choice"] == "required" and body["parallel_tool_calls"] is False


def test_inbound_stream_asks_for_usage() -> None:
    translated = inbound.chat_body_from_messages({**ANTHROPIC_REQUEST, "stream": True,
                                                  "tool_choice": {"type": "tool", "name": "get_weather"}})
    assert translated.stream
    assert translated.body["stream"] is True and translated.body["stream_options"] == {"include_usage": True}
    assert translated.body["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}


def test_inbound_round_trip_through_the_adapter() -> None:
    """Anthropic in → canonical → Anthropic out gives back the conversation the client sent."""
    translated = inbound.chat_body_from_messages(ANTHROPIC_REQUEST)
    out = anthropic.messages_request(ChatRequest(body=translated.body, max_output_tokens=300), "claude-up",
                                     stream=False)
    sent = ANTHROPIC_REQUEST["messages"]
    assert out["messages"][0] == sent[0]
    assert out["messages"][1]["content"] == sent[1]["content"][1:]  # the thinking block is dropped
    assert out["messages"][2] == {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"}, {"type": "text", "text": "and now?"}]}
    assert out["system"] == "Be brief." and out["stop_sequences"] == ["END"]
    assert out["tools"] == ANTHROPIC_REQUEST["tools"]
    assert out["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}


@pytest.mark.parametrize(("change", "message"), [
    ({"max_tokens": None}, "max_tokens: Field required"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"model": None}, "model: Field required"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "system", "content": "x"}]}, "messages.0.role"),
    ({"messages": [{"role": "user", "content": ""}]}, "non-empty"),
    ({"messages": [{"role": "user", "content": [{"type": "image", "source": {
        "type": "base64", "media_type": "image/bmp", "data": "AA"}}]}]}, "media_type"),
    ({"temperature": 1.5}, "temperature"),
    ({"bogus": 1}, "bogus: Extra inputs are not permitted"),
    ({"tool_choice": {"type": "tool", "name": "nope"}}, "tool_choice.tool.name"),
    ({"tools": [{"name": "x", "input_schema": {"type": "string"}}]}, "input_schema"),
    ({"stream": "yes"}, "stream"),
    ({"metadata": {"other": 1}}, "metadata"),
])
def test_inbound_request_errors(change: dict[str, Any], message: str) -> None:
    body = {**ANTHROPIC_REQUEST, **change}
    body = {k: v for k, v in body.items() if v is not None}
    with pytest.raises(inbound.MessagesRequestError) as caught:
        inbound.chat_body_from_messages(body)
    assert message in caught.value.message


@pytest.mark.parametrize(("finish", "stop_reason"), [
    ("stop", "end_turn"), ("length", "max_tokens"), ("tool_calls", "tool_use"), ("content_filter", "refusal")])
def test_inbound_answer(finish: str, stop_reason: str) -> None:
    completion = {"id": "chatcmpl-abc", "object": "chat.completion", "model": "up", "choices": [{
        "index": 0, "finish_reason": finish, "message": {"role": "assistant", "content": "Hi!", "tool_calls": [
            {"id": "call_9", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}]}}]}
    message = inbound.message_from_completion(completion, Usage(50, 7, cached_input_tokens=20), "claude-test")
    assert message == {
        "id": "msg_abc", "type": "message", "role": "assistant", "model": "claude-test",
        "content": [{"type": "text", "text": "Hi!"}, {"type": "tool_use", "id": "call_9", "name": "f",
                                                      "input": {"a": 1}}],
        "stop_reason": stop_reason, "stop_sequence": None,
        "usage": {"input_tokens": 30, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 20,
                  "output_tokens": 7}}


def parse_events(frames: list[bytes]) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for frame in frames:
        head, data = frame.decode().strip().split("\n")
        assert head.startswith("event: ") and data.startswith("data: ")
        out.append((head[7:], orjson.loads(data[6:])))
    return out


def test_inbound_stream_events() -> None:
    writer = ChunkWriter("up", "chatcmpl-s1")
    encoder = inbound.MessagesStreamEncoder("claude-test", input_tokens_estimate=40)
    frames: list[bytes] = []
    for chunk in [writer.role(), writer.text("Hel"), writer.text("lo"),
                  writer.tool_call_start(0, "call_1", "f"), writer.tool_call_arguments(0, '{"a":'),
                  writer.tool_call_arguments(0, "1}"), writer.finish("tool_calls"), writer.usage(Usage(42, 9))]:
        frames += encoder.feed(chunk)
    frames += encoder.end()
    events = parse_events(frames)
    names = [name for name, _ in events]
    assert names == ["message_start", "ping", "content_block_start", "content_block_delta", "content_block_delta",
                     "content_block_stop", "content_block_start", "content_block_delta", "content_block_delta",
                     "content_block_stop", "message_delta", "message_stop"]
    assert all(data["type"] == name for name, data in events)
    start = events[0][1]["message"]
    assert start["id"] == "msg_s1" and start["model"] == "claude-test" and start["usage"]["input_tokens"] == 40
    assert events[2][1] == {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
    assert events[3][1]["delta"] == {"type": "text_delta", "text": "Hel"}
    assert events[6][1] == {"type": "content_block_start", "index": 1, "content_block": {
        "type": "tool_use", "id": "call_1", "name": "f", "input": {}}}
    assert events[7][1]["delta"] == {"type": "input_json_delta", "partial_json": '{"a":'}
    assert events[10][1] == {"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": None},
                             "usage": {"input_tokens": 42, "cache_creation_input_tokens": 0,
                                       "cache_read_input_tokens": 0, "output_tokens": 9}}


def test_inbound_stream_error_event() -> None:
    encoder = inbound.MessagesStreamEncoder("claude-test")
    writer = ChunkWriter("up")
    frames = encoder.feed(writer.text("partial"))
    frames += encoder.error("api_error", "the upstream stream broke")
    events = parse_events(frames)
    assert events[-1] == ("error", {"type": "error", "error": {"type": "api_error",
                                                               "message": "the upstream stream broke"}})
    assert [n for n, _ in events][:3] == ["message_start", "ping", "content_block_start"]


def test_inbound_stream_of_passthrough_chunks() -> None:
    """OpenAI-protocol upstreams pass raw bytes through; the encoder reads them."""
    raw = b'{"id":"chatcmpl-r","object":"chat.completion.chunk","created":1,"model":"gpt","choices":[' \
          b'{"index":0,"delta":{"content":"raw text"},"finish_reason":null}]}'
    encoder = inbound.MessagesStreamEncoder("claude-test")
    events = parse_events(encoder.feed(ChatChunk(data=None, raw=raw, output_bytes=8)) + encoder.end(Usage(3, 2)))
    assert events[3][1]["delta"] == {"type": "text_delta", "text": "raw text"}
    assert events[-2][1]["usage"]["output_tokens"] == 2 and events[-2][1]["delta"]["stop_reason"] == "end_turn"


def test_gemini_call_ids_carry_id_and_thought_signature_back() -> None:
    part = {"functionCall": {"id": "g-7", "name": "f", "args": {}}, "thoughtSignature": "c2lnbmF0dXJl+/=="}
    call_id = gemini.call_id_of(part)
    assert call_id.startswith("gem_") and gemini.carried_by(call_id) == ("g-7", "c2lnbmF0dXJl+/==")
    assert gemini.call_id_of({"functionCall": {"name": "f"}}).startswith("call_")
    assert gemini.carried_by("call_abc") == (None, None) and gemini.carried_by("gem_%%%") == (None, None)
    body = gemini.generate_request(request([
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": call_id, "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": call_id, "content": "done"}]))
    assert body["contents"][1]["parts"] == [{"functionCall": {"name": "f", "args": {}, "id": "g-7"},
                                             "thoughtSignature": "c2lnbmF0dXJl+/=="}]
    assert body["contents"][2]["parts"] == [{"functionResponse": {"name": "f", "response": {"result": "done"},
                                                                  "id": "g-7"}}]


def test_inbound_tool_result_images_follow_as_user_content_and_output_format() -> None:
    translated = inbound.chat_body_from_messages({
        "model": "m", "max_tokens": 10, "context_management": {"edits": []},
        "output_format": {"type": "json_schema", "schema": {"type": "object"}},
        "messages": [
            {"role": "user", "content": "shoot"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "screenshot", "input": {}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": [
                {"type": "text", "text": "here"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG_B64}}]},
                {"type": "text", "text": "what do you see?", "cache_control": {"type": "ephemeral"}}]}]})
    messages = translated.body["messages"]
    assert messages[2] == {"role": "tool", "tool_call_id": "t1", "content": "here"}
    assert messages[3] == {"role": "user", "content": [
        {"type": "text", "text": "(images returned by tool call t1)"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_B64}"}},
        {"type": "text", "text": "what do you see?"}]}
    assert translated.body["response_format"] == {"type": "json_schema", "json_schema": {
        "name": "output", "schema": {"type": "object"}}}
    assert "context_management" not in translated.body
    configured = inbound.chat_body_from_messages({"model": "m", "max_tokens": 5, "messages": [
        {"role": "user", "content": "x"}], "output_config": {"effort": "low", "format": {
            "type": "json_schema", "schema": {"type": "object", "properties": {}}}}})
    assert configured.body["response_format"]["json_schema"]["schema"] == {"type": "object", "properties": {}}


def test_base_urls_with_or_without_the_version() -> None:
    from apiinone.upstreams.anthropic.adapter import messages_url
    from apiinone.upstreams.gemini.adapter import models_url

    assert messages_url("https://api.anthropic.com") == "https://api.anthropic.com/v1/messages"
    assert messages_url("https://proxy.example/v1/") == "https://proxy.example/v1/messages"
    assert messages_url("") == "https://api.anthropic.com/v1/messages"
    assert models_url("https://generativelanguage.googleapis.com/v1beta") == \
        "https://generativelanguage.googleapis.com/v1beta/models"
    assert models_url("https://g.example", "v1") == "https://g.example/v1/models"
    assert models_url("") == "https://generativelanguage.googleapis.com/v1beta/models"
