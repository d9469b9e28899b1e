"""Live task status over HTTP: ``GET /api/v1/tasks/{id}/events`` (Server-Sent Events) and the
``Prefer: wait=N`` header of the create route."""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson
from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from apiinone.params import MAX_INT64, parse_int
from apiinone.services.events import TaskEvent
from apiinone.web import openapi
from apiinone.web.deps import authenticate, base_url_of, container_of

router = APIRouter(prefix="/api/v1")

MAX_WAIT_S = 60
_SSE_EVENT = {  # one event of the stream (schema per event, as for OpenAPI 3.2's itemSchema)
    "type": "object", "required": ["event", "data"],
    "properties": {"id": {"type": "string", "pattern": "^[0-9]+$"},
                   "event": {"enum": ["queued", "running", "succeeded", "failed", "canceled"]},
                   "data": {"type": "string", "contentMediaType": "application/json"},
                   "retry": {"type": "integer"}},
}
RECONNECT_MS = 2000


def prefer_wait(header: str | None) -> int | None:
    """Seconds asked for by ``Prefer: wait=N`` (RFC 7240), capped at 60; None if not asked.

    Other preferences in the header are ignored; a ``wait`` that is not a whole number of seconds
    in ASCII digits is a 400 (``param`` ``Prefer``). Call it before any work is accepted."""
    if not header:
        return None
    for preference in header.split(","):
        name, _, value = preference.split(";", 1)[0].partition("=")
        if name.strip().lower() == "wait":
            seconds = parse_int(value.strip().strip('"'), "Prefer", low=0, high=MAX_INT64, name="Prefer: wait")
            return min(seconds, MAX_WAIT_S) or None
    return None


def last_event_id(request: Request) -> int:
    """The last event a reconnecting client saw (``Last-Event-ID``, or ``?last_event_id=``); 0 if none."""
    header = request.headers.get("last-event-id")
    if header is not None and header.strip():
        return parse_int(header.strip(), "Last-Event-ID", low=0, high=MAX_INT64)
    query = request.query_params.get("last_event_id")
    if query:
        return parse_int(query, "last_event_id", low=0, high=MAX_INT64)
    return 0


def format_sse(event: TaskEvent | None) -> bytes:
    if event is None:
        return b": keep-alive\n\n"
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (event.id, event.event.encode(), orjson.dumps(event.data))


@router.get("/tasks/{task_id}/events", summary="Stream a task's status changes (Server-Sent Events)",
            response_class=StreamingResponse,
            responses=openapi.ok(_SSE_EVENT, 200,
                                 "queued, running, then the terminal status with the task object",
                                 "text/event-stream"),
            openapi_extra={"parameters": [
                openapi.header("Last-Event-ID", {"type": "string", "pattern": "^[0-9]{1,18}$"},
                               "Resume after this event"),
                openapi.query("last_event_id", {"type": "string", "pattern": "^[0-9]{1,18}$"},
                              "Resume after this event, where headers cannot be set")]})
async def task_events(request: Request, task_id: str) -> Response:
    """Events ``queued`` (id 1), ``running`` (id 2) and the terminal status (id 3, data = the task
    object); the stream ends after the terminal event. Send ``Last-Event-ID`` (or
    ``?last_event_id=`` where headers cannot be set) to resume after a disconnect."""
    _key, account = await authenticate(request)
    events = container_of(request).task_events
    after = last_event_id(request)
    await events.read(account.id, task_id)  # 404 as JSON, before the stream starts
    base = base_url_of(request)

    async def body() -> AsyncIterator[bytes]:
        yield b"retry: %d\n\n" % RECONNECT_MS
        async for event in events.stream(account.id, task_id, base, after=after):
            if event is None and await request.is_disconnected():
                return
            yield format_sse(event)

    return StreamingResponse(body(), media_type="text/event-stream", headers={
        "Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
