"""The API reference pages: ``/docs`` is Swagger UI over ``/openapi.json``, served entirely from the
package (``static/swagger-ui/``, vendored by ``scripts/vendor-swagger-ui.sh``), so it renders on a
machine with no internet and loads nothing from a CDN."""

from __future__ import annotations

from html import escape

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

router = APIRouter()

# Swagger UI sets inline styles and draws its icons from data: URIs; everything else is same-origin.
DOCS_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
                               "script-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}

_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} — API reference</title>
<link rel="icon" href="/static/favicon.svg" type="image/svg+xml">
<link rel="stylesheet" href="/static/swagger-ui/swagger-ui.css">
</head>
<body>
<div id="swagger-ui" data-openapi-url="{openapi_url}"></div>
<script src="/static/swagger-ui/swagger-ui-bundle.js"></script>
<script src="/static/swagger-init.js"></script>
</body>
</html>
"""


@router.get("/docs", include_in_schema=False)
async def swagger_ui(request: Request) -> Response:
    page = _PAGE.format(title=escape(request.app.title), openapi_url=escape(request.app.openapi_url or ""))
    return HTMLResponse(page, headers=DOCS_HEADERS)
