"""Replicate's predictions protocol.

* ``POST {base}/v1/models/{owner}/{name}/predictions`` ``{"input": {...}}`` (official models), or
  ``POST {base}/v1/predictions`` ``{"version", "input"}`` when ``upstream_model`` is
  ``owner/name:version``; ``Prefer: wait=N`` lets a quick model answer in the create call;
* ``GET {base}/v1/predictions/{id}`` → ``status`` ``starting`` / ``processing`` / ``succeeded`` /
  ``failed`` / ``canceled``, ``logs`` (tqdm bars: progress is read from them), ``output`` (file URL(s));
* ``POST {base}/v1/predictions/{id}/cancel``.

``Authorization: Bearer <token>``. Replicate's webhooks are optional; polling is what we rely on.
"""

from __future__ import annotations

from typing import Any

import httpx

from apiinone.kinds.video.job import JobOutput, JobState, JobStatus, MediaJob, RemoteJob, percent_in
from apiinone.upstreams.base import (
    RouteTarget,
    UpstreamError,
    UpstreamTimeoutError,
    error_for_status,
    retry_after_seconds,
)

DEFAULT_BASE_URL = "https://api.replicate.com"
PREFER_WAIT_S = 1
"""Seconds the create call may wait for a quick model (Replicate allows 1-60); short, since a
worker slot is held meanwhile."""


def error_from_response(response: httpx.Response) -> UpstreamError:
    """Replicate's failures (``{"title", "detail", "status"}``), classified once."""
    try:
        body = response.json()
        message = str(body.get("detail") or body.get("title") or "")
    except (ValueError, AttributeError):
        message = response.text[:200]
    error = error_for_status(response.status_code, message or response.reason_phrase,
                             retry_after_s=retry_after_seconds(response.headers.get("retry-after")))
    if response.status_code == 422:
        error.retryable = False
    return error


class ReplicateAdapter:
    provider = "replicate"
    needs_key = True

    def __init__(self, client: httpx.AsyncClient | None = None) -> None:
        self._client = client or httpx.AsyncClient(timeout=httpx.Timeout(90.0, connect=10.0), trust_env=False)

    def _base(self, target: RouteTarget) -> str:
        return (target.base_url or DEFAULT_BASE_URL).rstrip("/")

    async def _send(self, method: str, url: str, target: RouteTarget, **kw: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {target.api_key or ''}", "Accept": "application/json",
                   **kw.pop("headers", {})}
        try:
            return await self._client.request(method, url, headers=headers, timeout=min(target.timeout_s, 90.0), **kw)
        except httpx.TimeoutException:
            raise UpstreamTimeoutError("Replicate did not answer in time") from None
        except httpx.HTTPError as exc:
            raise UpstreamError(f"could not reach Replicate: {type(exc).__name__}", retryable=True) from None

    def input_for(self, job: MediaJob, target: RouteTarget) -> dict[str, Any]:
        body: dict[str, Any] = {"prompt": job.prompt}
        if job.kind == "video":
            body |= {"aspect_ratio": job.aspect_ratio, "duration": job.duration_s}
            if job.resolution:
                body["resolution"] = job.resolution
            if job.first_frame_url:
                body["image"] = job.first_frame_url
        else:
            body["duration"] = job.duration_s
            if job.lyrics:
                body["lyrics"] = job.lyrics
            if job.instrumental:
                body["instrumental"] = True
        body.update(target.options.get("input", {}))
        return body

    async def submit_job(self, target: RouteTarget, job: MediaJob) -> RemoteJob:
        model, _, version = target.upstream_model.partition(":")
        payload: dict[str, Any] = {"input": self.input_for(job, target)}
        if version:
            url = f"{self._base(target)}/v1/predictions"
            payload["version"] = version
        else:
            url = f"{self._base(target)}/v1/models/{model}/predictions"
        response = await self._send("POST", url, target, json=payload, headers={"Prefer": f"wait={PREFER_WAIT_S}"})
        if response.status_code >= 400:
            raise error_from_response(response)
        try:
            prediction_id = str(response.json()["id"])
        except (ValueError, KeyError, TypeError):
            raise UpstreamError("Replicate answered the create without a prediction id", retryable=True) from None
        return RemoteJob(handle={"id": prediction_id}, poll_after_ms=2000)

    async def poll_job(self, target: RouteTarget, handle: dict[str, Any]) -> JobStatus:
        response = await self._send("GET", f"{self._base(target)}/v1/predictions/{handle['id']}", target)
        if response.status_code >= 400:
            raise error_from_response(response)
        return status_of(response.json())

    async def cancel_job(self, target: RouteTarget, handle: dict[str, Any]) -> bool:
        response = await self._send("POST", f"{self._base(target)}/v1/predictions/{handle['id']}/cancel", target)
        if response.status_code >= 400:
            raise error_from_response(response)
        return bool(response.json().get("status") == "canceled")

    async def aclose(self) -> None:
        await self._client.aclose()


def status_of(prediction: dict[str, Any]) -> JobStatus:
    status = prediction.get("status")
    progress = percent_in(prediction.get("logs"))
    if status == "starting":
        return JobStatus(JobState.QUEUED)
    if status == "processing":
        return JobStatus(JobState.RUNNING, progress=progress)
    if status == "canceled":
        return JobStatus(JobState.CANCELED)
    if status == "failed":
        error = str(prediction.get("error") or "the prediction failed")
        code = "content_policy" if "nsfw" in error.lower() or "safety" in error.lower() else "upstream_error"
        return JobStatus(JobState.FAILED, error_code=code, error_message=f"Replicate: {error}")
    if status == "succeeded":
        output = prediction.get("output")
        items = output if isinstance(output, list) else [output]
        urls = [u for u in items if isinstance(u, str) and u.startswith(("http://", "https://"))]
        return JobStatus(JobState.SUCCEEDED, progress=100, outputs=tuple(JobOutput(url=u) for u in urls))
    raise UpstreamError(f"Replicate answered an unknown status {status!r}", retryable=True)
