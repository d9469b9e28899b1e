"""The gateway's Prometheus series. Counters move where the event happens (an upstream attempt in
the route pool; a request record once its transaction committed); gauges that describe shared
state (breakers, the queue) are set when ``/metrics`` is scraped."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

UPSTREAM_CALLS = Counter(
    "apiinone_upstream_calls", "Upstream calls by model, route and outcome "
    "(success, retryable, refused, key_refused).", ["model", "route", "outcome"])
UPSTREAM_SECONDS = Histogram(
    "apiinone_upstream_call_seconds", "Time of one upstream call on one route.", ["model", "route"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300))
REQUESTS = Counter(
    "apiinone_requests", "Billable requests finished (one per request-log record), by type, model and status.",
    ["type", "model", "status"])
REQUEST_SECONDS = Histogram(
    "apiinone_request_seconds", "Latency of finished billable requests (request-log latency_ms).",
    ["type", "model"], buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600))
CREDITS_CAPTURED = Counter(
    "apiinone_credits_captured_ucr", "Micro-credits charged (1 credit = 1,000,000), by type and model.",
    ["type", "model"])
BREAKER_STATE = Gauge(
    "apiinone_route_breaker_state", "Circuit breaker of a route: 0 closed, 1 half-open, 2 open.", ["model", "route"])
QUEUE_DEPTH = Gauge("apiinone_queue_depth", "Tasks waiting to run (queued), across the cluster.")
TASKS_IN_FLIGHT = Gauge("apiinone_tasks_in_flight", "Tasks running now, across the cluster.")

GROUP_COMMIT_TRANSACTIONS = Counter(
    "apiinone_group_commit_transactions", "Transactions that wrote items of a group-commit lane (task-create, "
    "task-complete, direct-finish, direct-holds, direct-settlements).", ["writer"])
GROUP_COMMIT_FAILED = Counter(
    "apiinone_group_commit_failed_batches", "Group-commit batches that failed as a whole (a duplicate, a "
    "deadlock) and were written again item by item.")
GROUP_COMMIT_ITEMS = Counter(
    "apiinone_group_commit_items", "Items those transactions wrote: items / transactions is the batch size.",
    ["writer"])

_STATE_VALUE = {"closed": 0, "half_open": 1, "open": 2}


def observe_attempt(model: str, route: str, outcome: str, seconds: float) -> None:
    UPSTREAM_CALLS.labels(model, route, outcome).inc()
    UPSTREAM_SECONDS.labels(model, route).observe(seconds)


def observe_request(type_: str, model: str, status: str, credits_ucr: int, latency_ms: int | None) -> None:
    REQUESTS.labels(type_, model, status).inc()
    if credits_ucr:
        CREDITS_CAPTURED.labels(type_, model).inc(credits_ucr)
    if latency_ms is not None:
        REQUEST_SECONDS.labels(type_, model).observe(latency_ms / 1000)


def refresh_gauges(breaker_states: dict[tuple[str, str], str], queued: int, running: int) -> None:
    for (model, route), state in breaker_states.items():
        BREAKER_STATE.labels(model, route).set(_STATE_VALUE.get(state, 0))
    QUEUE_DEPTH.set(queued)
    TASKS_IN_FLIGHT.set(running)
