"""fal's queue protocol.

* ``POST {base}/{model_id}`` with the model's input → ``{"request_id", "status_url", "response_url",
  "cancel_url"}``;
* ``GET {base}/{owner}/{alias}/requests/{id}/status?logs=1`` → ``IN_QUEUE`` / ``IN_PROGRESS`` /
  ``COMPLETED`` (with ``error`` when the run failed), plus runner logs (progress is read from them);
* ``GET {base}/{owner}/{alias}/requests/{id}`` → the model's output (``video``/``audio`` file URLs);
* ``PUT {base}/{owner}/{alias}/requests/{id}/cancel`` → 202, or 400 ``ALREADY_COMPLETED``.

Status and result live under the app id without its sub-path (``fal-ai/kling-video``), as fal's
own clients build them. ``Authorization: Key <key>``.
"""

from __future__ import annotations

from typing import Any

import httpx
import orjson

from apiinone.kinds.video.job import JobOutput, JobState, JobStatus, MediaJob, RemoteJob, percent_in
from apiinone.upstreams.base import (
    RouteTarget,
    UpstreamError,
    UpstreamTimeoutError,
    error_for_status,
    retry_after_seconds,
)

DEFAULT_BASE_URL = "https://queue.fal.run"


def error_from_response(response: httpx.Response) -> UpstreamError:
    """fal's failures, classified once: 401/403 key refused; 429/5xx retryable; 4xx refused."""
    try:
        detail: Any = response.json().get("detail")
    except (ValueError, AttributeError):
        detail = None
    if isinstance(detail, list):
        detail = "; ".join(str(d.get("msg", d)) if isinstance(d, dict) else str(d) for d in detail)
    message = str(detail or response.text[:200] or response.reason_phrase)
    error = error_for_status(response.status_code, message,
                             retry_after_s=retry_after_seconds(response.headers.get("retry-after")))
    if response.status_code == 422 or "content policy" in message.lower() or "nsfw" in message.lower():
        error.retryable = False
        if "nsfw" in message.lower() or "content policy" in message.lower():
            error.code = "content_policy"
    return error


def _app_id(model_id: str) -> str:
    parts = model_id.strip("/").split("/")
    return "/".join(parts[:2]) if len(parts) >= 2 else model_id


class FalAdapter:
    provider = "fal"
    needs_key = True

    def __init__(self, client: httpx.AsyncClient | None = None) -> None:
        self._client = client or httpx.AsyncClient(timeout=httpx.Timeout(60.0, connect=10.0), trust_env=False)

    def _base(self, target: RouteTarget) -> str:
        return (target.base_url or DEFAULT_BASE_URL).rstrip("/")

    def _headers(self, target: RouteTarget) -> dict[str, str]:
        return {"Authorization": f"Key {target.api_key or ''}", "Accept": "application/json"}

    async def _send(self, method: str, url: str, target: RouteTarget, *,
                    extra_headers: dict[str, str] | None = None, **kw: Any) -> httpx.Response:
        try:
            return await self._client.request(method, url, headers=self._headers(target) | (extra_headers or {}),
                                              timeout=min(target.timeout_s, 60.0), **kw)
        except httpx.TimeoutException:
            raise UpstreamTimeoutError("fal did not answer in time") from None
        except httpx.HTTPError as exc:
            raise UpstreamError(f"could not reach fal: {type(exc).__name__}", retryable=True) from None

    def input_for(self, job: MediaJob, target: RouteTarget) -> dict[str, Any]:
        body: dict[str, Any] = {"prompt": job.prompt}
        if job.kind == "video":
            body |= {"duration": str(job.duration_s), "aspect_ratio": job.aspect_ratio}
            if job.resolution:
                body["resolution"] = job.resolution
            if job.first_frame_url:
                body["image_url"] = job.first_frame_url
        else:
            if job.lyrics:
                body["lyrics_prompt"] = job.lyrics
            if job.duration_s:
                body["duration"] = job.duration_s
            if job.instrumental:
                body["instrumental"] = True
        body.update(target.options.get("input", {}))
        return body

    async def submit_job(self, target: RouteTarget, job: MediaJob) -> RemoteJob:
        model = target.upstream_model.strip("/")
        response = await self._send("POST", f"{self._base(target)}/{model}", target,
                                    content=orjson.dumps(self.input_for(job, target)),
                                    extra_headers={"Content-Type": "application/json"})
        if response.status_code >= 400:
            raise error_from_response(response)
        try:
            request_id = str(response.json()["request_id"])
        except (ValueError, KeyError, TypeError):
            raise UpstreamError("fal answered the submit without a request_id", retryable=True) from None
        return RemoteJob(handle={"request_id": request_id, "app": _app_id(model)}, poll_after_ms=2000)

    def _request_url(self, target: RouteTarget, handle: dict[str, Any]) -> str:
        return f"{self._base(target)}/{handle['app']}/requests/{handle['request_id']}"

    async def poll_job(self, target: RouteTarget, handle: dict[str, Any]) -> JobStatus:
        url = self._request_url(target, handle)
        response = await self._send("GET", f"{url}/status", target, params={"logs": "1"})
        if response.status_code >= 400:
            raise error_from_response(response)
        body = response.json()
        status = body.get("status")
        logs = body.get("logs") or []
        progress = percent_in("\n".join(str(item.get("message", "")) for item in logs if isinstance(item, dict)))
        if status == "IN_QUEUE":
            return JobStatus(JobState.QUEUED)
        if status == "IN_PROGRESS":
            return JobStatus(JobState.RUNNING, progress=progress)
        if status != "COMPLETED":
            raise UpstreamError(f"fal answered an unknown status {status!r}", retryable=True)
        if body.get("error"):
            canceled = body.get("error_type") == "request_cancelled"
            return JobStatus(JobState.CANCELED if canceled else JobState.FAILED,
                             error_code="upstream_error", error_message=f"fal: {body['error']}")
        result = await self._send("GET", url, target)
        if result.status_code >= 400:
            error = error_from_response(result)
            if error.retryable and result.status_code != 500:
                raise error
            return JobStatus(JobState.FAILED, error_code=error.code, error_message=error.message)
        return JobStatus(JobState.SUCCEEDED, progress=100, outputs=tuple(_files(result.json())))

    async def cancel_job(self, target: RouteTarget, handle: dict[str, Any]) -> bool:
        response = await self._send("PUT", f"{self._request_url(target, handle)}/cancel", target)
        if response.status_code in (200, 202):
            return True
        if response.status_code == 400:
            return False  # ALREADY_COMPLETED
        raise error_from_response(response)

    async def aclose(self) -> None:
        await self._client.aclose()


def _files(result: Any) -> list[JobOutput]:
    """The result files of a fal model's output: ``video``, ``videos``, ``audio``, ``audio_file``."""
    found: list[JobOutput] = []
    if not isinstance(result, dict):
        return found
    for key in ("video", "videos", "audio", "audio_file", "audio_url"):
        value = result.get(key)
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, dict) and isinstance(item.get("url"), str):
                found.append(JobOutput(url=item["url"], content_type=item.get("content_type")))
            elif isinstance(item, str) and item.startswith(("http://", "https://")):
                found.append(JobOutput(url=item))
    return found
