"""``local-echo``: a chat "model" that needs no key and no network, so a fresh install can try the
chat API, the SDKs and the playground. It is NOT an AI model: it answers with the text of the last
user message (or the last tool result), streamed word by word, and reports token counts by the same
⌈UTF-8 bytes / 4⌉ estimate the metering uses, so what it charges is easy to check by hand.

With ``tools`` (and ``tool_choice`` not ``none``) and a user message last, it calls a tool (the one
``tool_choice`` names, else the first) with ``{"echo": "<the user's text>"}`` as arguments."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import orjson

from apiinone.kinds.chat import estimate_input_tokens, estimate_tokens
from apiinone.kinds.chat.job import ChatChunk, ChatCompletion, ChatRequest, Usage
from apiinone.upstreams.base import RouteTarget

_WORDS = re.compile(r"\S+\s*|\s+")


class LocalEchoProvider:
    provider = "local-echo"
    needs_key = False

    async def chat(self, target: RouteTarget, request: ChatRequest) -> ChatCompletion:
        answer = _answer(request)
        message: dict[str, Any] = {"role": "assistant", "content": answer.text, "refusal": None}
        if answer.tool_call is not None:
            message["content"] = None
            message["tool_calls"] = [answer.tool_call]
        usage = answer.usage(request)
        body = {
            "id": answer.id, "object": "chat.completion", "created": answer.created, "model": target.upstream_model,
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": answer.finish_reason}],
            "usage": _usage_body(usage), "system_fingerprint": "local-echo",
        }
        return ChatCompletion(body=body, usage=usage)

    async def chat_stream(self, target: RouteTarget, request: ChatRequest) -> AsyncIterator[ChatChunk]:
        answer = _answer(request)
        delay_s = float(target.options.get("word_delay_ms", 0)) / 1000
        head = {"id": answer.id, "object": "chat.completion.chunk", "created": answer.created,
                "model": target.upstream_model, "system_fingerprint": "local-echo"}

        def chunk(delta: dict[str, Any], finish: str | None = None, size: int = 0) -> ChatChunk:
            data = {**head, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
            return ChatChunk(data=data, raw=orjson.dumps(data), output_bytes=size)

        yield chunk({"role": "assistant", "content": "", "refusal": None})
        if answer.tool_call is not None:
            call, fn = answer.tool_call, answer.tool_call["function"]
            yield chunk({"tool_calls": [{"index": 0, "id": call["id"], "type": "function",
                                         "function": {"name": fn["name"], "arguments": ""}}]},
                        size=len(fn["name"].encode()))
            for piece in _pieces(fn["arguments"], 16):
                if delay_s:
                    await asyncio.sleep(delay_s)
                yield chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}, size=len(piece.encode()))
        else:
            for word in _WORDS.findall(answer.text):
                if delay_s:
                    await asyncio.sleep(delay_s)
                yield chunk({"content": word}, size=len(word.encode()))
        yield chunk({}, answer.finish_reason)
        usage = answer.usage(request)
        data = {**head, "choices": [], "usage": _usage_body(usage)}
        yield ChatChunk(data=data, raw=orjson.dumps(data), usage=usage)

    async def aclose(self) -> None:
        return None


class _Answer:
    def __init__(self, text: str, tool_call: dict[str, Any] | None, finish_reason: str) -> None:
        self.id = f"chatcmpl-echo-{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())
        self.text = text
        self.tool_call = tool_call
        self.finish_reason = finish_reason

    def output_bytes(self) -> int:
        if self.tool_call is not None:
            fn = self.tool_call["function"]
            return len(fn["name"].encode()) + len(fn["arguments"].encode())
        return len(self.text.encode())

    def usage(self, request: ChatRequest) -> Usage:
        return Usage(input_tokens=estimate_input_tokens(request.body),
                     output_tokens=estimate_tokens(self.output_bytes()))


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def _answer(request: ChatRequest) -> _Answer:
    messages: list[dict[str, Any]] = request.body.get("messages") or []
    last = messages[-1] if messages else {}
    tools = request.body.get("tools") or []
    choice = request.body.get("tool_choice")
    if last.get("role") == "tool":
        text = f"Tool result: {_text_of(last.get('content'))}"
    else:
        users = [m for m in messages if m.get("role") == "user"]
        text = _text_of(users[-1].get("content")) if users else ""
        if tools and choice != "none" and last.get("role") == "user":
            name = choice["function"]["name"] if isinstance(choice, dict) else tools[0]["function"]["name"]
            call = {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
                    "function": {"name": name, "arguments": orjson.dumps({"echo": text}).decode()}}
            return _Answer("", call, "tool_calls")
    text = text or "(local-echo: the last message had no text)"
    cap_bytes = request.max_output_tokens * 4
    if len(text.encode()) > cap_bytes:
        return _Answer(text.encode()[:cap_bytes].decode(errors="ignore"), None, "length")
    return _Answer(text, None, "stop")


def _pieces(text: str, size: int) -> list[str]:
    return [text[i:i + size] for i in range(0, len(text), size)] or [""]


def _usage_body(usage: Usage) -> dict[str, Any]:
    return {"prompt_tokens": usage.input_tokens, "completion_tokens": usage.output_tokens,
            "total_tokens": usage.input_tokens + usage.output_tokens,
            "prompt_tokens_details": {"cached_tokens": 0}, "completion_tokens_details": {"reasoning_tokens": 0}}
