"""Chat: answered directly (JSON or SSE), priced per million tokens, metered to the token.

Request rules are OpenAI's Chat Completions, checked strictly before anything is held: unknown
fields, ``n`` other than 1 and malformed messages, tools or options are a 400 naming the field.

Price rule, in integer µcr (N credits per million tokens is N µcr per token):

* input estimate = ⌈UTF-8 bytes of the JSON of ``messages`` (+ ``tools``) / 4⌉ — a documented,
  deliberately simple estimate (no tokenizer); the upstream's reported usage replaces it;
* hold = estimate × ``input_per_mtok`` + max output × ``output_per_mtok``, where max output is the
  request's ``max_completion_tokens`` / ``max_tokens``, else the model's ``max_output_tokens``;
* capture = the reported usage (cached input at ``cached_input_per_mtok`` where priced), else the
  produced output estimated by the same ⌈bytes / 4⌉, never more than the hold; the rest is released.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson

from apiinone.domain.catalog import ModelSpec
from apiinone.domain.credits import cost_per_mtok, credits_to_ucr
from apiinone.errors import InvalidParameter
from apiinone.kinds.base import require_price
from apiinone.kinds.chat.job import ChatRequest, Usage

DEFAULT_MAX_OUTPUT_TOKENS = 4096
"""The output cap of a model whose catalog entry sets no ``max_output_tokens``."""
MAX_MESSAGES = 4096
MAX_TOOLS = 128
MAX_STOP = 4
MAX_USER_CHARS = 256

REQUEST_FIELDS = frozenset({
    "model", "messages", "stream", "stream_options", "max_tokens", "max_completion_tokens", "temperature",
    "top_p", "stop", "tools", "tool_choice", "response_format", "seed", "user", "n",
    "frequency_penalty", "presence_penalty", "parallel_tool_calls",
})
_MESSAGE_FIELDS = {
    "system": frozenset({"role", "content", "name"}),
    "developer": frozenset({"role", "content", "name"}),
    "user": frozenset({"role", "content", "name"}),
    "assistant": frozenset({"role", "content", "name", "tool_calls", "refusal"}),
    "tool": frozenset({"role", "content", "tool_call_id"}),
}
_PART_TYPES = {
    "system": ("text",), "developer": ("text",), "tool": ("text",),
    "user": ("text", "image_url"), "assistant": ("text", "refusal"),
}
_TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_IMAGE_DETAILS = ("auto", "low", "high")


class ChatRequestError(InvalidParameter):
    """A 400 with OpenAI's own ``code`` too (``unknown_parameter``, ``invalid_type``, ...), so the
    ``/v1`` route answers exactly what OpenAI would and ``/api/v1`` answers ``invalid_parameter``."""

    def __init__(self, message: str, *, param: str | None, openai_code: str = "invalid_value") -> None:
        super().__init__(message, param=param)
        self.openai_code = openai_code


@dataclass(frozen=True, slots=True)
class ChatPrices:
    """A chat model's prices in µcr per million tokens."""

    input_ucr: int
    output_ucr: int
    cached_input_ucr: int | None = None

    @classmethod
    def of(cls, spec: ModelSpec) -> ChatPrices:
        cached = spec.pricing.get("cached_input_per_mtok")
        return cls(input_ucr=credits_to_ucr(spec.pricing["input_per_mtok"]),
                   output_ucr=credits_to_ucr(spec.pricing["output_per_mtok"]),
                   cached_input_ucr=None if cached is None else credits_to_ucr(cached))

    def cost(self, usage: Usage) -> int:
        """µcr for this usage; cached input at its own price where the model lists one."""
        cached = min(max(0, usage.cached_input_tokens), usage.input_tokens) if self.cached_input_ucr is not None else 0
        cost = cost_per_mtok(max(0, usage.input_tokens - cached), self.input_ucr)
        if cached:
            assert self.cached_input_ucr is not None
            cost += cost_per_mtok(cached, self.cached_input_ucr)
        return cost + cost_per_mtok(max(0, usage.output_tokens), self.output_ucr)


@dataclass(frozen=True, slots=True)
class ChatCall:
    """A validated call for one model: what goes upstream and the most it can cost."""

    request: ChatRequest
    input_estimate: int
    hold: int
    prices: ChatPrices

    def charge(self, usage: Usage) -> int:
        return min(self.hold, self.prices.cost(usage))

    def produced_usage(self, output_bytes: int) -> Usage:
        """Usage of a stream that ended without the upstream's: the input as sent, the output produced."""
        return Usage(input_tokens=self.input_estimate, output_tokens=estimate_tokens(output_bytes), estimated=True)


def estimate_tokens(utf8_bytes: int) -> int:
    """⌈UTF-8 bytes / 4⌉: the one token estimate, for holds and for streams cut without usage."""
    return -(-max(0, utf8_bytes) // 4)


def estimate_input_tokens(body: dict[str, Any]) -> int:
    size = len(orjson.dumps(body.get("messages") or []))
    if body.get("tools"):
        size += len(orjson.dumps(body["tools"]))
    return estimate_tokens(size)


# ------------------------------------------------------------------------------------- validation


def _bad(message: str, param: str | None, code: str = "invalid_value") -> ChatRequestError:
    return ChatRequestError(message, param=param, openai_code=code)


def _type_error(param: str, expected: str) -> ChatRequestError:
    return _bad(f"Invalid type for '{param}': expected {expected}.", param, "invalid_type")


def _number(body: dict[str, Any], name: str, low: float, high: float) -> None:
    value = body.get(name)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _type_error(name, "a number")
    if not low <= value <= high:
        raise _bad(f"Invalid '{name}': expected a value from {low:g} to {high:g}, got {value}.", name,
                   "decimal_out_of_range")


def _integer(body: dict[str, Any], name: str, low: int, high: int | None = None) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _type_error(name, "an integer")
    if value < low or (high is not None and value > high):
        raise _bad(f"Invalid '{name}': integer below minimum value {low}." if value < low
                   else f"Invalid '{name}': integer above maximum value {high}.", name, "integer_out_of_range")
    return value


def _text_parts(parts: list[Any], param: str, allowed: tuple[str, ...]) -> None:
    if not parts:
        raise _bad(f"Invalid '{param}': empty array. Expected an array with minimum length 1.", param,
                   "empty_array")
    for j, part in enumerate(parts):
        where = f"{param}[{j}]"
        if not isinstance(part, dict):
            raise _type_error(where, "an object")
        kind = part.get("type")
        if kind not in allowed:
            listed = ", ".join(f"'{a}'" for a in allowed)
            raise _bad(f"Invalid value: '{kind}'. Supported values are: {listed}.", f"{where}.type")
        if kind in ("text", "refusal"):
            extra = set(part) - {"type", kind}
            if not isinstance(part.get(kind), str):
                raise _type_error(f"{where}.{kind}", "a string")
        else:  # image_url
            extra = set(part) - {"type", "image_url"}
            image = part.get("image_url")
            if not isinstance(image, dict) or not isinstance(image.get("url"), str) or not image["url"]:
                raise _bad(f"Invalid '{where}.image_url': expected an object with a 'url' string.",
                           f"{where}.image_url")
            if not image["url"].startswith(("https://", "http://", "data:image/")):
                raise _bad("Invalid image URL: expected an http(s) URL or a data:image/ URL.",
                           f"{where}.image_url.url", "invalid_image_url")
            if image.get("detail", "auto") not in _IMAGE_DETAILS or set(image) - {"url", "detail"}:
                raise _bad(f"Invalid '{where}.image_url': only 'url' and 'detail' (auto, low, high) are allowed.",
                           f"{where}.image_url")
        if extra:
            name = sorted(extra)[0]
            raise _bad(f"Unknown parameter: '{where}.{name}'.", f"{where}.{name}", "unknown_parameter")


def _tool_calls(calls: Any, param: str) -> None:
    if not isinstance(calls, list) or not calls:
        raise _type_error(param, "a non-empty array")
    for j, call in enumerate(calls):
        where = f"{param}[{j}]"
        if not isinstance(call, dict) or set(call) - {"id", "type", "function"}:
            raise _bad(f"Invalid '{where}': expected an object with 'id', 'type' and 'function'.", where)
        fn = call.get("function")
        if (not isinstance(call.get("id"), str) or call.get("type") != "function" or not isinstance(fn, dict)
                or not isinstance(fn.get("name"), str) or not isinstance(fn.get("arguments"), str)
                or set(fn) - {"name", "arguments"}):
            raise _bad(f"Invalid '{where}': expected {{id, type: 'function', function: {{name, arguments}}}} "
                       "with string values.", where)


def _messages(messages: Any) -> None:
    if messages is None:
        raise _bad("Missing required parameter: 'messages'.", "messages", "missing_required_parameter")
    if not isinstance(messages, list):
        raise _type_error("messages", "an array")
    if not 1 <= len(messages) <= MAX_MESSAGES:
        raise _bad(f"Invalid 'messages': expected an array of 1 to {MAX_MESSAGES} messages.", "messages",
                   "empty_array" if not messages else "array_above_max_length")
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise _type_error(where, "an object")
        role = message.get("role")
        if role not in _MESSAGE_FIELDS:
            listed = ", ".join(f"'{r}'" for r in _MESSAGE_FIELDS)
            raise _bad(f"Invalid value: '{role}'. Supported values are: {listed}.", f"{where}.role")
        for name in message:
            if name not in _MESSAGE_FIELDS[role]:
                raise _bad(f"Unknown parameter: '{where}.{name}'.", f"{where}.{name}", "unknown_parameter")
        content = message.get("content")
        if content is None:
            if role != "assistant" or not message.get("tool_calls"):
                raise _bad(f"Missing required parameter: '{where}.content'.", f"{where}.content",
                           "missing_required_parameter")
        elif isinstance(content, list):
            _text_parts(content, f"{where}.content", _PART_TYPES[role])
        elif not isinstance(content, str):
            raise _type_error(f"{where}.content", "a string or an array of content parts")
        if "name" in message and not isinstance(message["name"], str):
            raise _type_error(f"{where}.name", "a string")
        if role == "assistant":
            if "tool_calls" in message:
                _tool_calls(message["tool_calls"], f"{where}.tool_calls")
            if message.get("refusal") is not None and not isinstance(message["refusal"], str):
                raise _type_error(f"{where}.refusal", "a string")
        if role == "tool" and not isinstance(message.get("tool_call_id"), str):
            raise _bad(f"Missing required parameter: '{where}.tool_call_id'.", f"{where}.tool_call_id",
                       "missing_required_parameter")


def _tools(tools: Any) -> set[str]:
    if not isinstance(tools, list):
        raise _type_error("tools", "an array")
    if len(tools) > MAX_TOOLS:
        raise _bad(f"Invalid 'tools': array too long. Expected an array with maximum length {MAX_TOOLS}.",
                   "tools", "array_above_max_length")
    names: set[str] = set()
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        if not isinstance(tool, dict) or tool.get("type") != "function" or set(tool) - {"type", "function"}:
            raise _bad(f"Invalid '{where}': expected {{type: 'function', function: {{...}}}}.", where)
        fn = tool.get("function")
        if not isinstance(fn, dict):
            raise _bad(f"Missing required parameter: '{where}.function'.", f"{where}.function",
                       "missing_required_parameter")
        extra = set(fn) - {"name", "description", "parameters", "strict"}
        if extra:
            name = sorted(extra)[0]
            raise _bad(f"Unknown parameter: '{where}.function.{name}'.", f"{where}.function.{name}",
                       "unknown_parameter")
        if not isinstance(fn.get("name"), str) or not _TOOL_NAME.match(fn["name"]):
            raise _bad(f"Invalid '{where}.function.name': string does not match pattern ^[a-zA-Z0-9_-]{{1,64}}$.",
                       f"{where}.function.name")
        if "description" in fn and not isinstance(fn["description"], str):
            raise _type_error(f"{where}.function.description", "a string")
        if "parameters" in fn and not isinstance(fn["parameters"], dict):
            raise _type_error(f"{where}.function.parameters", "an object (a JSON Schema)")
        if "strict" in fn and not isinstance(fn["strict"], bool | None):
            raise _type_error(f"{where}.function.strict", "a boolean")
        names.add(fn["name"])
    return names


def _tool_choice(choice: Any, tool_names: set[str] | None) -> None:
    if isinstance(choice, str):
        if choice not in ("none", "auto", "required"):
            raise _bad(f"Invalid value: '{choice}'. Supported values are: 'none', 'auto', and 'required'.",
                       "tool_choice")
        if choice == "required" and not tool_names:
            raise _bad("Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' are specified.",
                       "tool_choice")
        return
    fn = choice.get("function") if isinstance(choice, dict) else None
    if not isinstance(choice, dict) or choice.get("type") != "function" or not isinstance(fn, dict) \
            or not isinstance(fn.get("name"), str):
        raise _bad("Invalid 'tool_choice': expected 'none', 'auto', 'required' or "
                   "{type: 'function', function: {name}}.", "tool_choice")
    if tool_names is None or fn["name"] not in tool_names:
        raise _bad(f"Invalid 'tool_choice': no tool named '{fn['name']}' in 'tools'.", "tool_choice")


def _response_format(value: Any) -> None:
    kind = value.get("type") if isinstance(value, dict) else None
    if kind in ("text", "json_object") and isinstance(value, dict) and set(value) == {"type"}:
        return
    if kind == "json_schema" and isinstance(value, dict) and set(value) <= {"type", "json_schema"}:
        schema = value.get("json_schema")
        if isinstance(schema, dict) and isinstance(schema.get("name"), str) \
                and set(schema) <= {"name", "description", "schema", "strict"}:
            return
        raise _bad("Invalid 'response_format.json_schema': expected {name, description?, schema?, strict?}.",
                   "response_format.json_schema")
    raise _bad("Invalid 'response_format': expected {type: 'text' | 'json_object' | 'json_schema'}.",
               "response_format")


def validate_body(body: Any) -> dict[str, Any]:
    """The Chat Completions body, checked field by field (ChatRequestError otherwise)."""
    if not isinstance(body, dict):
        raise _bad("We could not parse the JSON body of your request. Expected a JSON object.", None,
                   "invalid_json")
    for name in body:
        if name not in REQUEST_FIELDS:
            raise _bad(f"Unrecognized request argument supplied: {name}", name, "unknown_parameter")
    model = body.get("model")
    if model is None:
        raise _bad("Missing required parameter: 'model'.", "model", "missing_required_parameter")
    if not isinstance(model, str) or not 1 <= len(model) <= 200:
        raise _type_error("model", "a string")
    _messages(body.get("messages"))
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise _type_error("stream", "a boolean")
    options = body.get("stream_options")
    if options is not None:
        if not stream:
            raise _bad("The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                       "stream_options")
        if not isinstance(options, dict) or set(options) - {"include_usage"} \
                or not isinstance(options.get("include_usage", False), bool):
            raise _bad("Invalid 'stream_options': expected {include_usage: boolean}.", "stream_options")
    _integer(body, "max_tokens", 1)
    _integer(body, "max_completion_tokens", 1)
    if body.get("max_tokens") is not None and body.get("max_completion_tokens") is not None:
        raise _bad("Send either 'max_tokens' or 'max_completion_tokens', not both.", "max_tokens")
    _number(body, "temperature", 0, 2)
    _number(body, "top_p", 0, 1)
    _number(body, "frequency_penalty", -2, 2)
    _number(body, "presence_penalty", -2, 2)
    stop = body.get("stop")
    if stop is not None and not isinstance(stop, str):
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
            raise _type_error("stop", "a string or an array of strings")
        if len(stop) > MAX_STOP:
            raise _bad(f"Invalid 'stop': array too long. Expected an array with maximum length {MAX_STOP}.",
                       "stop", "array_above_max_length")
    tool_names = _tools(body["tools"]) if body.get("tools") is not None else None
    if body.get("tool_choice") is not None:
        _tool_choice(body["tool_choice"], tool_names)
    if body.get("parallel_tool_calls") is not None and not isinstance(body["parallel_tool_calls"], bool):
        raise _type_error("parallel_tool_calls", "a boolean")
    if body.get("response_format") is not None:
        _response_format(body["response_format"])
    _integer(body, "seed", -(2**63), 2**63 - 1)
    user = body.get("user")
    if user is not None and (not isinstance(user, str) or len(user) > MAX_USER_CHARS):
        raise _bad(f"Invalid 'user': expected a string of at most {MAX_USER_CHARS} characters.", "user")
    n = _integer(body, "n", 1)
    if n is not None and n != 1:
        raise _bad("Invalid 'n': only n = 1 is supported by this server.", "n", "integer_out_of_range")
    return body


class ChatKind:
    name = "chat"
    queued = False
    create_path = "/api/v1/chat/completions"

    def validate_pricing(self, spec: ModelSpec) -> None:
        for key in spec.pricing:
            if key not in ("input_per_mtok", "output_per_mtok", "cached_input_per_mtok"):
                raise ValueError(f"pricing key {key!r} is not one of input_per_mtok, output_per_mtok, "
                                 "cached_input_per_mtok")
        for key in ("input_per_mtok", "output_per_mtok"):
            if key not in spec.pricing:
                raise ValueError(f"a chat model needs pricing.{key} (credits per million tokens)")
        for key, price in spec.pricing.items():
            require_price(price, f"pricing.{key}")
        if spec.max_output_tokens is not None and (not isinstance(spec.max_output_tokens, int)
                                                   or spec.max_output_tokens < 1):
            raise ValueError("max_output_tokens must be a positive integer")

    def parameters_schema(self, spec: ModelSpec) -> dict[str, Any]:
        max_out = spec.max_output_tokens or DEFAULT_MAX_OUTPUT_TOKENS
        limit = {"type": "integer", "minimum": 1, "maximum": max_out}
        return {
            "type": "object",
            "additionalProperties": False,
            "required": ["model", "messages"],
            "properties": {
                "model": {"type": "string", "enum": [spec.id, *spec.aliases]},
                "messages": {"type": "array", "minItems": 1, "maxItems": MAX_MESSAGES,
                             "description": "OpenAI Chat Completions messages (system, developer, user, "
                                            "assistant, tool); user content may hold text and image_url parts",
                             "items": {"type": "object", "required": ["role"]}},
                "stream": {"type": "boolean", "default": False,
                           "description": "Answer as Server-Sent Events of chat.completion.chunk objects"},
                "stream_options": {"type": "object", "properties": {"include_usage": {"type": "boolean"}},
                                   "additionalProperties": False},
                "max_completion_tokens": {**limit, "description": f"Output cap (default {max_out}); "
                                                                  "the hold is computed from it"},
                "max_tokens": {**limit, "description": "Older name of max_completion_tokens"},
                "temperature": {"type": "number", "minimum": 0, "maximum": 2},
                "top_p": {"type": "number", "minimum": 0, "maximum": 1},
                "frequency_penalty": {"type": "number", "minimum": -2, "maximum": 2},
                "presence_penalty": {"type": "number", "minimum": -2, "maximum": 2},
                "stop": {"anyOf": [{"type": "string"},
                                   {"type": "array", "items": {"type": "string"}, "maxItems": MAX_STOP}]},
                "tools": {"type": "array", "maxItems": MAX_TOOLS, "items": {"type": "object"}},
                "tool_choice": {"anyOf": [{"type": "string", "enum": ["none", "auto", "required"]},
                                          {"type": "object"}]},
                "parallel_tool_calls": {"type": "boolean"},
                "response_format": {"type": "object"},
                "seed": {"type": "integer"},
                "user": {"type": "string", "maxLength": MAX_USER_CHARS},
                "n": {"type": "integer", "enum": [1]},
            },
        }

    def prepare(self, spec: ModelSpec, body: dict[str, Any]) -> ChatCall:
        """A validated body for ``spec``: the upstream request and the hold (µcr)."""
        model_cap = spec.max_output_tokens or DEFAULT_MAX_OUTPUT_TOKENS
        asked = body.get("max_completion_tokens")
        param = "max_completion_tokens"
        if asked is None:
            asked, param = body.get("max_tokens"), "max_tokens"
        if asked is not None and asked > model_cap:
            raise _bad(f"Invalid '{param}': {asked} is above this model's output limit of {model_cap} tokens.",
                       param, "integer_out_of_range")
        max_output = asked or model_cap
        stream = bool(body.get("stream"))
        include_usage = bool(stream and (body.get("stream_options") or {}).get("include_usage"))
        upstream_body = {**body, "model": spec.id}
        request = ChatRequest(body=upstream_body, max_output_tokens=max_output, stream=stream,
                              include_usage=include_usage)
        prices = ChatPrices.of(spec)
        estimate = estimate_input_tokens(body)
        hold = cost_per_mtok(estimate, prices.input_ucr) + cost_per_mtok(max_output, prices.output_ucr)
        return ChatCall(request=request, input_estimate=estimate, hold=hold, prices=prices)


KIND = ChatKind()
