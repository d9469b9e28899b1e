"""Optional OpenTelemetry traces: a request → route → upstream call span tree.

Off unless ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set; then the ``opentelemetry`` packages (the
``otel`` extra) are imported and spans are exported over OTLP/HTTP. Off costs nothing: the pool
calls a no-op tracer and no middleware is installed, and nothing imports ``opentelemetry``.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from apiinone.config import Settings


class Span(Protocol):
    def set_attribute(self, key: str, value: Any) -> None: ...


class _NoSpan:
    def set_attribute(self, key: str, value: Any) -> None:
        return None


class Tracer(Protocol):
    enabled: bool

    def span(self, name: str, attributes: Mapping[str, Any] | None = None) -> AbstractContextManager[Span]: ...


class NoopTracer:
    enabled = False

    @contextlib.contextmanager
    def span(self, name: str, attributes: Mapping[str, Any] | None = None) -> Iterator[Span]:
        yield _NO_SPAN


_NO_SPAN = _NoSpan()
NOOP_TRACER = NoopTracer()


class OtelTracer:
    """Spans through an OpenTelemetry SDK tracer provider (``exporter`` given: tests use an
    in-memory one; else OTLP/HTTP to the endpoint in the standard OTEL_* variables)."""

    enabled = True

    def __init__(self, service_name: str = "apiinone", exporter: Any = None) -> None:
        sdk_trace = importlib.import_module("opentelemetry.sdk.trace")
        export = importlib.import_module("opentelemetry.sdk.trace.export")
        resources = importlib.import_module("opentelemetry.sdk.resources")
        if exporter is None:
            otlp = importlib.import_module("opentelemetry.exporter.otlp.proto.http.trace_exporter")
            exporter = otlp.OTLPSpanExporter()
            processor = export.BatchSpanProcessor(exporter)
        else:
            processor = export.SimpleSpanProcessor(exporter)
        self.provider = sdk_trace.TracerProvider(resource=resources.Resource.create({"service.name": service_name}))
        self.provider.add_span_processor(processor)
        self._tracer = self.provider.get_tracer("apiinone")

    def span(self, name: str, attributes: Mapping[str, Any] | None = None) -> AbstractContextManager[Span]:
        manager: AbstractContextManager[Span] = self._tracer.start_as_current_span(
            name, attributes=dict(attributes or {}))
        return manager

    def shutdown(self) -> None:
        self.provider.shutdown()


def tracer_from_settings(settings: Settings) -> Tracer:
    if not settings.otel_exporter_otlp_endpoint:
        return NOOP_TRACER
    return OtelTracer(settings.otel_service_name)


class TracingMiddleware:
    """ASGI middleware (installed only when tracing is on): one server span per HTTP request."""

    def __init__(self, app: Any, tracer: Tracer) -> None:
        self.app = app
        self.tracer = tracer

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status: dict[str, int] = {}

        async def send_status(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status["code"] = int(message["status"])
            await send(message)

        with self.tracer.span(f"{scope['method']} {scope['path']}", {"http.request.method": scope["method"],
                                                                    "url.path": scope["path"]}) as span:
            await self.app(scope, receive, send_status)
            span.set_attribute("http.response.status_code", status.get("code", 0))
