"""OpenAI's Images API (``gpt-image-*``) for the ``openai`` provider.

Plain HTTP through one shared ``httpx.AsyncClient`` rather than the ``openai`` SDK, so that
timeouts and the failure classification are ours (the route pool decides about retries) and tests
can point it at a loopback fake.

Failure classification (``error_from_response``), which the pool acts on:

* 400 ``moderation_blocked`` / ``content_policy_violation`` → :class:`ContentPolicyError`, not retried
* 401 / 403 → key refused (the pool uses the route's next key); the upstream message is never echoed,
  because OpenAI's contains a masked form of the key
* 429 ``insufficient_quota`` → that key's account has no quota: the key is set aside like a refused one
* other 429, 408, 409, 5xx,
  connection errors and timeouts → retryable (``Retry-After`` / ``retry-after-ms`` passed on)
* other 4xx → the request was refused: fails at once

The API key lives only in the request headers of calls to the route's base URL; it is redacted
from every message and never sent to hosts an upstream names in ``url`` results.
"""

from __future__ import annotations

import binascii
import email.utils
import logging
import time
from io import BytesIO
from typing import Any

import httpx
import orjson
import pybase64

from apiinone.kinds.image.header import image_header
from apiinone.kinds.image.job import GeneratedImage, ImageJob, ImageResult
from apiinone.upstreams.base import (
    ContentPolicyError,
    RouteTarget,
    UpstreamError,
    UpstreamTimeoutError,
    error_for_status,
)
from apiinone.upstreams.http import json_object, transport_error
from apiinone.upstreams.http1 import LeanClient, LeanTransportError

__all__ = ["OpenAIImages", "auth_headers", "error_from_response", "post_json"]

logger = logging.getLogger(__name__)

_MAX_RETRY_AFTER_S = 30.0
_MAX_BACKOFF_S = 30.0
_MAX_MESSAGE_CHARS = 500
_MAX_URL_IMAGE_BYTES = 64 * 1024 * 1024
_RETRYABLE_STATUS = frozenset({408, 409, 429})
_MODERATION_CODES = frozenset({"moderation_blocked", "content_policy_violation"})
_EXTRA_GENERATION_FIELDS = ("moderation", "output_compression")
_EXTRA_EDIT_FIELDS = ("input_fidelity", "output_compression")
_CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "jpg": "image/jpeg", "webp": "image/webp"}
_PIL_CONTENT_TYPES = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}


class OpenAIImages:
    """The Images API half of :class:`~apiinone.upstreams.openai.adapter.OpenAIAdapter`."""

    _client: httpx.AsyncClient

    def json_client(self) -> LeanClient | None: ...

    async def generate_images(self, target: RouteTarget, job: ImageJob) -> ImageResult:
        client = self.json_client() if not job.inputs else None
        if client is not None:
            raw = await post_json_raw(client, target, f"{target.base_url}/images/generations",
                                      orjson.dumps(self._generation_fields(target, job)))
        else:
            raw = await self._send_for_json(target, self._build_request(target, job))
        payload, cut = without_b64(raw)
        images = await self._images_from(payload, job, cut)
        usage = payload.get("usage")
        return ImageResult(images=images, usage=usage if isinstance(usage, dict) else None)

    # ----------------------------------------------------------------------------------------- request

    def _build_request(self, target: RouteTarget, job: ImageJob) -> httpx.Request:
        """A fresh request per attempt: a multipart body is a stream and cannot be sent twice."""
        fields = self._generation_fields(target, job)
        if not job.inputs:
            return self._client.build_request(
                "POST",
                f"{target.base_url}/images/generations",
                content=orjson.dumps(fields),
                headers={**auth_headers(target), "Content-Type": "application/json"},
                timeout=target.timeout_s,
            )
        files = [("image[]", (img.filename, img.data, img.content_type)) for img in job.inputs]
        if job.mask is not None:
            files.append(("mask", (job.mask.filename, job.mask.data, job.mask.content_type)))
        return self._client.build_request(
            "POST",
            f"{target.base_url}/images/edits",
            data={k: str(v) for k, v in fields.items()},
            files=files,
            headers=auth_headers(target),
            timeout=target.timeout_s,
        )

    def _generation_fields(self, target: RouteTarget, job: ImageJob) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "model": target.upstream_model,
            "prompt": job.prompt,
            "n": job.n,
            "size": job.size_text,
            "quality": job.quality,
        }
        if job.output_format != "png":
            fields["output_format"] = job.output_format
        if job.background:
            fields["background"] = job.background
        if job.user:
            fields["user"] = job.user
        for key in _EXTRA_EDIT_FIELDS if job.inputs else _EXTRA_GENERATION_FIELDS:
            if key in job.extra:
                value = job.extra[key]
                fields[key] = int(value) if key == "output_compression" and value.isdigit() else value
        return fields

    async def _send_for_json(self, target: RouteTarget, request: httpx.Request) -> bytes:
        """The body of a 200 answer (the caller parses it)."""
        try:
            response = await self._client.send(request)
        except httpx.TransportError as exc:
            raise transport_error(target, exc) from None
        if response.status_code == 200:
            return response.content
        raise error_from_response(target, response)

    # ------------------------------------------------------------------------------------------ result

    async def _images_from(self, payload: dict[str, Any], job: ImageJob,
                           cut: list[bytes] | None = None) -> tuple[GeneratedImage, ...]:
        """``cut``: the base64 values :func:`without_b64` took out of ``payload``, in order."""
        items = payload.get("data")
        if not isinstance(items, list) or not items:
            raise UpstreamError("upstream returned no images")
        fmt = str(payload.get("output_format") or job.output_format)
        fallback_type = _CONTENT_TYPES.get(fmt, "image/png")
        images: list[GeneratedImage] = []
        for item in items:
            if not isinstance(item, dict):
                raise UpstreamError("upstream returned an unexpected image entry")
            b64: bytes | str | None = item.get("b64_json")
            if cut and b64 == "":
                b64 = cut.pop(0)
            if isinstance(b64, bytes | str):
                try:
                    data = pybase64.b64decode(b64, validate=True)  # SIMD: ~30x the stdlib's speed
                except (binascii.Error, ValueError):
                    raise UpstreamError("upstream returned an image that is not valid base64") from None
            elif isinstance(item.get("url"), str):
                b64, data = None, await self._download(item["url"])
            else:
                raise UpstreamError("upstream returned an image entry with neither b64_json nor url")
            images.append(_described(data, fallback_type, b64))
        return tuple(images)

    async def _download(self, url: str) -> bytes:
        """Fetch an image an upstream answered by URL, without our credentials and with a size cap."""
        if not url.startswith(("https://", "http://")):
            raise UpstreamError("upstream returned an image URL that is not http(s)")
        try:
            async with self._client.stream("GET", url, follow_redirects=True) as response:
                if response.status_code != 200:
                    raise UpstreamError(
                        f"could not download the upstream image (HTTP {response.status_code})"
                    )
                chunks: list[bytes] = []
                size = 0
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
                    if size > _MAX_URL_IMAGE_BYTES:
                        raise UpstreamError("the upstream image is too large")
                    chunks.append(chunk)
                return b"".join(chunks)
        except httpx.TimeoutException:
            raise UpstreamTimeoutError("timed out downloading the upstream image", retryable=True) from None
        except httpx.HTTPError as exc:
            raise UpstreamError(
                f"could not download the upstream image ({type(exc).__name__})", retryable=True
            ) from None


def _described(data: bytes, fallback_type: str, b64: bytes | str | None = None) -> GeneratedImage:
    """Read size and format from the image header only; the pixels are never decoded here."""
    if isinstance(b64, str):
        b64 = b64.encode("ascii")  # validated base64: ASCII
    header = image_header(data)
    if header is not None:
        content_type, width, height = header
        return GeneratedImage(data=data, content_type=content_type, width=width, height=height, b64=b64)
    from PIL import Image, UnidentifiedImageError  # imported on first use, like every Pillow import

    try:
        with Image.open(BytesIO(data)) as img:
            width, height = img.size
            content_type = _PIL_CONTENT_TYPES.get(img.format or "", fallback_type)
    except (UnidentifiedImageError, OSError, ValueError):
        raise UpstreamError("upstream returned bytes that are not an image") from None
    return GeneratedImage(data=data, content_type=content_type, width=width, height=height, b64=b64)


_B64_KEY = b'"b64_json"'
_JSON_SPACE = b" \t\r\n"


def without_b64(raw: bytes) -> tuple[dict[str, Any], list[bytes] | None]:
    """A 200 Images answer parsed with its base64 values cut out first, and those values as bytes.

    Parsing the whole body makes a megabyte-long ``str`` of every image only to decode it again;
    base64 never holds a quote or a backslash, so each ``"b64_json"`` value ends at the next quote
    and can be lifted out as it is and handed on (to the decoder, and to the client's answer). The
    pattern can only be a key: inside a JSON string every quote is escaped. Any surprise (an escape
    in a value, a rest that does not parse or does not hold exactly the emptied values) falls back
    to parsing the body whole (``cut`` None)."""
    cut: list[bytes] = []
    parts: list[bytes] = []
    at = 0
    while (key := raw.find(_B64_KEY, at)) >= 0:
        start = _value_start(raw, key + len(_B64_KEY))
        end = raw.find(b'"', start) if start >= 0 else -1
        if end < 0 or raw.find(b"\\", start, end) >= 0:
            return json_object(raw), None
        parts.append(raw[at:start])
        cut.append(raw[start:end])
        at = end
    if not cut:
        return json_object(raw), None
    parts.append(raw[at:])
    try:
        payload = json_object(b"".join(parts))
    except UpstreamError:
        return json_object(raw), None
    items = payload.get("data")
    emptied = sum(1 for i in items if isinstance(i, dict) and i.get("b64_json") == "") if isinstance(items, list) else 0
    if emptied != len(cut):
        return json_object(raw), None
    return payload, cut


def _value_start(raw: bytes, i: int) -> int:
    """Just past the opening quote of the string value after a key ending at ``i``; -1 if none."""
    while i < len(raw) and raw[i] in _JSON_SPACE:
        i += 1
    if i >= len(raw) or raw[i] != 0x3A:  # ':'
        return -1
    i += 1
    while i < len(raw) and raw[i] in _JSON_SPACE:
        i += 1
    return i + 1 if i < len(raw) and raw[i] == 0x22 else -1  # '"'


async def post_json(client: LeanClient, target: RouteTarget, url: str, body: bytes) -> dict[str, Any]:
    """POST a JSON body with the lean client (``json_client``); failures are classified exactly
    as for httpx."""
    return json_object(await post_json_raw(client, target, url, body))


async def post_json_raw(client: LeanClient, target: RouteTarget, url: str, body: bytes) -> bytes:
    """:func:`post_json`, answering the 200 body unparsed."""
    headers = {**auth_headers(target), "Content-Type": "application/json"}
    try:
        response = await client.post(url, body, headers, timeout_s=target.timeout_s)
    except (TimeoutError, LeanTransportError) as exc:
        raise transport_error(target, exc) from None
    if response.status == 200:
        return response.body
    framing = ("content-encoding", "content-length", "transfer-encoding")  # the body is already decoded
    answered = [(name, value) for name, value in response.headers if name not in framing]
    raise error_from_response(target, httpx.Response(response.status, headers=answered, content=response.body))


def auth_headers(target: RouteTarget) -> dict[str, str]:
    return {"Authorization": f"Bearer {target.api_key}"} if target.api_key else {}


def error_from_response(target: RouteTarget, response: httpx.Response) -> UpstreamError:
    """Classify a non-200 answer of an OpenAI-protocol server (the one place for this protocol)."""
    status = response.status_code
    err = _error_object(response)
    message = target.redact(_shorten(str(err.get("message") or "").strip()) or f"HTTP {status}")
    code = str(err.get("code") or "")
    type_ = str(err.get("type") or "")
    if status in (401, 403):
        # never echo the upstream's message: OpenAI's contains a masked form of the key
        return error_for_status(status, message)
    if code in _MODERATION_CODES or (
        type_ == "image_generation_user_error" and ("moderation" in code or "safety" in message.lower())
    ):
        return ContentPolicyError(message, status=status)
    if code == "insufficient_quota":  # that upstream account is out of money: its key is set aside
        return UpstreamError(f"upstream rejected the request: {message}", status=status, key_refused=True)
    return error_for_status(status, message, retry_after_s=_retry_after_s(response),
                            should_retry=response.headers.get("x-should-retry"))


def _error_object(response: httpx.Response) -> dict[str, Any]:
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return {"message": _shorten(response.text.strip())}
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict):
            return err
        if isinstance(err, str):
            return {"message": err}
    return {}


def _retry_after_s(response: httpx.Response) -> float | None:
    """Seconds the upstream asked us to wait: ``retry-after-ms`` (OpenAI) or ``Retry-After``."""
    ms = response.headers.get("retry-after-ms")
    if ms:
        try:
            return float(ms) / 1000
        except ValueError:
            pass
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _shorten(text: str) -> str:
    return text if len(text) <= _MAX_MESSAGE_CHARS else text[: _MAX_MESSAGE_CHARS - 1] + "…"
