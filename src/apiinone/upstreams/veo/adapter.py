"""Veo through the Gemini API.

* ``POST {base}/v1beta/models/{model}:predictLongRunning`` ``{"instances": [{"prompt", "image"?}],
  "parameters": {"aspectRatio", "resolution", "durationSeconds"}}`` → ``{"name": "models/…/operations/…"}``;
* ``GET {base}/v1beta/{name}`` until ``done``; then ``response.generateVideoResponse.generatedSamples[].video.uri``
  (downloaded with the key header; it redirects to the file), or ``error``, or
  ``raiMediaFilteredCount`` when the safety filter removed the video.

``x-goog-api-key: <key>``. Google answers a bad key with 400 ``API_KEY_INVALID`` (and 403
``PERMISSION_DENIED``), both classified as a refused key. The protocol reports no progress and
offers Veo jobs no cancel: a canceled task's operation runs out upstream (nothing is charged here).
"""

from __future__ import annotations

from typing import Any

import httpx

from apiinone.kinds.video.job import JobOutput, JobState, JobStatus, MediaJob, RemoteJob
from apiinone.upstreams.base import (
    ContentPolicyError,
    RouteTarget,
    UpstreamError,
    UpstreamTimeoutError,
    error_for_status,
    retry_after_seconds,
)

DEFAULT_BASE_URL = "https://generativelanguage.googleapis.com"


def error_from_response(response: httpx.Response) -> UpstreamError:
    """Google's ``{"error": {"code", "message", "status", "details"}}``, classified once."""
    try:
        error = response.json().get("error") or {}
    except (ValueError, AttributeError):
        error = {}
    message = str(error.get("message") or response.text[:200] or response.reason_phrase)
    reasons = {str(d.get("reason")) for d in error.get("details") or [] if isinstance(d, dict)}
    if "API_KEY_INVALID" in reasons or error.get("status") == "PERMISSION_DENIED" or response.status_code in (401, 403):
        return UpstreamError(f"upstream refused the API key (HTTP {response.status_code})", key_refused=True,
                             status=response.status_code)
    return error_for_status(response.status_code, message,
                            retry_after_s=retry_after_seconds(response.headers.get("retry-after")))


class VeoAdapter:
    provider = "veo"
    needs_key = True

    def __init__(self, client: httpx.AsyncClient | None = None) -> None:
        self._client = client or httpx.AsyncClient(timeout=httpx.Timeout(60.0, connect=10.0), trust_env=False)

    def _base(self, target: RouteTarget) -> str:
        return (target.base_url or DEFAULT_BASE_URL).rstrip("/")

    def _headers(self, target: RouteTarget) -> dict[str, str]:
        return {"x-goog-api-key": target.api_key or ""}

    async def _send(self, method: str, url: str, target: RouteTarget, **kw: Any) -> httpx.Response:
        try:
            return await self._client.request(method, url, headers=self._headers(target),
                                              timeout=min(target.timeout_s, 60.0), **kw)
        except httpx.TimeoutException:
            raise UpstreamTimeoutError("the Gemini API did not answer in time") from None
        except httpx.HTTPError as exc:
            raise UpstreamError(f"could not reach the Gemini API: {type(exc).__name__}", retryable=True) from None

    async def submit_job(self, target: RouteTarget, job: MediaJob) -> RemoteJob:
        if job.kind != "video":
            raise UpstreamError("Veo makes videos only", code="invalid_parameter")
        instance: dict[str, Any] = {"prompt": job.prompt}
        if job.first_frame_url:
            instance["image"] = {"gcsUri": job.first_frame_url} if job.first_frame_url.startswith("gs://") else \
                await self._inline_image(job.first_frame_url)
        parameters: dict[str, Any] = {"aspectRatio": job.aspect_ratio, "durationSeconds": job.duration_s}
        if job.resolution:
            parameters["resolution"] = job.resolution
        parameters.update(target.options.get("parameters", {}))
        url = f"{self._base(target)}/v1beta/models/{target.upstream_model}:predictLongRunning"
        response = await self._send("POST", url, target, json={"instances": [instance], "parameters": parameters})
        if response.status_code >= 400:
            raise error_from_response(response)
        name = response.json().get("name")
        if not isinstance(name, str) or "/operations/" not in name:
            raise UpstreamError("the Gemini API answered without an operation name", retryable=True)
        return RemoteJob(handle={"operation": name}, poll_after_ms=5000)

    async def _inline_image(self, url: str) -> dict[str, str]:
        """Veo takes the first frame inline; the kind already checked the URL and the image."""
        raise UpstreamError("Veo routes take the first frame as inline bytes; not supported here yet",
                            code="invalid_parameter")

    async def poll_job(self, target: RouteTarget, handle: dict[str, Any]) -> JobStatus:
        name = str(handle["operation"]).lstrip("/")
        response = await self._send("GET", f"{self._base(target)}/v1beta/{name}", target)
        if response.status_code >= 400:
            raise error_from_response(response)
        body = response.json()
        if not body.get("done"):
            return JobStatus(JobState.RUNNING)
        if body.get("error"):
            error = body["error"]
            return JobStatus(JobState.FAILED, error_code="upstream_error",
                             error_message=f"Veo: {error.get('message') or error.get('status') or 'failed'}")
        video = (body.get("response") or {}).get("generateVideoResponse") or {}
        samples = video.get("generatedSamples") or []
        uris = [s.get("video", {}).get("uri") for s in samples if isinstance(s, dict)]
        outputs = tuple(JobOutput(url=u, headers=self._headers(target)) for u in uris if isinstance(u, str))
        if not outputs and video.get("raiMediaFilteredCount"):
            reasons = "; ".join(map(str, video.get("raiMediaFilteredReasons") or []))
            return JobStatus(JobState.FAILED, error_code=ContentPolicyError.code,
                             error_message=f"Veo's safety filter removed the video{': ' + reasons if reasons else ''}")
        return JobStatus(JobState.SUCCEEDED, progress=100, outputs=outputs)

    async def cancel_job(self, target: RouteTarget, handle: dict[str, Any]) -> bool:
        return False  # the Gemini API offers no cancel for Veo operations

    async def aclose(self) -> None:
        await self._client.aclose()


__all__ = ["VeoAdapter", "error_from_response"]
