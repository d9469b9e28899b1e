"""The error tree. Each error maps to exactly one HTTP status and one stable ``code``.

ApiError
├── InvalidJson (400 invalid_json)
├── InvalidParameter (400 invalid_parameter, ``param`` names the field)
├── UrlNotAllowedError (400 url_not_allowed)
├── Unauthorized (401 unauthorized)
├── InsufficientCredits (402 insufficient_credits)
├── Forbidden (403 forbidden)
├── ModelNotFound / TaskNotFound / NotFound (404)
├── IdempotencyConflict / TaskNotCancelable (409)
├── PayloadTooLarge (413 payload_too_large)
├── RateLimited (429 rate_limited, ``retry_after`` seconds)
├── UpstreamFailed (502 upstream_error / 504 timeout / 400 content_policy: a direct call's upstream failed)
├── ContentRefused (400 content_policy: the upstream refused the content of a direct call)
├── UpstreamTimedOut (504 timeout: a direct call's upstream did not answer in time)
├── ModelUnavailable (503 model_unavailable)
├── ServiceUnavailable (503 service_unavailable)
└── InternalError (500 internal_error)
"""

from __future__ import annotations


class ApiError(Exception):
    status = 500
    code = "internal_error"
    default_message = "internal error"

    def __init__(self, message: str | None = None, *, param: str | None = None) -> None:
        self.message = message or self.default_message
        self.param = param
        super().__init__(self.message)

    def to_body(self) -> dict[str, object]:
        """``param`` is always there (null when no single field is to blame), so clients can rely on it."""
        return {"error": {"code": self.code, "message": self.message, "param": self.param}}


class InvalidJson(ApiError):
    status, code, default_message = 400, "invalid_json", "request body is not valid JSON"


class InvalidParameter(ApiError):
    status, code, default_message = 400, "invalid_parameter", "invalid parameter"


class UrlNotAllowedError(ApiError):
    status, code, default_message = 400, "url_not_allowed", "URL not allowed"


class Unauthorized(ApiError):
    status, code, default_message = 401, "unauthorized", "missing or invalid API key"


class InsufficientCredits(ApiError):
    status, code, default_message = 402, "insufficient_credits", "not enough available credits"


class Forbidden(ApiError):
    status, code, default_message = 403, "forbidden", "forbidden"


class ModelNotFound(ApiError):
    status, code, default_message = 404, "model_not_found", "model not found"


class TaskNotFound(ApiError):
    status, code, default_message = 404, "task_not_found", "task not found"


class NotFound(ApiError):
    status, code, default_message = 404, "not_found", "not found"


class IdempotencyConflict(ApiError):
    status, code = 409, "idempotency_conflict"
    default_message = "Idempotency-Key was already used with a different request body"


class TaskNotCancelable(ApiError):
    status, code, default_message = 409, "task_not_cancelable", "task has already ended"


class PayloadTooLarge(ApiError):
    status, code, default_message = 413, "payload_too_large", "request body too large"


class RateLimited(ApiError):
    status, code, default_message = 429, "rate_limited", "rate limit exceeded"

    def __init__(self, message: str | None = None, *, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = max(1, retry_after)


class UpstreamFailed(ApiError):
    """A direct call (chat, speech) failed upstream; nothing was charged. ``code`` is the upstream
    error's (``upstream_error``, ``timeout``, ``content_policy``); ``status`` follows from it."""

    status, code, default_message = 502, "upstream_error", "the model's upstream failed"

    def __init__(self, message: str | None = None, *, code: str = "upstream_error", status: int = 502) -> None:
        super().__init__(message)
        self.code = code
        self.status = status
class ContentRefused(ApiError):
    status, code, default_message = 400, "content_policy", "the upstream refused this content"


class UpstreamTimedOut(ApiError):
    status, code, default_message = 504, "timeout", "the model's upstream did not answer in time"


class ModelUnavailable(ApiError):
    status, code = 503, "model_unavailable"
    default_message = "model has no configured or healthy upstream"


class ServiceUnavailable(ApiError):
    status, code, default_message = 503, "service_unavailable", "service temporarily unavailable"


class InternalError(ApiError):
    status, code, default_message = 500, "internal_error", "internal error"
