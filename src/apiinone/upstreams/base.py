"""What every upstream adapter shares: the call target, and the one error tree the pool reads.

An adapter speaks one vendor protocol. It is given a :class:`RouteTarget` per call (base URL, key,
upstream model name), so one adapter instance and its connection pool serve every route and key
of that protocol. It classifies each failure exactly once, here in the error it raises:

* ``retryable``: the same request may succeed elsewhere or later (connection error, timeout, 408,
  429, 5xx, "overloaded"); the pool fails over to the next route.
* ``key_refused``: the upstream refused the key itself (401/403); the pool sets the key aside and
  uses the route's next key. Never counted against the route's breaker.
* neither: the request itself was refused (other 4xx, content policy); no other route is tried.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol


class UpstreamError(Exception):
    """An upstream call failed; ``code`` becomes the task's or the call's error code."""

    code = "upstream_error"
    default_retryable = False

    def __init__(self, message: str, *, code: str | None = None, retryable: bool | None = None,
                 key_refused: bool = False, status: int | None = None,
                 retry_after_s: float | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        self.message = message
        self.retryable = self.default_retryable if retryable is None else retryable
        self.key_refused = key_refused
        self.status = status
        self.retry_after_s = retry_after_s


class ContentPolicyError(UpstreamError):
    code = "content_policy"


class UpstreamTimeoutError(UpstreamError):
    code = "timeout"
    default_retryable = True


class UpstreamUnavailableError(UpstreamError):
    """No route of the model could be tried (none configured, all open, all keys refused)."""

    code = "model_unavailable"


@dataclass(frozen=True, slots=True)
class RouteTarget:
    """Where one call goes. ``api_key`` is the key in turn for this call; never log it."""

    model_id: str
    route: str
    provider: str
    base_url: str
    api_key: str | None
    upstream_model: str
    timeout_s: float = 120.0
    options: Mapping[str, Any] = field(default_factory=dict)

    @property
    def key_hint(self) -> str:
        """The last 4 characters of the key: all that logs and pages may show."""
        return f"...{self.api_key[-4:]}" if self.api_key else "-"

    def redact(self, text: str) -> str:
        return text.replace(self.api_key, "[redacted]") if self.api_key and self.api_key in text else text


class Adapter(Protocol):
    """One upstream protocol. Capability methods (``generate_images``, ``chat``, ``submit_job`` ...)
    are declared by each kind in ``apiinone.kinds.<kind>``; an adapter implements those it serves."""

    provider: str
    needs_key: bool

    async def aclose(self) -> None: ...


RETRYABLE_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504, 529})


def error_for_status(status: int, message: str, *, retry_after_s: float | None = None,
                     should_retry: str | None = None) -> UpstreamError:
    """The shared HTTP classification; adapters add their vendor's quirks before calling it."""
    if status in (401, 403):
        return UpstreamError(f"upstream refused the API key (HTTP {status})", key_refused=True, status=status)
    if should_retry == "false":
        return UpstreamError(f"upstream rejected the request: {message}", status=status)
    if should_retry == "true" or status in RETRYABLE_STATUS or status >= 500:
        return UpstreamError(f"HTTP {status}: {message}", retryable=True, status=status,
                             retry_after_s=retry_after_s)
    return UpstreamError(f"upstream rejected the request: {message}", status=status)


def retry_after_seconds(value: str | None) -> float | None:
    if not value:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if 0 <= seconds <= 3600 else None
