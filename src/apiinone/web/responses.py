"""Fast JSON responses (orjson) and the one error shape of ``/api/v1``."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response

from apiinone.errors import ApiError, RateLimited


class JsonResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        if isinstance(content, bytes):
            return content
        return orjson.dumps(content)


def json_response(content: Any, status_code: int = 200, headers: dict[str, str] | None = None) -> JsonResponse:
    return JsonResponse(content, status_code=status_code, headers=headers)


def error_response(error: ApiError) -> JsonResponse:
    headers = {"Retry-After": str(error.retry_after)} if isinstance(error, RateLimited) else None
    return JsonResponse(error.to_body(), status_code=error.status, headers=headers)
