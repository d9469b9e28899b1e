"""``/docs`` loads only files the package serves itself (no CDN), under a same-origin CSP."""

from __future__ import annotations

import re

from tests.conftest import AppHarness


async def test_docs_page_loads_only_same_origin_assets(sqlite_harness: AppHarness) -> None:
    client = sqlite_harness.client
    page = await client.get("/docs")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "connect-src 'self'" in csp
    assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert "/static/swagger-ui/swagger-ui-bundle.js" in assets and "/static/swagger-ui/swagger-ui.css" in assets
    assert all(a.startswith("/") and not a.startswith("//") for a in assets), assets
    assert "<script>" not in page.text  # no inline script: the CSP would block it
    assert 'data-openapi-url="/openapi.json"' in page.text
    for asset in assets:
        answer = await client.get(asset)
        assert answer.status_code == 200 and len(answer.content) > 0, asset
    bundle = await client.get("/static/swagger-ui/swagger-ui-bundle.js")
    assert "SwaggerUIBundle" in bundle.text and "unpkg" not in page.text and "cdn" not in page.text.lower()
    assert (await client.get("/openapi.json")).json()["paths"]
