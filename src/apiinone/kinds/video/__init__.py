"""Videos: queued tasks priced per second of output by resolution (``{"per_second": {"720p": 10}}``).

The job runs upstream for minutes: ``run`` submits it (with failover) and defers; the remote-job
poller follows it (see :mod:`.media`) and stores the MP4 and a thumbnail before the task succeeds.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from apiinone.domain.catalog import ModelSpec
from apiinone.domain.credits import credits_to_ucr
from apiinone.domain.tasks import MAX_PROMPT_CHARS, Task
from apiinone.errors import InvalidParameter
from apiinone.kinds.base import require_price
from apiinone.kinds.video.job import VIDEO_SIZES, MediaJob
from apiinone.kinds.video.media import MediaKind, Probe, whole_seconds

VIDEO_ASPECT_RATIOS = ("16:9", "9:16", "1:1")


class VideoKind(MediaKind):
    name = "video"
    queued = True
    create_path = "/api/v1/videos/generations"
    accept = ("video/mp4", "video/webm", "video/quicktime")

    def validate_pricing(self, spec: ModelSpec) -> None:
        per_second = spec.pricing.get("per_second")
        if not isinstance(per_second, dict) or not per_second or set(spec.pricing) != {"per_second"}:
            raise ValueError('a video model needs pricing = {per_second = {"720p" = 10, ...}}')
        for resolution, price in per_second.items():
            if resolution not in VIDEO_SIZES:
                raise ValueError(f"pricing.per_second key {resolution!r} is not a resolution "
                                 f"({', '.join(VIDEO_SIZES)})")
            require_price(price, f"pricing.per_second.{resolution}", whole=True)
        if not spec.durations or any(not isinstance(d, int) or isinstance(d, bool) or d <= 0 for d in spec.durations):
            raise ValueError("a video model needs durations, a list of whole seconds (e.g. [4, 8])")

    def resolutions(self, spec: ModelSpec) -> list[str]:
        """Cheapest first (the default)."""
        per_second: dict[str, Any] = spec.pricing["per_second"]
        return sorted(per_second, key=lambda r: (Decimal(str(per_second[r])), list(VIDEO_SIZES).index(r)))

    def prepare(self, spec: ModelSpec, fields: dict[str, Any]) -> tuple[dict[str, Any], int]:
        """The task input with defaults filled in, and its price in µcr; InvalidParameter names what is wrong."""
        durations = list(spec.durations)
        duration = fields.get("duration_s")
        if duration is None:
            duration = durations[0]
        if duration not in durations:
            raise InvalidParameter(f"duration_s must be one of {', '.join(map(str, durations))}", param="duration_s")
        resolutions = self.resolutions(spec)
        resolution = fields.get("resolution") or resolutions[0]
        if resolution not in resolutions:
            raise InvalidParameter(f"resolution must be one of {', '.join(resolutions)}", param="resolution")
        aspect = fields.get("aspect_ratio") or "16:9"
        width, height = VIDEO_SIZES[resolution][aspect]
        task_input = {"prompt": fields["prompt"], "duration_s": duration, "aspect_ratio": aspect,
                      "resolution": resolution, "width": width, "height": height,
                      "input_urls": list(fields.get("input_urls") or [])}
        price = credits_to_ucr(spec.pricing["per_second"][resolution]) * duration
        return task_input, price

    def parameters_schema(self, spec: ModelSpec) -> dict[str, Any]:
        per_second = spec.pricing.get("per_second") or {}
        resolutions = self.resolutions(spec)
        return {
            "type": "object", "additionalProperties": False, "required": ["model", "prompt"],
            "properties": {
                "model": {"type": "string", "enum": [spec.id, *spec.aliases]},
                "prompt": {"type": "string", "minLength": 1, "maxLength": MAX_PROMPT_CHARS,
                           "description": "What the video shows"},
                "duration_s": {"type": "integer", "enum": list(spec.durations),
                               "default": spec.durations[0] if spec.durations else None,
                               "description": "Length of the video in seconds"},
                "aspect_ratio": {"type": "string", "enum": list(VIDEO_ASPECT_RATIOS), "default": "16:9"},
                "resolution": {"type": "string", "enum": resolutions,
                               "default": resolutions[0] if resolutions else None,
                               "description": "Resolution: " + ", ".join(
                                   f'"{r}" ({per_second[r]} credits per second)' for r in resolutions)},
                "input_urls": {"type": "array", "minItems": 1, "maxItems": 1,
                               "items": {"type": "string", "format": "uri"},
                               "description": "One image URL: the first frame (image-to-video)"},
                "callback_url": {"type": "string", "format": "uri",
                                 "description": "Webhook URL notified when the task ends"},
            },
        }

    def job_for(self, task: Task, upstream_model: str) -> MediaJob:
        i = task.input
        return MediaJob(kind="video", prompt=i["prompt"], upstream_model=upstream_model,
                        duration_s=int(i["duration_s"]), aspect_ratio=i["aspect_ratio"], resolution=i["resolution"],
                        first_frame_url=(i.get("input_urls") or [None])[0])

    def output_for(self, task: Task, stored: list[tuple[str, str, Probe]], thumb: tuple[str, Probe] | None,
                   ) -> dict[str, Any]:
        videos = [{"url": url, "content_type": ctype,
                   "width": probe.width or task.input["width"], "height": probe.height or task.input["height"],
                   "duration_s": whole_seconds(probe.duration_s, task.input["duration_s"])}
                  for url, ctype, probe in stored]
        output: dict[str, Any] = {"videos": videos}
        if thumb is not None:
            url, probe = thumb
            output["thumbnail"] = {"url": url, "content_type": "image/png",
                                   "width": probe.width, "height": probe.height}
        return output


KIND = VideoKind()
