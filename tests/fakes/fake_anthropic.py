"""A protocol-faithful fake of Anthropic's Messages API (``POST /v1/messages``) on loopback.

It checks requests the way the API does (the key in ``x-api-key`` or ``Authorization: Bearer``, the
``anthropic-version`` header,
required ``model`` / ``max_tokens`` / ``messages``, roles, content block shapes, image sources,
tool_use ↔ tool_result pairing, ranges of temperature and top_p and never both, unknown fields) and answers with
Anthropic's shapes: the ``message`` object, the SSE events ``message_start``,
``content_block_start``, ``ping``, ``content_block_delta`` (``text_delta``, ``input_json_delta``),
``content_block_stop``, ``message_delta``, ``message_stop`` and ``error``, and the error envelope
``{"type": "error", "error": {"type", "message"}, "request_id"}``. One stricter rule than the
vendor: user and assistant turns must alternate (the API merges repeats; a translator should not
send them).

``with FakeAnthropic() as fake: fake.base_url, fake.fail_next(529), fake.cut_next(3), fake.hang_next()``;
as a process: ``python -m tests.fakes.fake_anthropic --port 0 --port-file F`` (control routes under
``/_fake/``, see :mod:`tests.fakes.loopback`).
"""

from __future__ import annotations

import asyncio
import re
import secrets
from collections.abc import AsyncIterator
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from tests.fakes.chat_script import Reply, input_tokens, reply_for, tool_output_tokens
from tests.fakes.loopback import (
    FakeState,
    LoopbackFake,
    Misbehaviour,
    StreamCut,
    control_routes,
    json_response,
    pause,
    record_of,
    serve_main,
)

DEFAULT_API_KEY = "sk-ant-api03-fake-anthropic-key"
API_VERSION = re.compile(r"^20\d\d-\d\d-\d\d$")
"""Dated versions (``2023-06-01``, and the newer ones SDKs send); anything else is refused."""
MODEL_PATTERN = re.compile(r"^claude-[a-z0-9.\-]+$")
TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,128}$")
IMAGE_MEDIA_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")
REQUEST_FIELDS = frozenset({"model", "messages", "max_tokens", "system", "temperature", "top_p", "top_k",
                            "stop_sequences", "stream", "tools", "tool_choice", "metadata", "thinking",
                            "service_tier", "container", "mcp_servers"})
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error", 500: "api_error",
               529: "overloaded_error"}
STOP_REASONS = {"end": "end_turn", "max_tokens": "max_tokens", "stop_sequence": "stop_sequence", "tool": "tool_use"}


def anthropic_error(error_type: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": error_type, "message": message},
            "request_id": f"req_{secrets.token_hex(12)}"}


def default_error_body(status: int) -> dict[str, Any]:
    error_type = ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    messages = {"overloaded_error": "Overloaded", "rate_limit_error": "Number of request tokens has exceeded your "
                "per-minute rate limit", "authentication_error": "invalid x-api-key",
                "permission_error": "Your API key does not have permission to use the specified resource.",
                "api_error": "Internal server error"}
    return anthropic_error(error_type, messages.get(error_type, f"Scripted failure with HTTP {status}."))


class Invalid(Exception):
    def __init__(self, message: str, status: int = 400, error_type: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.message, self.status, self.error_type = message, status, error_type


def _blocks(content: Any, where: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        if not content:
            raise Invalid(f"{where}: text content blocks must be non-empty")
        return [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise Invalid(f"{where}: Input should be a valid list")
    return content


def _check_block(block: Any, where: str, role: str) -> None:
    if not isinstance(block, dict) or not isinstance(block.get("type"), str):
        raise Invalid(f"{where}: Input should be a valid dictionary or object to extract fields from")
    kind = block["type"]
    if kind == "text":
        if not isinstance(block.get("text"), str):
            raise Invalid(f"{where}.text: Field required")
        if not block["text"]:
            raise Invalid("messages: text content blocks must be non-empty")
    elif kind == "image":
        if role != "user":
            raise Invalid(f"{where}: image blocks are only allowed in user messages")
        source = block.get("source")
        if not isinstance(source, dict):
            raise Invalid(f"{where}.source: Field required")
        if source.get("type") == "base64":
            if source.get("media_type") not in IMAGE_MEDIA_TYPES:
                raise Invalid(f"{where}.source.base64.media_type: Input should be 'image/jpeg', 'image/png', "
                              "'image/gif' or 'image/webp'")
            if not isinstance(source.get("data"), str) or not source["data"]:
                raise Invalid(f"{where}.source.base64.data: Field required")
        elif source.get("type") == "url":
            if not isinstance(source.get("url"), str) or not source["url"].startswith(("https://", "http://")):
                raise Invalid(f"{where}.source.url.url: Field required")
        else:
            raise Invalid(f"{where}.source: Input tag '{source.get('type')}' found using 'type' does not match "
                          "any of the expected tags: 'base64', 'url'")
    elif kind == "tool_use":
        if role != "assistant":
            raise Invalid(f"{where}: tool_use blocks are only allowed in assistant messages")
        if not isinstance(block.get("id"), str) or not isinstance(block.get("name"), str):
            raise Invalid(f"{where}: tool_use blocks need an id and a name")
        if not isinstance(block.get("input"), dict):
            raise Invalid(f"{where}.input: Input should be a valid dictionary")
    elif kind == "tool_result":
        if role != "user":
            raise Invalid(f"{where}: tool_result blocks are only allowed in user messages")
        if not isinstance(block.get("tool_use_id"), str):
            raise Invalid(f"{where}.tool_use_id: Field required")
        content = block.get("content")
        if content is not None and not isinstance(content, (str, list)):
            raise Invalid(f"{where}.content: Input should be a valid string or list")
    elif kind not in ("thinking", "redacted_thinking", "document"):
        raise Invalid(f"{where}: Input tag '{kind}' found using 'type' does not match any of the expected tags")


def validate(body: Any) -> dict[str, Any]:
    """Reject what the Messages API rejects, with its wording (``field: problem``)."""
    if not isinstance(body, dict):
        raise Invalid("Input should be a valid dictionary")
    for name in body:
        if name not in REQUEST_FIELDS:
            raise Invalid(f"{name}: Extra inputs are not permitted")
    model = body.get("model")
    if not isinstance(model, str):
        raise Invalid("model: Field required")
    if not MODEL_PATTERN.match(model):
        raise Invalid(f"model: {model}", 404, "not_found_error")
    max_tokens = body.get("max_tokens")
    if max_tokens is None:
        raise Invalid("max_tokens: Field required")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise Invalid("max_tokens: Input should be greater than or equal to 1")
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise Invalid("messages: Field required")
    if not messages:
        raise Invalid("messages: at least one message is required")
    pending_tool_uses: set[str] = set()
    previous_role = None
    for i, message in enumerate(messages):
        where = f"messages.{i}"
        if not isinstance(message, dict):
            raise Invalid(f"{where}: Input should be a valid dictionary")
        role = message.get("role")
        if role not in ("user", "assistant"):
            raise Invalid(f"{where}.role: Input should be 'user' or 'assistant'")
        if role == previous_role:
            raise Invalid(f"messages: roles must alternate between \"user\" and \"assistant\", but found "
                          f"multiple \"{role}\" roles in a row")
        previous_role = role
        blocks = _blocks(message.get("content"), f"{where}.content")
        for j, block in enumerate(blocks):
            _check_block(block, f"{where}.content.{j}", role)
        if pending_tool_uses:
            answered = {b.get("tool_use_id") for b in blocks if b.get("type") == "tool_result"}
            missing = sorted(pending_tool_uses - answered)
            if missing:
                raise Invalid(f"messages.{i}: `tool_use` ids were found without `tool_result` blocks immediately "
                              f"after: {', '.join(missing)}. Each `tool_use` block must have a corresponding "
                              "`tool_result` block in the next message.")
            seen_other = False
            for block in blocks:
                if block.get("type") != "tool_result":
                    seen_other = True
                elif seen_other:
                    raise Invalid(f"messages.{i}: tool_result blocks must come first in the content")
        elif role == "user":
            stray = [b.get("tool_use_id") for b in blocks if b.get("type") == "tool_result"]
            if stray:
                raise Invalid(f"messages.{i}.content.0: unexpected `tool_use_id` found in `tool_result` blocks: "
                              f"{stray[0]}. Each `tool_result` block must have a corresponding `tool_use` block "
                              "in the previous message.")
        pending_tool_uses = {str(b["id"]) for b in blocks if b.get("type") == "tool_use"}
    system = body.get("system")
    if system is not None and not isinstance(system, str):
        if not isinstance(system, list) or not all(isinstance(b, dict) and b.get("type") == "text"
                                                   and isinstance(b.get("text"), str) for b in system):
            raise Invalid("system: Input should be a valid string or a list of text blocks")
    for name in ("temperature", "top_p"):
        value = body.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not 0 <= value <= 1):
            raise Invalid(f"{name}: Input should be less than or equal to 1")
    if body.get("temperature") is not None and body.get("top_p") is not None:
        raise Invalid("`temperature` and `top_p` cannot both be specified for this model. Please use only one.")
    stops = body.get("stop_sequences")
    if stops is not None and (not isinstance(stops, list) or not all(isinstance(s, str) for s in stops)):
        raise Invalid("stop_sequences: Input should be a valid list of strings")
    if "stream" in body and not isinstance(body["stream"], bool):
        raise Invalid("stream: Input should be a valid boolean")
    tools = body.get("tools") or []
    names: list[str] = []
    if not isinstance(tools, list):
        raise Invalid("tools: Input should be a valid list")
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict) or not isinstance(tool.get("name"), str) or not TOOL_NAME.match(tool["name"]):
            raise Invalid(f"tools.{i}.custom.name: String should match pattern '^[a-zA-Z0-9_-]{{1,128}}$'")
        schema = tool.get("input_schema")
        if not isinstance(schema, dict) or schema.get("type") != "object":
            raise Invalid(f"tools.{i}.custom.input_schema.type: Input should be 'object'")
        names.append(tool["name"])
    choice = body.get("tool_choice")
    if choice is not None:
        if not isinstance(choice, dict) or choice.get("type") not in ("auto", "any", "tool", "none"):
            raise Invalid("tool_choice: Input tag found using 'type' does not match any of the expected tags: "
                          "'auto', 'any', 'tool', 'none'")
        if choice["type"] == "tool" and choice.get("name") not in names:
            raise Invalid(f"tool_choice.tool.name: Tool '{choice.get('name')}' not found in tools")
    metadata = body.get("metadata")
    if metadata is not None and (not isinstance(metadata, dict) or set(metadata) - {"user_id"}):
        raise Invalid("metadata: only user_id is permitted")
    return body


def _result_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(b.get("text", "")) for b in content if isinstance(b, dict))
    return ""


def reply_of(body: dict[str, Any], state: FakeState) -> Reply:
    last = body["messages"][-1]
    blocks = _blocks(last["content"], "last")
    tool_results = [_result_text(b.get("content")) for b in blocks if b.get("type") == "tool_result"]
    user_texts = [str(b["text"]) for b in blocks if b.get("type") == "text"]
    images = sum(1 for b in blocks if b.get("type") == "image")
    text = " ".join(user_texts) + (f" [{images} image{'s' if images > 1 else ''}]" if images else "")
    choice = body.get("tool_choice") or {"type": "auto"}
    tools = [(t["name"], t["input_schema"]) for t in body.get("tools") or []]
    return reply_for(last_user_text=text.strip(), tool_results=tool_results, tools=tools,
                     forced_tool=choice.get("name") if choice["type"] == "tool" else None,
                     tools_allowed=choice["type"] != "none", max_tokens=body["max_tokens"],
                     stop_sequences=list(body.get("stop_sequences") or []), canned=state.options.get("reply"))


def usage_of(body_bytes: int, output_tokens: int, state: FakeState) -> dict[str, Any]:
    cache_read = int(state.options.get("cache_read_input_tokens", 0))
    return {"input_tokens": input_tokens(body_bytes), "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": cache_read, "output_tokens": output_tokens, "service_tier": "standard"}


def message_of(body: dict[str, Any], reply: Reply, body_bytes: int, state: FakeState) -> dict[str, Any]:
    content: list[dict[str, Any]] = []
    output = len(reply.pieces)
    if reply.text:
        content.append({"type": "text", "text": reply.text})
    if reply.tool is not None:
        content.append({"type": "tool_use", "id": f"toolu_{secrets.token_hex(12)}", "name": reply.tool.name,
                        "input": reply.tool.input})
        output = tool_output_tokens(reply.tool, orjson.dumps(reply.tool.input).decode())
    return {"id": f"msg_{secrets.token_hex(12)}", "type": "message", "role": "assistant", "model": body["model"],
            "content": content, "stop_reason": STOP_REASONS[reply.stop], "stop_sequence": reply.stop_sequence,
            "usage": usage_of(body_bytes, output, state)}


def _event(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def stream_events(message: dict[str, Any], reply: Reply) -> list[bytes]:
    usage = dict(message["usage"])
    start = {**message, "content": [], "stop_reason": None, "stop_sequence": None,
             "usage": {**usage, "output_tokens": 1}}
    events = [_event("message_start", {"type": "message_start", "message": start})]
    index = 0
    if reply.pieces:
        events.append(_event("content_block_start", {"type": "content_block_start", "index": index,
                                                     "content_block": {"type": "text", "text": ""}}))
        events.append(_event("ping", {"type": "ping"}))
        for piece in reply.pieces:
            events.append(_event("content_block_delta", {"type": "content_block_delta", "index": index,
                                                         "delta": {"type": "text_delta", "text": piece}}))
        events.append(_event("content_block_stop", {"type": "content_block_stop", "index": index}))
        index += 1
    for block in message["content"]:
        if block["type"] != "tool_use":
            continue
        events.append(_event("content_block_start", {"type": "content_block_start", "index": index,
                                                     "content_block": {**block, "input": {}}}))
        arguments = orjson.dumps(block["input"]).decode()
        for at in range(0, len(arguments), 8):
            events.append(_event("content_block_delta", {"type": "content_block_delta", "index": index, "delta": {
                "type": "input_json_delta", "partial_json": arguments[at:at + 8]}}))
        events.append(_event("content_block_stop", {"type": "content_block_stop", "index": index}))
        index += 1
    events.append(_event("message_delta", {"type": "message_delta", "delta": {
        "stop_reason": message["stop_reason"], "stop_sequence": message["stop_sequence"]},
        "usage": {"output_tokens": usage["output_tokens"]}}))
    events.append(_event("message_stop", {"type": "message_stop"}))
    return events


def build_app(state: FakeState) -> Starlette:
    async def messages(request: Request) -> Response:
        rec = await record_of(request)
        response = await _answer(request, rec.json, state)
        rec.status = response.status_code
        state.record(rec)
        return response

    async def not_found(request: Request, exc: Exception) -> Response:
        return json_response(anthropic_error("not_found_error", "Not Found"), 404)

    routes = [Route("/v1/messages", messages, methods=["POST"]), *control_routes(state)]
    return Starlette(routes=routes, exception_handlers={404: not_found, 405: not_found})


async def _answer(request: Request, body: Any, state: FakeState) -> Response:
    key = request.headers.get("x-api-key")
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if not key and scheme.lower() == "bearer":  # newer SDKs send the API key as a bearer token
        key = token.strip()
    if not key:
        return json_response(anthropic_error("authentication_error", "x-api-key header is required"), 401)
    if state.api_key is not None and key != state.api_key:
        return json_response(anthropic_error("authentication_error", "invalid x-api-key"), 401)
    version = request.headers.get("anthropic-version")
    if not version:
        return json_response(anthropic_error("invalid_request_error", "anthropic-version: header is required"), 400)
    if not API_VERSION.match(version):
        return json_response(anthropic_error("invalid_request_error",
                                             f"anthropic-version: invalid version {version}"), 400)
    raw = await request.body()
    if body is None:
        return json_response(anthropic_error("invalid_request_error", "There was an issue with the request body: "
                                             "the body must be a JSON object"), 400)
    misbehaviour = state.next_misbehaviour()
    await pause(state, misbehaviour)
    if misbehaviour is not None and misbehaviour.status:
        return json_response(misbehaviour.body if misbehaviour.body is not None
                             else default_error_body(misbehaviour.status), misbehaviour.status,
                             headers={"request-id": f"req_{secrets.token_hex(8)}", **misbehaviour.headers})
    try:
        validate(body)
    except Invalid as exc:
        return json_response(anthropic_error(exc.error_type, exc.message), exc.status)
    reply = reply_of(body, state)
    message = message_of(body, reply, len(raw), state)
    headers = {"request-id": f"req_{secrets.token_hex(8)}", "anthropic-organization-id": "org-fake"}
    if not body.get("stream"):
        return json_response(message, headers=headers)
    events = stream_events(message, reply)
    return StreamingResponse(_stream(events, misbehaviour, state), media_type="text/event-stream",
                             headers={**headers, "cache-control": "no-cache"})


async def _stream(events: list[bytes], misbehaviour: Misbehaviour | None, state: FakeState) -> AsyncIterator[bytes]:
    cut = misbehaviour.cut_after if misbehaviour is not None else None
    delay_s = float(state.options.get("event_delay_ms", 0)) / 1000
    finished = False
    try:
        for n, event in enumerate(events):
            if cut is not None and n >= cut:
                assert misbehaviour is not None
                if misbehaviour.error is not None:
                    error = misbehaviour.error if isinstance(misbehaviour.error, dict) else \
                        anthropic_error("overloaded_error", "Overloaded")
                    finished = True
                    yield _event("error", {"type": "error", "error": error.get("error", error)})
                    return
                finished = True
                raise StreamCut("scripted cut")
            if delay_s and n:
                await asyncio.sleep(delay_s)
            yield event
        finished = True
    finally:
        if not finished:  # the client went away mid-stream
            state.count("aborted_streams")


class FakeAnthropic(LoopbackFake):
    """Usage: ``with FakeAnthropic() as fake: AnthropicAdapter → fake.base_url``; ``fake.requests[-1].json``."""

    name = "fake-anthropic"
    default_api_key = DEFAULT_API_KEY

    def build_app(self, state: FakeState) -> Starlette:
        return build_app(state)

    def __enter__(self) -> FakeAnthropic:
        self.start()
        return self

    @property
    def base_url(self) -> str:
        """The API origin, as Anthropic's SDKs take it (no ``/v1``)."""
        return self.origin

    def set_reply(self, text: str | None) -> None:
        """Answer this text (instead of the echo) until set back to ``None``."""
        if text is None:
            self.state.options.pop("reply", None)
        else:
            self.state.options["reply"] = text

    def set_cache_read_tokens(self, tokens: int) -> None:
        self.state.options["cache_read_input_tokens"] = tokens

    def set_event_delay(self, ms: float) -> None:
        """Hold each stream event back this long (a slow model: time to disconnect mid-stream)."""
        self.state.options["event_delay_ms"] = ms

    @property
    def aborted_streams(self) -> int:
        """Streams whose client (our adapter) hung up before the last event."""
        return self.state.counters.get("aborted_streams", 0)


if __name__ == "__main__":
    raise SystemExit(serve_main("fake Anthropic", build_app, DEFAULT_API_KEY))
