"""``local-slideshow``: the embedded offline placeholder video model.

This is NOT an AI model. It typesets the prompt with the ``local-typeset`` drawing code, then
encodes a real H.264 MP4 (PyAV, which ships its own codecs) of the requested size and duration:
a slow pan and zoom over the picture, a progress bar, and a footer that says what it is. It runs
on the remote-job path like any upstream (submit → poll → result), so a fresh install exercises
the same code a fal or Replicate route does; the "upstream" is this process, and the job is
rendered at its first poll (deterministic, so a restart renders the same video again).
"""

from __future__ import annotations

import asyncio
import io
from fractions import Fraction
from typing import Any

from PIL import Image, ImageDraw

from apiinone.kinds.image.job import ImageJob
from apiinone.kinds.video.job import VIDEO_SIZES, JobOutput, JobState, JobStatus, MediaJob, RemoteJob
from apiinone.upstreams.base import RouteTarget, UpstreamError
from apiinone.upstreams.local_typeset.typeset import _cover, _discover_fonts, _Fonts, _load_font, _render

__all__ = ["FOOTER_TEXT", "FPS", "LocalSlideshowProvider", "render_mp4"]

FPS = 12
FOOTER_TEXT = "local-slideshow · not an AI model"
MAX_DURATION_S = 60
_ZOOM = 1.12


def _base_aspect(width: int, height: int) -> str:
    ratio = width / height
    return "3:2" if ratio > 1.2 else "2:3" if ratio < 0.83 else "1:1"


def render_mp4(prompt: str, width: int, height: int, duration_s: int, fonts: _Fonts | None = None) -> bytes:
    """A real MP4 (H.264, yuv420p, FPS frames a second) of exactly ``duration_s`` seconds."""
    import av

    fonts = fonts or _Fonts(*_discover_fonts())
    picture = _render(ImageJob(prompt=prompt, aspect_ratio=_base_aspect(width, height), quality="medium",
                               upstream_model="local-slideshow"), 0, fonts, (), 1)
    big = (round(width * _ZOOM) // 2 * 2, round(height * _ZOOM) // 2 * 2)
    canvas = _cover(picture.convert("RGB"), big, Image.Resampling.BILINEAR)
    short = min(width, height)
    footer_size = max(10, round(short * 0.03))
    footer_font = _load_font(fonts.latin, footer_size)
    frames = duration_s * FPS
    out = io.BytesIO()
    with av.open(out, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p"
        stream.time_base = Fraction(1, FPS)
        stream.options = {"preset": "ultrafast", "crf": "30", "tune": "stillimage"}
        for index in range(frames):
            t = index / max(1, frames - 1)
            left = round((big[0] - width) * t)
            top = round((big[1] - height) * (1 - t))
            frame_image = canvas.crop((left, top, left + width, top + height))
            draw = ImageDraw.Draw(frame_image, "RGBA")
            bar_h = max(4, round(short * 0.012))
            draw.rectangle((0, height - bar_h, width, height), fill=(0, 0, 0, 120))
            draw.rectangle((0, height - bar_h, round(width * (index + 1) / frames), height), fill=(255, 255, 255, 220))
            label_w = footer_font.getlength(FOOTER_TEXT)
            pad = round(footer_size * 0.4)
            y = height - bar_h - footer_size - 3 * pad
            draw.rectangle((0, y - pad, width, height - bar_h), fill=(0, 0, 0, 150))
            draw.text((round((width - label_w) / 2), y), FOOTER_TEXT, font=footer_font, fill=(255, 255, 255, 235))
            frame = av.VideoFrame.from_image(frame_image)  # type: ignore[no-untyped-call]
            frame.pts = index
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return out.getvalue()


class LocalSlideshowProvider:
    """Offline placeholder video "model" behind the remote-job protocol. Not an AI model."""

    provider = "local-slideshow"
    needs_key = False

    def __init__(self) -> None:
        self._fonts = _Fonts(*_discover_fonts())

    async def submit_job(self, target: RouteTarget, job: MediaJob) -> RemoteJob:
        if job.kind != "video":
            raise UpstreamError("local-slideshow makes videos only", code="invalid_parameter")
        size = job.size or VIDEO_SIZES["720p"]["16:9"]
        duration = int(job.duration_s or 2)
        if not 1 <= duration <= MAX_DURATION_S:
            raise UpstreamError(f"duration must be 1 to {MAX_DURATION_S} seconds", code="invalid_parameter")
        handle = {"prompt": job.prompt, "width": size[0], "height": size[1], "duration_s": duration}
        return RemoteJob(handle=handle, poll_after_ms=0)

    async def poll_job(self, target: RouteTarget, handle: dict[str, Any]) -> JobStatus:
        try:
            data = await asyncio.to_thread(render_mp4, str(handle["prompt"]), int(handle["width"]),
                                           int(handle["height"]), int(handle["duration_s"]), self._fonts)
        except (KeyError, ValueError, TypeError) as exc:
            raise UpstreamError(f"unreadable local-slideshow job: {exc}") from None
        return JobStatus(state=JobState.SUCCEEDED, progress=100,
                         outputs=(JobOutput(content_type="video/mp4", data=data),))

    async def cancel_job(self, target: RouteTarget, handle: dict[str, Any]) -> bool:
        return True  # nothing runs between polls: there is nothing left to stop

    async def aclose(self) -> None:
        """No connections, no background tasks."""
