"""Webhook deliveries of a task, ``/api/v1/tasks/{task_id}/deliveries``: the log and redelivery."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from apiinone.services.webhooks import DeliveryService
from apiinone.web import openapi
from apiinone.web.deps import authenticate, container_of
from apiinone.web.responses import json_response

router = APIRouter(prefix="/api/v1")


def _service(request: Request) -> DeliveryService:
    container = container_of(request)
    return DeliveryService(container.db, on_redeliver=container.webhook_wakeup.set)


@router.get("/tasks/{task_id}/deliveries", summary="A task's webhook deliveries and every attempt",
            responses=openapi.ok(openapi.page_of("Delivery")))
async def list_deliveries(request: Request, task_id: str) -> Response:
    _key, account = await authenticate(request)
    deliveries = await _service(request).list_for_task(account.id, task_id)
    return json_response({"data": [d.to_public() for d in deliveries], "next_cursor": None})


@router.post("/tasks/{task_id}/deliveries/redeliver", status_code=202,
             responses={**openapi.ok(openapi.ref("Delivery"), 202, "Queued again"), **openapi.errors(409)},
             summary="Send the task's webhook again (same webhook-id, fresh retry schedule)")
async def redeliver(request: Request, task_id: str) -> Response:
    _key, account = await authenticate(request)
    delivery = await _service(request).redeliver(account.id, task_id)
    return json_response(delivery.to_public(), 202)
