"""A protocol-faithful fake of the Gemini API's ``generateContent`` and ``streamGenerateContent``.

``POST /v1beta/models/{model}:generateContent`` and ``:streamGenerateContent`` (``?alt=sse``: Server-
Sent Events of partial ``GenerateContentResponse`` objects, no end marker; without it one JSON
array), the key in ``x-goog-api-key`` (or ``?key=``). Requests are checked as Gemini checks them:
``contents`` with ``user`` / ``model`` roles and non-empty ``parts`` (each one of ``text``,
``inlineData``, ``fileData``, ``functionCall``, ``functionResponse``), function response parts
matching the calls of the turn before, unknown fields (also inside ``generationConfig`` and the
function ``parameters`` schema, which is an OpenAPI subset), ranges, ``toolConfig`` modes. Field
names are accepted in camelCase and snake_case, as the JSON mapping of Google's API allows. Errors
use Google's envelope ``{"error": {"code", "message", "status", "details"}}``; a bad key is 400
``INVALID_ARGUMENT`` with reason ``API_KEY_INVALID``, as Gemini answers it. Function calls carry a
``thoughtSignature``, and ``gemini-3*`` models refuse a conversation whose function calls come back
without theirs, as Gemini 3 does.

``with FakeGemini() as fake: fake.base_url, fake.fail_next(503), fake.cut_next(2), fake.hang_next()``;
as a process: ``python -m tests.fakes.fake_gemini --port 0 --port-file F``.
"""

from __future__ import annotations

import base64
import binascii
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

DEFAULT_API_KEY = "AIzaSy-fake-gemini-key-0000000000000"
MODEL_PATTERN = re.compile(r"^gemini-[a-z0-9.\-]+$")
FUNCTION_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_.\-]{0,63}$")
REQUEST_FIELDS = frozenset({"contents", "systemInstruction", "tools", "toolConfig", "generationConfig",
                            "safetySettings", "cachedContent", "model"})
GENERATION_FIELDS = frozenset({"maxOutputTokens", "temperature", "topP", "topK", "candidateCount", "stopSequences",
                               "responseMimeType", "responseSchema", "responseJsonSchema", "seed",
                               "presencePenalty", "frequencyPenalty", "responseLogprobs", "logprobs",
                               "thinkingConfig", "responseModalities", "mediaResolution", "speechConfig"})
PART_FIELDS = ("text", "inlineData", "fileData", "functionCall", "functionResponse", "executableCode",
               "codeExecutionResult")
SCHEMA_FIELDS = frozenset({"type", "format", "title", "description", "nullable", "enum", "maxItems", "minItems",
                           "properties", "required", "minProperties", "maxProperties", "minLength", "maxLength",
                           "pattern", "example", "anyOf", "propertyOrdering", "default", "items", "minimum",
                           "maximum"})
SCHEMA_TYPES = frozenset({"string", "number", "integer", "boolean", "array", "object",
                          "STRING", "NUMBER", "INTEGER", "BOOLEAN", "ARRAY", "OBJECT"})
STATUS_NAMES = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
                429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}
FINISH = {"end": "STOP", "stop_sequence": "STOP", "max_tokens": "MAX_TOKENS", "tool": "STOP"}


def google_error(code: int, message: str, status: str | None = None,
                 details: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message, "status": status or STATUS_NAMES.get(code, "UNKNOWN")}
    if details:
        error["details"] = details
    return {"error": error}


def default_error_body(status: int) -> dict[str, Any]:
    messages = {429: "Resource has been exhausted (e.g. check quota).", 500: "An internal error has occurred. "
                "Please retry or report in https://developers.generativeai.google/guide/troubleshooting",
                503: "The model is overloaded. Please try again later.", 401: "Request had invalid authentication "
                "credentials.", 403: "The caller does not have permission", 404: "Requested entity was not found.",
                400: "Request contains an invalid argument."}
    return google_error(status, messages.get(status, f"Scripted failure with HTTP {status}."))


class Invalid(Exception):
    def __init__(self, message: str, code: int = 400, details: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.message, self.code, self.details = message, code, details


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(w[:1].upper() + w[1:] for w in rest)


def _camel_keys(value: Any) -> Any:
    return {_camel(k): v for k, v in value.items()} if isinstance(value, dict) else value


def normalise(body: dict[str, Any]) -> dict[str, Any]:
    """snake_case → camelCase on the message levels (never inside args, responses or schemas)."""
    out = _camel_keys(body)
    contents = out.get("contents")
    if isinstance(contents, list):
        out["contents"] = [{**c, "parts": [_part(p) for p in c.get("parts") or []]} if isinstance(c, dict)
                           and isinstance(c.get("parts"), list) else c for c in contents]
    system = _camel_keys(out.get("systemInstruction"))
    if isinstance(system, dict) and isinstance(system.get("parts"), list):
        system["parts"] = [_part(p) for p in system["parts"]]
    if system is not None:
        out["systemInstruction"] = system
    if "generationConfig" in out:
        out["generationConfig"] = _camel_keys(out["generationConfig"])
    if isinstance(out.get("tools"), list):
        out["tools"] = [_camel_keys(t) for t in out["tools"]]
    tool_config = _camel_keys(out.get("toolConfig"))
    if isinstance(tool_config, dict):
        tool_config["functionCallingConfig"] = _camel_keys(tool_config.get("functionCallingConfig"))
        out["toolConfig"] = tool_config
    return out


def _part(part: Any) -> Any:
    part = _camel_keys(part)
    if isinstance(part, dict):
        for name in ("inlineData", "fileData"):
            if name in part:
                part[name] = _camel_keys(part[name])
    return part


def _check_schema(schema: Any, where: str) -> None:
    if not isinstance(schema, dict):
        raise Invalid(f"Invalid value at '{where}' (type.googleapis.com/google.ai.generativelanguage.v1beta.Schema)")
    for key, value in schema.items():
        if key not in SCHEMA_FIELDS:
            raise Invalid(f"Invalid JSON payload received. Unknown name \"{key}\" at '{where}': Cannot find field.")
        if key == "type" and value not in SCHEMA_TYPES:
            raise Invalid(f"Invalid value at '{where}.type', \"{value}\"")
        if key == "properties":
            for name, sub in (value or {}).items():
                _check_schema(sub, f"{where}.properties[{name}].value")
        if key == "items":
            _check_schema(value, f"{where}.items")


def validate(body: Any, model: str) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise Invalid("Invalid JSON payload received. Expected an object.")
    body = normalise(body)
    for name in body:
        if name not in REQUEST_FIELDS:
            raise Invalid(f"Invalid JSON payload received. Unknown name \"{name}\": Cannot find field.")
    if not MODEL_PATTERN.match(model):
        raise Invalid(f"models/{model} is not found for API version v1beta, or is not supported for "
                      "generateContent. Call ListModels to see the list of available models and their supported "
                      "methods.", 404)
    contents = body.get("contents")
    if not isinstance(contents, list) or not contents:
        raise Invalid("* GenerateContentRequest.contents: contents is not specified\n")
    pending_calls = 0
    for i, content in enumerate(contents):
        where = f"GenerateContentRequest.contents[{i}]"
        if not isinstance(content, dict):
            raise Invalid(f"Invalid value at 'contents[{i}]'")
        role = content.get("role", "user")
        if role not in ("user", "model", "function"):
            raise Invalid(f"* {where}.role: Please use a valid role: user, model.\n")
        parts = content.get("parts")
        if not isinstance(parts, list) or not parts:
            raise Invalid(f"* {where}.parts: contents.parts must not be empty.\n")
        calls = responses = 0
        for j, part in enumerate(parts):
            present = [f for f in PART_FIELDS if isinstance(part, dict) and f in part]
            if len(present) != 1:
                raise Invalid(f"* {where}.parts[{j}].data: required oneof field 'data' must have one initialized "
                              "field\n")
            kind = present[0]
            if kind == "text" and not isinstance(part["text"], str):
                raise Invalid(f"Invalid value at 'contents[{i}].parts[{j}].text'")
            if kind == "inlineData":
                data = part["inlineData"]
                if not isinstance(data, dict) or not isinstance(data.get("mimeType"), str):
                    raise Invalid(f"* {where}.parts[{j}].inline_data.mime_type: mime_type is not specified\n")
                try:
                    base64.b64decode(str(data.get("data") or ""), validate=True)
                except (binascii.Error, ValueError):
                    raise Invalid(f"Invalid value at 'contents[{i}].parts[{j}].inline_data.data' (TYPE_BYTES), "
                                  "Base64 decoding failed") from None
            if kind == "fileData" and not isinstance((part["fileData"] or {}).get("fileUri"), str):
                raise Invalid(f"* {where}.parts[{j}].file_data.file_uri: file_uri is not specified\n")
            if kind == "functionCall":
                if role != "model":
                    raise Invalid(f"* {where}.parts[{j}]: function calls may only be in model turns\n")
                call = part["functionCall"]
                if not isinstance(call, dict) or not isinstance(call.get("name"), str):
                    raise Invalid(f"* {where}.parts[{j}].function_call.name: Name is not specified\n")
                if model.startswith("gemini-3") and not part.get("thoughtSignature"):
                    raise Invalid(f"Function call is missing a thought_signature in functionCall parts. This is "
                                  f"required for tools to work correctly, and missing thought_signature may lead to "
                                  f"degraded model performance. Additional data, function call `default_api:"
                                  f"{call['name']}` , position {j + 1}. Please refer to "
                                  "https://ai.google.dev/gemini-api/docs/thought-signatures for more details.")
                if "args" in call and not isinstance(call["args"], dict):
                    raise Invalid(f"Invalid value at 'contents[{i}].parts[{j}].function_call.args' (Struct)")
                calls += 1
            if kind == "functionResponse":
                response = part["functionResponse"]
                if not isinstance(response, dict) or not isinstance(response.get("name"), str):
                    raise Invalid(f"* {where}.parts[{j}].function_response.name: Name is not specified\n")
                if not isinstance(response.get("response"), dict):
                    raise Invalid(f"Invalid value at 'contents[{i}].parts[{j}].function_response.response' "
                                  "(type.googleapis.com/google.protobuf.Struct)")
                responses += 1
        if (pending_calls or responses) and responses != pending_calls:
            raise Invalid("Please ensure that the number of function response parts is equal to the number of "
                          "function call parts of the function call turn.")
        pending_calls = calls
    system = body.get("systemInstruction")
    if system is not None and (not isinstance(system, dict) or not isinstance(system.get("parts"), list)
                               or not all(isinstance(p, dict) and isinstance(p.get("text"), str)
                                          for p in system["parts"])):
        raise Invalid("Invalid value at 'system_instruction'")
    config = body.get("generationConfig") or {}
    if not isinstance(config, dict):
        raise Invalid("Invalid value at 'generation_config'")
    for name in config:
        if name not in GENERATION_FIELDS:
            raise Invalid(f"Invalid JSON payload received. Unknown name \"{name}\" at 'generation_config': "
                          "Cannot find field.")
    max_out = config.get("maxOutputTokens")
    if max_out is not None and (isinstance(max_out, bool) or not isinstance(max_out, int) or max_out < 1):
        raise Invalid("* GenerateContentRequest.generation_config.max_output_tokens: max_output_tokens must be "
                      "positive.\n")
    for name, high in (("temperature", 2.0), ("topP", 1.0)):
        value = config.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not 0 <= value <= high):
            raise Invalid(f"* GenerateContentRequest.generation_config.{name}: must be in the range [0, {high:g}]\n")
    stops = config.get("stopSequences")
    if stops is not None and (not isinstance(stops, list) or len(stops) > 5
                              or not all(isinstance(s, str) for s in stops)):
        raise Invalid("* GenerateContentRequest.generation_config.stop_sequences: at most 5 strings\n")
    if config.get("candidateCount", 1) != 1:
        raise Invalid("* GenerateContentRequest.generation_config.candidate_count: only 1 is supported\n")
    mime = config.get("responseMimeType")
    if mime is not None and mime not in ("text/plain", "application/json", "text/x.enum"):
        raise Invalid(f"* GenerateContentRequest.generation_config.response_mime_type: allowed mimetypes are "
                      f"`text/plain`, `application/json`, `text/x.enum`, got {mime}.\n")
    if "responseSchema" in config:
        _check_schema(config["responseSchema"], "generation_config.response_schema")
    names: list[str] = []
    for i, tool in enumerate(body.get("tools") or []):
        for j, declaration in enumerate(tool.get("functionDeclarations") or []):
            name = declaration.get("name") if isinstance(declaration, dict) else None
            if not isinstance(name, str) or not FUNCTION_NAME.match(name):
                raise Invalid(f"* GenerateContentRequest.tools[{i}].function_declarations[{j}].name: Invalid "
                              "function name. Must start with a letter or an underscore.\n")
            if "parameters" in declaration:
                _check_schema(declaration["parameters"], f"tools[{i}].function_declarations[{j}].parameters")
            names.append(name)
    fcc = ((body.get("toolConfig") or {}).get("functionCallingConfig")) or {}
    if fcc:
        if fcc.get("mode", "AUTO") not in ("AUTO", "ANY", "NONE", "VALIDATED"):
            raise Invalid(f"Invalid value at 'tool_config.function_calling_config.mode', \"{fcc.get('mode')}\"")
        allowed = fcc.get("allowedFunctionNames")
        if allowed is not None:
            if fcc.get("mode") != "ANY":
                raise Invalid("* GenerateContentRequest.tool_config.function_calling_config.allowed_function_names:"
                              " only allowed when mode is ANY\n")
            for name in allowed:
                if name not in names:
                    raise Invalid(f"* GenerateContentRequest.tool_config.function_calling_config.allowed_function_"
                                  f"names: function {name} is not declared\n")
    return body


def reply_of(body: dict[str, Any], state: FakeState) -> Reply:
    last = body["contents"][-1]
    parts = last["parts"]
    results = []
    for part in parts:
        response = part.get("functionResponse")
        if isinstance(response, dict):
            value = response["response"]
            results.append(str(value["result"]) if set(value) == {"result"} else orjson.dumps(value).decode())
    texts = [str(p["text"]) for p in parts if isinstance(p.get("text"), str)]
    images = sum(1 for p in parts if "inlineData" in p or "fileData" in p)
    text = " ".join(texts) + (f" [{images} image{'s' if images > 1 else ''}]" if images else "")
    tools = [(d["name"], d.get("parameters") or {}) for t in body.get("tools") or []
             for d in t.get("functionDeclarations") or []]
    fcc = ((body.get("toolConfig") or {}).get("functionCallingConfig")) or {}
    mode = fcc.get("mode", "AUTO")
    allowed = fcc.get("allowedFunctionNames") or []
    config = body.get("generationConfig") or {}
    return reply_for(last_user_text=text.strip(), tool_results=results, tools=tools,
                     forced_tool=allowed[0] if allowed else None, tools_allowed=mode != "NONE",
                     max_tokens=config.get("maxOutputTokens"), stop_sequences=list(config.get("stopSequences") or []),
                     canned=state.options.get("reply"))


def _usage(prompt: int, output: int, state: FakeState) -> dict[str, Any]:
    usage: dict[str, Any] = {"promptTokenCount": prompt, "candidatesTokenCount": output,
                             "totalTokenCount": prompt + output,
                             "promptTokensDetails": [{"modality": "TEXT", "tokenCount": prompt}]}
    cached = int(state.options.get("cached_content_token_count", 0))
    if cached:
        usage["cachedContentTokenCount"] = cached
    return usage


def responses_of(model: str, reply: Reply, body_bytes: int, state: FakeState, *, stream: bool) -> list[dict[str, Any]]:
    """The whole answer (one response), or the stream's partial responses (two text pieces each)."""
    prompt = input_tokens(body_bytes)
    response_id = secrets.token_urlsafe(16)
    finish = FINISH[reply.stop]
    if reply.tool is not None:
        part: dict[str, Any] = {"functionCall": {"name": reply.tool.name, "args": reply.tool.input},
                                "thoughtSignature": base64.b64encode(secrets.token_bytes(48)).decode()}
        output = tool_output_tokens(reply.tool, orjson.dumps(reply.tool.input).decode())
        groups = [[part]]
    else:
        output = len(reply.pieces)
        if not stream:
            groups = [[{"text": reply.text}]]
        else:
            groups = [[{"text": "".join(reply.pieces[i:i + 2])}] for i in range(0, len(reply.pieces), 2)] or [[]]
    out = []
    for n, parts in enumerate(groups):
        last = n == len(groups) - 1
        candidate: dict[str, Any] = {"content": {"parts": parts, "role": "model"}, "index": 0}
        if last:
            candidate["finishReason"] = finish
        emitted = output if last else 0
        out.append({"candidates": [candidate], "usageMetadata": _usage(prompt, emitted, state) if last else
                    {"promptTokenCount": prompt, "totalTokenCount": prompt},
                    "modelVersion": model, "responseId": response_id})
    return out


def build_app(state: FakeState) -> Starlette:
    async def models(request: Request) -> Response:
        rec = await record_of(request)
        response = await _answer(request, rec.json, state)
        rec.status = response.status_code
        state.record(rec)
        return response

    async def not_found(request: Request, exc: Exception) -> Response:
        return json_response(google_error(404, f"The requested URL {request.url.path} was not found."), 404)

    routes = [Route("/{version:str}/models/{call:str}", models, methods=["POST"]), *control_routes(state)]
    return Starlette(routes=routes, exception_handlers={404: not_found, 405: not_found})


async def _answer(request: Request, body: Any, state: FakeState) -> Response:
    version = request.path_params["version"]
    model, _, method = request.path_params["call"].partition(":")
    if version not in ("v1beta", "v1") or method not in ("generateContent", "streamGenerateContent"):
        return json_response(google_error(404, f"The requested URL {request.url.path} was not found."), 404)
    key = request.headers.get("x-goog-api-key") or request.query_params.get("key")
    if not key:
        return json_response(google_error(403, "Method doesn't allow unregistered callers (callers without "
                                          "established identity). Please use API Key or other form of API consumer "
                                          "identity to call this API."), 403)
    if state.api_key is not None and key != state.api_key:
        return json_response(google_error(400, "API key not valid. Please pass a valid API key.", details=[{
            "@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID",
            "domain": "googleapis.com", "metadata": {"service": "generativelanguage.googleapis.com"}}]), 400)
    if body is None:
        return json_response(google_error(400, "Invalid JSON payload received."), 400)
    misbehaviour = state.next_misbehaviour()
    await pause(state, misbehaviour)
    if misbehaviour is not None and misbehaviour.status:
        return json_response(misbehaviour.body if misbehaviour.body is not None
                             else default_error_body(misbehaviour.status), misbehaviour.status,
                             headers=misbehaviour.headers)
    try:
        checked = validate(body, model)
    except Invalid as exc:
        return json_response(google_error(exc.code, exc.message, details=exc.details), exc.code)
    raw = await request.body()
    reply = reply_of(checked, state)
    stream = method == "streamGenerateContent"
    responses = responses_of(model, reply, len(raw), state, stream=stream)
    if not stream:
        return json_response(responses[0])
    if request.query_params.get("alt") != "sse":
        return json_response(responses)
    return StreamingResponse(_stream(responses, misbehaviour), media_type="text/event-stream")


async def _stream(responses: list[dict[str, Any]], misbehaviour: Misbehaviour | None) -> AsyncIterator[bytes]:
    cut = misbehaviour.cut_after if misbehaviour is not None else None
    for n, response in enumerate(responses):
        if cut is not None and n >= cut:
            assert misbehaviour is not None
            if misbehaviour.error is not None:
                yield b"data: " + orjson.dumps(misbehaviour.error) + b"\r\n\r\n"
                return
            raise StreamCut("scripted cut")
        yield b"data: " + orjson.dumps(response) + b"\r\n\r\n"


class FakeGemini(LoopbackFake):
    name = "fake-gemini"
    default_api_key = DEFAULT_API_KEY

    def build_app(self, state: FakeState) -> Starlette:
        return build_app(state)

    def __enter__(self) -> FakeGemini:
        self.start()
        return self

    @property
    def base_url(self) -> str:
        """The API origin, as Google's SDKs take it (no version)."""
        return self.origin

    def set_reply(self, text: str | None) -> None:
        if text is None:
            self.state.options.pop("reply", None)
        else:
            self.state.options["reply"] = text

    def set_cached_tokens(self, tokens: int) -> None:
        self.state.options["cached_content_token_count"] = tokens


if __name__ == "__main__":
    raise SystemExit(serve_main("fake Gemini", build_app, DEFAULT_API_KEY))
