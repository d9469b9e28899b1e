"""Metrics (Prometheus, always on, in-process counters) and traces (OpenTelemetry, only when
``OTEL_EXPORTER_OTLP_ENDPOINT`` is set; the packages are then imported, never before)."""

from apiinone.telemetry.metrics import observe_attempt, observe_request, refresh_gauges
from apiinone.telemetry.tracing import NOOP_TRACER, NoopTracer, Tracer, tracer_from_settings

__all__ = ["NOOP_TRACER", "NoopTracer", "Tracer", "observe_attempt", "observe_request", "refresh_gauges",
           "tracer_from_settings"]
