"""A protocol-faithful fake of OpenAI's Images API (and its speech endpoint, :mod:`.openai_speech`), served over real HTTP on loopback.

Tests and benchmarks need an upstream that behaves like OpenAI at the wire level (status codes,
error bodies, multipart parsing, keep-alive) without the network or the bill, so this is a real
uvicorn server rather than a mocked transport. Two ways to use it:

* in-process: ``with FakeOpenAI() as fake: ... fake.base_url ... fake.requests ... fake.fail_next(500)``
  (the server runs in a background thread with its own event loop);
* as a subprocess (benchmarks, e2e): ``python tests/fakes/fake_openai.py --port 0 --port-file F``
  writes the chosen port to ``F`` once it accepts connections. A subprocess is steered through the
  unauthenticated control routes under ``/_fake/`` (``fail_next``, ``reset``, ``config``, ``requests``).

Responses are precomputed per (size, format): a request costs a JSON splice of a cached base64
string, so the fake answers thousands of requests per second and never becomes the bottleneck.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import functools
import hashlib
import io
import os
import random
import socket
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import orjson
import uvicorn
from PIL import Image
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

try:
    from tests.fakes import openai_speech
except ImportError:  # run as a script: this folder is on sys.path
    import openai_speech  # type: ignore[no-redef]

DEFAULT_API_KEY = "sk-test-fake-openai-key"
REALISTIC_PNG_BYTES = 1_600_000
"""About what a 1024x1024 PNG from gpt-image weighs; use it for realistic benchmarks."""

IMAGE_MODELS = ("gpt-image-1.5", "gpt-image-1", "gpt-image-1-mini")
SIZES = {"1024x1024": (1024, 1024), "1024x1536": (1024, 1536), "1536x1024": (1536, 1024)}
QUALITIES = ("low", "medium", "high", "auto")
OUTPUT_FORMATS = ("png", "jpeg", "webp")
BACKGROUNDS = ("transparent", "opaque", "auto")
MAX_PROMPT_CHARS = 32_000
MAX_EDIT_IMAGES = 16
MAX_IMAGE_BYTES = 50 * 1024 * 1024

GENERATION_PARAMS = frozenset(
    {
        "model",
        "prompt",
        "n",
        "size",
        "quality",
        "output_format",
        "output_compression",
        "background",
        "moderation",
        "user",
        "response_format",
        "style",
        "stream",
        "partial_images",
    }
)
EDIT_PARAMS = frozenset(
    {
        "model",
        "prompt",
        "n",
        "size",
        "quality",
        "output_format",
        "output_compression",
        "background",
        "user",
        "response_format",
        "input_fidelity",
        "stream",
        "partial_images",
        "image",
        "image[]",
        "mask",
    }
)

# Output tokens OpenAI bills per image, by quality and size (square / portrait-or-landscape).
_OUTPUT_TOKENS = {"low": (272, 408), "medium": (1056, 1584), "high": (4160, 6240)}
_IMAGE_INPUT_TOKENS = 323

MODERATION_BLOCKED_BODY: dict[str, Any] = {
    "error": {
        "message": (
            "Your request was rejected by the safety system. If you believe this is an error, contact us "
            "at help.openai.com and include the request ID req_0123456789abcdef0123456789abcdef."
        ),
        "type": "image_generation_user_error",
        "param": None,
        "code": "moderation_blocked",
    }
}


def openai_error(
    message: str, *, type_: str = "invalid_request_error", param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """OpenAI's error envelope, so clients see exactly the shape they parse in production."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def default_error_body(status: int) -> dict[str, Any]:
    """What OpenAI answers for a status when a scripted failure gives no body of its own."""
    if status == 429:
        return openai_error(
            "Rate limit reached for gpt-image-1.5 in organization org-fake on images per minute (IPM): "
            "Limit 5, Used 5, Requested 1. Please try again in 12s.",
            type_="requests",
            code="rate_limit_exceeded",
        )
    if status == 401:
        return openai_error("Incorrect API key provided.", code="invalid_api_key")
    if status == 400:
        return MODERATION_BLOCKED_BODY
    if status >= 500:
        return openai_error(
            "The server had an error while processing your request. Sorry about that!", type_="server_error"
        )
    return openai_error(f"Scripted failure with HTTP {status}.")


# --------------------------------------------------------------------------------------------- images


@dataclass(frozen=True, slots=True)
class CannedImage:
    data: bytes
    b64: bytes  # ASCII base64 of ``data``, ready to splice into a JSON body
    content_type: str


_MIME = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}


@functools.lru_cache(maxsize=64)
def canned_image(width: int, height: int, fmt: str = "png", target_bytes: int | None = None) -> CannedImage:
    """A real image of the requested size, built once per arguments.

    Without ``target_bytes`` it is a small, mostly flat picture (a few KB). With it, enough rows of
    random noise are painted to make the encoded file about that size: noise does not compress, so
    the transfer and storage costs are those of a real photo-like output.
    """
    img = Image.new("RGB", (width, height), (40 + width % 97, 90 + height % 89, 160))
    band = Image.new("RGB", (width, max(1, height // 8)), (230, 200, 60))
    img.paste(band, (0, height // 2))
    if target_bytes:
        rows = min(height, max(1, target_bytes // (width * 3)))
        noise = random.Random(width * 100_003 + height).randbytes(width * rows * 3)
        img.paste(Image.frombytes("RGB", (width, rows), noise), (0, 0))
    buf = io.BytesIO()
    if fmt == "png":
        img.save(buf, format="PNG", compress_level=1)
    elif fmt == "jpeg":
        img.save(buf, format="JPEG", quality=90)
    else:
        img.save(buf, format="WEBP", quality=80, method=0)
    data = buf.getvalue()
    return CannedImage(data=data, b64=base64.b64encode(data), content_type=_MIME[fmt])


def _sniff_image(data: bytes) -> str | None:
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


# ---------------------------------------------------------------------------------------------- state


@dataclass(slots=True)
class RecordedFile:
    field: str
    filename: str | None
    content_type: str | None
    data: bytes


@dataclass(slots=True)
class RecordedRequest:
    """One request the fake received, as the upstream saw it."""

    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    json: Any | None = None  # parsed JSON body, if any
    form: dict[str, str] = field(default_factory=dict)  # multipart text fields (last value wins)
    files: list[RecordedFile] = field(default_factory=list)  # multipart files, in order
    status: int = 0  # what the fake answered

    def file_fields(self, name: str) -> list[RecordedFile]:
        return [f for f in self.files if f.field == name]


FAULTS = ("status", "hang", "reset", "garbage", "bad_image")
"""What a scripted failure does: answer ``status`` (OpenAI's error body), ``hang`` (accept, never
answer), ``reset`` (a 200 whose body stops half way and the connection is dropped), ``garbage`` (a
200 that is not JSON) or ``bad_image`` (a well-formed answer whose image is not an image)."""


@dataclass(slots=True)
class ScriptedFailure:
    status: int
    body: dict[str, Any] | None
    headers: dict[str, str]
    delay_s: float = 0.0
    fault: str = "status"


class FakeState:
    """Everything the routes read and tests steer; guarded by a lock because they run on two threads."""

    def __init__(
        self,
        *,
        api_key: str | None,
        png_bytes: int | None,
        latency_s: float,
        max_recorded: int | None,
        url_mode: bool,
    ) -> None:
        self.lock = threading.Lock()
        self.api_key = api_key
        self.png_bytes = png_bytes
        self.latency_s = latency_s
        self.url_mode = url_mode
        self.recorded: deque[RecordedRequest] = deque(maxlen=max_recorded)
        self.failures: deque[ScriptedFailure] = deque()
        self.received = 0
        """Requests answered (counted when the answer is ready, after any latency)."""
        self.arrived = 0
        """Requests that reached the fake, counted before any latency: "the call is in flight"."""
        self.generation = 0
        """Bumped by ``reset``; each request carries the one it arrived in."""

    def record(self, rec: RecordedRequest, scope: Any) -> None:
        """Keep ``rec`` unless the fake was reset since its request arrived: a call a client gave
        up on before the reset must not land in the next test's record."""
        with self.lock:
            if scope.get("fake.generation", self.generation) != self.generation:
                return
            self.recorded.append(rec)
            self.received += 1

    def pop_failure(self) -> ScriptedFailure | None:
        with self.lock:
            return self.failures.popleft() if self.failures else None

    def push_failures(self, failure: ScriptedFailure, count: int) -> None:
        with self.lock:
            self.failures.extend([failure] * count)

    def reset(self) -> None:
        with self.lock:
            self.recorded.clear()
            self.failures.clear()
            self.received = 0
            self.arrived = 0
            self.generation += 1

    def precompute(self) -> None:
        for w, h in SIZES.values():
            canned_image(w, h, "png", self.png_bytes)


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, headers=headers, media_type="application/json")


def _mask_key(key: str) -> str:
    if len(key) <= 8:
        return "*" * len(key)
    return f"{key[:3]}{'*' * (len(key) - 7)}{key[-4:]}"


def _check_auth(state: FakeState, request: Request) -> Response | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return _json(
            openai_error(
                "You didn't provide an API key. You need to provide your API key in an Authorization header "
                "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY), or as the password field (with "
                "blank username) if you're accessing the API from your browser and are prompted for a "
                "username and password. You can obtain an API key from https://platform.openai.com/account/api-keys."
            ),
            401,
        )
    if state.api_key is not None and token != state.api_key:
        return _json(
            openai_error(
                f"Incorrect API key provided: {_mask_key(token)}. You can find your API key at "
                "https://platform.openai.com/account/api-keys.",
                code="invalid_api_key",
            ),
            401,
        )
    return None


class _Invalid(Exception):
    def __init__(self, body: dict[str, Any]) -> None:
        super().__init__(body["error"]["message"])
        self.body = body


def _bad(message: str, *, param: str | None = None, code: str | None = None) -> _Invalid:
    return _Invalid(openai_error(message, param=param, code=code))


def _invalid_value(param: str, value: object, allowed: tuple[str, ...]) -> _Invalid:
    listed = ", ".join(f"'{a}'" for a in allowed[:-1]) + f", and '{allowed[-1]}'"
    return _Invalid(
        openai_error(
            f"Invalid value: '{value}'. Supported values are: {listed}.", param=param, code="invalid_value"
        )
    )


def _as_int(param: str, value: object) -> int:
    if isinstance(value, bool):
        raise _bad(
            f"Invalid type for '{param}': expected an integer, but got a boolean instead.",
            param=param,
            code="invalid_type",
        )
    if isinstance(value, int):
        return value
    if isinstance(value, str):  # multipart fields are strings
        try:
            return int(value)
        except ValueError:
            pass
    raise _bad(
        f"Invalid type for '{param}': expected an integer, but got a {type(value).__name__} instead.",
        param=param,
        code="invalid_type",
    )


@dataclass(slots=True)
class _ImageParams:
    model: str
    size: str
    width: int
    height: int
    quality: str
    n: int
    output_format: str
    background: str
    prompt: str


def _validate(params: dict[str, Any], allowed: frozenset[str]) -> _ImageParams:
    """Reject what OpenAI rejects, with OpenAI's messages, params and codes."""
    for key in params:
        if key not in allowed:
            raise _bad(f"Unknown parameter: '{key}'.", param=key, code="unknown_parameter")
    prompt = params.get("prompt")
    if prompt is None:
        raise _bad("Missing required parameter: 'prompt'.", param="prompt", code="missing_required_parameter")
    if not isinstance(prompt, str):
        raise _bad(
            f"Invalid type for 'prompt': expected a string, but got {type(prompt).__name__} instead.",
            param="prompt",
            code="invalid_type",
        )
    if not prompt:
        raise _bad(
            "Invalid 'prompt': empty string. Expected a string with minimum length 1, "
            "but got an empty string instead.",
            param="prompt",
            code="empty_string",
        )
    if len(prompt) > MAX_PROMPT_CHARS:
        raise _bad(
            f"Invalid 'prompt': string too long. Expected a string with maximum length "
            f"{MAX_PROMPT_CHARS}, but got a string with length {len(prompt)} instead.",
            param="prompt",
            code="string_above_max_length",
        )
    model = params.get("model", "gpt-image-1")
    if model not in IMAGE_MODELS:
        raise _invalid_value("model", model, IMAGE_MODELS)
    size = params.get("size", "auto")
    if size == "auto":
        size = "1024x1024"
    elif size not in SIZES:
        raise _invalid_value("size", size, (*SIZES, "auto"))
    quality = params.get("quality", "auto")
    if quality not in QUALITIES:
        raise _invalid_value("quality", quality, QUALITIES)
    if quality == "auto":
        quality = "medium"
    n = _as_int("n", params.get("n", 1))
    if n < 1:
        raise _bad(
            f"Invalid 'n': integer below minimum value. Expected a value >= 1, but got {n} instead.",
            param="n",
            code="integer_below_min_value",
        )
    if n > 10:
        raise _bad(
            f"Invalid 'n': integer above maximum value. Expected a value <= 10, but got {n} instead.",
            param="n",
            code="integer_above_max_value",
        )
    output_format = params.get("output_format", "png")
    if output_format not in OUTPUT_FORMATS:
        raise _invalid_value("output_format", output_format, OUTPUT_FORMATS)
    background = params.get("background", "auto")
    if background not in BACKGROUNDS:
        raise _invalid_value("background", background, BACKGROUNDS)
    if background == "transparent" and output_format == "jpeg":
        raise _bad(
            "Transparent background is not supported for the jpeg output format.",
            param="background",
            code="invalid_value",
        )
    if "moderation" in params and params["moderation"] not in ("low", "auto"):
        raise _invalid_value("moderation", params["moderation"], ("low", "auto"))
    if "response_format" in params and params["response_format"] not in ("b64_json", "url"):
        raise _invalid_value("response_format", params["response_format"], ("url", "b64_json"))
    w, h = SIZES[size]
    return _ImageParams(
        model=model,
        size=size,
        width=w,
        height=h,
        quality=quality,
        n=n,
        output_format=output_format,
        background="transparent" if background == "transparent" else "opaque",
        prompt=prompt,
    )


def _usage(p: _ImageParams, input_images: int) -> dict[str, Any]:
    text_tokens = max(1, len(p.prompt) // 4)
    image_tokens = input_images * _IMAGE_INPUT_TOKENS
    per_image = _OUTPUT_TOKENS[p.quality][0 if p.width == p.height else 1]
    output_tokens = per_image * p.n
    return {
        "input_tokens": text_tokens + image_tokens,
        "input_tokens_details": {"image_tokens": image_tokens, "text_tokens": text_tokens},
        "output_tokens": output_tokens,
        "total_tokens": text_tokens + image_tokens + output_tokens,
    }


_DATA_SLOT = "__fake_openai_data_slot__"


def _success(state: FakeState, request: Request, p: _ImageParams, input_images: int) -> Response:
    """Splice the cached base64 into the JSON envelope rather than re-serialising megabytes."""
    img = canned_image(p.width, p.height, p.output_format, state.png_bytes)
    if state.url_mode:
        url = str(request.base_url).rstrip("/") + f"/_fake/files/{p.width}x{p.height}.{p.output_format}"
        item = orjson.dumps({"url": url})
    else:
        item = b'{"b64_json":"' + img.b64 + b'"}'
    envelope = {
        "created": int(time.time()),
        "background": p.background,
        "data": _DATA_SLOT,
        "output_format": p.output_format,
        "quality": p.quality,
        "size": p.size,
        "usage": _usage(p, input_images),
    }
    data = b"[" + b",".join([item] * p.n) + b"]"
    body = orjson.dumps(envelope).replace(b'"' + _DATA_SLOT.encode() + b'"', data, 1)
    return Response(body, media_type="application/json")


async def _fault_response(fault: str, request: Request) -> Response:
    from starlette.responses import StreamingResponse

    if fault == "hang":
        while (await request.receive())["type"] != "http.disconnect":
            pass  # until the client hangs up (uvicorn never cancels a handler: it must see that itself)
        return _json({}, 499)  # nginx's "client closed request": nobody reads it
    if fault == "garbage":
        return Response(b"<html><body>502 Bad Gateway</body></html>", 200, media_type="application/json")
    if fault == "bad_image":
        junk = base64.b64encode(b"this is not a PNG").decode()
        return _json({"created": int(time.time()), "data": [{"b64_json": junk}]})

    async def half_then_drop() -> Any:
        yield b'{"created": 1, "data": [{"b64_json": "iVBORw0KGgo'
        raise ConnectionResetError("fake upstream: connection reset mid-body")

    return StreamingResponse(half_then_drop(), 200, media_type="application/json",
                             headers={"content-length": "100000"})


def build_app(state: FakeState) -> Starlette:
    """The ASGI app; ``state`` is shared with the controlling test or CLI."""

    async def answer(request: Request, rec: RecordedRequest, handle: Any) -> Response:
        denied = _check_auth(state, request)
        if denied is not None:
            resp = denied
        else:
            failure = state.pop_failure()
            delay = failure.delay_s if failure is not None else 0.0
            if state.latency_s or delay:
                await asyncio.sleep(state.latency_s + delay)
            if failure is not None and failure.fault != "status":
                resp = await _fault_response(failure.fault, request)
            elif failure is not None:
                body = failure.body if failure.body is not None else default_error_body(failure.status)
                resp = _json(body, failure.status, failure.headers)
            else:
                try:
                    resp = await handle()
                except _Invalid as exc:
                    resp = _json(exc.body, 400)
        rec.status = resp.status_code
        state.record(rec, request.scope)
        return resp

    async def generations(request: Request) -> Response:
        raw = await request.body()
        rec = RecordedRequest("POST", request.url.path, dict(request.headers))
        try:
            payload = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            payload = None
        rec.json = payload

        async def handle() -> Response:
            if not isinstance(payload, dict):
                raise _bad(
                    "We could not parse the JSON body of your request. (HINT: This likely means you aren't "
                    "using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was "
                    "sent was not valid JSON. If you have trouble figuring out how to fix this, please "
                    "contact us through our help center at help.openai.com.)"
                )
            return _success(state, request, _validate(payload, GENERATION_PARAMS), 0)

        return await answer(request, rec, handle)

    async def edits(request: Request) -> Response:
        rec = RecordedRequest("POST", request.url.path, dict(request.headers))
        form_error: str | None = None
        try:
            form = await request.form(max_files=MAX_EDIT_IMAGES + 4, max_part_size=4 * 1024 * 1024)
            for key, value in form.multi_items():
                if isinstance(value, UploadFile):
                    data = await value.read()
                    rec.files.append(RecordedFile(key, value.filename, value.content_type, data))
                else:
                    rec.form[key] = value
            await form.close()
        except Exception as exc:  # malformed multipart: OpenAI answers 400, so do we
            form_error = str(exc) or type(exc).__name__

        async def handle() -> Response:
            if form_error is not None or not request.headers.get("content-type", "").startswith(
                "multipart/form-data"
            ):
                ctype = request.headers.get("content-type", "")
                raise _bad(f"Invalid Content-Type header ({ctype}), expected multipart/form-data.")
            fields: dict[str, Any] = dict(rec.form)
            for f in rec.files:
                fields.setdefault(f.field, "<file>")
            images = [f for f in rec.files if f.field in ("image", "image[]")]
            if not images:
                raise _bad(
                    "Missing required parameter: 'image'.", param="image", code="missing_required_parameter"
                )
            if len(images) > MAX_EDIT_IMAGES:
                raise _bad(
                    f"Invalid 'image': array too long. Expected an array with maximum "
                    f"length {MAX_EDIT_IMAGES}, but got an array with length "
                    f"{len(images)} instead.",
                    param="image",
                    code="array_above_max_length",
                )
            for i, f in enumerate(images, start=1):
                if _sniff_image(f.data) is None or len(f.data) > MAX_IMAGE_BYTES:
                    raise _bad(
                        f"Invalid image file or mode for image {i}, please check your image file.",
                        param="image",
                        code="invalid_image_file",
                    )
            masks = [f for f in rec.files if f.field == "mask"]
            if masks and _sniff_image(masks[0].data) != "png":
                raise _bad(
                    "Invalid mask image format - mask image must be a PNG file.",
                    param="mask",
                    code="invalid_image_format",
                )
            return _success(state, request, _validate(fields, EDIT_PARAMS), len(images))

        return await answer(request, rec, handle)

    async def speech(request: Request) -> Response:
        raw = await request.body()
        rec = RecordedRequest("POST", request.url.path, dict(request.headers))
        try:
            payload = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            payload = None
        rec.json = payload

        async def handle() -> Response:
            try:
                accepted = openai_speech.validate_speech(payload)
            except openai_speech.SpeechInvalid as exc:
                raise _Invalid(exc.body) from None
            audio = openai_speech.audio_for(accepted)
            return StreamingResponse(openai_speech.chunked(audio),
                                     media_type=openai_speech.CONTENT_TYPES[accepted["response_format"]])

        return await answer(request, rec, handle)

    def _model_obj(model_id: str) -> dict[str, Any]:
        return {"id": model_id, "object": "model", "created": 1_700_000_000, "owned_by": "system"}

    async def list_models(request: Request) -> Response:
        rec = RecordedRequest("GET", request.url.path, dict(request.headers))
        denied = _check_auth(state, request)
        resp = denied or _json({"object": "list", "data": [_model_obj(m) for m in IMAGE_MODELS]})
        rec.status = resp.status_code
        state.record(rec, request.scope)
        return resp

    async def get_model(request: Request) -> Response:
        model_id = request.path_params["model"]
        denied = _check_auth(state, request)
        if denied is not None:
            return denied
        if model_id not in IMAGE_MODELS:
            return _json(
                openai_error(f"The model '{model_id}' does not exist", param="model", code="model_not_found"),
                404,
            )
        return _json(_model_obj(model_id))

    # --- control routes, for tests that run the fake in another process
    async def ctl_fail_next(request: Request) -> Response:
        spec = orjson.loads(await request.body())
        state.push_failures(
            ScriptedFailure(
                int(spec["status"]),
                spec.get("body"),
                dict(spec.get("headers") or {}),
                float(spec.get("delay_s", 0.0)),
                str(spec.get("fault", "status")),
            ),
            int(spec.get("count", 1)),
        )
        return _json({"ok": True})

    async def ctl_reset(request: Request) -> Response:
        state.reset()
        return _json({"ok": True})

    async def ctl_config(request: Request) -> Response:
        spec = orjson.loads(await request.body() or b"{}")
        with state.lock:
            if "latency_ms" in spec:
                state.latency_s = float(spec["latency_ms"]) / 1000
            if "png_bytes" in spec:
                state.png_bytes = spec["png_bytes"] or None
            if "url_mode" in spec:
                state.url_mode = bool(spec["url_mode"])
            if "api_key" in spec:
                state.api_key = spec["api_key"]
        return _json(
            {
                "latency_ms": state.latency_s * 1000,
                "png_bytes": state.png_bytes,
                "url_mode": state.url_mode,
                "received": state.received,
            }
        )

    async def ctl_requests(request: Request) -> Response:
        with state.lock:
            recorded = list(state.recorded)
        out = [
            {
                "method": r.method,
                "path": r.path,
                "headers": r.headers,
                "json": r.json,
                "form": r.form,
                "status": r.status,
                "files": [
                    {
                        "field": f.field,
                        "filename": f.filename,
                        "content_type": f.content_type,
                        "size": len(f.data),
                        "sha256": hashlib.sha256(f.data).hexdigest(),
                    }
                    for f in r.files
                ],
            }
            for r in recorded
        ]
        return _json({"received": state.received, "data": out})

    async def ctl_file(request: Request) -> Response:
        """Serves ``url_mode`` images; recorded, so tests can check what a client sent to a CDN."""
        rec = RecordedRequest("GET", request.url.path, dict(request.headers))
        dims, _, fmt = request.path_params["name"].partition(".")
        w_text, _, h_text = dims.partition("x")
        size = (int(w_text), int(h_text)) if w_text.isdigit() and h_text.isdigit() else None
        if fmt in OUTPUT_FORMATS and size is not None and size in SIZES.values():
            img = canned_image(size[0], size[1], fmt, state.png_bytes)
            resp = Response(img.data, media_type=img.content_type)
        else:
            resp = _json(openai_error("not found"), 404)
        rec.status = resp.status_code
        state.record(rec, request.scope)
        return resp

    async def not_found(request: Request, exc: Exception) -> Response:
        return _json(openai_error(f"Invalid URL ({request.method} {request.url.path})"), 404)

    routes = [
        Route("/v1/images/generations", generations, methods=["POST"]),
        Route("/v1/images/edits", edits, methods=["POST"]),
        Route("/v1/audio/speech", speech, methods=["POST"]),
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/v1/models/{model:path}", get_model, methods=["GET"]),
        Route("/_fake/fail_next", ctl_fail_next, methods=["POST"]),
        Route("/_fake/reset", ctl_reset, methods=["POST"]),
        Route("/_fake/config", ctl_config, methods=["POST", "GET"]),
        Route("/_fake/requests", ctl_requests, methods=["GET"]),
        Route("/_fake/files/{name}", ctl_file, methods=["GET"]),
    ]
    return Starlette(routes=routes, exception_handlers={404: not_found, 405: not_found},
                     middleware=[Middleware(_CountArrivals, state=state)])


class _CountArrivals:
    """Counts API requests on arrival, before the body is read, and tags each with the reset
    generation it arrived in."""

    def __init__(self, app: Any, state: FakeState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"].startswith("/_fake/"):
            await self.app(scope, receive, send)
            return
        with self.state.lock:
            self.state.arrived += 1
            scope["fake.generation"] = self.state.generation
        await self.app(scope, receive, send)


# --------------------------------------------------------------------------------------------- server


def _bind_loopback(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    # proto=IPPROTO_TCP matters: asyncio only sets TCP_NODELAY on accepted sockets whose proto says TCP,
    # and without it every small response waits ~40 ms on Nagle + delayed ACK.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


class FakeOpenAI:
    """The fake upstream running in a background thread, for in-process tests.

    Usage::

        with FakeOpenAI() as fake:
            provider = OpenAIImagesProvider(fake.api_key, fake.base_url)
            fake.fail_next(500)                # the next images request gets a 500
            fake.requests[-1].json["model"]    # what the client actually sent
    """

    def __init__(
        self,
        *,
        api_key: str | None = DEFAULT_API_KEY,
        png_bytes: int | None = None,
        latency_ms: float = 0.0,
        max_recorded: int | None = None,
        url_mode: bool = False,
        host: str = "127.0.0.1",
    ) -> None:
        """``api_key=None`` accepts any bearer token; ``png_bytes`` sets the approximate size of
        returned images (``REALISTIC_PNG_BYTES`` for photo-like outputs); ``url_mode`` answers
        ``{"url": ...}`` items (served by the fake) instead of ``b64_json``, like some compatible gateways."""
        self.state = FakeState(
            api_key=api_key,
            png_bytes=png_bytes,
            latency_s=latency_ms / 1000,
            max_recorded=max_recorded,
            url_mode=url_mode,
        )
        self._host = host
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    # lifecycle
    def start(self) -> FakeOpenAI:
        self.state.precompute()
        sock = _bind_loopback(self._host, 0)
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            build_app(self.state),
            log_level="warning",
            access_log=False,
            lifespan="off",
            loop="asyncio",
            timeout_keep_alive=30,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name=f"fake-openai-{self.port}", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("fake OpenAI server did not start")
            time.sleep(0.005)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server = None
        self._thread = None

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # what tests read and steer
    @property
    def api_key(self) -> str:
        return self.state.api_key or DEFAULT_API_KEY

    @property
    def origin(self) -> str:
        return f"http://{self._host}:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.origin}/v1"

    @property
    def requests(self) -> list[RecordedRequest]:
        """A snapshot of the recorded requests, oldest first (control routes are not recorded)."""
        with self.state.lock:
            return list(self.state.recorded)

    @property
    def received(self) -> int:
        """How many API requests were answered since the last reset (counts past ``max_recorded``;
        counted once the answer is ready, i.e. after the configured latency)."""
        return self.state.received

    @property
    def arrived(self) -> int:
        """How many API requests reached the fake since the last reset, counted on arrival, before
        any latency: a call counted here and not in ``received`` is in flight."""
        return self.state.arrived

    async def wait_arrived(self, count: int, timeout_s: float = 30.0) -> None:
        """Wait until ``count`` requests have arrived (the fake's thread may lag a busy test)."""
        deadline = time.monotonic() + timeout_s
        while self.state.arrived < count:
            assert time.monotonic() < deadline, f"{self.state.arrived} of {count} requests arrived"
            await asyncio.sleep(0.02)
        assert self.state.arrived == count, f"{self.state.arrived} requests arrived, not {count}"

    @property
    def latency_ms(self) -> float:
        return self.state.latency_s * 1000

    @latency_ms.setter
    def latency_ms(self, value: float) -> None:
        self.state.latency_s = value / 1000

    @property
    def png_bytes(self) -> int | None:
        return self.state.png_bytes

    @png_bytes.setter
    def png_bytes(self, value: int | None) -> None:
        self.state.png_bytes = value or None
        self.state.precompute()

    @property
    def url_mode(self) -> bool:
        return self.state.url_mode

    @url_mode.setter
    def url_mode(self, value: bool) -> None:
        self.state.url_mode = value

    def fail_next(
        self,
        status: int,
        body: dict[str, Any] | None = None,
        count: int = 1,
        *,
        headers: dict[str, str] | None = None,
        retry_after: float | None = None,
        delay_s: float = 0.0,
    ) -> None:
        """Answer the next ``count`` image requests with ``status`` and ``body``.

        ``body=None`` picks OpenAI's usual body for that status (400 → moderation_blocked);
        ``retry_after`` sets the ``Retry-After`` header; ``delay_s`` holds the answer back.
        """
        hdrs = dict(headers or {})
        if retry_after is not None:
            hdrs["retry-after"] = f"{retry_after:g}"
        self.state.push_failures(ScriptedFailure(status, body, hdrs, delay_s), count)

    def fault_next(self, fault: str, count: int = 1) -> None:
        """The next ``count`` image requests misbehave at the transport level: ``hang``, ``reset``,
        ``garbage`` or ``bad_image`` (see ``FAULTS``)."""
        assert fault in FAULTS, fault
        self.state.push_failures(ScriptedFailure(200, None, {}, 0.0, fault), count)

    def fail_moderation(self, count: int = 1) -> None:
        self.fail_next(400, MODERATION_BLOCKED_BODY, count)

    def reset(self) -> None:
        """Forget recorded requests and pending failures (settings such as latency stay)."""
        self.state.reset()

    def image_for(self, size: str = "1024x1024", fmt: str = "png") -> bytes:
        """The exact bytes the fake returns for ``size``, to compare against what a client stored."""
        w, h = SIZES[size]
        return canned_image(w, h, fmt, self.state.png_bytes).data


# ------------------------------------------------------------------------------------------------ CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Fake OpenAI Images API on loopback.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--port-file", type=Path, help="write the chosen port here once listening")
    parser.add_argument("--png-bytes", type=int, default=0, help="approximate size of returned images")
    parser.add_argument("--realistic", action="store_true", help=f"same as --png-bytes {REALISTIC_PNG_BYTES}")
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--api-key", default=None, help="expected bearer token (default: accept any)")
    parser.add_argument("--max-recorded", type=int, default=1000, help="requests kept for /_fake/requests")
    parser.add_argument("--url-mode", action="store_true", help="answer url items instead of b64_json")
    args = parser.parse_args(argv)

    png_bytes = REALISTIC_PNG_BYTES if args.realistic else (args.png_bytes or None)
    state = FakeState(
        api_key=args.api_key,
        png_bytes=png_bytes,
        latency_s=args.latency_ms / 1000,
        max_recorded=args.max_recorded,
        url_mode=args.url_mode,
    )
    state.precompute()
    sock = _bind_loopback(args.host, args.port)
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        build_app(state),
        log_level="warning",
        access_log=False,
        lifespan="off",
        timeout_keep_alive=30,
        backlog=2048,
    )
    server = uvicorn.Server(config)

    async def serve() -> None:
        async def announce() -> None:
            while not server.started:
                if server.should_exit:
                    return
                await asyncio.sleep(0.005)
            if args.port_file is not None:
                tmp = args.port_file.with_name(args.port_file.name + ".tmp")
                tmp.write_text(str(port))
                os.replace(tmp, args.port_file)
            print(f"fake OpenAI listening on http://{args.host}:{port}/v1", file=sys.stderr, flush=True)

        announcer = asyncio.create_task(announce())
        await server.serve(sockets=[sock])
        announcer.cancel()

    with asyncio.Runner(loop_factory=config.get_loop_factory()) as runner:
        runner.run(serve())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
