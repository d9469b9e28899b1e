"""``create_app(settings)``: the ASGI application, wired from one Settings object."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from apiinone import __version__
from apiinone.bootstrap import Container, build_container
from apiinone.config import Settings, load_settings
from apiinone.db.outage import is_database_outage
from apiinone.errors import ApiError, InternalError, InvalidParameter, NotFound, ServiceUnavailable
from apiinone.telemetry.tracing import Tracer
from apiinone.web.dispatch import DirectDispatch
from apiinone.web.responses import error_response, json_response

log = structlog.get_logger(__name__)


def create_app(settings: Settings | None = None, *, embedded_worker: bool = True,
               migrate: bool | None = None, tracer: Tracer | None = None) -> FastAPI:
    settings = settings or load_settings()
    container = build_container(settings, tracer=tracer)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if migrate if migrate is not None else container.db.is_sqlite:
            from apiinone.db.migrate import upgrade

            upgrade(settings.resolved_database_url)
        await container.start(worker=embedded_worker, delivery=embedded_worker)
        for start in app.state.on_start:
            await start(container)
        try:
            yield
        finally:
            await container.stop()
            for stop in app.state.on_stop:
                await stop(container)
            await container.aclose()

    app = ApiinoneApp(
        title="apiinone", version=__version__, lifespan=lifespan,
        description="One HTTP API, one API key and one credit balance in front of many AI models.",
        docs_url=None, redoc_url=None,  # /docs: web/routes/reference.py, from vendored assets
        # FastAPI's own OpenTelemetry asks the global providers on every request; our spans come
        # from telemetry/tracing.py, only when an OTLP endpoint is configured
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.container = container
    if container.tracer is not None and container.tracer.enabled:
        from apiinone.telemetry.tracing import TracingMiddleware

        app.add_middleware(TracingMiddleware, tracer=container.tracer)
    app.state.on_start = []
    app.state.on_stop = []
    _install_error_handlers(app)

    from apiinone.web.routes import (
        admin_api,
        anthropic_messages,
        api,
        chat,
        deliveries,
        events,
        media,
        openai_compat,
        ops,
        reference,
        speech,
    )

    # The OpenAI- and Anthropic-shaped routes first: they carry the most traffic, and a request
    # is matched against the routers in this order (no two routers here share a path).
    app.include_router(anthropic_messages.router)
    app.include_router(chat.openai_router)  # before openai_compat: its routes are more general
    app.include_router(openai_compat.router)
    app.include_router(speech.compat_router)
    app.include_router(api.router)
    app.include_router(media.router)
    app.include_router(ops.router)
    app.include_router(deliveries.router)
    app.include_router(admin_api.router)
    app.include_router(reference.router)
    app.include_router(events.router)
    app.include_router(chat.router)
    app.include_router(chat.console_router)
    app.include_router(speech.api_router)

    from apiinone.web.routes import pages

    pages.install(app)  # console, admin and model pages, /static
    from apiinone.web import openapi

    openapi.install(app)
    if container.tracer is None or not container.tracer.enabled:  # with tracing, every request is traced
        app.direct = DirectDispatch(app, [anthropic_messages.router, chat.openai_router, openai_compat.router,
                                          api.router, chat.router])
    return app


class ApiinoneApp(FastAPI):
    """FastAPI, with the hot routes' requests handed straight to their endpoints (web/dispatch.py)."""

    direct: DirectDispatch | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        direct = self.direct
        if direct is not None and scope["type"] == "http" and not scope.get("root_path"):
            found = direct.routes.get((scope["method"], scope["path"]))
            if found is not None:
                await direct(scope, receive, send, *found)
                return
        await super().__call__(scope, receive, send)


def container_from(app: FastAPI) -> Container:
    container: Container = app.state.container
    return container


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> Response:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError) -> Response:
        errors = exc.errors()
        loc = [str(p) for p in errors[0]["loc"] if p not in ("body", "query", "path")] if errors else []
        param = loc[0] if loc else None
        message = f"{param}: {errors[0]['msg']}" if errors and param else "invalid request"
        return error_response(InvalidParameter(message, param=param))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 404:
            return error_response(NotFound("no such route"))
        if exc.status_code == 405:
            return json_response({"error": {"code": "method_not_allowed", "message": "method not allowed",
                                            "param": None}}, 405, headers=dict(exc.headers or {}))
        return json_response({"error": {"code": "http_error", "message": str(exc.detail), "param": None}},
                             exc.status_code)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        if is_database_outage(exc):
            log.warning("database_unavailable", path=request.url.path, error=type(exc).__name__)
            return error_response(ServiceUnavailable("the database is unavailable; retry shortly"))
        log.exception("unhandled_error", path=request.url.path)
        return error_response(InternalError())

    from sqlalchemy.exc import DBAPIError, EmulatedDBAPIException

    # Database errors are answered here rather than by the catch-all only: Starlette re-raises after
    # the catch-all, and uvicorn then drops the keep-alive connection, so during an outage clients
    # would see connection resets instead of a clean 503.
    for database_error in (DBAPIError, EmulatedDBAPIException, ConnectionError, TimeoutError):
        app.add_exception_handler(database_error, _unexpected)
