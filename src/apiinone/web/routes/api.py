"""The public API, ``/api/v1``: image tasks, tasks, models, the account, its ledger, request log and usage."""

from __future__ import annotations

from typing import Any

import orjson
import structlog
from fastapi import APIRouter
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response

from apiinone.domain.credits import format_credits
from apiinone.domain.tasks import Task, iso
from apiinone.errors import InvalidParameter, ModelNotFound, UrlNotAllowedError
from apiinone.ids import now_ms
from apiinone.net.egress import UrlNotAllowed, check_url
from apiinone.services.tasks import IdempotencyClaim, ImageTaskRequest
from apiinone.services.usage import UsageService
from apiinone.web.deps import authenticate, base_url_of, container_of
from apiinone.web.responses import JsonResponse, json_response
from apiinone.web.routes.events import prefer_wait
from apiinone.web.schemas import ImageGenerationBody, parse_json_body, read_json_body

router = APIRouter(prefix="/api/v1")
log = structlog.get_logger(__name__)

_CREATE_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": ImageGenerationBody.model_json_schema()}},
    },
    "responses": {"202": {"description": "Task accepted; body is the task object"}},
}


async def _touch_key(request: Request) -> None:
    key_id = getattr(request.state, "touch_key", None)
    if key_id:
        try:
            async with container_of(request).db.uow() as uow:
                await uow.api_keys.touch([key_id], now_ms())
                await uow.commit()
        except Exception as exc:  # best effort, after the response: never fail the connection for it
            log.warning("key_touch_failed", error=type(exc).__name__)


def _touch_task(request: Request) -> BackgroundTask | None:
    return BackgroundTask(_touch_key, request) if getattr(request.state, "touch_key", None) else None


async def check_user_urls(request: Request, body: ImageGenerationBody) -> None:
    """Every URL a user gives us is checked before we accept the task (and again at connect)."""
    policy = container_of(request).egress
    checks = [(u, "input_urls") for u in body.input_urls or ()]
    if body.callback_url:
        checks.append((body.callback_url, "callback_url"))
    for url, param in checks:
        try:
            await check_url(url, policy)
        except UrlNotAllowed as exc:
            raise UrlNotAllowedError(f"{param}: {exc.message}", param=param) from exc


def task_response(request: Request, task: Task, status_code: int) -> JsonResponse:
    body = task.to_public(base_url_of(request))
    return json_response(body, status_code, headers={"Location": f"/api/v1/tasks/{task.id}"})


@router.post("/images/generations", status_code=202, openapi_extra=_CREATE_DOC,
             summary="Create an image generation or edit task")
async def create_image_task(request: Request) -> Response:
    key, account = await authenticate(request)
    container = container_of(request)
    await container.rate_limits.check(key, account)
    raw = await read_json_body(request)
    body = parse_json_body(raw, ImageGenerationBody)
    await check_user_urls(request, body)
    idem_key = request.headers.get("idempotency-key")
    claim = None
    if idem_key is not None:
        if not IdempotencyClaim.is_valid_key(idem_key):
            raise InvalidParameter("Idempotency-Key must be 1 to 255 characters", param="Idempotency-Key")
        claim = IdempotencyClaim.for_body(idem_key, "images.generations", raw)
    base = base_url_of(request)
    result = await container.tasks.create_image_task(
        account, key,
        ImageTaskRequest(model=body.model, prompt=body.prompt, aspect_ratio=body.aspect_ratio,
                         quality=body.quality, input_urls=tuple(body.input_urls or ()),
                         callback_url=body.callback_url),
        idempotency=claim, render=lambda t: orjson.dumps(t.to_public(base)),
        max_active_tasks=container.rate_limits.max_active_tasks(account),
    )
    wait_s = prefer_wait(request.headers.get("prefer"))
    if wait_s is not None:  # waits on a signal, holding no database connection meanwhile
        task = await container.task_events.wait_for_end(account.id, result.task.id, wait_s)
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


@router.get("/tasks/{task_id}", summary="Get a task")
async def get_task(request: Request, task_id: str) -> Response:
    _key, account = await authenticate(request)
    task = await container_of(request).tasks.get_task(account.id, task_id)
    return json_response(task.to_public(base_url_of(request)))


def _limit(request: Request, default: int = 20, maximum: int = 100) -> int:
    raw = request.query_params.get("limit")
    if raw is None:
        return default
    if not raw.isdigit() or not 1 <= int(raw) <= maximum:
        raise InvalidParameter(f"limit must be an integer from 1 to {maximum}", param="limit")
    return int(raw)


@router.get("/tasks", summary="List the account's tasks, newest first")
async def list_tasks(request: Request) -> Response:
    _key, account = await authenticate(request)
    q = request.query_params
    tasks, next_cursor = await container_of(request).tasks.list_tasks(
        account.id, limit=_limit(request), cursor=q.get("cursor") or None,
        status=q.get("status") or None, model=q.get("model") or None)
    base = base_url_of(request)
    return json_response({"data": [t.to_public(base) for t in tasks], "next_cursor": next_cursor})


@router.post("/tasks/{task_id}/cancel", summary="Cancel a queued or running task")
async def cancel_task(request: Request, task_id: str) -> Response:
    _key, account = await authenticate(request)
    task = await container_of(request).tasks.cancel_task(account.id, task_id)
    return json_response(task.to_public(base_url_of(request)))


@router.get("/models", summary="List launched models (no key needed)")
async def list_models(request: Request) -> Response:
    container = container_of(request)
    data = [container.model_public(m) for m in container.catalog.launched()]
    return json_response({"object": "list", "data": data, "next_cursor": None})


@router.get("/models/{model_id}", summary="Get one model by id or alias (no key needed)")
async def get_model(request: Request, model_id: str) -> Response:
    container = container_of(request)
    spec = container.catalog.resolve(model_id)
    if spec is None or not spec.launched or not spec.enabled:
        raise ModelNotFound(f"model {model_id!r} does not exist")
    return json_response(container.model_public(spec))


@router.get("/account", summary="The account and its credits")
async def get_account(request: Request) -> Response:
    _key, account = await authenticate(request)
    async with container_of(request).db.uow(write=False) as uow:
        credits = await uow.accounts.credits(account.id)
    return json_response({"id": account.id, "email": account.email, "credits": credits.to_public()})


@router.get("/account/ledger", summary="Credit ledger entries, newest first")
async def get_ledger(request: Request) -> Response:
    _key, account = await authenticate(request)
    limit = _limit(request)
    cursor = request.query_params.get("cursor")
    if cursor is not None and not cursor.isdigit():
        raise InvalidParameter("cursor is not valid", param="cursor")
    async with container_of(request).db.uow(write=False) as uow:
        entries = await uow.ledger.list(account.id, limit=limit + 1, before_id=int(cursor) if cursor else None,
                                        kind=request.query_params.get("kind") or None)
    page = entries[:limit]
    data = [{"id": e.id, "kind": e.kind.value, "amount": format_credits(e.amount), "task_id": e.task_id,
             "request_id": e.request_id, "note": e.note, "created_at": iso(e.created_at)} for e in page]
    return json_response({"data": data, "next_cursor": str(page[-1].id) if len(entries) > limit else None})


def _usage(request: Request) -> UsageService:
    container = container_of(request)
    return UsageService(container.db, container.catalog_source)


def _query_doc(*params: tuple[str, dict[str, Any], str]) -> dict[str, Any]:
    return {"parameters": [{"name": name, "in": "query", "required": False, "schema": schema, "description": text}
                           for name, schema, text in params]}


_REQUESTS_DOC = _query_doc(
    ("limit", {"type": "integer", "minimum": 1, "maximum": 100, "default": 20}, "entries per page"),
    ("cursor", {"type": "string"}, "next_cursor of the previous page"),
    ("model", {"type": "string"}, "only this model (id or alias)"),
    ("type", {"type": "string", "enum": ["image", "video", "audio", "speech", "chat"]}, "only this type"),
)
_USAGE_DOC = _query_doc(
    ("from", {"type": "string", "format": "date"}, "first UTC day (default: 29 days before to)"),
    ("to", {"type": "string", "format": "date"}, "last UTC day, included (default: today)"),
    ("group_by", {"type": "string", "enum": ["day", "model", "key"], "default": "day"}, "one row per group"),
)


@router.get("/account/requests", summary="The request log, newest first", openapi_extra=_REQUESTS_DOC)
async def list_requests(request: Request) -> Response:
    _key, account = await authenticate(request)
    q = request.query_params
    entries, next_cursor = await _usage(request).requests(
        account.id, limit=_limit(request), cursor=q.get("cursor"), model=q.get("model"), type=q.get("type"))
    return json_response({"data": [e.to_public() for e in entries], "next_cursor": next_cursor})


@router.get("/account/usage", summary="Requests, credits and tokens per UTC day, model or key",
            openapi_extra=_USAGE_DOC)
async def get_usage(request: Request) -> Response:
    _key, account = await authenticate(request)
    q = request.query_params
    group_by, rows = await _usage(request).usage(account.id, start=q.get("from"), end=q.get("to"),
                                                 group_by=q.get("group_by"))
    return json_response({"data": [r.to_public(group_by) for r in rows], "next_cursor": None})


@router.get("/account/webhook-secret", summary="The account's webhook signing secret")
async def get_webhook_secret(request: Request) -> Response:
    _key, account = await authenticate(request)
    fresh = await container_of(request).accounts.get(account.id)
    return json_response({"secret": fresh.webhook_secret})


@router.post("/account/webhook-secret/rotate", summary="Rotate the webhook secret (old one valid 24 h)")
async def rotate_webhook_secret(request: Request) -> Response:
    _key, account = await authenticate(request)
    secret = await container_of(request).accounts.rotate_webhook_secret(account.id)
    return json_response({"secret": secret})
