"""The public API, ``/api/v1``: image tasks, tasks, models, the account, its ledger, request log and usage."""

from __future__ import annotations

from typing import Any

import orjson
import structlog
from fastapi import APIRouter
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response

from apiinone.domain.credits import LedgerKind, format_credits
from apiinone.domain.tasks import Task, TaskStatus, iso
from apiinone.errors import InvalidParameter, ModelNotFound, UrlNotAllowedError
from apiinone.ids import is_task_id, now_ms
from apiinone.net.egress import UrlNotAllowed, check_url
from apiinone.params import MAX_INT64, parse_int, parse_optional_int
from apiinone.services.tasks import IdempotencyClaim, ImageTaskRequest
from apiinone.services.usage import UsageService
from apiinone.web import openapi
from apiinone.web.deps import authenticate, base_url_of, container_of, idempotency_key
from apiinone.web.responses import JsonResponse, json_response
from apiinone.web.routes.events import prefer_wait
from apiinone.web.schemas import ImageGenerationBody, parse_json_body, read_json_body

router = APIRouter(prefix="/api/v1")
log = structlog.get_logger(__name__)

_CREATE_BODY = ImageGenerationBody.model_json_schema()
_CREATE_BODY["properties"]["model"]["examples"] = ["local-typeset", "gpt-image-1.5-official"]
_CREATE_DOC: dict[str, Any] = {
    "requestBody": {"required": True, "content": {"application/json": {"schema": _CREATE_BODY}}},
    "parameters": [
        openapi.header("Idempotency-Key", {"type": "string", "minLength": 1, "maxLength": 255},
                       "Same key and body within 24 h: the first answer again, charged once"),
        openapi.header("Prefer", {"type": "string"}, "`wait=N`: hold the answer until the task ends or N s pass"),
    ],
}
_TASK = openapi.ref("Task")


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
             responses={**openapi.ok(_TASK, 202, "Task accepted"),
                        **openapi.ok(_TASK, 200, "With Prefer: wait, the task ended in time"),
                        **openapi.errors(402, 409)},
             summary="Create an image generation or edit task")
async def create_image_task(request: Request) -> Response:
    key, account = await authenticate(request)
    container = container_of(request)
    await container.rate_limits.check(key, account)
    wait_s = prefer_wait(request.headers.get("prefer"))  # every header is read before anything changes
    idem_key = idempotency_key(request)
    raw = await read_json_body(request)
    body = parse_json_body(raw, ImageGenerationBody)
    await check_user_urls(request, body)
    claim = None if idem_key is None else IdempotencyClaim.for_body(idem_key, "images.generations", raw)
    base = base_url_of(request)
    result = await container.tasks.create_image_task(
        account, key,
        ImageTaskRequest(model=body.model, prompt=body.prompt, aspect_ratio=body.aspect_ratio,
                         quality=body.quality, input_urls=tuple(body.input_urls or ()),
                         callback_url=body.callback_url),
        idempotency=claim, render=lambda t: orjson.dumps(t.to_public(base)),
        max_active_tasks=container.rate_limits.max_active_tasks(account),
    )
    if wait_s is not None:  # waits on a signal, holding no database connection meanwhile
        try:
            task = await container.task_events.wait_for_end(account.id, result.task.id, wait_s)
        except Exception as exc:  # the task is accepted and held: answer it, never an error for it
            log.warning("prefer_wait_failed", task_id=result.task.id, error=type(exc).__name__)
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


@router.get("/tasks/{task_id}", summary="Get a task", responses=openapi.ok(_TASK))
async def get_task(request: Request, task_id: str) -> Response:
    _key, account = await authenticate(request)
    task = await container_of(request).tasks.get_task(account.id, task_id)
    return json_response(task.to_public(base_url_of(request)))


def _limit(request: Request, default: int = 20, maximum: int = 100) -> int:
    return parse_optional_int(request.query_params.get("limit"), "limit", low=1, high=maximum, default=default)


@router.get("/tasks", summary="List the account's tasks, newest first", responses=openapi.ok(openapi.page_of("Task")),
            openapi_extra={"parameters": [
                openapi.query("status", {"enum": [s.value for s in TaskStatus]}, "Only tasks in this status"),
                openapi.query("model", {"type": "string"}, "Only tasks of this model (id or alias)"),
                openapi.LIMIT, openapi.CURSOR]})
async def list_tasks(request: Request) -> Response:
    _key, account = await authenticate(request)
    q = request.query_params
    cursor = q.get("cursor") or None
    if cursor is not None and not is_task_id(cursor):
        raise InvalidParameter("cursor is not valid: pass the next_cursor of the previous page", param="cursor")
    tasks, next_cursor = await container_of(request).tasks.list_tasks(
        account.id, limit=_limit(request), cursor=cursor,
        status=q.get("status") or None, model=q.get("model") or None)
    base = base_url_of(request)
    return json_response({"data": [t.to_public(base) for t in tasks], "next_cursor": next_cursor})


@router.post("/tasks/{task_id}/cancel", summary="Cancel a queued or running task",
             responses={**openapi.ok(_TASK), **openapi.errors(409)})
async def cancel_task(request: Request, task_id: str) -> Response:
    _key, account = await authenticate(request)
    task = await container_of(request).tasks.cancel_task(account.id, task_id)
    return json_response(task.to_public(base_url_of(request)))


@router.get("/models", summary="List launched models (no key needed)", responses=openapi.ok(openapi.page_of("Model")))
async def list_models(request: Request) -> Response:
    container = container_of(request)
    data = [container.model_public(m) for m in container.catalog.launched()]
    return json_response({"object": "list", "data": data, "next_cursor": None})


@router.get("/models/{model_id}", summary="Get one model by id or alias (no key needed)",
            responses=openapi.ok(openapi.ref("Model")))
async def get_model(request: Request, model_id: str) -> Response:
    container = container_of(request)
    spec = container.catalog.resolve(model_id)
    if spec is None or not spec.launched or not spec.enabled:
        raise ModelNotFound(f"model {model_id!r} does not exist")
    return json_response(container.model_public(spec))


@router.get("/account", summary="The account and its credits", responses=openapi.ok(openapi.ref("Account")))
async def get_account(request: Request) -> Response:
    _key, account = await authenticate(request)
    async with container_of(request).db.uow(write=False) as uow:
        credits = await uow.accounts.credits(account.id)
    return json_response({"id": account.id, "email": account.email, "credits": credits.to_public()})


@router.get("/account/ledger", summary="Credit ledger entries, newest first",
            responses=openapi.ok(openapi.page_of("LedgerEntry")),
            openapi_extra={"parameters": [
                openapi.query("kind", {"enum": [k.value for k in LedgerKind]}, "Only entries of this kind"),
                openapi.LIMIT, openapi.query("cursor", {"type": "string", "pattern": "^[0-9]+$"},
                                             "The `next_cursor` of the previous page")]})
async def get_ledger(request: Request) -> Response:
    _key, account = await authenticate(request)
    limit = _limit(request)
    cursor = request.query_params.get("cursor") or None
    before_id = None if cursor is None else parse_int(cursor, "cursor", low=1, high=MAX_INT64)
    kind = request.query_params.get("kind") or None
    if kind is not None and kind not in {k.value for k in LedgerKind}:
        raise InvalidParameter("kind must be one of " + ", ".join(k.value for k in LedgerKind), param="kind")
    async with container_of(request).db.uow(write=False) as uow:
        entries = await uow.ledger.list(account.id, limit=limit + 1, before_id=before_id,
                                        kind=kind)
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


@router.get("/account/requests", summary="The request log, newest first", openapi_extra=_REQUESTS_DOC,
            responses=openapi.ok(openapi.page_of("RequestRecord")))
async def list_requests(request: Request) -> Response:
    _key, account = await authenticate(request)
    q = request.query_params
    entries, next_cursor = await _usage(request).requests(
        account.id, limit=_limit(request), cursor=q.get("cursor"), model=q.get("model"), type=q.get("type"))
    return json_response({"data": [e.to_public() for e in entries], "next_cursor": next_cursor})


@router.get("/account/usage", summary="Requests, credits and tokens per UTC day, model or key",
            openapi_extra=_USAGE_DOC, responses=openapi.ok(openapi.page_of("UsageRow")))
async def get_usage(request: Request) -> Response:
    _key, account = await authenticate(request)
    q = request.query_params
    group_by, rows = await _usage(request).usage(account.id, start=q.get("from"), end=q.get("to"),
                                                 group_by=q.get("group_by"))
    return json_response({"data": [r.to_public(group_by) for r in rows], "next_cursor": None})


@router.get("/account/webhook-secret", summary="The account's webhook signing secret",
            responses=openapi.ok(openapi.ref("WebhookSecret")))
async def get_webhook_secret(request: Request) -> Response:
    _key, account = await authenticate(request)
    fresh = await container_of(request).accounts.get(account.id)
    return json_response({"secret": fresh.webhook_secret})


@router.post("/account/webhook-secret/rotate", summary="Rotate the webhook secret (old one valid 24 h)",
             responses=openapi.ok(openapi.ref("WebhookSecret")))
async def rotate_webhook_secret(request: Request) -> Response:
    _key, account = await authenticate(request)
    secret = await container_of(request).accounts.rotate_webhook_secret(account.id)
    return json_response({"secret": secret})
