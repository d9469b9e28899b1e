"""Operations: liveness, readiness, Prometheus metrics, and the stored images."""

from __future__ import annotations

import re

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from apiinone.errors import NotFound, ServiceUnavailable
from apiinone.storage.filesystem import validate_key
from apiinone.storage.s3 import S3Storage
from apiinone.web.deps import container_of
from apiinone.web.responses import json_response

router = APIRouter()
_KEY = re.compile(r"^[A-Za-z0-9_\-/.]{8,200}$")


@router.get("/healthz", include_in_schema=False)
async def healthz() -> Response:
    return json_response({"status": "ok"})


@router.get("/readyz", include_in_schema=False)
async def readyz(request: Request) -> Response:
    try:
        await container_of(request).db.ping()
    except Exception as exc:
        raise ServiceUnavailable("database is not reachable") from exc
    return json_response({"status": "ready"})


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    from apiinone.telemetry.metrics import refresh_gauges

    container = container_of(request)
    states = {(spec.id, route.name): container.breakers.state(spec.id, route.name).value
              for spec in container.catalog.models.values() for route in spec.effective_routes()}
    try:
        counts = await container.tasks.unfinished_counts()
    except Exception:  # the database is down: the process's own series still answer
        counts = {}
    refresh_gauges(states, counts.get("queued", 0), counts.get("running", 0))
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


@router.get("/files/{key:path}", include_in_schema=False)
async def get_file(request: Request, key: str) -> Response:
    """Images are public by unguessable key: 192 random bits, immutable, cacheable forever."""
    try:  # any key the storage would refuse (absolute, dot segments, sidecars) is simply unknown
        validate_key(key)
    except ValueError:
        raise NotFound("file not found") from None
    if not _KEY.match(key):
        raise NotFound("file not found")
    storage = container_of(request).storage
    if isinstance(storage, S3Storage) and storage.presign_s > 0:  # the bytes come straight from the bucket
        return RedirectResponse(storage.presigned_url(key), status_code=307,
                                headers={"Cache-Control": f"private, max-age={storage.presign_s // 2}"})
    obj = await storage.get(key)
    if obj is None:
        raise NotFound("file not found")
    return Response(obj.data, media_type=obj.content_type, headers={
        "Cache-Control": "public, max-age=31536000, immutable",
        "X-Content-Type-Options": "nosniff",
    })
