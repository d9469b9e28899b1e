"""Builders and readers of the canonical chat shapes (OpenAI Chat Completions) that every
translating adapter and inbound protocol shares, so each writes only its own vendor's half."""

from __future__ import annotations

import base64
import binascii
import secrets
import time
from typing import Any

import orjson

from apiinone.kinds.chat.job import ChatChunk, Usage

FINISH_REASONS = ("stop", "length", "tool_calls", "content_filter")


class ChatTranslationError(ValueError):
    """A canonical request that the target protocol cannot express (``param`` names the field)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


def new_completion_id() -> str:
    return f"chatcmpl-{secrets.token_hex(12)}"


def new_tool_call_id() -> str:
    return f"call_{secrets.token_hex(12)}"


def usage_body(usage: Usage) -> dict[str, Any]:
    """OpenAI's ``usage`` object; ``prompt_tokens`` includes cached tokens, as OpenAI counts them."""
    body: dict[str, Any] = {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.input_tokens + usage.output_tokens,
    }
    if usage.cached_input_tokens:
        body["prompt_tokens_details"] = {"cached_tokens": usage.cached_input_tokens}
    return body


def completion_body(*, completion_id: str, model: str, content: str | None,
                    tool_calls: list[dict[str, Any]], finish_reason: str, usage: Usage,
                    created: int | None = None) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created if created is not None else int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason, "logprobs": None}],
        "usage": usage_body(usage),
    }


def tool_call(call_id: str, name: str, arguments: str) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


class ChunkWriter:
    """Makes the ``chat.completion.chunk`` events of one stream (same id, model and created)."""

    def __init__(self, model: str, completion_id: str | None = None) -> None:
        self.id = completion_id or new_completion_id()
        self.model = model
        self.created = int(time.time())

    def _chunk(self, choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        return {"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                "model": self.model, "choices": choices, **extra}

    def delta(self, delta: dict[str, Any], *, output_bytes: int = 0) -> ChatChunk:
        choice = {"index": 0, "delta": delta, "finish_reason": None, "logprobs": None}
        return ChatChunk(data=self._chunk([choice]), output_bytes=output_bytes)

    def role(self) -> ChatChunk:
        return self.delta({"role": "assistant", "content": ""})

    def text(self, text: str) -> ChatChunk:
        return self.delta({"content": text}, output_bytes=len(text.encode()))

    def tool_call_start(self, index: int, call_id: str, name: str, arguments: str = "") -> ChatChunk:
        call = {"index": index, "id": call_id, "type": "function",
                "function": {"name": name, "arguments": arguments}}
        return self.delta({"tool_calls": [call]}, output_bytes=len(name.encode()) + len(arguments.encode()))

    def tool_call_arguments(self, index: int, fragment: str) -> ChatChunk:
        return self.delta({"tool_calls": [{"index": index, "function": {"arguments": fragment}}]},
                          output_bytes=len(fragment.encode()))

    def finish(self, finish_reason: str) -> ChatChunk:
        choice = {"index": 0, "delta": {}, "finish_reason": finish_reason, "logprobs": None}
        return ChatChunk(data=self._chunk([choice]))

    def usage(self, usage: Usage) -> ChatChunk:
        """The last chunk: empty ``choices`` and the usage, as with ``stream_options.include_usage``."""
        return ChatChunk(data=self._chunk([], usage=usage_body(usage)), usage=usage)


# ------------------------------------------------------------------------------------- readers


def chunk_data(chunk: ChatChunk) -> dict[str, Any]:
    """The chunk's JSON object, parsing ``raw`` when only the passed-through bytes are kept."""
    if chunk.data is not None:
        return chunk.data
    if chunk.raw is not None:
        parsed = orjson.loads(chunk.raw)
        if isinstance(parsed, dict):
            return parsed
    return {}


def content_parts(content: Any, param: str) -> list[dict[str, Any]]:
    """A message's ``content`` as a list of parts (a string is one text part; null is none)."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    if isinstance(content, list):
        parts: list[dict[str, Any]] = []
        for i, part in enumerate(content):
            if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                raise ChatTranslationError(f"{param}[{i}] must be an object with a type", param)
            parts.append(part)
        return parts
    raise ChatTranslationError(f"{param} must be a string or an array of content parts", param)


def text_of(content: Any, param: str) -> str:
    """The text of a content that may only hold text (system prompts, tool results)."""
    texts: list[str] = []
    for part in content_parts(content, param):
        if part["type"] != "text" or not isinstance(part.get("text"), str):
            raise ChatTranslationError(f"{param} may only hold text parts", param)
        texts.append(part["text"])
    return "".join(texts) if len(texts) <= 1 else "\n".join(texts)


def parse_data_url(url: str, param: str) -> tuple[str, str]:
    """``data:<media type>;base64,<data>`` → (media type, base64 data), the base64 checked."""
    head, sep, data = url.partition(",")
    if not sep or not head.startswith("data:") or not head.endswith(";base64"):
        raise ChatTranslationError(f"{param}: a data URL must be data:<media type>;base64,<data>", param)
    media_type = head[5:-7].strip().lower()
    if "/" not in media_type:
        raise ChatTranslationError(f"{param}: the data URL names no media type", param)
    try:
        base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ChatTranslationError(f"{param}: the data URL is not valid base64", param) from None
    return media_type, data


def image_url_of(part: dict[str, Any], param: str) -> str:
    image = part.get("image_url")
    url = image.get("url") if isinstance(image, dict) else image
    if not isinstance(url, str) or not url:
        raise ChatTranslationError(f"{param}.image_url.url must be a URL", param)
    if not url.startswith(("data:", "https://", "http://")):
        raise ChatTranslationError(f"{param}.image_url.url must be an http(s) or data: URL", param)
    return url


def stop_sequences(body: dict[str, Any]) -> list[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    if isinstance(stop, str):
        return [stop]
    if isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        return list(stop)
    raise ChatTranslationError("stop must be a string or an array of strings", "stop")


def json_arguments(arguments: Any, param: str) -> dict[str, Any]:
    """A tool call's ``arguments`` (a JSON text) as the object protocols other than OpenAI's send."""
    if isinstance(arguments, dict):
        return arguments
    if arguments in (None, ""):
        return {}
    if not isinstance(arguments, str):
        raise ChatTranslationError(f"{param} must be a JSON text", param)
    try:
        parsed = orjson.loads(arguments)
    except orjson.JSONDecodeError:
        raise ChatTranslationError(f"{param} is not valid JSON", param) from None
    if not isinstance(parsed, dict):
        raise ChatTranslationError(f"{param} must encode a JSON object", param)
    return parsed


def dumps(value: Any) -> str:
    return orjson.dumps(value).decode()
