"""What the video and audio kinds share: submitting a job upstream (failover applies), following
it, and copying its result into storage (streamed, size-capped, type-checked, probed) before the
task succeeds.

A task's ``remote_job`` is ``{"handle": <the adapter's handle>}``; the route it was submitted on is
``tasks.route``, so it is polled and canceled where it runs, from any worker, after any restart.
"""

from __future__ import annotations

import asyncio
import io
from dataclasses import dataclass
from typing import Any

from apiinone.domain.tasks import Task
from apiinone.kinds.base import Deferred, Finished, FollowOutcome, RunContext, RunOutcome, StillRunning, TaskFailure
from apiinone.kinds.video.job import JobOutput, JobState, MediaJob, RemoteJob, RemoteJobAdapter
from apiinone.net.fetch import InputFetchError, fetch_input_image, fetch_result_file, sniff_media_type
from apiinone.storage import new_image_key
from apiinone.upstreams.base import RouteTarget, UpstreamError

MAX_RESULT_BYTES_OPTION = "max_result_bytes"
"""A route option or a ``RunContext.options`` key: the largest result file copied into storage."""
DEFAULT_MAX_RESULT_BYTES = 512 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Probe:
    """What a result file really is, read back with PyAV."""

    width: int | None
    height: int | None
    duration_s: float | None
    thumbnail_png: bytes | None


def probe_media(data: bytes, *, thumbnail: bool) -> Probe:
    """Open the file with PyAV (a result that does not decode is refused), read its size and
    duration, and for a video render its first frame as a PNG thumbnail."""
    import av  # imported on first use: it weighs on an idle server's memory

    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            duration = float(container.duration / 1_000_000) if container.duration else None
            video = container.streams.video[0] if container.streams.video else None
            if video is None:
                if not container.streams.audio:
                    raise ValueError("no audio or video stream")
                return Probe(None, None, duration, None)
            width, height = video.codec_context.width, video.codec_context.height
            if duration is None and video.duration is not None and video.time_base is not None:
                duration = float(video.duration * video.time_base)
            png = None
            if thumbnail:
                for frame in container.decode(video=0):
                    buffer = io.BytesIO()
                    frame.to_image().save(buffer, "PNG", compress_level=3)  # type: ignore[no-untyped-call]
                    png = buffer.getvalue()
                    break
                if png is None:
                    raise ValueError("the video has no frames")
            return Probe(width, height, duration, png)
    except Exception as exc:  # PyAV raises many types on hostile input
        raise InputFetchError("the result is not a playable media file") from exc


class MediaKind:
    """The shared half of ``video`` and ``audio``: the remote-job life cycle."""

    name = "media"
    queued = True
    create_path = ""
    accept: tuple[str, ...] = ()

    def job_for(self, task: Task, upstream_model: str) -> MediaJob:
        raise NotImplementedError

    def output_for(self, task: Task, stored: list[tuple[str, str, Probe]], thumb: tuple[str, Probe] | None,
                   ) -> dict[str, Any]:
        raise NotImplementedError

    async def run(self, ctx: RunContext, task: Task) -> RunOutcome:
        first_frame = (task.input.get("input_urls") or [None])[0]
        if first_frame:
            try:  # the upstream fetches it; we check first that it is a real image we may fetch
                await fetch_input_image(ctx.fetch_client, first_frame)
            except InputFetchError as exc:
                raise TaskFailure("input_fetch_failed", exc.message) from None
        job = self.job_for(task, ctx.spec.upstream_model)

        async def submit(adapter: RemoteJobAdapter, target: RouteTarget) -> RemoteJob:
            if not hasattr(adapter, "submit_job"):
                raise UpstreamError(f"provider {target.provider!r} cannot run {self.name} jobs")
            return await adapter.submit_job(target, job)

        try:
            routed = await asyncio.wait_for(ctx.pool.call(ctx.spec, submit), ctx.timeout_s)
        except TimeoutError:
            raise TaskFailure("timeout", "the upstream did not accept the job in time") from None
        except UpstreamError as exc:
            raise TaskFailure(exc.code, exc.message) from None
        return Deferred(remote_job={"handle": routed.value.handle}, route=routed.route,
                        poll_after_ms=routed.value.poll_after_ms)

    def _route(self, ctx: RunContext, task: Task) -> tuple[RemoteJobAdapter, RouteTarget]:
        found = ctx.pool.target(ctx.spec, task.route or "") if task.route else None
        if found is None:
            raise TaskFailure("upstream_error", f"the route {task.route!r} that runs this job is no longer configured")
        adapter, target = found
        return adapter, target  # type: ignore[return-value]

    async def follow(self, ctx: RunContext, task: Task) -> FollowOutcome:
        adapter, target = self._route(ctx, task)
        handle = (task.remote_job or {}).get("handle") or {}
        try:
            status = await adapter.poll_job(target, handle)
        except UpstreamError as exc:
            if exc.retryable or exc.key_refused:
                raise  # the poller looks again later (a rotated key may be in place by then)
            raise TaskFailure(exc.code, target.redact(exc.message)) from None
        if not status.state.is_terminal:
            return StillRunning(progress=status.progress)
        if status.state is JobState.FAILED:
            raise TaskFailure(status.error_code or "upstream_error",
                              target.redact(status.error_message or "the upstream job failed"))
        if status.state is JobState.CANCELED:
            raise TaskFailure("upstream_error", "the upstream canceled the job")
        if not status.outputs:
            raise TaskFailure("upstream_error", "the upstream job succeeded without a result")
        try:
            return Finished(output=await self._store(ctx, task, target, status.outputs), route=task.route)
        except InputFetchError as exc:
            raise TaskFailure("upstream_error", target.redact(exc.message)) from None

    async def _store(self, ctx: RunContext, task: Task, target: RouteTarget,
                     outputs: tuple[JobOutput, ...]) -> dict[str, Any]:
        cap = int(target.options.get(MAX_RESULT_BYTES_OPTION) or ctx.options.get(MAX_RESULT_BYTES_OPTION)
                  or DEFAULT_MAX_RESULT_BYTES)
        stored: list[tuple[str, str, Probe]] = []
        thumb: tuple[str, Probe] | None = None
        for output in outputs[:4]:
            if output.data is not None:
                data, content_type = output.data, sniff_media_type(output.data[:16]) or ""
                if content_type not in self.accept:
                    raise InputFetchError(f"the result is not one of {', '.join(self.accept)}")
                if len(data) > cap:
                    raise InputFetchError(f"the result is larger than {cap} bytes")
            elif output.url:
                data, content_type = await fetch_result_file(ctx.fetch_client, output.url, accept=self.accept,
                                                             headers=output.headers, max_bytes=cap)
            else:
                continue
            probe = await asyncio.to_thread(probe_media, data, thumbnail=self.name == "video" and thumb is None)
            key = new_image_key(content_type)
            await ctx.storage.put(key, data, content_type)
            stored.append((ctx.file_url(key), content_type, probe))
            if probe.thumbnail_png is not None and thumb is None:
                thumb_key = new_image_key("image/png")
                await ctx.storage.put(thumb_key, probe.thumbnail_png, "image/png")
                thumb = (ctx.file_url(thumb_key), probe)
        if not stored:
            raise InputFetchError("the upstream job succeeded without a downloadable result")
        return self.output_for(task, stored, thumb)

    async def cancel_remote(self, ctx: RunContext, task: Task) -> bool:
        try:
            adapter, target = self._route(ctx, task)
        except TaskFailure:
            return False
        handle = (task.remote_job or {}).get("handle") or {}
        try:
            return await adapter.cancel_job(target, handle)
        except UpstreamError:
            return False


def whole_seconds(value: float | None, fallback: int | None) -> float | int | None:
    """A duration as the API shows it: whole seconds when it is (within a frame) whole."""
    if value is None:
        return fallback
    rounded = round(value)
    return int(rounded) if abs(value - rounded) < 0.05 else round(value, 3)
