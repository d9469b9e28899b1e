"""Metrics and traces: /metrics carries per-model and per-route series, breaker state, queue depth,
tasks in flight and credits captured; traces, when on, form a request → route → upstream call
tree; when off, nothing of OpenTelemetry is even imported."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from apiinone.telemetry.tracing import OtelTracer
from apiinone.web.app import container_from, create_app
from tests.conftest import AppHarness, make_settings


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one series in Prometheus text format (0 when absent)."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split(" ")[0]))
        if all(found.get(k) == v for k, v in labels.items()) and (labels or "{" not in line):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_metrics_count_requests_routes_latency_credits_and_show_breakers_and_queue(
        sqlite_harness: AppHarness) -> None:
    h = sqlite_harness
    caller = await h.caller(credits=100)
    before = (await h.client.get("/metrics")).text
    r = await caller.post("/api/v1/images/generations", json={"model": "local-typeset", "prompt": "hi",
                                                               "quality": "high"})
    assert (await caller.wait_for(r.json()["task_id"]))["status"] == "succeeded"
    after = (await h.client.get("/metrics")).text
    route = {"model": "local-typeset", "route": "local-typeset"}

    def delta(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    assert delta("apiinone_upstream_calls_total", **route, outcome="success") == 1
    assert delta("apiinone_upstream_call_seconds_count", **route) == 1
    assert delta("apiinone_requests_total", type="image", model="local-typeset", status="succeeded") == 1
    assert delta("apiinone_request_seconds_count", type="image", model="local-typeset") == 1
    assert delta("apiinone_credits_captured_ucr_total", type="image", model="local-typeset") == 2_000_000
    assert sample(after, "apiinone_route_breaker_state", **route) == 0
    assert 'apiinone_route_breaker_state{model="gpt-image-1.5-official",route="openai"}' in after
    assert "apiinone_queue_depth 0.0" in after and "apiinone_tasks_in_flight 0.0" in after


async def test_queue_depth_counts_waiting_tasks(tmp_path: Path, sqlite_url: str) -> None:
    async with AppHarness(make_settings(tmp_path, sqlite_url), embedded_worker=False) as h:
        caller = await h.caller(credits=100)
        for _ in range(3):
            await caller.post("/api/v1/images/generations", json={"model": "local-typeset", "prompt": "hi"})
        assert "apiinone_queue_depth 3.0" in (await h.client.get("/metrics")).text


async def test_traces_form_a_request_route_upstream_tree(tmp_path: Path, sqlite_url: str) -> None:
    exporter = InMemorySpanExporter()
    tracer = OtelTracer(exporter=exporter)
    app = create_app(make_settings(tmp_path, sqlite_url), embedded_worker=False, migrate=False, tracer=tracer)
    container = container_from(app)
    async with app.router.lifespan_context(app):
        account = await container.accounts.create_user("t@example.com", "password123", credits=10)
        key = (await container.accounts.create_api_key(account.id, "k")).plaintext
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as client:
            r = await client.post("/api/v1/images/generations?sync=1", headers={"Authorization": f"Bearer {key}"},
                                  json={"model": "local-typeset", "prompt": "hi"})
            assert r.status_code in (200, 202), r.text
            worker = container.make_worker()
            await worker.start()
            try:
                for _ in range(200):
                    task = (await client.get(f"/api/v1/tasks/{r.json()['task_id']}",
                                             headers={"Authorization": f"Bearer {key}"})).json()
                    if task["status"] == "succeeded":
                        break
                    import asyncio

                    await asyncio.sleep(0.05)
            finally:
                await worker.stop()
    spans = exporter.get_finished_spans()
    by_name = {s.name: s for s in spans}
    assert "POST /api/v1/images/generations" in by_name
    route_span, call_span = by_name["route"], by_name["upstream.call"]
    assert call_span.parent is not None and call_span.parent.span_id == route_span.context.span_id
    assert call_span.attributes["apiinone.route"] == "local-typeset"
    assert route_span.attributes["apiinone.model"] == "local-typeset"
    assert by_name["POST /api/v1/images/generations"].attributes["http.response.status_code"] in (200, 202)


def test_tracing_off_imports_no_opentelemetry_sdk_or_exporter(tmp_path: Path) -> None:
    """(FastAPI itself imports the small ``opentelemetry`` API package when it is installed, as it
    is in the dev environment; the SDK and the exporters are what tracing would load.)"""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "APIINONE_"))}
    program = (
        "import sys\n"
        "from apiinone.config import Settings\n"
        "from apiinone.web.app import create_app, container_from\n"
        f"app = create_app(Settings(data_dir={str(tmp_path)!r}, secret_key='a-real-test-secret'))\n"
        "assert not container_from(app).pool.tracer.enabled\n"
        "assert not any(m.__class__.__name__ == 'TracingMiddleware' for m in app.user_middleware)\n"
        "print(sorted(m for m in sys.modules if m.startswith(('opentelemetry.sdk', 'opentelemetry.exporter'))))\n"
    )
    result = subprocess.run([sys.executable, "-c", program], env=env, capture_output=True, text=True, timeout=120,
                            check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
