"""What the sync and async clients share: configuration, request bodies, the retry policy and the
mapping of answers to results or exceptions. Only the I/O differs between the two."""

from __future__ import annotations

import os
import random
import uuid
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

from apiinone.client._errors import ApiinoneError, APIStatusError, status_error
from apiinone.client._models import TaskEvent
from apiinone.client._sse import ServerSentEvent

DEFAULT_BASE_URL = "http://127.0.0.1:8000"
API_KEY_ENV = "APIINONE_API_KEY"
BASE_URL_ENV = "APIINONE_BASE_URL"
USER_AGENT = "apiinone-python"

RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
NOT_RETRYABLE_CODES = frozenset({"model_unavailable"})  # a 503 that waiting a second will not fix
MAX_RETRY_AFTER_S = 60.0
SSE_UNSUPPORTED_STATUSES = frozenset({404, 405, 406, 501})


@dataclass(frozen=True, slots=True)
class ClientConfig:
    base_url: str
    api_key: str
    timeout_s: float
    max_retries: int
    backoff_s: float
    use_sse: bool

    @classmethod
    def build(cls, base_url: str | None, api_key: str | None, *, timeout_s: float, max_retries: int,
              backoff_s: float, use_sse: bool) -> ClientConfig:
        key = api_key or os.environ.get(API_KEY_ENV)
        if not key:
            raise ApiinoneError(f"no API key: pass api_key= or set {API_KEY_ENV}")
        url = (base_url or os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL).rstrip("/")
        return cls(base_url=url, api_key=key, timeout_s=timeout_s, max_retries=max(0, max_retries),
                   backoff_s=backoff_s, use_sse=use_sse)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}", "User-Agent": USER_AGENT}

    def delay_s(self, attempt: int, retry_after_s: float | None) -> float:
        """Exponential backoff with jitter, or what the server asked for (``Retry-After``)."""
        if retry_after_s is not None and 0 <= retry_after_s <= MAX_RETRY_AFTER_S:
            return retry_after_s
        backoff: float = min(8.0, self.backoff_s * 2.0**attempt)
        return backoff * (0.5 + random.random() / 2)


def new_idempotency_key() -> str:
    """Sent with every create, so a retry after a lost answer replays instead of charging twice."""
    return f"aio-py-{uuid.uuid4().hex}"


def generation_body(prompt: str, *, model: str, aspect_ratio: str, quality: str, input_urls: list[str] | None,
                    callback_url: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "prompt": prompt, "aspect_ratio": aspect_ratio, "quality": quality}
    if input_urls:
        body["input_urls"] = list(input_urls)
    if callback_url:
        body["callback_url"] = callback_url
    return body


def retry_after_s(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after", "")
    try:
        return float(value) if value else None
    except ValueError:
        return None


def error_for(response: httpx.Response) -> APIStatusError:
    try:
        body: Any = orjson.loads(response.content) if response.content else None
    except orjson.JSONDecodeError:
        body = response.text
    return status_error(response.status_code, body, retry_after_s(response))


def is_retryable(error: APIStatusError) -> bool:
    return error.status in RETRYABLE_STATUSES and str(error.code) not in NOT_RETRYABLE_CODES


def task_event(sse: ServerSentEvent) -> TaskEvent | None:
    """A task event from a decoded SSE event; anything that is not one is skipped."""
    try:
        data = orjson.loads(sse.data)
    except orjson.JSONDecodeError:
        return None
    return TaskEvent(event=sse.event, data=data, id=sse.id) if isinstance(data, dict) else None


def is_event_stream(response: httpx.Response) -> bool:
    content_type: str = response.headers.get("content-type", "")
    return content_type.startswith("text/event-stream")


def poll_interval_s(previous: float | None) -> float:
    """0.5 s, then a little longer each time, up to 5 s."""
    return 0.5 if previous is None else min(5.0, previous * 1.5)


class SSEUnavailable(Exception):
    """The events stream cannot be used here (old server, a proxy in the way): poll instead."""
