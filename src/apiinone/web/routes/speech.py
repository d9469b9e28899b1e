"""Speech, answered directly with the audio bytes: ``POST /api/v1/audio/speech`` (this API's error
shape) and ``POST /v1/audio/speech`` (OpenAI's, so ``client.audio.speech.create`` works as is).

While the upstream speaks, the route watches the connection: a client that goes away stops the
upstream call and is charged nothing (:class:`~apiinone.services.speech.SpeechService`)."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from apiinone.domain.accounts import Account, ApiKey
from apiinone.domain.credits import format_credits_text
from apiinone.errors import InvalidJson, UpstreamFailed, UpstreamTimedOut
from apiinone.kinds.speech import SpeechParamError, SpeechRequest, parse_speech_request
from apiinone.services.speech import ClientGone, SpeechResult
from apiinone.web.deps import authenticate, container_of
from apiinone.web.routes.api import _touch_task
from apiinone.web.routes.openai_compat import OpenAIErrorsRoute, OpenAIInvalidRequest, openai_error_for
from apiinone.web.schemas import read_json_body

api_router = APIRouter(prefix="/api/v1")
compat_router = APIRouter(prefix="/v1", route_class=OpenAIErrorsRoute, tags=["OpenAI-compatible"])

_BODY_DOC: dict[str, Any] = {
    "requestBody": {"required": True, "content": {"application/json": {"schema": {
        "type": "object", "required": ["model", "input", "voice"],
        "properties": {
            "model": {"type": "string"}, "input": {"type": "string", "minLength": 1, "maxLength": 4096},
            "voice": {"type": "string"},
            "response_format": {"type": "string", "enum": ["mp3", "opus", "aac", "flac", "wav", "pcm"]},
            "speed": {"type": "number", "minimum": 0.25, "maximum": 4.0},
            "instructions": {"type": "string"},
        }}}}},
    "responses": {"200": {"description": "The audio bytes, with their content type",
                          "content": {f"audio/{t}": {} for t in ("mpeg", "wav", "opus", "aac", "flac", "pcm")}}},
}


def speech_request_from(raw: bytes) -> SpeechRequest:
    try:
        fields = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidJson(f"request body is not valid JSON: {exc.msg}") from exc
    if not isinstance(fields, dict):
        raise InvalidJson("request body must be a JSON object")
    return parse_speech_request(fields)


async def speak_for(request: Request, account: Account, key: ApiKey | None,
                    speech: SpeechRequest) -> Response:
    """Speak, watching for the client to leave; the audio with its content type and what it cost."""
    gone = asyncio.Event()

    async def watch_disconnect() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass
        gone.set()

    watcher = asyncio.create_task(watch_disconnect())
    try:
        result = await container_of(request).speech.speak(account, key, speech, client_gone=gone)
    except ClientGone:
        return Response(status_code=499)  # nobody reads it
    finally:
        watcher.cancel()
    return audio_response(result)


def audio_response(result: SpeechResult) -> Response:
    return Response(result.audio.data, media_type=result.audio.content_type, headers={
        "X-Request-Id": result.request_id, "X-Credits-Charged": format_credits_text(result.charged),
        "X-Model": result.model})


@api_router.post("/audio/speech", openapi_extra=_BODY_DOC, summary="Speech from text (answered with the audio)")
async def create_speech(request: Request) -> Response:
    key, account = await authenticate(request)
    container = container_of(request)
    await container.rate_limits.check(key, account)
    speech = speech_request_from(await read_json_body(request))
    response = await speak_for(request, account, key, speech)
    response.background = _touch_task(request)
    return response


@compat_router.post("/audio/speech", openapi_extra=_BODY_DOC, summary="Create speech (OpenAI Audio API)")
async def create_speech_openai(request: Request) -> Response:
    key, account = await authenticate(request)
    container = container_of(request)
    await container.rate_limits.check(key, account)
    try:
        speech = speech_request_from(await read_json_body(request))
        response = await speak_for(request, account, key, speech)
    except SpeechParamError as exc:
        raise OpenAIInvalidRequest(exc.message, param=exc.param, openai_code=exc.openai_code) from None
    except InvalidJson:
        raise OpenAIInvalidRequest("We could not parse the JSON body of your request.", param=None,
                                   openai_code="invalid_json") from None
    except (UpstreamFailed, UpstreamTimedOut) as exc:  # every route was tried already: a retry cannot help
        failed = openai_error_for(exc)
        failed.headers["x-should-retry"] = "false"
        return failed
    response.background = _touch_task(request)
    return response
