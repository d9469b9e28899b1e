"""Anthropic's Messages API *inbound*: its request → the canonical chat request, and the canonical
answer and stream → Anthropic's ``message`` object and stream events. Pure functions, no I/O.

Request (checked the way the Messages API checks it, errors as ``field: problem``):
``system`` (string or text blocks) → a system message; user text / ``image`` (base64 → ``data:``
URL, url → http(s) URL) blocks → user content parts; ``tool_result`` blocks → ``tool`` messages
(placed before the rest of their turn; ``is_error`` results are prefixed ``Error:``; images in a
result follow in the user message after the tool messages); ``output_format`` json_schema →
``response_format`` json_schema (also ``output_config.format``); assistant
text → content, ``tool_use`` → ``tool_calls``, thinking blocks dropped; ``max_tokens`` (required)
→ ``max_tokens``; ``stop_sequences`` → ``stop``; ``tools`` → function tools; ``tool_choice`` auto /
any / tool / none → auto / required / the function / none (``disable_parallel_tool_use`` →
``parallel_tool_calls: false``); ``metadata.user_id`` → ``user``; ``top_k``, ``thinking``,
``service_tier`` and the other fields without a canonical equivalent are dropped.

Answer: ``finish_reason`` stop → ``end_turn`` (``stop_sequence`` when the text was cut at one of the
request's sequences is not knowable from the canonical answer, so it is ``end_turn`` too), length
→ ``max_tokens``, tool_calls → ``tool_use``, content_filter → ``refusal``; usage: prompt tokens less
cached → ``input_tokens``, cached → ``cache_read_input_tokens``, completion → ``output_tokens``.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

import orjson

from apiinone.kinds.chat.canonical import chunk_data
from apiinone.kinds.chat.job import ChatChunk, Usage

REQUEST_FIELDS = frozenset({"model", "messages", "max_tokens", "system", "temperature", "top_p", "top_k",
                            "stop_sequences", "stream", "tools", "tool_choice", "metadata", "thinking",
                            "service_tier", "output_format", "output_config", "context_management",
                            "container", "inference_geo", "speed", "cache_control", "diagnostics",
                            "user_profile_id", "workspace_id"})
"""Every field of the Messages API; those with no canonical equivalent are accepted and dropped, so
tools built on newer SDKs are not refused for sending them."""
IMAGE_MEDIA_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")
STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use",
                "content_filter": "refusal", "function_call": "tool_use"}
CREDIT_BALANCE_TOO_LOW = ("Your credit balance is too low to access this model. "
                          "Please add credits to your apiinone account.")


class MessagesRequestError(ValueError):
    """An Anthropic ``invalid_request_error`` (400)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True, slots=True)
class InboundMessages:
    """A translated request: the canonical body, and what the answer must be written in."""

    body: dict[str, Any]
    model: str
    stream: bool


def error_body(error_type: str, message: str) -> dict[str, Any]:
    """Anthropic's error envelope."""
    return {"type": "error", "error": {"type": error_type, "message": message}}


# --------------------------------------------------------------------------------------- request


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _blocks(content: Any, where: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    if not isinstance(content, list):
        raise MessagesRequestError(f"{where}: Input should be a valid string or list of content blocks")
    for j, block in enumerate(content):
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            raise MessagesRequestError(f"{where}.{j}: Input should be a valid dictionary or object")
    return content


def _text(block: dict[str, Any], where: str) -> str:
    text = block.get("text")
    if not isinstance(text, str):
        raise MessagesRequestError(f"{where}.text: Field required")
    return text


def _image_part(block: dict[str, Any], where: str) -> dict[str, Any]:
    source = block.get("source")
    if not isinstance(source, dict):
        raise MessagesRequestError(f"{where}.source: Field required")
    if source.get("type") == "base64":
        media_type, data = source.get("media_type"), source.get("data")
        if media_type not in IMAGE_MEDIA_TYPES:
            raise MessagesRequestError(f"{where}.source.base64.media_type: Input should be 'image/jpeg', "
                                       "'image/png', 'image/gif' or 'image/webp'")
        if not isinstance(data, str) or not data:
            raise MessagesRequestError(f"{where}.source.base64.data: Field required")
        return {"type": "image_url", "image_url": {"url": f"data:{media_type};base64,{data}"}}
    if source.get("type") == "url":
        url = source.get("url")
        if not isinstance(url, str) or not url.startswith(("https://", "http://")):
            raise MessagesRequestError(f"{where}.source.url.url: an http(s) URL is required")
        return {"type": "image_url", "image_url": {"url": url}}
    raise MessagesRequestError(f"{where}.source: Input tag '{source.get('type')}' found using 'type' does not "
                               "match any of the expected tags: 'base64', 'url'")


def _tool_result(block: dict[str, Any], where: str) -> tuple[str, list[dict[str, Any]]]:
    """A tool result's text, and its images (a canonical tool message holds text only: they follow
    in a user message)."""
    content = block.get("content")
    images: list[dict[str, Any]] = []
    if content is None:
        text = ""
    elif isinstance(content, str):
        text = content
    elif isinstance(content, list):
        texts = []
        for k, part in enumerate(content):
            if isinstance(part, dict) and part.get("type") == "image":
                images.append(_image_part(part, f"{where}.content.{k}"))
            elif isinstance(part, dict) and part.get("type") == "text":
                texts.append(_text(part, f"{where}.content.{k}"))
            else:
                raise MessagesRequestError(f"{where}.content.{k}: tool results may hold text and image blocks")
        text = "\n".join(texts)
    else:
        raise MessagesRequestError(f"{where}.content: Input should be a valid string or list")
    return (f"Error: {text}" if block.get("is_error") else text), images


def _user_messages(blocks: list[dict[str, Any]], where: str) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    result_images: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for j, block in enumerate(blocks):
        at = f"{where}.{j}"
        kind = block["type"]
        if kind == "text":
            text = _text(block, at)
            if not text:
                raise MessagesRequestError("messages: text content blocks must be non-empty")
            parts.append({"type": "text", "text": text})
        elif kind == "image":
            parts.append(_image_part(block, at))
        elif kind == "tool_result":
            tool_use_id = block.get("tool_use_id")
            if not isinstance(tool_use_id, str) or not tool_use_id:
                raise MessagesRequestError(f"{at}.tool_use_id: Field required")
            text, images = _tool_result(block, at)
            results.append({"role": "tool", "tool_call_id": tool_use_id, "content": text})
            if images:
                result_images += [{"type": "text", "text": f"(images returned by tool call {tool_use_id})"},
                                  *images]
        else:
            raise MessagesRequestError(f"{at}: content block type '{kind}' is not supported here")
    out = list(results)
    parts = result_images + parts
    if parts:
        only_text = all(p["type"] == "text" for p in parts)
        content: Any = "\n".join(p["text"] for p in parts) if only_text and len(parts) == 1 else parts
        out.append({"role": "user", "content": content})
    return out


def _assistant_message(blocks: list[dict[str, Any]], where: str) -> dict[str, Any] | None:
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for j, block in enumerate(blocks):
        at = f"{where}.{j}"
        kind = block["type"]
        if kind == "text":
            texts.append(_text(block, at))
        elif kind == "tool_use":
            if not isinstance(block.get("id"), str) or not isinstance(block.get("name"), str):
                raise MessagesRequestError(f"{at}: tool_use blocks need an id and a name")
            tool_input = block.get("input", {})
            if not isinstance(tool_input, dict):
                raise MessagesRequestError(f"{at}.input: Input should be a valid dictionary")
            calls.append({"id": block["id"], "type": "function",
                          "function": {"name": block["name"], "arguments": orjson.dumps(tool_input).decode()}})
        elif kind in ("thinking", "redacted_thinking"):
            continue
        else:
            raise MessagesRequestError(f"{at}: content block type '{kind}' is not supported in assistant messages")
    if not texts and not calls:
        return None
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts else None}
    if calls:
        message["tool_calls"] = calls
    return message


def _system_text(system: Any) -> str:
    if isinstance(system, str):
        return system
    if isinstance(system, list):
        texts = []
        for i, block in enumerate(system):
            if not isinstance(block, dict) or block.get("type") != "text" or not isinstance(block.get("text"), str):
                raise MessagesRequestError(f"system.{i}: Input should be a text block")
            texts.append(block["text"])
        return "\n\n".join(texts)
    raise MessagesRequestError("system: Input should be a valid string or a list of text blocks")


def _tool(tool: Any, where: str) -> dict[str, Any]:
    if not isinstance(tool, dict) or not isinstance(tool.get("name"), str) or not tool["name"]:
        raise MessagesRequestError(f"{where}.name: Field required")
    if tool.get("type") not in (None, "custom"):
        raise MessagesRequestError(f"{where}: server tool '{tool['type']}' is not supported")
    schema = tool.get("input_schema")
    if not isinstance(schema, dict) or schema.get("type") != "object":
        raise MessagesRequestError(f"{where}.input_schema.type: Input should be 'object'")
    function: dict[str, Any] = {"name": tool["name"], "parameters": schema}
    if isinstance(tool.get("description"), str):
        function["description"] = tool["description"]
    return {"type": "function", "function": function}


def _tool_choice(choice: Any, names: list[str]) -> tuple[Any, bool]:
    """(canonical tool_choice, parallel tool calls disabled)."""
    if not isinstance(choice, dict) or choice.get("type") not in ("auto", "any", "tool", "none"):
        raise MessagesRequestError("tool_choice: Input tag found using 'type' does not match any of the expected "
                                   "tags: 'auto', 'any', 'tool', 'none'")
    no_parallel = choice.get("disable_parallel_tool_use") is True
    kind = choice["type"]
    if kind == "tool":
        if choice.get("name") not in names:
            raise MessagesRequestError(f"tool_choice.tool.name: Tool '{choice.get('name')}' not found in tools")
        return {"type": "function", "function": {"name": choice["name"]}}, no_parallel
    return {"auto": "auto", "any": "required", "none": "none"}[kind], no_parallel


def chat_body_from_messages(body: Any) -> InboundMessages:
    """An Anthropic Messages request → the canonical (OpenAI Chat Completions) request body."""
    if not isinstance(body, dict):
        raise MessagesRequestError("Input should be a valid dictionary")
    for name in body:
        if name not in REQUEST_FIELDS:
            raise MessagesRequestError(f"{name}: Extra inputs are not permitted")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise MessagesRequestError("model: Field required")
    max_tokens = body.get("max_tokens")
    if max_tokens is None:
        raise MessagesRequestError("max_tokens: Field required")
    if not _is_int(max_tokens) or max_tokens < 1:
        raise MessagesRequestError("max_tokens: Input should be a valid integer greater than or equal to 1")
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise MessagesRequestError("messages: Field required")
    if not messages:
        raise MessagesRequestError("messages: at least one message is required")
    out_messages: list[dict[str, Any]] = []
    if body.get("system") is not None:
        system = _system_text(body["system"])
        if system:
            out_messages.append({"role": "system", "content": system})
    for i, message in enumerate(messages):
        where = f"messages.{i}"
        if not isinstance(message, dict):
            raise MessagesRequestError(f"{where}: Input should be a valid dictionary")
        extra = set(message) - {"role", "content"}
        if extra:
            raise MessagesRequestError(f"{where}.{sorted(extra)[0]}: Extra inputs are not permitted")
        role = message.get("role")
        if role not in ("user", "assistant"):
            raise MessagesRequestError(f"{where}.role: Input should be 'user' or 'assistant'")
        if "content" not in message:
            raise MessagesRequestError(f"{where}.content: Field required")
        blocks = _blocks(message["content"], f"{where}.content")
        if role == "user":
            if not blocks:
                raise MessagesRequestError("messages: text content blocks must be non-empty")
            out_messages.extend(_user_messages(blocks, f"{where}.content"))
        else:
            assistant = _assistant_message(blocks, f"{where}.content")
            if assistant is not None:
                out_messages.append(assistant)

    out: dict[str, Any] = {"model": model, "messages": out_messages, "max_tokens": max_tokens}
    for name in ("temperature", "top_p"):
        value = body.get(name)
        if value is not None:
            if not _is_number(value) or not 0 <= value <= 1:
                raise MessagesRequestError(f"{name}: Input should be a number from 0 to 1")
            out[name] = value
    if body.get("top_k") is not None and (not _is_int(body["top_k"]) or body["top_k"] < 0):
        raise MessagesRequestError("top_k: Input should be a valid integer greater than or equal to 0")
    stops = body.get("stop_sequences")
    if stops is not None:
        if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
            raise MessagesRequestError("stop_sequences: Input should be a valid list of non-empty strings")
        if stops:
            out["stop"] = list(stops)
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise MessagesRequestError("stream: Input should be a valid boolean")
    if stream:
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise MessagesRequestError("tools: Input should be a valid list")
        converted = [_tool(t, f"tools.{i}") for i, t in enumerate(tools)]
        if converted:
            out["tools"] = converted
    if body.get("tool_choice") is not None:
        names = [t["function"]["name"] for t in out.get("tools", [])]
        choice, no_parallel = _tool_choice(body["tool_choice"], names)
        if names:
            out["tool_choice"] = choice
            if no_parallel:
                out["parallel_tool_calls"] = False
        elif choice not in ("auto", "none"):
            raise MessagesRequestError("tool_choice: tools must be set when tool_choice forces a tool")
    output_config = body.get("output_config")
    output_format = body.get("output_format")
    if isinstance(output_config, dict) and output_config.get("format") is not None:
        output_format = output_config["format"]
    if output_format is not None:
        if not isinstance(output_format, dict) or output_format.get("type") != "json_schema" \
                or not isinstance(output_format.get("schema"), dict):
            raise MessagesRequestError("output_format: expected {\"type\": \"json_schema\", \"schema\": {...}}")
        out["response_format"] = {"type": "json_schema",
                                  "json_schema": {"name": "output", "schema": output_format["schema"]}}
    metadata = body.get("metadata")
    if metadata is not None:
        if not isinstance(metadata, dict) or set(metadata) - {"user_id"}:
            raise MessagesRequestError("metadata: only user_id is permitted")
        user_id = metadata.get("user_id")
        if user_id is not None:
            if not isinstance(user_id, str):
                raise MessagesRequestError("metadata.user_id: Input should be a valid string")
            if user_id:
                out["user"] = user_id[:256]
    return InboundMessages(body=out, model=model, stream=stream)


# ---------------------------------------------------------------------------------------- answer


def message_id(canonical_id: Any) -> str:
    text = str(canonical_id or "")
    if text.startswith("msg_"):
        return text
    return f"msg_{text.removeprefix('chatcmpl-') or secrets.token_hex(12)}"


def usage_body(usage: Usage) -> dict[str, Any]:
    cached = min(max(0, usage.cached_input_tokens), usage.input_tokens)
    return {"input_tokens": usage.input_tokens - cached, "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": cached, "output_tokens": usage.output_tokens}


def _arguments(text: Any) -> dict[str, Any]:
    if isinstance(text, dict):
        return text
    try:
        parsed = orjson.loads(text or "{}")
    except (orjson.JSONDecodeError, TypeError):
        return {}
    return parsed if isinstance(parsed, dict) else {}


def message_from_completion(completion: dict[str, Any], usage: Usage, model: str) -> dict[str, Any]:
    """A canonical ``chat.completion`` → Anthropic's ``message`` object (``model`` as the client named it)."""
    choices = completion.get("choices") or [{}]
    choice = choices[0] if isinstance(choices[0], dict) else {}
    message = choice.get("message") or {}
    content: list[dict[str, Any]] = []
    text = message.get("content")
    if isinstance(text, list):
        text = "".join(str(p.get("text", "")) for p in text if isinstance(p, dict))
    if isinstance(text, str) and text:
        content.append({"type": "text", "text": text})
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        content.append({"type": "tool_use", "id": str(call.get("id") or f"toolu_{secrets.token_hex(12)}"),
                        "name": str(function.get("name") or ""), "input": _arguments(function.get("arguments"))})
    return {"id": message_id(completion.get("id")), "type": "message", "role": "assistant", "model": model,
            "content": content, "stop_reason": STOP_REASONS.get(str(choice.get("finish_reason")), "end_turn"),
            "stop_sequence": None, "usage": usage_body(usage)}


def sse_event(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


class MessagesStreamEncoder:
    """Canonical ``chat.completion.chunk`` objects → Anthropic's stream events, in order.

    The first chunk opens the message (``message_start`` with the input estimate, then ``ping``);
    text deltas go in a text block, each tool call in its own ``tool_use`` block with
    ``input_json_delta`` fragments; :meth:`end` closes the open block and sends ``message_delta``
    (stop reason, the real usage) and ``message_stop``; :meth:`error` an ``error`` event."""

    def __init__(self, model: str, input_tokens_estimate: int = 0) -> None:
        self.model = model
        self.input_estimate = input_tokens_estimate
        self.started = False
        self.block_index = -1
        self.open_block: str | None = None
        self.tool_blocks: dict[int, int] = {}
        self.stop_reason: str | None = None
        self.usage: Usage | None = None

    def _start(self, data: dict[str, Any]) -> list[bytes]:
        self.started = True
        message: dict[str, Any] = {
            "id": message_id(data.get("id")), "type": "message", "role": "assistant", "model": self.model,
            "content": [], "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": self.input_estimate, "cache_creation_input_tokens": 0,
                      "cache_read_input_tokens": 0, "output_tokens": 0}}
        return [sse_event("message_start", {"type": "message_start", "message": message}),
                sse_event("ping", {"type": "ping"})]

    def _close_block(self) -> list[bytes]:
        if self.open_block is None:
            return []
        self.open_block = None
        return [sse_event("content_block_stop", {"type": "content_block_stop", "index": self.block_index})]

    def _open_block(self, kind: str, block: dict[str, Any]) -> list[bytes]:
        out = self._close_block()
        self.block_index += 1
        self.open_block = kind
        out.append(sse_event("content_block_start", {"type": "content_block_start", "index": self.block_index,
                                                     "content_block": block}))
        return out

    def feed(self, chunk: ChatChunk) -> list[bytes]:
        data = chunk_data(chunk)
        out: list[bytes] = [] if self.started else self._start(data)
        if chunk.usage is not None:
            self.usage = chunk.usage
        for choice in data.get("choices") or []:
            delta = choice.get("delta") or {}
            text = delta.get("content")
            if isinstance(text, str) and text:
                if self.open_block != "text":
                    out += self._open_block("text", {"type": "text", "text": ""})
                out.append(sse_event("content_block_delta", {"type": "content_block_delta", "index": self.block_index,
                                                             "delta": {"type": "text_delta", "text": text}}))
            for call in delta.get("tool_calls") or []:
                out += self._tool_call(call)
            if choice.get("finish_reason"):
                self.stop_reason = STOP_REASONS.get(str(choice["finish_reason"]), "end_turn")
        return out

    def _tool_call(self, call: dict[str, Any]) -> list[bytes]:
        out: list[bytes] = []
        index = call.get("index", 0)
        function = call.get("function") or {}
        if index not in self.tool_blocks:
            out += self._open_block("tool_use", {"type": "tool_use",
                                                 "id": str(call.get("id") or f"toolu_{secrets.token_hex(12)}"),
                                                 "name": str(function.get("name") or ""), "input": {}})
            self.tool_blocks[index] = self.block_index
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments:
            out.append(sse_event("content_block_delta", {"type": "content_block_delta",
                                                         "index": self.tool_blocks[index],
                                                         "delta": {"type": "input_json_delta",
                                                                   "partial_json": arguments}}))
        return out

    def end(self, usage: Usage | None = None) -> list[bytes]:
        """The closing events; ``usage`` (what is charged) overrides what the chunks reported."""
        out = [] if self.started else self._start({})
        out += self._close_block()
        final = usage or self.usage or Usage(self.input_estimate, 0, estimated=True)
        out.append(sse_event("message_delta", {"type": "message_delta",
                                               "delta": {"stop_reason": self.stop_reason or "end_turn",
                                                         "stop_sequence": None},
                                               "usage": usage_body(final)}))
        out.append(sse_event("message_stop", {"type": "message_stop"}))
        return out

    def error(self, error_type: str, message: str) -> list[bytes]:
        """An ``error`` event, as Anthropic ends a stream that broke after it began."""
        out = [] if self.started else self._start({})
        return [*out, sse_event("error", error_body(error_type, message))]
