"""Fast JSON responses (orjson) and the one error shape of ``/api/v1``."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response

from apiinone.errors import ApiError, RateLimited, Unauthorized


class JsonResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        if isinstance(content, bytes):
            return content
        return orjson.dumps(content)


def json_response(content: Any, status_code: int = 200, headers: dict[str, str] | None = None) -> JsonResponse:
    return JsonResponse(content, status_code=status_code, headers=headers)


def error_headers(error: ApiError) -> dict[str, str]:
    """``Retry-After`` on a 429; ``WWW-Authenticate: Bearer`` on a 401 (RFC 6750) so clients know
    which credentials to send."""
    if isinstance(error, RateLimited):
        return {"Retry-After": str(error.retry_after)}
    if isinstance(error, Unauthorized):
        return {"WWW-Authenticate": 'Bearer realm="apiinone"'}
    return {}


def error_response(error: ApiError) -> JsonResponse:
    return JsonResponse(error.to_body(), status_code=error.status, headers=error_headers(error))
