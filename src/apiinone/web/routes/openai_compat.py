"""OpenAI's Images API under ``/v1``, so existing code and the official ``openai`` SDK work with
``base_url="http://host/v1"`` and an ``aio_`` key.

A request is still an image task (same keys, same credit hold, same task record and request log as
``/api/v1``), but it skips the queue: the hold inserts the task ``running`` under a lease of this
process, which calls the upstream through the route pool itself (``services/direct.py``), writes the
answer while the images are stored, and commits the charge (group-committed with other requests'
finishes) before the answer's last byte. Idempotent replays wait for the first request's task.

Field mapping:

* ``size``: ``1024x1024`` and ``auto`` → 1:1, ``1024x1536`` → 2:3, ``1536x1024`` → 3:2
* ``quality``: ``low``, ``medium`` and ``auto`` → our medium tier; ``high`` → high
* ``n`` 1–10: n images for n × price, held all or nothing
* ``response_format``: ``b64_json`` (default, as for OpenAI's gpt-image models) or ``url``
* ``output_format``, ``background``, ``user``, ``moderation``, ``output_compression`` and
  ``input_fidelity`` go to the upstream as given

Errors use OpenAI's envelope ``{"error": {"message", "type", "param", "code"}}`` with the status
the SDK maps to its exception classes. Out of credits is 429 ``insufficient_quota``, exactly as
OpenAI answers it, with ``x-should-retry: false`` so the SDK does not retry it.

A client that disconnects before its answer has its task canceled (nothing is charged), unless it
sent an ``Idempotency-Key``: that says it will retry and collect the same result.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import io
import warnings
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import orjson
import pybase64
import structlog
from fastapi import APIRouter
from starlette.background import BackgroundTask
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from apiinone.bootstrap import Container
from apiinone.db.outage import is_database_outage
from apiinone.domain.accounts import Account, ApiKey
from apiinone.domain.tasks import MAX_INPUT_URLS, MAX_PROMPT_CHARS, Task, TaskStatus
from apiinone.errors import (
    ApiError,
    Forbidden,
    IdempotencyConflict,
    InsufficientCredits,
    InternalError,
    InvalidParameter,
    ModelNotFound,
    ModelUnavailable,
    PayloadTooLarge,
    RateLimited,
    ServiceUnavailable,
    TaskNotCancelable,
    Unauthorized,
)
from apiinone.ids import now_ms
from apiinone.kinds.base import RunContext, TaskFailure
from apiinone.kinds.image import KIND as IMAGE_KIND
from apiinone.kinds.image.job import GeneratedImage
from apiinone.net.fetch import DEFAULT_MAX_PIXELS, sniff_image_type
from apiinone.params import (
    CONTROL_CHARACTERS_MESSAGE,
    IntegerOutOfRange,
    NotAnInteger,
    ascii_int,
    has_control_characters,
    parse_int,
)
from apiinone.services.tasks import CreateResult, IdempotencyClaim, ImageTaskRequest
from apiinone.storage import new_image_key
from apiinone.web import openapi
from apiinone.web.deps import authenticate, container_of, idempotency_key
from apiinone.web.dispatch import EnvelopeRoute
from apiinone.web.responses import JsonResponse
from apiinone.web.schemas import read_json_body

log = structlog.get_logger(__name__)

SIZES = {"auto": "1:1", "1024x1024": "1:1", "1024x1536": "2:3", "1536x1024": "3:2"}
QUALITY_TIERS = {"low": "medium", "medium": "medium", "auto": "medium", "high": "high"}
RESPONSE_FORMATS = ("b64_json", "url")
OUTPUT_FORMATS = ("png", "jpeg", "webp")
BACKGROUNDS = ("transparent", "opaque", "auto")
MAX_IMAGES = 10
MAX_USER_CHARS = 256
MAX_MULTIPART_BYTES = 50 * 1024 * 1024
MAX_UPLOAD_BYTES = 20 * 1024 * 1024
SYNC_WAIT_S = 900.0
"""How long a request waits for its image before answering 504; longer than any task may run."""

_COMMON_FIELDS = frozenset({"model", "prompt", "n", "size", "quality", "response_format", "output_format",
                            "output_compression", "background", "user", "stream", "partial_images"})
GENERATION_FIELDS = _COMMON_FIELDS | {"moderation"}
EDIT_FIELDS = _COMMON_FIELDS | {"input_fidelity"}
_UPSTREAM_CHOICES = {"moderation": ("low", "auto"), "input_fidelity": ("low", "high")}


class OpenAIInvalidRequest(InvalidParameter):
    """A 400 carrying OpenAI's own ``code`` (``invalid_value``, ``unknown_parameter``, ...)."""

    def __init__(self, message: str, *, param: str | None, openai_code: str = "invalid_value") -> None:
        super().__init__(message, param=param)
        self.openai_code = openai_code


def openai_error(status: int, message: str, *, type_: str, code: str | None, param: str | None = None,
                 headers: dict[str, str] | None = None) -> JsonResponse:
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return JsonResponse(body, status_code=status, headers=headers)


def openai_error_for(exc: ApiError) -> JsonResponse:
    """Our error tree in OpenAI's envelope, at the status the SDK maps to the matching exception."""
    status, type_ = exc.status, "invalid_request_error" if exc.status < 500 else "server_error"
    code: str | None = exc.code
    headers: dict[str, str] = {}
    if isinstance(exc, OpenAIInvalidRequest):
        code = exc.openai_code
    elif isinstance(exc, Unauthorized):
        code = "invalid_api_key"
        headers["WWW-Authenticate"] = 'Bearer realm="apiinone"'
    elif isinstance(exc, InsufficientCredits):
        status, type_, code = 429, "insufficient_quota", "insufficient_quota"
        headers["x-should-retry"] = "false"
    elif isinstance(exc, RateLimited):
        type_, code = "requests", "rate_limit_exceeded"
        headers["Retry-After"] = str(exc.retry_after)
    elif isinstance(exc, (IdempotencyConflict, ModelUnavailable, Forbidden)):
        headers["x-should-retry"] = "false"  # retrying cannot help; the SDK would retry 409 and 5xx
    return openai_error(status, exc.message, type_=type_, code=code, param=exc.param, headers=headers)


class OpenAIErrorsRoute(EnvelopeRoute):
    """Answers every error of these routes in OpenAI's envelope, whatever raised it."""

    async def error_response(self, request: Request, exc: Exception) -> Response:
        if isinstance(exc, ApiError):
            return openai_error_for(exc)
        if is_database_outage(exc):  # as on /api/v1: a 503 the SDK retries, not a 500
            log.warning("database_unavailable", path=request.url.path, error=type(exc).__name__)
            return openai_error_for(ServiceUnavailable("the database is unavailable; retry shortly"))
        log.exception("unhandled_error", path=request.url.path)
        return openai_error_for(InternalError())


router = APIRouter(prefix="/v1", route_class=OpenAIErrorsRoute, tags=["OpenAI-compatible"])


# ------------------------------------------------------------------------------------ parameters


@dataclass(frozen=True, slots=True)
class ImageParams:
    model: str
    prompt: str
    aspect_ratio: str
    quality: str
    n: int
    response_format: str
    options: dict[str, Any] = field(default_factory=dict)

    def task_request(self, input_files: tuple[dict[str, str], ...] = ()) -> ImageTaskRequest:
        return ImageTaskRequest(model=self.model, prompt=self.prompt, aspect_ratio=self.aspect_ratio,
                                quality=self.quality, n=self.n, options=self.options, input_files=input_files)


def _invalid_value(param: str, value: object, allowed: tuple[str, ...] | list[str]) -> OpenAIInvalidRequest:
    listed = ", ".join(f"'{a}'" for a in allowed)
    return OpenAIInvalidRequest(f"Invalid value: '{value}'. Supported values are: {listed}.", param=param)


def _choice(fields: Mapping[str, object], name: str, allowed: tuple[str, ...] | list[str]) -> str | None:
    value = fields.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or value not in allowed:
        raise _invalid_value(name, value, allowed)
    return value


def _integer(fields: Mapping[str, object], name: str, default: int, low: int, high: int) -> int:
    """A JSON number or a multipart text field, read by the one strict parser, in OpenAI's words."""
    try:
        return parse_int(fields.get(name, default), name, low=low, high=high)
    except NotAnInteger as exc:
        raise OpenAIInvalidRequest(f"Invalid type for '{name}': expected an integer.", param=name,
                                   openai_code="invalid_type") from exc
    except IntegerOutOfRange as exc:
        raise OpenAIInvalidRequest(f"Invalid '{name}': expected a value from {low} to {high}.",
                                   param=name, openai_code="integer_out_of_range") from exc


def parse_image_params(fields: Mapping[str, object], allowed: frozenset[str]) -> ImageParams:
    """OpenAI's request fields, checked the way OpenAI checks them, mapped onto our task input."""
    for name in fields:
        if name not in allowed:
            raise OpenAIInvalidRequest(f"Unknown parameter: '{name}'.", param=name, openai_code="unknown_parameter")
    model, prompt = fields.get("model"), fields.get("prompt")
    for name, value in (("model", model), ("prompt", prompt)):
        if value is None:
            raise OpenAIInvalidRequest(f"Missing required parameter: '{name}'.", param=name,
                                       openai_code="missing_required_parameter")
        if not isinstance(value, str):
            raise OpenAIInvalidRequest(f"Invalid type for '{name}': expected a string.", param=name,
                                       openai_code="invalid_type")
    assert isinstance(model, str) and isinstance(prompt, str)
    prompt = prompt.strip()
    if not 1 <= len(prompt) <= MAX_PROMPT_CHARS:
        raise OpenAIInvalidRequest(f"Invalid 'prompt': expected 1 to {MAX_PROMPT_CHARS} characters.",
                                   param="prompt", openai_code="string_above_max_length" if prompt else "empty_string")
    if has_control_characters(prompt):
        raise OpenAIInvalidRequest(f"Invalid 'prompt': it {CONTROL_CHARACTERS_MESSAGE}.", param="prompt")
    if fields.get("stream") not in (None, False, "false"):
        raise OpenAIInvalidRequest("Streaming image generation is not supported by this server.", param="stream")
    if fields.get("partial_images") not in (None, 0, "0"):
        raise OpenAIInvalidRequest("partial_images needs streaming, which this server does not support.",
                                   param="partial_images")
    size = _choice(fields, "size", list(SIZES)) or "auto"
    quality = _choice(fields, "quality", list(QUALITY_TIERS)) or "auto"
    output_format = _choice(fields, "output_format", OUTPUT_FORMATS)
    background = _choice(fields, "background", BACKGROUNDS)
    if background == "transparent" and output_format == "jpeg":
        raise OpenAIInvalidRequest("Transparent background is not supported for the jpeg output format.",
                                   param="background")
    options: dict[str, Any] = {}
    if output_format is not None:
        options["output_format"] = output_format
    if background not in (None, "auto"):
        options["background"] = background
    for name, choices in _UPSTREAM_CHOICES.items():
        chosen = _choice(fields, name, choices)
        if chosen is not None:
            options[name] = chosen
    if "output_compression" in fields:
        options["output_compression"] = _integer(fields, "output_compression", 100, 0, 100)
    user = fields.get("user")
    if user is not None:
        if not isinstance(user, str) or len(user) > MAX_USER_CHARS:
            raise OpenAIInvalidRequest(f"Invalid 'user': expected a string of at most {MAX_USER_CHARS} characters.",
                                       param="user")
        options["user"] = user
    return ImageParams(
        model=model, prompt=prompt, aspect_ratio=SIZES[size], quality=QUALITY_TIERS[quality],
        n=_integer(fields, "n", 1, 1, MAX_IMAGES),
        response_format=_choice(fields, "response_format", RESPONSE_FORMATS) or "b64_json", options=options,
    )


def _idempotency_claim(request: Request, route: str, fingerprint: bytes) -> IdempotencyClaim | None:
    try:
        key = idempotency_key(request)
    except InvalidParameter as exc:
        raise OpenAIInvalidRequest(exc.message, param="Idempotency-Key") from exc
    return None if key is None else IdempotencyClaim.for_body(key, route, fingerprint)


# ------------------------------------------------------------------------------------------ routes


_IMAGE_FIELDS: dict[str, Any] = {
    "model": {"type": "string", "examples": ["local-typeset"]},
    "prompt": {"type": "string", "minLength": 1, "maxLength": MAX_PROMPT_CHARS},
    "n": {"type": "integer", "minimum": 1, "maximum": MAX_IMAGES}, "size": {"enum": list(SIZES)},
    "quality": {"enum": list(QUALITY_TIERS)}, "response_format": {"enum": list(RESPONSE_FORMATS)},
    "output_format": {"enum": list(OUTPUT_FORMATS)},
    "output_compression": {"type": "integer", "minimum": 0, "maximum": 100},
    "background": {"enum": list(BACKGROUNDS)}, "user": {"type": "string", "maxLength": MAX_USER_CHARS},
    "stream": {"type": "boolean"}, "partial_images": {"type": "integer"},
}
_IMAGE_ERRORS = openapi.errors(409, 502, 504)
_IDEMPOTENCY_HEADER = openapi.header("Idempotency-Key", {"type": "string", "minLength": 1, "maxLength": 255},
                                     "Retry-safe: the same key and body answer the same images, charged once")


@router.post("/images/generations", summary="Create images (OpenAI Images API, synchronous)",
             responses={**openapi.ok(openapi.ref("OpenAIImages")), **_IMAGE_ERRORS},
             openapi_extra={"parameters": [_IDEMPOTENCY_HEADER], "requestBody": {"required": True, "content": {
                 "application/json": {"schema": {
                     "type": "object", "required": ["model", "prompt"], "additionalProperties": False,
                     "properties": {**_IMAGE_FIELDS, "moderation": {"enum": ["low", "auto"]}}}}}}})
async def create_images(request: Request) -> Response:
    key, account = await authenticate(request)
    container = container_of(request)
    await container.rate_limits.check(key, account)
    raw = await read_json_body(request)
    try:
        fields = orjson.loads(raw)
    except orjson.JSONDecodeError:
        fields = None
    if not isinstance(fields, dict):
        raise OpenAIInvalidRequest("We could not parse the JSON body of your request.", param=None,
                                   openai_code="invalid_json")
    params = parse_image_params(fields, GENERATION_FIELDS)
    claim = _idempotency_claim(request, "v1.images.generations", raw)
    result = await _create(container, key, account, params, claim)
    if result.replayed:
        return await _respond(request, container, account, params, claim, result)
    return await _run_direct(request, container, params, claim, result.task, key.prefix)


@router.post("/images/edits", summary="Edit images (OpenAI Images API, multipart, synchronous)",
             responses={**openapi.ok(openapi.ref("OpenAIImages")), **_IMAGE_ERRORS},
             openapi_extra={"parameters": [_IDEMPOTENCY_HEADER], "requestBody": {"required": True, "content": {
                 "multipart/form-data": {"schema": {
                     "type": "object", "required": ["model", "prompt", "image"],
                     "properties": {**_IMAGE_FIELDS, "input_fidelity": {"enum": ["low", "high"]},
                                    "image": {"type": "string", "format": "binary"},
                                    "mask": {"type": "string", "format": "binary"}}}}}}})
async def edit_images(request: Request) -> Response:
    key, account = await authenticate(request)
    container = container_of(request)
    await container.rate_limits.check(key, account)
    fields, uploads = await _read_multipart(request)
    params = parse_image_params(fields, EDIT_FIELDS)
    images = [u for u in uploads if u.field in ("image", "image[]")]
    masks = [u for u in uploads if u.field == "mask"]
    if not images:
        raise OpenAIInvalidRequest("Missing required parameter: 'image'.", param="image",
                                   openai_code="missing_required_parameter")
    if len(images) > MAX_INPUT_URLS or len(masks) > 1:
        raise OpenAIInvalidRequest(f"Send 1 to {MAX_INPUT_URLS} images and at most one mask.", param="image",
                                   openai_code="array_above_max_length")
    if masks and masks[0].content_type != "image/png":
        raise OpenAIInvalidRequest("Invalid mask image format - mask image must be a PNG file.", param="mask",
                                   openai_code="invalid_image_format")
    fingerprint = orjson.dumps({"fields": sorted((k, str(v)) for k, v in fields.items()),
                                "files": [[u.field, hashlib.sha256(u.data).hexdigest()] for u in uploads]})
    claim = _idempotency_claim(request, "v1.images.edits", fingerprint)
    stored: list[dict[str, str]] = []
    try:  # stored before the task exists, so a worker never leases a task whose inputs are missing
        for upload in [*images, *masks]:
            storage_key = f"inputs/{new_image_key(upload.content_type)}"
            try:
                await container.storage.put(storage_key, upload.data, upload.content_type)
            except OSError as exc:  # disk full or storage down: nothing accepted, nothing charged
                log.warning("upload_store_failed", error=type(exc).__name__, errno=exc.errno)
                raise ServiceUnavailable("the uploaded images could not be stored; retry shortly") from exc
            stored.append({"key": storage_key, "content_type": upload.content_type,
                           "role": "mask" if upload.field == "mask" else "image"})
        result = await _create(container, key, account, params, claim, input_files=tuple(stored))
    except BaseException:
        await _discard(container, stored)
        raise
    if result.replayed:  # the first request's task references its own copies of these uploads
        await _discard(container, stored)
        return await _respond(request, container, account, params, claim, result)
    return await _run_direct(request, container, params, claim, result.task, key.prefix)


@router.get("/models", summary="Models this key can call (OpenAI list shape)", responses=openapi.ok({
    "type": "object", "required": ["object", "data"],
    "properties": {"object": {"const": "list"}, "data": {"type": "array", "items": openapi.ref("OpenAIModel")}}}))
async def list_models(request: Request) -> Response:
    await authenticate(request)
    container = container_of(request)
    data = [_model_object(m.id) for m in container.catalog.launched() if container.pool.is_available(m)]
    return JsonResponse({"object": "list", "data": data})


@router.get("/models/{model_id:path}", summary="One model by id or alias (OpenAI shape)",
            responses=openapi.ok(openapi.ref("OpenAIModel")))
async def get_model(request: Request, model_id: str) -> Response:
    await authenticate(request)
    spec = container_of(request).catalog.resolve(model_id)
    if spec is None or not spec.launched or not spec.enabled:
        raise ModelNotFound(f"The model '{model_id}' does not exist", param="model")
    return JsonResponse(_model_object(spec.id))


def _model_object(model_id: str) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": 0, "owned_by": "apiinone"}  # the catalog has no dates


# ------------------------------------------------------------------------------------- the task


async def _create(container: Container, key: ApiKey, account: Account, params: ImageParams,
                  claim: IdempotencyClaim | None, *, input_files: tuple[dict[str, str], ...] = ()) -> CreateResult:
    return await container.tasks.create_image_task(
        account, key, params.task_request(input_files), idempotency=claim,
        max_active_tasks=container.rate_limits.max_active_tasks(account), direct=container.direct.lease())


async def _run_direct(request: Request, container: Container, params: ImageParams,
                      claim: IdempotencyClaim | None, task: Task, key_prefix: str | None) -> Response:
    """Run the held task here: upstream call (route pool, failover), answer, then end the task.

    A client that goes away before its answer has the call canceled and nothing charged, unless it
    sent an Idempotency-Key (its retry collects the result). The images are stored while the answer
    is written; the task is captured only once both are done, and released if the answer could not
    be written."""
    container.direct.started(task, key_prefix)
    headers = {"X-Task-Id": task.id}
    spec = container.catalog.resolve(task.model)
    if spec is None:  # the catalog changed between the hold and here
        finished = await container.direct.finish(
            task, TaskStatus.FAILED, error={"code": "model_unavailable", "message": "no upstream serves this model"},
            http_status=503)
        return _failure_response(finished or task, headers)
    ctx = RunContext(spec=spec, pool=container.pool, storage=container.storage, fetch_client=container.fetch_client,
                     files_base_url=container.base_url(), timeout_s=SYNC_WAIT_S)
    gone = asyncio.Event()
    call = asyncio.create_task(IMAGE_KIND.generate(ctx, task))
    # without an Idempotency-Key nobody will read the answer of a client that went away: the
    # watcher cancels the call then (one task per request, not a race of two)
    watcher = asyncio.create_task(_watch_disconnect(request, gone, call if claim is None else None))
    try:
        try:
            routed = await call
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if not (call.cancelled() and gone.is_set() and current is not None and not current.cancelling()):
                raise  # this request itself was canceled (shutdown): handled below
            log.info("client_gone_task_canceled", task_id=task.id)
            await container.direct.finish(task, TaskStatus.CANCELED, error=_GONE, http_status=499)
            return openai_error(499, "the client closed the request", type_="invalid_request_error",
                                code="canceled", headers=headers)
    except TaskFailure as exc:
        watcher.cancel()
        finished = await container.direct.finish(task, TaskStatus.FAILED, error={"code": exc.code,
                                                                               "message": exc.message},
                                                 http_status=_FAILURES.get(exc.code, (502,))[0])
        return _failure_response(finished or dataclasses.replace(task, error={"code": exc.code,
                                                                             "message": exc.message}), headers)
    except BaseException:
        watcher.cancel()
        call.cancel()
        with contextlib.suppress(Exception):
            await container.direct.finish(task, TaskStatus.FAILED, error=_INTERNAL, http_status=500)
        raise
    stored = IMAGE_KIND.plan_storage(ctx, routed.value)
    storing = asyncio.create_task(stored.put(ctx))
    if params.response_format == "url":  # the client may fetch a URL at once: store before answering
        try:
            await storing
        except Exception as exc:
            watcher.cancel()
            log.error("direct_store_failed", task_id=task.id, error=str(exc))
            await container.direct.finish(task, TaskStatus.FAILED, error=_INTERNAL, http_status=500)
            raise InternalError("the generated image could not be stored") from None
    output = stored.output
    body = _images_body_bytes(task, params, output, list(stored.by_url.values()))
    touch = getattr(request.state, "touch_key", None)

    async def settle(delivered: bool) -> None:
        try:
            await storing
        except Exception as exc:  # the client has its answer, but an unstored image is never charged
            log.error("direct_store_failed", task_id=task.id, error=str(exc))
            await container.direct.finish(task, TaskStatus.FAILED, error=_INTERNAL, http_status=500)
            return
        if delivered or claim is not None:  # with a key, a retry collects what the first try missed
            await container.direct.finish(task, TaskStatus.SUCCEEDED, output=output, route=routed.route,
                                          http_status=200)
        else:
            log.info("client_gone_task_canceled", task_id=task.id)
            await container.direct.finish(task, TaskStatus.CANCELED, error=_GONE, http_status=499)
            await stored.discard(ctx)

    async def after() -> None:
        watcher.cancel()
        if touch:
            await _touch_api_key(container, touch)

    return SettledResponse(body, headers=headers, gone=gone, settle=settle, after=after)


_GONE = {"code": "canceled", "message": "the client went away before the answer"}
_INTERNAL = {"code": "internal_error", "message": "the server failed while answering"}


async def _watch_disconnect(request: Request, gone: asyncio.Event, cancel: asyncio.Task[Any] | None = None) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass
    gone.set()
    if cancel is not None and not cancel.done():
        cancel.cancel()


class SettledResponse(Response):
    """A JSON answer whose charge is committed between its next-to-last and its last byte.

    Everything but the last byte is written while the images are stored; then ``settle`` learns
    whether the client was still there (it captures, or releases when the client went away) and
    its transaction commits before the last byte leaves, so a client that has its whole answer
    also sees the charge in its next read. uvicorn's ``send`` drops the body silently once the client
    is gone; the disconnect watcher has run by then (the connection loss wakes it first), so
    ``gone`` says whether the body went out."""

    media_type = "application/json"

    def __init__(self, body: bytes, *, headers: dict[str, str], gone: asyncio.Event,
                 settle: Callable[[bool], Awaitable[None]], after: Callable[[], Awaitable[None]]) -> None:
        super().__init__(content=body, headers=headers)
        self._gone = gone
        self._settle = settle
        self._after = after

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        delivered = False
        try:
            if not self._gone.is_set():
                await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
                await send({"type": "http.response.body", "body": self.body[:-1], "more_body": True})
                delivered = not self._gone.is_set()
        finally:
            try:
                await asyncio.shield(self._settle(delivered))
            except Exception:
                log.exception("direct_settle_failed")
        try:
            if delivered:
                await send({"type": "http.response.body", "body": self.body[-1:]})
        finally:
            await self._after()


def _images_body_bytes(task: Task, params: ImageParams, output: Mapping[str, Any],
                       generated: list[GeneratedImage]) -> bytes:
    """OpenAI's answer, with the upstream's own base64 spliced in as it came (no re-encoding of it,
    and no JSON escaping pass over megabytes that are base64 by construction)."""
    images: list[dict[str, Any]] = output.get("images") or []
    first = images[0] if images else {"width": 1024, "height": 1024}
    body: dict[str, Any] = {
        "created": task.created_at // 1000, "data": [],
        "output_format": params.options.get("output_format", "png"), "quality": params.quality,
        "size": f"{first['width']}x{first['height']}",
    }
    if "background" in params.options:
        body["background"] = params.options["background"]
    if isinstance(output.get("usage"), dict):
        body["usage"] = output["usage"]
    if params.response_format == "url":
        body["data"] = [{"url": image["url"]} for image in images]
        return orjson.dumps(body)
    head = orjson.dumps(body)
    split = head.index(b'"data":[]') + len(b'"data":[')
    parts = [head[:split]]
    for i, image in enumerate(generated):
        parts.append(b'{"b64_json":"' if i == 0 else b',{"b64_json":"')
        parts.append(image.b64 if image.b64 is not None else pybase64.b64encode(image.data))
        parts.append(b'"}')
    parts.append(head[split:])
    return b"".join(parts)


async def _respond(request: Request, container: Container, account: Account, params: ImageParams,
                   claim: IdempotencyClaim | None, result: CreateResult) -> Response:
    task, offered = await _wait_for_end(request, container, account.id, result.task.id)
    headers = {"X-Task-Id": task.id}
    if result.replayed:
        headers["Idempotent-Replayed"] = "true"
    if not task.status.is_terminal:
        if claim is None:  # nobody can collect the result any more
            await _cancel_quietly(container, account.id, task.id)
        return openai_error(504, f"The image was not ready within {SYNC_WAIT_S:g} s (task {task.id}).",
                            type_="server_error", code="timeout", headers=headers)
    if task.status is not TaskStatus.SUCCEEDED:
        return _failure_response(task, headers)
    response = JsonResponse(await _images_body(container, task, params, offered), headers=headers)
    if getattr(request.state, "touch_key", None):
        response.background = BackgroundTask(_touch_api_key, container, request.state.touch_key)
    return response


async def _wait_for_end(request: Request, container: Container, account_id: str,
                        task_id: str) -> tuple[Task, dict[str, GeneratedImage]]:
    """The finished task and the images this process's worker offered for it (by URL); if the
    client goes away first, its task is canceled unless an Idempotency-Key promises a retry."""
    gone = asyncio.Event()

    async def watch_disconnect() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass
        gone.set()
        container.task_events.wake(task_id)

    watcher = asyncio.create_task(watch_disconnect())
    try:
        task, offered = await container.task_events.wait_for_output(account_id, task_id, SYNC_WAIT_S, stop=gone)
    finally:
        watcher.cancel()
    if gone.is_set() and not task.status.is_terminal and "idempotency-key" not in request.headers:
        log.info("client_gone_task_canceled", task_id=task_id)
        await _cancel_quietly(container, account_id, task_id)
    return task, offered


async def _cancel_quietly(container: Container, account_id: str, task_id: str) -> None:
    with contextlib.suppress(TaskNotCancelable):  # it ended meanwhile
        await container.tasks.cancel_task(account_id, task_id)


_FAILURES: dict[str, tuple[int, str, str]] = {  # task error code → HTTP status, OpenAI type and code
    "content_policy": (400, "image_generation_user_error", "moderation_blocked"),
    "input_fetch_failed": (400, "invalid_request_error", "invalid_image_file"),
    "invalid_parameter": (400, "invalid_request_error", "invalid_value"),
    "canceled": (409, "invalid_request_error", "task_canceled"),
    "model_unavailable": (503, "server_error", "model_unavailable"),
    "timeout": (504, "server_error", "timeout"),
}


def _failure_response(task: Task, headers: dict[str, str]) -> JsonResponse:
    error = task.error or {}
    code = error.get("code", "upstream_error")
    status, type_, openai_code = _FAILURES.get(code, (502, "server_error", code))
    if status < 500 or status == 503:  # the same request would fail the same way
        headers = {**headers, "x-should-retry": "false"}
    message = f"{error.get('message') or 'the image task failed'} (task {task.id})"
    return openai_error(status, message, type_=type_, code=openai_code, headers=headers)


async def _images_body(container: Container, task: Task, params: ImageParams,
                       offered: Mapping[str, GeneratedImage]) -> dict[str, Any]:
    """OpenAI's answer. ``b64_json`` comes from the bytes the worker in this process still holds
    (``offered``, by URL; the upstream's own base64 when it sent one), else from storage."""
    output = task.output or {}
    images: list[dict[str, Any]] = output.get("images") or []
    if params.response_format == "url":
        data = [{"url": image["url"]} for image in images]
    else:
        data = [{"b64_json": b64} for b64 in await asyncio.gather(
            *(_image_b64(container, image["url"], offered.get(image["url"])) for image in images))]
    first = images[0] if images else {"width": 1024, "height": 1024}
    body: dict[str, Any] = {
        "created": task.created_at // 1000, "data": data,
        "output_format": params.options.get("output_format", "png"), "quality": params.quality,
        "size": f"{first['width']}x{first['height']}",
    }
    if "background" in params.options:
        body["background"] = params.options["background"]
    if isinstance(output.get("usage"), dict):
        body["usage"] = output["usage"]
    return body


async def _image_b64(container: Container, url: str, held: GeneratedImage | None) -> str:
    if held is not None:
        return (held.b64 if held.b64 is not None else pybase64.b64encode(held.data)).decode()
    return pybase64.b64encode(await _image_bytes(container, url)).decode()


async def _image_bytes(container: Container, url: str) -> bytes:
    """The stored bytes behind an output URL: from storage when the app serves it (``/files/``),
    else downloaded through the egress guard like any other URL."""
    path = urlsplit(url).path
    if path.startswith("/files/"):
        stored = await container.storage.get(path.removeprefix("/files/"))
        if stored is not None:
            return stored.data
    response = await container.fetch_client.get(url)
    if response.status_code != 200:
        raise InternalError("a generated image could not be read back from storage")
    return response.content


async def _touch_api_key(container: Container, key_id: str) -> None:
    async with container.db.uow() as uow:
        await uow.api_keys.touch([key_id], now_ms())
        await uow.commit()


# --------------------------------------------------------------------------------------- uploads


@dataclass(frozen=True, slots=True)
class _Upload:
    field: str
    data: bytes
    content_type: str


async def _read_multipart(request: Request) -> tuple[dict[str, str], list[_Upload]]:
    """Text fields and verified image uploads of a multipart body of at most 50 MB."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise OpenAIInvalidRequest("Invalid Content-Type header, expected multipart/form-data.", param=None)
    declared = ascii_int(request.headers.get("content-length", ""))
    if declared is not None and declared > MAX_MULTIPART_BYTES:
        raise PayloadTooLarge(f"multipart bodies are limited to {MAX_MULTIPART_BYTES} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_MULTIPART_BYTES:
            raise PayloadTooLarge(f"multipart bodies are limited to {MAX_MULTIPART_BYTES} bytes")
        chunks.append(chunk)
    raw = b"".join(chunks)

    async def replay_body() -> Message:
        return {"type": "http.request", "body": raw, "more_body": False}

    try:
        form = await Request(request.scope, replay_body).form(max_files=MAX_INPUT_URLS + 2, max_fields=50)
    except Exception as exc:  # the parser raises several types on malformed input
        raise OpenAIInvalidRequest(f"The multipart body could not be parsed: {exc}", param=None) from exc
    fields: dict[str, str] = {}
    uploads: list[_Upload] = []
    try:
        for name, value in form.multi_items():
            if isinstance(value, UploadFile):
                if name not in ("image", "image[]", "mask"):
                    raise OpenAIInvalidRequest(f"Unknown parameter: '{name}'.", param=name,
                                               openai_code="unknown_parameter")
                uploads.append(await _verified_upload(name, await value.read()))
            else:
                fields[name] = value
    finally:
        await form.close()
    return fields, uploads


async def _verified_upload(field_name: str, data: bytes) -> _Upload:
    """Trust only the bytes: PNG, JPEG or WebP by magic number, and a header Pillow accepts."""
    param = "mask" if field_name == "mask" else "image"
    content_type = sniff_image_type(data)
    if content_type is None or len(data) > MAX_UPLOAD_BYTES:
        raise OpenAIInvalidRequest(
            f"Invalid image file: each {param} must be a PNG, JPEG or WebP file of at most {MAX_UPLOAD_BYTES} bytes.",
            param=param, openai_code="invalid_image_file")
    if not await asyncio.to_thread(_pillow_accepts, data):
        raise OpenAIInvalidRequest(f"Invalid image file: the {param} is damaged or too large.", param=param,
                                   openai_code="invalid_image_file")
    return _Upload(field_name, data, content_type)


def _pillow_accepts(data: bytes) -> bool:
    from PIL import Image  # imported on first use: it weighs on the idle server's memory

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
                if not 0 < width * height <= DEFAULT_MAX_PIXELS:
                    return False
                image.verify()
    except Exception:  # Pillow raises many types on hostile input
        return False
    return True


async def _discard(container: Container, stored: list[dict[str, str]]) -> None:
    for ref in stored:
        try:
            await container.storage.delete(ref["key"])
        except Exception as exc:  # best effort: an orphaned upload is only wasted space
            log.warning("upload_discard_failed", key=ref["key"], error=str(exc))
