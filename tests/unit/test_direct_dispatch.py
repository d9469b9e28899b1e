"""The hot routes' direct dispatch (web/dispatch.py): which routes it takes, and that it answers
exactly as FastAPI does, errors included."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from apiinone.config import Settings
from apiinone.errors import InsufficientCredits
from apiinone.web.app import ApiinoneApp, create_app
from apiinone.web.dispatch import HOT_ROUTES, DirectDispatch
from apiinone.web.routes.openai_compat import OpenAIErrorsRoute


def test_every_hot_route_is_dispatched_directly(tmp_path: Path) -> None:
    """A hot route that stops qualifying (a dependency, another parameter) would quietly go back
    through FastAPI's stack: this names it."""
    app = create_app(Settings(data_dir=tmp_path, env="development"))
    assert isinstance(app, ApiinoneApp) and app.direct is not None
    assert set(app.direct.routes) == set(HOT_ROUTES)


class _Broken(Response):
    async def __call__(self, scope: object, receive: object, send: object) -> None:
        raise RuntimeError("the response failed before its first byte")


def _app_with(router: APIRouter) -> ApiinoneApp:
    app = ApiinoneApp()
    app.include_router(router)
    app.direct = DirectDispatch(app, [router])
    return app


@pytest.mark.parametrize("direct", [True, False])
async def test_errors_have_the_routes_envelope_through_either_path(direct: bool) -> None:
    router = APIRouter(prefix="/v1", route_class=OpenAIErrorsRoute)
    calls: list[str] = []

    @router.post("/images/generations")
    async def create(request: Request) -> Response:
        calls.append(request.headers.get("x-case", ""))
        if request.headers.get("x-case") == "refused":
            raise InsufficientCredits()
        if request.headers.get("x-case") == "crash":
            raise RuntimeError("boom")
        return _Broken()

    app = _app_with(router)
    if not direct:
        app.direct = None
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        refused = await client.post("/v1/images/generations", headers={"x-case": "refused"})
        crash = await client.post("/v1/images/generations", headers={"x-case": "crash"})
        broken = await client.post("/v1/images/generations", headers={"x-case": "broken"})
    assert calls == ["refused", "crash", "broken"]
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "insufficient_quota"
    assert crash.status_code == 500 and crash.json()["error"]["code"] == "internal_error"
    assert "boom" not in crash.text
    if direct:  # FastAPI's stack answers a failure while sending with its own plain 500
        assert broken.status_code == 500 and broken.json()["error"]["code"] == "internal_error"


async def test_a_route_with_a_dependency_is_left_to_fastapi() -> None:
    from fastapi import Depends

    router = APIRouter(prefix="/v1", route_class=OpenAIErrorsRoute)

    async def dependency() -> str:
        return "x"

    @router.post("/images/generations")
    async def create(request: Request, value: str = Depends(dependency)) -> Response:
        return Response(value)

    assert _app_with(router).direct.routes == {}  # type: ignore[union-attr]
