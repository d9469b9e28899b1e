"""Same-origin JSON routes for the console's scripts (the BFF): the playground creates and polls
tasks here with the session cookie, so no API key is ever in the browser.

They do the same work as ``/api/v1`` (same validation, egress checks, credit hold) and answer in
its error shape. A POST must carry the session's CSRF token in ``X-CSRF-Token``.
"""

from __future__ import annotations

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from apiinone.domain.accounts import Account
from apiinone.errors import Forbidden, Unauthorized
from apiinone.services.sessions import SESSION_COOKIE, WebSession, csrf_matches
from apiinone.services.tasks import ImageTaskRequest
from apiinone.web.deps import base_url_of, container_of
from apiinone.web.responses import json_response
from apiinone.web.routes.api import check_user_urls
from apiinone.web.routes.pages import services_of
from apiinone.web.routes.speech import speak_for, speech_request_from
from apiinone.web.schemas import ImageGenerationBody, parse_json_body, read_json_body

router = APIRouter(prefix="/console/api", include_in_schema=False)


async def _session(request: Request) -> WebSession:
    session = await services_of(request).sessions.load(request.cookies.get(SESSION_COOKIE))
    if session is None:
        raise Unauthorized("sign in to the console first")
    return session


async def _session_for_write(request: Request) -> Account:
    session = await _session(request)
    if not csrf_matches(session.csrf_token, request.headers.get("x-csrf-token")):
        raise Forbidden("missing or wrong CSRF token")
    return session.account


@router.post("/tasks")
async def create_task(request: Request) -> Response:
    """The playground's submit: exactly ``POST /api/v1/images/generations`` (same validation, account
    rate limits and credit hold), billed to the session's account with no API key, so no per-key
    allowlist or budget applies."""
    account = await _session_for_write(request)
    container = container_of(request)
    await container.rate_limits.check(None, account)
    body = parse_json_body(await read_json_body(request), ImageGenerationBody)
    await check_user_urls(request, body)
    result = await container.tasks.create_image_task(
        account, None,
        ImageTaskRequest(model=body.model, prompt=body.prompt, aspect_ratio=body.aspect_ratio,
                         quality=body.quality, input_urls=tuple(body.input_urls or ()),
                         callback_url=body.callback_url),
        max_active_tasks=container.rate_limits.max_active_tasks(account),
    )
    return json_response(result.task.to_public(base_url_of(request)), 202)


@router.post("/audio/speech")
async def create_speech(request: Request) -> Response:
    """The speech playground: exactly ``POST /api/v1/audio/speech`` (same validation, hold and
    capture), billed to the session's account; the answer is the audio bytes."""
    account = await _session_for_write(request)
    container = container_of(request)
    await container.rate_limits.check(None, account)
    speech = speech_request_from(await read_json_body(request))
    return await speak_for(request, account, None, speech)


@router.get("/tasks/{task_id}")
async def get_task(request: Request, task_id: str) -> Response:
    session = await _session(request)
    task = await container_of(request).tasks.get_task(session.account.id, task_id)
    return json_response(task.to_public(base_url_of(request)))


@router.get("/account")
async def get_account(request: Request) -> Response:
    session = await _session(request)
    async with container_of(request).db.uow(write=False) as uow:
        credits = await uow.accounts.credits(session.account.id)
    return json_response({"email": session.account.email, "credits": credits.to_public()})
