"""Canonical chat (OpenAI Chat Completions) ⇄ Gemini ``generateContent``, for calls *to* Gemini.

Request: system/developer messages → ``systemInstruction``; user → ``user`` contents and
assistant → ``model`` contents (consecutive turns of one role merged); text parts → ``text``,
``image_url`` data URLs → ``inlineData``, http(s) URLs → ``fileData``; assistant ``tool_calls`` →
``functionCall`` parts; ``tool`` messages → ``functionResponse`` parts (the function's name is
looked up from the call it answers; a JSON-object result is sent as the response, anything else
as ``{"result": text}``); ``tools`` → one ``functionDeclarations`` tool (parameters reduced to the
OpenAPI subset Gemini accepts); ``tool_choice`` → ``toolConfig.functionCallingConfig`` (auto →
AUTO, none → NONE, required → ANY, a named function → ANY with ``allowedFunctionNames``);
``max_tokens`` → ``maxOutputTokens``, ``temperature``, ``top_p`` → ``topP``, ``stop`` →
``stopSequences``, ``seed``, ``response_format`` json → ``responseMimeType: application/json``
(with ``responseSchema`` for ``json_schema``).

Answer: text parts → ``content`` (thought parts dropped), ``functionCall`` → ``tool_calls`` (an id
is made that carries Gemini's call id and ``thoughtSignature`` back to it, see
:func:`call_id_of`); ``finishReason`` STOP → stop (tool_calls when the answer calls a
function), MAX_TOKENS → length, SAFETY / RECITATION / BLOCKLIST / PROHIBITED_CONTENT / SPII →
content_filter; ``usageMetadata``: promptTokenCount → prompt tokens (cachedContentTokenCount of
them cached), candidatesTokenCount + thoughtsTokenCount → completion tokens.
"""

from __future__ import annotations

import base64
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
    new_completion_id,
    new_tool_call_id,
    parse_data_url,
    stop_sequences,
    text_of,
    tool_call,
)
from apiinone.kinds.chat.job import ChatChunk, ChatCompletion, ChatRequest, Usage
from apiinone.upstreams.base import ContentPolicyError, UpstreamError

FILTERED = frozenset({"SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY",
                      "LANGUAGE"})
SCHEMA_KEYS = frozenset({"type", "format", "title", "description", "nullable", "enum", "maxItems", "minItems",
                         "properties", "required", "minProperties", "maxProperties", "minLength", "maxLength",
                         "pattern", "example", "anyOf", "propertyOrdering", "default", "items", "minimum",
                         "maximum"})
_EXTENSION_TYPES = {"jpg": "image/jpeg", "jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp",
                    "gif": "image/gif", "heic": "image/heic", "heif": "image/heif"}


def call_id_of(part: dict[str, Any]) -> str:
    """The canonical tool call id of a ``functionCall`` part. Gemini's own call id and the part's
    ``thoughtSignature`` (which newer models require back with the call) ride inside the id, so any
    client returns them untouched: ``gem_`` + base64url(JSON), only ``[A-Za-z0-9_-]`` characters."""
    call = part.get("functionCall") or {}
    carried = {k: v for k, v in (("id", call.get("id")), ("sig", part.get("thoughtSignature")))
               if isinstance(v, str) and v}
    if not carried:
        return new_tool_call_id()
    return "gem_" + base64.urlsafe_b64encode(orjson.dumps(carried)).decode().rstrip("=")


def carried_by(call_id: Any) -> tuple[str | None, str | None]:
    """(Gemini's call id, thought signature) carried by a tool call id made by :func:`call_id_of`."""
    if not isinstance(call_id, str) or not call_id.startswith("gem_"):
        return None, None
    raw = call_id[4:]
    try:
        carried = orjson.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
    except (ValueError, orjson.JSONDecodeError):
        return None, None
    if not isinstance(carried, dict):
        return None, None
    gemini_id, signature = carried.get("id"), carried.get("sig")
    return (gemini_id if isinstance(gemini_id, str) else None, signature if isinstance(signature, str) else None)


def finish_reason_of(reason: str | None, called: bool) -> str | None:
    if not reason or reason == "FINISH_REASON_UNSPECIFIED":
        return None
    if reason == "MAX_TOKENS":
        return "length"
    if reason in FILTERED:
        return "content_filter"
    return "tool_calls" if called else "stop"


# --------------------------------------------------------------------------------------- request


def generate_request(request: ChatRequest) -> dict[str, Any]:
    body = request.body
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ChatTranslationError("messages must be a non-empty array", "messages")
    system: list[str] = []
    contents: list[dict[str, Any]] = []
    call_names: dict[str, str] = {}
    for i, message in enumerate(messages):
        param = f"messages[{i}]"
        if not isinstance(message, dict):
            raise ChatTranslationError(f"{param} must be an object", param)
        role = message.get("role")
        if role in ("system", "developer"):
            text = text_of(message.get("content"), f"{param}.content")
            if text:
                system.append(text)
        elif role == "user":
            parts = [_user_part(p, f"{param}.content[{j}]")
                     for j, p in enumerate(content_parts(message.get("content"), f"{param}.content"))]
            _append(contents, "user", [p for p in parts if p is not None])
        elif role == "assistant":
            _append(contents, "model", _model_parts(message, param, call_names))
        elif role in ("tool", "function"):
            call_id = message.get("tool_call_id")
            name = call_names.get(call_id) if isinstance(call_id, str) else None
            name = name or (message.get("name") if isinstance(message.get("name"), str) else None)
            if not name:
                raise ChatTranslationError(f"{param}.tool_call_id does not name an earlier tool call",
                                           f"{param}.tool_call_id")
            text = text_of(message.get("content"), f"{param}.content")
            response: dict[str, Any] = {"name": name, "response": _tool_response(text)}
            gemini_id, _ = carried_by(call_id)
            if gemini_id:
                response["id"] = gemini_id
            _append(contents, "user", [{"functionResponse": response}])
        else:
            raise ChatTranslationError(f"{param}.role {role!r} is not supported", f"{param}.role")
    if not contents:
        raise ChatTranslationError("messages must hold at least one user or assistant message", "messages")

    out: dict[str, Any] = {"contents": contents}
    if system:
        out["systemInstruction"] = {"parts": [{"text": "\n\n".join(system)}]}
    config: dict[str, Any] = {"maxOutputTokens": request.max_output_tokens, "candidateCount": 1}
    if body.get("temperature") is not None:
        config["temperature"] = float(body["temperature"])
    if body.get("top_p") is not None:
        config["topP"] = float(body["top_p"])
    stops = stop_sequences(body)
    if stops:
        config["stopSequences"] = stops
    if isinstance(body.get("seed"), int) and not isinstance(body["seed"], bool):
        config["seed"] = body["seed"]
    response_format = body.get("response_format")
    if isinstance(response_format, dict) and response_format.get("type") in ("json_object", "json_schema"):
        config["responseMimeType"] = "application/json"
        schema = (response_format.get("json_schema") or {}).get("schema")
        if isinstance(schema, dict):
            config["responseSchema"] = gemini_schema(schema)
    out["generationConfig"] = config
    tools = body.get("tools")
    if tools:
        out["tools"] = [{"functionDeclarations": [_declaration(t, f"tools[{i}]") for i, t in enumerate(tools)]}]
        tool_config = _tool_config(body.get("tool_choice"))
        if tool_config is not None:
            out["toolConfig"] = tool_config
    return out


def _append(contents: list[dict[str, Any]], role: str, parts: list[dict[str, Any]]) -> None:
    if not parts:
        return
    if contents and contents[-1]["role"] == role:
        contents[-1]["parts"].extend(parts)
    else:
        contents.append({"role": role, "parts": list(parts)})


def _user_part(part: dict[str, Any], param: str) -> dict[str, Any] | None:
    kind = part["type"]
    if kind == "text":
        text = part.get("text")
        if not isinstance(text, str):
            raise ChatTranslationError(f"{param}.text must be a string", param)
        return {"text": text} if text else None
    if kind == "image_url":
        url = image_url_of(part, param)
        if url.startswith("data:"):
            media_type, data = parse_data_url(url, param)
            return {"inlineData": {"mimeType": media_type, "data": data}}
        extension = url.split("?", 1)[0].rsplit(".", 1)[-1].lower()
        return {"fileData": {"mimeType": _EXTENSION_TYPES.get(extension, "image/jpeg"), "fileUri": url}}
    raise ChatTranslationError(f"{param}: content part type {kind!r} is not supported by this model", param)


def _model_parts(message: dict[str, Any], param: str, call_names: dict[str, str]) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = []
    for j, part in enumerate(content_parts(message.get("content"), f"{param}.content")):
        if part["type"] == "text" and isinstance(part.get("text"), str):
            if part["text"]:
                parts.append({"text": part["text"]})
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
        name = function["name"]
        args = json_arguments(function.get("arguments"), f"{cparam}.function.arguments")
        function_call: dict[str, Any] = {"name": name, "args": args}
        call_id = call.get("id")
        if isinstance(call_id, str) and call_id:
            call_names[call_id] = name
        gemini_id, signature = carried_by(call_id)
        if gemini_id:
            function_call["id"] = gemini_id
        call_part: dict[str, Any] = {"functionCall": function_call}
        if signature:
            call_part["thoughtSignature"] = signature
        parts.append(call_part)
    return parts


def _tool_response(text: str) -> dict[str, Any]:
    try:
        parsed = orjson.loads(text)
    except orjson.JSONDecodeError:
        return {"result": text}
    return parsed if isinstance(parsed, dict) else {"result": parsed}


def gemini_schema(schema: Any) -> Any:
    """A JSON Schema reduced to the OpenAPI subset ``functionDeclarations.parameters`` accepts."""
    if isinstance(schema, list):
        return [gemini_schema(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key not in SCHEMA_KEYS:
            continue
        if key == "properties" and isinstance(value, dict):
            out[key] = {name: gemini_schema(sub) for name, sub in value.items()}
        elif key in ("items", "anyOf"):
            out[key] = gemini_schema(value)
        elif key == "type" and isinstance(value, list):  # ["string", "null"] → string, nullable
            kinds = [v for v in value if v != "null"]
            out["type"] = kinds[0] if kinds else "string"
            if "null" in value:
                out["nullable"] = True
        else:
            out[key] = value
    return out


def _declaration(tool: Any, param: str) -> dict[str, Any]:
    function = tool.get("function") if isinstance(tool, dict) and tool.get("type", "function") == "function" else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise ChatTranslationError(f"{param} must be a function tool with a name", param)
    out: dict[str, Any] = {"name": function["name"]}
    if isinstance(function.get("description"), str):
        out["description"] = function["description"]
    parameters = function.get("parameters")
    if isinstance(parameters, dict) and parameters.get("properties"):
        out["parameters"] = gemini_schema(parameters)
    return out


def _tool_config(choice: Any) -> dict[str, Any] | None:
    if choice is None:
        return None
    if choice == "auto":
        return {"functionCallingConfig": {"mode": "AUTO"}}
    if choice == "none":
        return {"functionCallingConfig": {"mode": "NONE"}}
    if choice == "required":
        return {"functionCallingConfig": {"mode": "ANY"}}
    if isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        return {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": [choice["function"].get("name")]}}
    raise ChatTranslationError("tool_choice must be auto, none, required or a function", "tool_choice")


# ---------------------------------------------------------------------------------------- answer


def usage_of(metadata: Any) -> Usage:
    if not isinstance(metadata, dict):
        return Usage(0, 0)
    output = _int(metadata.get("candidatesTokenCount")) + _int(metadata.get("thoughtsTokenCount"))
    return Usage(input_tokens=_int(metadata.get("promptTokenCount")), output_tokens=output,
                 cached_input_tokens=_int(metadata.get("cachedContentTokenCount")))


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _candidate(payload: dict[str, Any]) -> dict[str, Any] | None:
    candidates = payload.get("candidates")
    if isinstance(candidates, list) and candidates and isinstance(candidates[0], dict):
        return candidates[0]
    feedback = payload.get("promptFeedback")
    if isinstance(feedback, dict) and feedback.get("blockReason"):
        raise ContentPolicyError(f"the prompt was blocked upstream ({feedback['blockReason']})")
    return None


def _parts(candidate: dict[str, Any]) -> list[dict[str, Any]]:
    content = candidate.get("content")
    parts = content.get("parts") if isinstance(content, dict) else None
    return [p for p in parts if isinstance(p, dict)] if isinstance(parts, list) else []


def completion_from(payload: dict[str, Any], fallback_model: str) -> ChatCompletion:
    candidate = _candidate(payload)
    if candidate is None:
        raise UpstreamError("upstream returned no candidate", retryable=True)
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for part in _parts(candidate):
        if isinstance(part.get("text"), str) and not part.get("thought"):
            texts.append(part["text"])
        elif isinstance(part.get("functionCall"), dict):
            call = part["functionCall"]
            calls.append(tool_call(call_id_of(part), str(call.get("name") or ""),
                                   dumps(call.get("args") or {})))
    usage = usage_of(payload.get("usageMetadata"))
    finish = finish_reason_of(candidate.get("finishReason"), bool(calls)) or "stop"
    body = completion_body(completion_id=str(payload.get("responseId") or new_completion_id()),
                           model=str(payload.get("modelVersion") or fallback_model),
                           content="".join(texts) if texts or not calls else None, tool_calls=calls,
                           finish_reason=finish, usage=usage)
    return ChatCompletion(body=body, usage=usage)


class StreamTranslator:
    """Gemini stream responses (each a partial ``GenerateContentResponse``) → canonical chunks.

    The first response gives the role chunk; text parts are content deltas; a ``functionCall``
    arrives whole and becomes one tool call delta; ``finishReason`` the finish chunk; the latest
    ``usageMetadata`` goes on the last chunk, made when the stream ends (Gemini sends no end event)."""

    def __init__(self, fallback_model: str) -> None:
        self.writer = ChunkWriter(fallback_model)
        self.started = False
        self.calls = 0
        self.finish: str | None = None
        self.metadata: dict[str, Any] | None = None

    def feed(self, payload: dict[str, Any]) -> list[ChatChunk]:
        if isinstance(payload.get("error"), dict):
            error = payload["error"]
            raise UpstreamError(f"upstream stream error ({error.get('status') or error.get('code')}): "
                                f"{str(error.get('message') or '')[:300]}", retryable=True)
        out: list[ChatChunk] = []
        if not self.started:
            self.started = True
            if payload.get("responseId"):
                self.writer.id = str(payload["responseId"])
            if payload.get("modelVersion"):
                self.writer.model = str(payload["modelVersion"])
            out.append(self.writer.role())
        if isinstance(payload.get("usageMetadata"), dict):
            self.metadata = payload["usageMetadata"]
        candidate = _candidate(payload)
        if candidate is None:
            return out
        for part in _parts(candidate):
            if isinstance(part.get("text"), str) and part["text"] and not part.get("thought"):
                out.append(self.writer.text(part["text"]))
            elif isinstance(part.get("functionCall"), dict):
                call = part["functionCall"]
                out.append(self.writer.tool_call_start(self.calls, call_id_of(part),
                                                       str(call.get("name") or ""), dumps(call.get("args") or {})))
                self.calls += 1
        finish = finish_reason_of(candidate.get("finishReason"), self.calls > 0)
        if finish is not None and self.finish is None:
            self.finish = finish
            out.append(self.writer.finish(finish))
        return out

    def end(self) -> list[ChatChunk]:
        """At the end of the body: the usage chunk, or an error if the stream was never finished."""
        if self.finish is None:
            raise UpstreamError("upstream stream ended without a finish reason", retryable=True)
        return [self.writer.usage(usage_of(self.metadata))]
