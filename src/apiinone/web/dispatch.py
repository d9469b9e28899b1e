"""The busiest routes answered straight from their endpoints, past FastAPI's routing.

Every request through FastAPI passes its middleware stack (server errors, exception telemetry,
body limit, exception handlers, an exit stack), a router walk over the included routers, route
matching and dependency solving, before the endpoint runs. For the direct calls that is a fifth to
a quarter of the API process's CPU (py-spy, 16 clients, chat and small images). The endpoints
named in :data:`HOT_ROUTES` take only the ``Request`` and answer their own errors, so for them
:class:`DirectDispatch` looks the route up in a dict and calls the endpoint itself, with the same
error envelope as through FastAPI (:class:`EnvelopeRoute`, or the app's exception handlers).
Everything else, and every request while tracing is on, goes through FastAPI as before.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any

import structlog
from fastapi import APIRouter, FastAPI
from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

log = structlog.get_logger(__name__)

Endpoint = Callable[[Request], Awaitable[Response]]
ErrorAnswer = Callable[[Request, Exception], Awaitable[Response]]

HOT_ROUTES = frozenset({
    ("POST", "/v1/chat/completions"),
    ("POST", "/v1/messages"),
    ("POST", "/v1/images/generations"),
    ("POST", "/api/v1/images/generations"),
    ("POST", "/api/v1/chat/completions"),
})


class EnvelopeRoute(APIRoute):
    """A route that answers every error in its protocol's envelope, whatever raised it."""

    async def error_response(self, request: Request, exc: Exception) -> Response:
        """The answer to ``exc`` (called inside its ``except`` block, so logging sees it)."""
        raise exc

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        answer = self.error_response

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except Exception as exc:
                return await answer(request, exc)

        return handle


class DirectDispatch:
    """``(method, path)`` → endpoint and error answer, for the hot routes that qualify."""

    def __init__(self, app: FastAPI, routers: Sequence[APIRouter]) -> None:
        """``routers``: those the app includes, in its order (the first route of a path wins, as
        in FastAPI's matching), each included without a further prefix."""
        self._app = app
        self.routes: dict[tuple[str, str], tuple[Endpoint, ErrorAnswer]] = {}
        for route in (r for router in routers for r in router.routes):
            if not isinstance(route, APIRoute) or not _takes_only_the_request(route):
                continue
            for method in route.methods or ():
                if (method, route.path) in HOT_ROUTES and (method, route.path) not in self.routes:
                    answer = route.error_response if isinstance(route, EnvelopeRoute) else self._app_handlers
                    self.routes[(method, route.path)] = (route.endpoint, answer)

    async def _app_handlers(self, request: Request, exc: Exception) -> Response:
        """The app's exception handlers, looked up by the exception's class as Starlette does."""
        handlers: dict[Any, Any] = self._app.exception_handlers
        for cls in type(exc).__mro__:
            handler = handlers.get(cls)
            if handler is not None:
                response: Response = await handler(request, exc)
                return response
        raise exc

    async def __call__(self, scope: Scope, receive: Receive, send: Send,
                       endpoint: Endpoint, answer: ErrorAnswer) -> None:
        scope["app"] = self._app
        request = Request(scope, receive, send)
        try:
            response = await endpoint(request)
        except Exception as exc:
            response = await answer(request, exc)
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await response(scope, receive, tracked)
        except Exception as exc:  # as Starlette's server-error middleware: answer if nothing was sent yet
            if started:
                raise
            await (await answer(request, exc))(scope, receive, send)


def _takes_only_the_request(route: APIRoute) -> bool:
    """An endpoint FastAPI would call with just the request: no dependencies, no other parameter."""
    if route.dependencies or route.dependant.dependencies:
        return False
    parameters = list(inspect.signature(route.endpoint).parameters.values())
    return len(parameters) == 1 and parameters[0].annotation in (Request, "Request")
