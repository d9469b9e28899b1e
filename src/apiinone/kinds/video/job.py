"""A media job (video or audio) as upstream adapters receive it, and the remote-job capability.

Video and music models render for minutes, so their protocols are asynchronous: submit a job, poll
its status, fetch the result, cancel it. An adapter maps one vendor's protocol onto these three
calls and classifies its failures as :class:`~apiinone.upstreams.base.UpstreamError`; the kind and
the remote-job poller do everything else (storage, progress, credits). The video and audio kinds
share this protocol.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from apiinone.upstreams.base import RouteTarget

__all__ = ["VIDEO_SIZES", "JobOutput", "JobState", "JobStatus", "MediaJob", "RemoteJob", "RemoteJobAdapter"]

VIDEO_SIZES: dict[str, dict[str, tuple[int, int]]] = {
    "480p": {"16:9": (854, 480), "9:16": (480, 854), "1:1": (480, 480)},
    "720p": {"16:9": (1280, 720), "9:16": (720, 1280), "1:1": (720, 720)},
    "1080p": {"16:9": (1920, 1080), "9:16": (1080, 1920), "1:1": (1080, 1080)},
}


@dataclass(frozen=True, slots=True)
class MediaJob:
    """What to render. ``first_frame_url`` is the user's image URL (already egress-checked)."""

    kind: str  # "video" | "audio"
    prompt: str
    upstream_model: str
    duration_s: int | None = None
    aspect_ratio: str | None = None
    resolution: str | None = None
    first_frame_url: str | None = None
    lyrics: str | None = None
    instrumental: bool | None = None
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def size(self) -> tuple[int, int] | None:
        if self.resolution is None or self.aspect_ratio is None:
            return None
        return VIDEO_SIZES.get(self.resolution, {}).get(self.aspect_ratio)


@dataclass(frozen=True, slots=True)
class RemoteJob:
    """The upstream's handle of a submitted job: JSON that goes into ``tasks.remote_job``."""

    handle: dict[str, Any]
    poll_after_ms: int = 1000


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def is_terminal(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELED)


@dataclass(frozen=True, slots=True)
class JobOutput:
    """One result file: a URL to download (with the headers it needs, never stored), or bytes an
    in-process renderer made."""

    url: str | None = None
    content_type: str | None = None
    data: bytes | None = field(default=None, repr=False)
    headers: dict[str, str] = field(default_factory=dict, repr=False)


@dataclass(frozen=True, slots=True)
class JobStatus:
    state: JobState
    progress: int | None = None
    outputs: tuple[JobOutput, ...] = ()
    error_code: str | None = None
    error_message: str | None = None


class RemoteJobAdapter(Protocol):
    """Submits, polls and cancels jobs on one route. Must be safe to call concurrently; raises
    :class:`~apiinone.upstreams.base.UpstreamError` (classified) on failures."""

    provider: str
    needs_key: bool

    async def submit_job(self, target: RouteTarget, job: MediaJob) -> RemoteJob: ...

    async def poll_job(self, target: RouteTarget, handle: dict[str, Any]) -> JobStatus: ...

    async def cancel_job(self, target: RouteTarget, handle: dict[str, Any]) -> bool:
        """Ask the upstream to stop the job; False where the protocol cannot."""
        ...

    async def aclose(self) -> None: ...


def percent_in(text: str | None) -> int | None:
    """The last ``NN%`` in a log (fal runner logs, Replicate's tqdm bars), as 0-100."""
    import re

    if not text:
        return None
    found = re.findall(r"(\d{1,3})(?:\.\d+)?\s?%", text[-4000:])
    for value in reversed(found):
        if 0 <= int(value) <= 100:
            return int(value)
    return None
