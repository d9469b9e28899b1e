"""The client's exception tree. Catch ``ApiinoneError`` for everything, or a leaf to branch.

ApiinoneError
├── APIConnectionError          the server could not be reached (after retries)
│   └── APITimeoutError         no answer in time
├── APIStatusError              a non-2xx answer; ``status``, ``code``, ``message``, ``param``
│   ├── BadRequestError         400 (``invalid_parameter``, ``invalid_json``, ``url_not_allowed``)
│   ├── AuthenticationError     401
│   ├── InsufficientCreditsError 402
│   ├── PermissionDeniedError   403
│   ├── NotFoundError           404 (``model_not_found``, ``task_not_found``)
│   ├── ConflictError           409 (``idempotency_conflict``, ``task_not_cancelable``)
│   ├── PayloadTooLargeError    413
│   ├── RateLimitError          429; ``retry_after`` seconds
│   └── ServerError             5xx
│       └── ServiceUnavailableError 503 (``model_unavailable``)
├── TaskFailedError             the task ended ``failed`` or ``canceled``; ``task`` holds it
└── WaitTimeoutError            the task was still running when the wait ran out; ``task`` holds it
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from apiinone.client._models import TaskData


class ApiinoneError(Exception):
    """Base of every error this client raises."""


class APIConnectionError(ApiinoneError):
    pass


class APITimeoutError(APIConnectionError):
    pass


class APIStatusError(ApiinoneError):
    def __init__(self, message: str, *, status: int, code: str | None = None, param: str | None = None,
                 body: Any = None, retry_after: float | None = None) -> None:
        super().__init__(f"{status} {code or 'error'}: {message}")
        self.status: int = status
        self.code: str | None = code
        self.message: str = message
        self.param: str | None = param
        self.body: Any = body
        self.retry_after: float | None = retry_after


class BadRequestError(APIStatusError):
    pass


class AuthenticationError(APIStatusError):
    pass


class InsufficientCreditsError(APIStatusError):
    pass


class PermissionDeniedError(APIStatusError):
    pass


class NotFoundError(APIStatusError):
    pass


class ConflictError(APIStatusError):
    pass


class PayloadTooLargeError(APIStatusError):
    pass


class RateLimitError(APIStatusError):
    pass


class ServerError(APIStatusError):
    pass


class ServiceUnavailableError(ServerError):
    pass


_BY_STATUS: dict[int, type[APIStatusError]] = {
    400: BadRequestError, 401: AuthenticationError, 402: InsufficientCreditsError, 403: PermissionDeniedError,
    404: NotFoundError, 409: ConflictError, 413: PayloadTooLargeError, 429: RateLimitError,
    503: ServiceUnavailableError,
}


def status_error(status: int, body: Any, retry_after: float | None = None) -> APIStatusError:
    """The exception for an error answer in the ``/api/v1`` shape ``{"error": {code, message, param}}``."""
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        error = {"message": str(body)[:500] if body else f"HTTP {status}"}
    cls = _BY_STATUS.get(status) or (ServerError if status >= 500 else APIStatusError)
    return cls(str(error.get("message") or f"HTTP {status}"), status=status, code=error.get("code"),
               param=error.get("param"), body=body, retry_after=retry_after)


class TaskFailedError(ApiinoneError):
    def __init__(self, task: TaskData) -> None:
        error = task.error or {}
        detail = f"{error.get('code', '')} {error.get('message', '')}".strip()
        super().__init__(f"task {task.task_id} {task.status}: {detail}")
        self.task = task


class WaitTimeoutError(ApiinoneError, TimeoutError):
    def __init__(self, task: TaskData, waited_s: float) -> None:
        super().__init__(f"task {task.task_id} still {task.status} after {waited_s:g} s")
        self.task = task
