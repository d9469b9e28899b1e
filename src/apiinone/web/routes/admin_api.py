"""Admin routes of the public API (``/api/v1/admin``), for an admin account's API key.

Worker nodes report themselves through heartbeats into ``worker_nodes``; this shows them with a
health derived from the heartbeat's age, so an operator sees a dead node without any extra agent.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from apiinone.domain.tasks import iso
from apiinone.errors import Forbidden
from apiinone.ids import now_ms
from apiinone.web import openapi
from apiinone.web.deps import authenticate, container_of
from apiinone.web.responses import json_response

router = APIRouter(prefix="/api/v1/admin")

MISSED_HEARTBEATS_FOR_DOWN = 3
"""A node is ``down`` once this many heartbeat intervals pass without one (its tasks' leases run
out at about the same time and other nodes take them over)."""


def node_health(node: dict[str, Any], now: int, default_interval_ms: int) -> str:
    """``up``, ``down`` (heartbeats stopped: crashed or cut off) or ``stopped`` (shut down cleanly)."""
    if node.get("stopped_at") is not None:
        return "stopped"
    interval = int(node.get("heartbeat_interval_ms") or default_interval_ms)
    return "down" if now - int(node["heartbeat_at"]) > MISSED_HEARTBEATS_FOR_DOWN * interval else "up"


@router.get("/nodes", summary="Worker nodes and their health (admin only)",
            responses=openapi.ok(openapi.page_of("Node")))
async def list_nodes(request: Request) -> Response:
    _key, account = await authenticate(request)
    if not account.is_admin:
        raise Forbidden("this route is for administrators")
    container = container_of(request)
    async with container.db.uow(write=False) as uow:
        nodes = await uow.queue.nodes()
    now = now_ms()
    default_interval_ms = int(max(0.2, container.settings.task_lease_s / 3) * 1000)
    data = [
        {
            "name": n["name"], "status": node_health(n, now, default_interval_ms),
            "models": n["models"], "model_limits": n["model_limits"], "concurrency": n["concurrency"],
            "running": n["running"], "pid": n["pid"], "hostname": n["hostname"],
            "started_at": iso(n["started_at"]), "heartbeat_at": iso(n["heartbeat_at"]),
            "stopped_at": iso(n["stopped_at"]),
            "heartbeat_age_ms": now - int(n["heartbeat_at"]),
        }
        for n in nodes
    ]
    return json_response({"data": data, "next_cursor": None})


@router.get("/routes", summary="Upstream routes: configuration, breaker state and counters (admin only)",
            responses=openapi.ok(openapi.page_of("UpstreamRoute")))
async def list_routes(request: Request) -> Response:
    _key, account = await authenticate(request)
    if not account.is_admin:
        raise Forbidden("this route is for administrators")
    data = await container_of(request).routes.list_routes()
    return json_response({"data": data, "next_cursor": None})
