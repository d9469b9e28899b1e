"""OpenAI Images API (``gpt-image-*``) as an :class:`~apiinone.providers.base.ImageProvider`.

Talks plain HTTP through one shared ``httpx.AsyncClient`` rather than the ``openai`` SDK, so that
retries, timeouts and error mapping are ours to decide (the worker's task state machine depends on
them) and tests can point it at a loopback fake or pass an ``httpx`` transport.

Failure mapping, which the worker turns into the task's ``error.code``:

* 400 ``moderation_blocked`` / ``content_policy_violation`` → :class:`ContentPolicyError` (``content_policy``)
* 401 / 403 / other 4xx → :class:`ProviderError` (``upstream_error``), not retried; a 401 never echoes the
  upstream message, because OpenAI's contains a masked form of the key
* 429 (except ``insufficient_quota``), 408, 409, 5xx, connection errors and timeouts → retried with
  exponential backoff (``Retry-After`` honoured up to 30 s), then :class:`ProviderError` ``upstream_error``,
  or :class:`UpstreamTimeoutError` (``timeout``) when the last attempt timed out.

The API key lives only in the request headers of calls to ``base_url``; it is redacted from every
message this module produces and never sent to hosts an upstream names in ``url`` results.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import email.utils
import logging
import random
import time
from io import BytesIO
from typing import Any

import httpx
import orjson

from apiinone.providers.base import (
    ContentPolicyError,
    GeneratedImage,
    ImageJob,
    ImageResult,
    ProviderError,
    UpstreamTimeoutError,
)

__all__ = ["OpenAIImagesProvider"]

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


class _Retry(Exception):
    """One failed attempt that may succeed if tried again."""

    def __init__(self, message: str, *, timeout: bool = False, wait_s: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.timeout = timeout
        self.wait_s = wait_s


class OpenAIImagesProvider:
    """Generates and edits images with OpenAI's Images API; safe to share across concurrent tasks."""

    name = "openai"

    def __init__(
        self,
        api_key: str,
        base_url: str = "https://api.openai.com/v1",
        *,
        timeout_s: float = 120.0,
        max_retries: int = 3,
        backoff_base_s: float = 1.0,
        transport: httpx.AsyncBaseTransport | None = None,
        max_connections: int = 100,
    ) -> None:
        if not api_key:
            raise ValueError("an OpenAI API key is required")
        self._api_key = api_key
        self._auth = {"Authorization": f"Bearer {api_key}"}
        self._base_url = base_url.rstrip("/")
        self._timeout_s = timeout_s
        self._max_retries = max(0, max_retries)
        self._backoff_base_s = backoff_base_s
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        self._client = httpx.AsyncClient(
            transport=transport or httpx.AsyncHTTPTransport(limits=limits, http1=True, http2=False),
            timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 15.0)),
            headers={"User-Agent": "apiinone"},
            follow_redirects=False,
        )

    def __repr__(self) -> str:
        return f"OpenAIImagesProvider(base_url={self._base_url!r})"

    async def aclose(self) -> None:
        await self._client.aclose()

    async def generate(self, job: ImageJob) -> ImageResult:
        payload = await self._call_with_retries(job)
        images = await self._images_from(payload, job)
        usage = payload.get("usage")
        return ImageResult(images=images, usage=usage if isinstance(usage, dict) else None)

    # ----------------------------------------------------------------------------------------- request

    def _build_request(self, job: ImageJob) -> httpx.Request:
        """A fresh request per attempt: a multipart body is a stream and cannot be sent twice."""
        fields: dict[str, Any] = {
            "model": job.upstream_model,
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

        if not job.inputs:
            return self._client.build_request(
                "POST",
                f"{self._base_url}/images/generations",
                content=orjson.dumps(fields),
                headers={**self._auth, "Content-Type": "application/json"},
            )
        files = [("image[]", (img.filename, img.data, img.content_type)) for img in job.inputs]
        if job.mask is not None:
            files.append(("mask", (job.mask.filename, job.mask.data, job.mask.content_type)))
        return self._client.build_request(
            "POST",
            f"{self._base_url}/images/edits",
            data={k: str(v) for k, v in fields.items()},
            files=files,
            headers=self._auth,
        )

    async def _call_with_retries(self, job: ImageJob) -> dict[str, Any]:
        attempts = self._max_retries + 1
        last: _Retry | None = None
        for attempt in range(attempts):
            if last is not None:
                await asyncio.sleep(self._delay_s(attempt - 1, last.wait_s))
            try:
                return await self._attempt(job)
            except _Retry as exc:
                last = exc
                logger.warning(
                    "openai images attempt %d/%d failed: %s", attempt + 1, attempts, self._redact(exc.message)
                )
        assert last is not None
        message = self._redact(f"upstream failed after {attempts} attempts: {last.message}")
        if last.timeout:
            raise UpstreamTimeoutError(message, retryable=True)
        raise ProviderError(message, code="upstream_error", retryable=True)

    def _delay_s(self, retry_index: int, retry_after_s: float | None) -> float:
        if retry_after_s is not None and 0 <= retry_after_s <= _MAX_RETRY_AFTER_S:
            return retry_after_s
        backoff = min(_MAX_BACKOFF_S, self._backoff_base_s * 2.0**retry_index)
        return backoff * (0.75 + random.random() / 2)  # jitter, so a burst of failed tasks spreads out

    async def _attempt(self, job: ImageJob) -> dict[str, Any]:
        request = self._build_request(job)
        try:
            response = await self._client.send(request)
        except httpx.TimeoutException as exc:
            raise _Retry(
                f"no answer within {self._timeout_s:g} s ({type(exc).__name__})", timeout=True
            ) from None
        except httpx.TransportError as exc:
            raise _Retry(f"could not reach upstream ({type(exc).__name__}: {exc})") from None
        if response.status_code == 200:
            try:
                payload = orjson.loads(response.content)
            except orjson.JSONDecodeError:
                raise ProviderError("upstream returned a body that is not JSON") from None
            if not isinstance(payload, dict):
                raise ProviderError("upstream returned an unexpected JSON body")
            return payload
        raise self._error_for(response)

    # ------------------------------------------------------------------------------------------ errors

    def _error_for(self, response: httpx.Response) -> Exception:
        """Map a non-200 answer to a retry signal or a final ProviderError."""
        status = response.status_code
        err = _error_object(response)
        message = self._redact(_shorten(str(err.get("message") or "").strip()) or f"HTTP {status}")
        code = str(err.get("code") or "")
        type_ = str(err.get("type") or "")

        if status == 401:
            return ProviderError(
                "upstream rejected the API key (HTTP 401); check the OpenAI API key of this server",
                code="upstream_error",
            )
        if code in _MODERATION_CODES or (
            type_ == "image_generation_user_error" and ("moderation" in code or "safety" in message.lower())
        ):
            return ContentPolicyError(message)
        should_retry = response.headers.get("x-should-retry")
        if should_retry == "false" or code == "insufficient_quota":
            return ProviderError(f"upstream rejected the request: {message}", code="upstream_error")
        if should_retry == "true" or status in _RETRYABLE_STATUS or status >= 500:
            return _Retry(f"HTTP {status}: {message}", wait_s=_retry_after_s(response))
        return ProviderError(f"upstream rejected the request: {message}", code="upstream_error")

    def _redact(self, text: str) -> str:
        return text.replace(self._api_key, "[redacted]") if self._api_key in text else text

    # ------------------------------------------------------------------------------------------ result

    async def _images_from(self, payload: dict[str, Any], job: ImageJob) -> tuple[GeneratedImage, ...]:
        items = payload.get("data")
        if not isinstance(items, list) or not items:
            raise ProviderError("upstream returned no images")
        fmt = str(payload.get("output_format") or job.output_format)
        fallback_type = _CONTENT_TYPES.get(fmt, "image/png")
        images: list[GeneratedImage] = []
        for item in items:
            if not isinstance(item, dict):
                raise ProviderError("upstream returned an unexpected image entry")
            b64 = item.get("b64_json")
            if isinstance(b64, str):
                try:
                    data = base64.b64decode(b64, validate=True)
                except (binascii.Error, ValueError):
                    raise ProviderError("upstream returned an image that is not valid base64") from None
            elif isinstance(item.get("url"), str):
                b64, data = None, await self._download(item["url"])
            else:
                raise ProviderError("upstream returned an image entry with neither b64_json nor url")
            images.append(_described(data, fallback_type, b64))
        return tuple(images)

    async def _download(self, url: str) -> bytes:
        """Fetch an image an upstream answered by URL, without our credentials and with a size cap."""
        if not url.startswith(("https://", "http://")):
            raise ProviderError("upstream returned an image URL that is not http(s)")
        try:
            async with self._client.stream("GET", url, follow_redirects=True) as response:
                if response.status_code != 200:
                    raise ProviderError(
                        f"could not download the upstream image (HTTP {response.status_code})"
                    )
                chunks: list[bytes] = []
                size = 0
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
                    if size > _MAX_URL_IMAGE_BYTES:
                        raise ProviderError("the upstream image is too large")
                    chunks.append(chunk)
                return b"".join(chunks)
        except httpx.TimeoutException:
            raise UpstreamTimeoutError("timed out downloading the upstream image", retryable=True) from None
        except httpx.HTTPError as exc:
            raise ProviderError(
                f"could not download the upstream image ({type(exc).__name__})", retryable=True
            ) from None


def _described(data: bytes, fallback_type: str, b64: str | None = None) -> GeneratedImage:
    """Read size and format from the image header only; the pixels are never decoded here."""
    from PIL import Image, UnidentifiedImageError  # imported on first use, like every Pillow import

    try:
        with Image.open(BytesIO(data)) as img:
            width, height = img.size
            content_type = _PIL_CONTENT_TYPES.get(img.format or "", fallback_type)
    except (UnidentifiedImageError, OSError, ValueError):
        raise ProviderError("upstream returned bytes that are not an image") from None
    return GeneratedImage(data=data, content_type=content_type, width=width, height=height, b64=b64)


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
