"""``POST /api/v1/videos/generations`` and ``POST /api/v1/audio/generations``: media tasks.

Same answer as the image route (202 + ``Location`` + the task, ``Idempotency-Key``, ``Prefer:
wait``); the model's kind checks the fields its catalog entry constrains (durations, resolutions)
and prices the task before anything is held.
"""

from __future__ import annotations

from typing import Any, cast

import orjson
from fastapi import APIRouter
from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response

from apiinone.errors import UrlNotAllowedError
from apiinone.kinds.audio import AudioKind
from apiinone.kinds.video import VideoKind
from apiinone.net.egress import UrlNotAllowed, check_url
from apiinone.services.tasks import IdempotencyClaim
from apiinone.web.deps import authenticate, base_url_of, container_of, idempotency_key
from apiinone.web.responses import JsonResponse
from apiinone.web.routes.api import _touch_task, task_response
from apiinone.web.routes.events import prefer_wait
from apiinone.web.schemas import AudioGenerationBody, VideoGenerationBody, parse_json_body, read_json_body

router = APIRouter(prefix="/api/v1")


def _doc(model: type[BaseModel]) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": model.model_json_schema()}}},
            "responses": {"202": {"description": "Task accepted; body is the task object"}}}


async def _check_urls(request: Request, urls: list[str] | None, callback_url: str | None) -> None:
    policy = container_of(request).egress
    checks = [(u, "input_urls") for u in urls or ()]
    if callback_url:
        checks.append((callback_url, "callback_url"))
    for url, param in checks:
        try:
            await check_url(url, policy)
        except UrlNotAllowed as exc:
            raise UrlNotAllowedError(f"{param}: {exc.message}", param=param) from exc


async def _create(request: Request, type_name: str, body_model: type[BaseModel], route_name: str) -> Response:
    key, account = await authenticate(request)
    container = container_of(request)
    await container.rate_limits.check(key, account)
    wait_s = prefer_wait(request.headers.get("prefer"))  # every header is read before anything changes
    idem_key = idempotency_key(request)
    raw = await read_json_body(request)
    body = parse_json_body(raw, body_model)
    fields = body.model_dump()
    spec = container.tasks.resolve_model(fields["model"], key=key, type_=type_name)
    kind = cast(VideoKind | AudioKind, container.kinds.get(type_name))
    task_input, price = kind.prepare(spec, fields)
    await _check_urls(request, fields.get("input_urls"), fields.get("callback_url"))
    claim = None if idem_key is None else IdempotencyClaim.for_body(idem_key, route_name, raw)
    base = base_url_of(request)
    result = await container.tasks.create_task(
        account, key, spec, task_input, price, callback_url=fields.get("callback_url"), idempotency=claim,
        render=lambda t: orjson.dumps(t.to_public(base)),
        max_active_tasks=container.rate_limits.max_active_tasks(account))
    if wait_s is not None:
        try:
            task = await container.task_events.wait_for_end(account.id, result.task.id, wait_s)
        except Exception:  # the task is accepted and held: answer it, never an error for it
            task = result.task
        response = task_response(request, task, 200 if task.status.is_terminal else 202)
        response.headers["Preference-Applied"] = f"wait={wait_s}"
        if result.replayed:
            response.headers["Idempotent-Replayed"] = "true"
        response.background = _touch_task(request)
        return response
    if result.replayed:
        assert result.replay_body is not None and result.replay_status is not None
        return JsonResponse(result.replay_body, status_code=result.replay_status,
                            headers={"Location": f"/api/v1/tasks/{result.task.id}", "Idempotent-Replayed": "true"})
    response = task_response(request, result.task, 202)
    response.background = _touch_task(request)
    return response


@router.post("/videos/generations", status_code=202, openapi_extra=_doc(VideoGenerationBody),
             summary="Create a video generation task")
async def create_video_task(request: Request) -> Response:
    return await _create(request, "video", VideoGenerationBody, "videos.generations")


@router.post("/audio/generations", status_code=202, openapi_extra=_doc(AudioGenerationBody),
             summary="Create an audio (music, sound) generation task")
async def create_audio_task(request: Request) -> Response:
    return await _create(request, "audio", AudioGenerationBody, "audio.generations")
