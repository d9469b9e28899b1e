"""Canonical chat (OpenAI Chat Completions) ⇄ Anthropic Messages, for calls *to* Anthropic.

Request: system/developer messages → ``system``; consecutive turns of one role are merged (the
API wants user and assistant to alternate); ``tool`` messages → ``tool_result`` blocks of a user
turn; assistant ``tool_calls`` → ``tool_use`` blocks; ``image_url`` parts → ``image`` blocks
(``data:`` URLs as base64 sources, http(s) as url sources); ``max_tokens`` is always sent (the
API requires it); ``temperature`` is capped at 1 (Anthropic's range is 0–1), and ``top_p`` is sent
only without it (current models refuse both); ``stop`` →
``stop_sequences``; ``tool_choice`` required → any; ``user`` → ``metadata.user_id``.
``response_format``, ``seed``, penalties and ``logprobs`` have no Anthropic equivalent and are
dropped.

Answer: text blocks → ``content``, ``tool_use`` → ``tool_calls``, thinking blocks dropped;
``stop_reason`` end_turn/stop_sequence/pause_turn → stop, max_tokens → length, tool_use →
tool_calls, refusal → content_filter. Usage: input + cache writes + cache reads = prompt tokens
(cache reads also as cached tokens), output tokens as they are.
"""

from __future__ import annotations

from typing import Any

import orjson

from apiinone.kinds.chat.canonical import (
    ChatTranslationError,
    ChunkWriter,
    completion_body,
    content_parts,
    dumps,
    image_url_of,
    json_arguments,
    parse_data_url,
    stop_sequences,
    text_of,
    tool_call,
)
from apiinone.kinds.chat.job import ChatChunk, ChatCompletion, ChatRequest, Usage
from apiinone.upstreams.base import UpstreamError

STOP_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
IMAGE_MEDIA_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")


# --------------------------------------------------------------------------------------- request


def messages_request(request: ChatRequest, upstream_model: str, *, stream: bool) -> dict[str, Any]:
    body = request.body
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ChatTranslationError("messages must be a non-empty array", "messages")
    system: list[str] = []
    turns: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        param = f"messages[{i}]"
        if not isinstance(message, dict):
            raise ChatTranslationError(f"{param} must be an object", param)
        role = message.get("role")
        if role in ("system", "developer"):
            text = text_of(message.get("content"), f"{param}.content")
            if text:
                system.append(text)
            continue
        if role == "user":
            blocks = [_user_block(p, f"{param}.content[{j}]")
                      for j, p in enumerate(content_parts(message.get("content"), f"{param}.content"))]
            _append(turns, "user", [b for b in blocks if b is not None])
        elif role == "assistant":
            _append(turns, "assistant", _assistant_blocks(message, param))
        elif role in ("tool", "function"):
            tool_use_id = message.get("tool_call_id") or message.get("name")
            if not isinstance(tool_use_id, str) or not tool_use_id:
                raise ChatTranslationError(f"{param}.tool_call_id is required", f"{param}.tool_call_id")
            result: dict[str, Any] = {"type": "tool_result", "tool_use_id": tool_use_id,
                                      "content": text_of(message.get("content"), f"{param}.content")}
            _append(turns, "user", [result], results_first=True)
        else:
            raise ChatTranslationError(f"{param}.role {role!r} is not supported", f"{param}.role")
    if not turns:
        raise ChatTranslationError("messages must hold at least one user or assistant message", "messages")

    out: dict[str, Any] = {"model": upstream_model, "max_tokens": request.max_output_tokens, "messages": turns}
    if system:
        out["system"] = "\n\n".join(system)
    if body.get("temperature") is not None:
        out["temperature"] = min(float(body["temperature"]), 1.0)
    if body.get("top_p") is not None and "temperature" not in out:  # current models refuse both at once
        out["top_p"] = float(body["top_p"])
    stops = stop_sequences(body)
    if stops:
        out["stop_sequences"] = stops
    tools = body.get("tools")
    if tools:
        out["tools"] = [_tool(t, f"tools[{i}]") for i, t in enumerate(tools)]
        choice = _tool_choice(body.get("tool_choice"), body.get("parallel_tool_calls"))
        if choice is not None:
            out["tool_choice"] = choice
    if isinstance(body.get("user"), str) and body["user"]:
        out["metadata"] = {"user_id": body["user"]}
    if stream:
        out["stream"] = True
    return out


def _append(turns: list[dict[str, Any]], role: str, blocks: list[dict[str, Any]], *,
            results_first: bool = False) -> None:
    """Merge consecutive turns of one role; tool results go before other blocks of their turn."""
    if not blocks:
        return
    if turns and turns[-1]["role"] == role:
        existing = turns[-1]["content"]
        if results_first:
            firsts = [b for b in existing if b["type"] == "tool_result"]
            rest = [b for b in existing if b["type"] != "tool_result"]
            turns[-1]["content"] = [*firsts, *blocks, *rest]
        else:
            existing.extend(blocks)
        return
    turns.append({"role": role, "content": list(blocks)})


def _user_block(part: dict[str, Any], param: str) -> dict[str, Any] | None:
    kind = part["type"]
    if kind == "text":
        text = part.get("text")
        if not isinstance(text, str):
            raise ChatTranslationError(f"{param}.text must be a string", param)
        return {"type": "text", "text": text} if text else None
    if kind == "image_url":
        url = image_url_of(part, param)
        if url.startswith("data:"):
            media_type, data = parse_data_url(url, param)
            if media_type not in IMAGE_MEDIA_TYPES:
                raise ChatTranslationError(f"{param}: image type {media_type} is not supported "
                                           f"(use {', '.join(IMAGE_MEDIA_TYPES)})", param)
            return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise ChatTranslationError(f"{param}: content part type {kind!r} is not supported by this model", param)


def _assistant_blocks(message: dict[str, Any], param: str) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    for j, part in enumerate(content_parts(message.get("content"), f"{param}.content")):
        if part["type"] == "text" and isinstance(part.get("text"), str):
            if part["text"]:
                blocks.append({"type": "text", "text": part["text"]})
        elif part["type"] != "refusal":
            raise ChatTranslationError(f"{param}.content[{j}]: assistant content may only hold text", param)
    calls = message.get("tool_calls") or []
    if not isinstance(calls, list):
        raise ChatTranslationError(f"{param}.tool_calls must be an array", f"{param}.tool_calls")
    for k, call in enumerate(calls):
        cparam = f"{param}.tool_calls[{k}]"
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise ChatTranslationError(f"{cparam}.function.name is required", cparam)
        call_id = call.get("id")
        if not isinstance(call_id, str) or not call_id:
            raise ChatTranslationError(f"{cparam}.id is required", cparam)
        blocks.append({"type": "tool_use", "id": call_id, "name": function["name"],
                       "input": json_arguments(function.get("arguments"), f"{cparam}.function.arguments")})
    return blocks


def _tool(tool: Any, param: str) -> dict[str, Any]:
    function = tool.get("function") if isinstance(tool, dict) and tool.get("type", "function") == "function" else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise ChatTranslationError(f"{param} must be a function tool with a name", param)
    out: dict[str, Any] = {"name": function["name"],
                           "input_schema": function.get("parameters") or {"type": "object", "properties": {}}}
    if isinstance(function.get("description"), str):
        out["description"] = function["description"]
    return out


def _tool_choice(choice: Any, parallel: Any) -> dict[str, Any] | None:
    out: dict[str, Any]
    if choice is None:
        if parallel is False:
            return {"type": "auto", "disable_parallel_tool_use": True}
        return None
    if choice == "auto":
        out = {"type": "auto"}
    elif choice == "none":
        return {"type": "none"}
    elif choice == "required":
        out = {"type": "any"}
    elif isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        out = {"type": "tool", "name": choice["function"].get("name")}
    else:
        raise ChatTranslationError("tool_choice must be auto, none, required or a function", "tool_choice")
    if parallel is False:
        out["disable_parallel_tool_use"] = True
    return out


# ---------------------------------------------------------------------------------------- answer


def usage_of(usage: Any) -> Usage:
    if not isinstance(usage, dict):
        return Usage(0, 0)
    cache_read = _int(usage.get("cache_read_input_tokens"))
    prompt = _int(usage.get("input_tokens")) + _int(usage.get("cache_creation_input_tokens")) + cache_read
    return Usage(input_tokens=prompt, output_tokens=_int(usage.get("output_tokens")), cached_input_tokens=cache_read)


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def completion_from(message: dict[str, Any]) -> ChatCompletion:
    blocks = message.get("content")
    if message.get("type") != "message" or not isinstance(blocks, list):
        raise UpstreamError("upstream returned an answer that is not an Anthropic message", retryable=True)
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in blocks:
        if not isinstance(block, dict):
            continue
        if block.get("type") == "text" and isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif block.get("type") == "tool_use":
            calls.append(tool_call(str(block.get("id") or ""), str(block.get("name") or ""),
                                   dumps(block.get("input") or {})))
    usage = usage_of(message.get("usage"))
    body = completion_body(completion_id=str(message.get("id") or ""), model=str(message.get("model") or ""),
                           content="".join(texts) if texts or not calls else None, tool_calls=calls,
                           finish_reason=STOP_REASONS.get(str(message.get("stop_reason")), "stop"), usage=usage)
    return ChatCompletion(body=body, usage=usage)


# ---------------------------------------------------------------------------------------- stream


class StreamTranslator:
    """Anthropic stream events → canonical chunks, one stream at a time.

    ``message_start`` gives the role chunk (and the input usage), text and tool input deltas
    become content / tool call deltas, ``message_delta`` the finish reason and output usage, and
    ``message_stop`` the last chunk with the usage. ``error`` events raise (the adapter classifies)."""

    def __init__(self, fallback_model: str) -> None:
        self.writer = ChunkWriter(fallback_model)
        self.input_usage: dict[str, Any] = {}
        self.output_tokens = 0
        self.tool_index: dict[int, int] = {}
        self.finished = False

    def feed(self, event: str, payload: dict[str, Any]) -> list[ChatChunk]:
        kind = payload.get("type") or event
        if kind == "message_start":
            message = payload.get("message") or {}
            if message.get("id"):
                self.writer.id = str(message["id"])
            if message.get("model"):
                self.writer.model = str(message["model"])
            self.input_usage = dict(message.get("usage") or {})
            self.output_tokens = _int(self.input_usage.get("output_tokens"))
            return [self.writer.role()]
        if kind == "content_block_start":
            block = payload.get("content_block") or {}
            if block.get("type") == "tool_use":
                index = len(self.tool_index)
                self.tool_index[_int(payload.get("index"))] = index
                return [self.writer.tool_call_start(index, str(block.get("id") or ""), str(block.get("name") or ""))]
            if block.get("type") == "text" and block.get("text"):
                return [self.writer.text(str(block["text"]))]
            return []
        if kind == "content_block_delta":
            delta = payload.get("delta") or {}
            if delta.get("type") == "text_delta" and delta.get("text"):
                return [self.writer.text(str(delta["text"]))]
            if delta.get("type") == "input_json_delta" and delta.get("partial_json"):
                call_index = self.tool_index.get(_int(payload.get("index")))
                if call_index is not None:
                    return [self.writer.tool_call_arguments(call_index, str(delta["partial_json"]))]
            return []
        if kind == "message_delta":
            usage = payload.get("usage") or {}
            if "output_tokens" in usage:
                self.output_tokens = _int(usage.get("output_tokens"))
            for name in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens"):
                if usage.get(name) is not None:
                    self.input_usage[name] = usage[name]
            reason = (payload.get("delta") or {}).get("stop_reason")
            return [self.writer.finish(STOP_REASONS.get(str(reason), "stop"))] if reason else []
        if kind == "message_stop":
            self.finished = True
            return [self.writer.usage(self.usage)]
        if kind == "error":
            error = payload.get("error") or {}
            raise stream_error(str(error.get("type") or ""), str(error.get("message") or "stream error"))
        return []  # ping, content_block_stop, and event types added later

    @property
    def usage(self) -> Usage:
        return usage_of({**self.input_usage, "output_tokens": self.output_tokens})


def stream_error(error_type: str, message: str) -> UpstreamError:
    """An ``error`` event inside a 200 stream (``overloaded_error`` is the common one)."""
    retryable = error_type in ("overloaded_error", "api_error", "rate_limit_error", "timeout_error")
    return UpstreamError(f"upstream stream error ({error_type or 'unknown'}): {message[:300]}",
                         retryable=retryable)


def parse_event_data(data: str) -> dict[str, Any]:
    try:
        payload = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise UpstreamError("upstream sent a stream event that is not JSON", retryable=True) from None
    if not isinstance(payload, dict):
        raise UpstreamError("upstream sent an unexpected stream event", retryable=True)
    return payload
