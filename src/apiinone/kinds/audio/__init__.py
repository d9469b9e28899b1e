"""Audio (music, sound): queued tasks priced per request (``{"per_request": 8}``) or per second
(``{"per_second": 1}`` × ``duration_s``). Same remote-job life cycle as videos (:mod:`apiinone.kinds.video.media`)."""

from __future__ import annotations

from typing import Any

from apiinone.domain.catalog import ModelSpec
from apiinone.domain.credits import credits_to_ucr
from apiinone.domain.tasks import MAX_PROMPT_CHARS, Task
from apiinone.errors import InvalidParameter
from apiinone.kinds.base import require_price
from apiinone.kinds.video.job import MediaJob
from apiinone.kinds.video.media import MediaKind, Probe, whole_seconds

MAX_LYRICS_CHARS = 5000
DEFAULT_AUDIO_DURATION_S = 30


class AudioKind(MediaKind):
    name = "audio"
    queued = True
    create_path = "/api/v1/audio/generations"
    accept = ("audio/mpeg", "audio/wav", "audio/mp4", "audio/ogg", "audio/flac")

    def validate_pricing(self, spec: ModelSpec) -> None:
        if set(spec.pricing) not in ({"per_request"}, {"per_second"}):
            raise ValueError("an audio model needs pricing = {per_request = 8} or {per_second = 1}")
        for key, price in spec.pricing.items():
            require_price(price, f"pricing.{key}", whole=True)
        if any(not isinstance(d, int) or isinstance(d, bool) or d <= 0 for d in spec.durations):
            raise ValueError("durations must be whole seconds")

    def durations(self, spec: ModelSpec) -> list[int]:
        return list(spec.durations) or [DEFAULT_AUDIO_DURATION_S]

    def prepare(self, spec: ModelSpec, fields: dict[str, Any]) -> tuple[dict[str, Any], int]:
        durations = self.durations(spec)
        duration = fields.get("duration_s")
        if duration is None:
            duration = durations[0]
        if spec.durations and duration not in durations:
            raise InvalidParameter(f"duration_s must be one of {', '.join(map(str, durations))}", param="duration_s")
        if not spec.durations and not 1 <= duration <= 600:
            raise InvalidParameter("duration_s must be 1 to 600 seconds", param="duration_s")
        task_input: dict[str, Any] = {"prompt": fields["prompt"], "duration_s": duration,
                                      "lyrics": fields.get("lyrics"), "instrumental": bool(fields.get("instrumental"))}
        if "per_request" in spec.pricing:
            price = credits_to_ucr(spec.pricing["per_request"])
        else:
            price = credits_to_ucr(spec.pricing["per_second"]) * duration
        return task_input, price  # µcr

    def parameters_schema(self, spec: ModelSpec) -> dict[str, Any]:
        durations = self.durations(spec)
        duration: dict[str, Any] = {"type": "integer", "default": durations[0], "description": "Length in seconds"}
        if spec.durations:
            duration["enum"] = durations
        else:
            duration |= {"minimum": 1, "maximum": 600}
        return {
            "type": "object", "additionalProperties": False, "required": ["model", "prompt"],
            "properties": {
                "model": {"type": "string", "enum": [spec.id, *spec.aliases]},
                "prompt": {"type": "string", "minLength": 1, "maxLength": MAX_PROMPT_CHARS,
                           "description": "Style, mood and instruments of the music"},
                "duration_s": duration,
                "lyrics": {"type": "string", "maxLength": MAX_LYRICS_CHARS, "description": "Words to sing"},
                "instrumental": {"type": "boolean", "default": False, "description": "No vocals"},
                "callback_url": {"type": "string", "format": "uri",
                                 "description": "Webhook URL notified when the task ends"},
            },
        }

    def job_for(self, task: Task, upstream_model: str) -> MediaJob:
        i = task.input
        return MediaJob(kind="audio", prompt=i["prompt"], upstream_model=upstream_model,
                        duration_s=int(i["duration_s"]), lyrics=i.get("lyrics"),
                        instrumental=bool(i.get("instrumental")))

    def output_for(self, task: Task, stored: list[tuple[str, str, Probe]], thumb: tuple[str, Probe] | None,
                   ) -> dict[str, Any]:
        return {"audio": [{"url": url, "content_type": ctype,
                           "duration_s": whole_seconds(probe.duration_s, task.input["duration_s"])}
                          for url, ctype, probe in stored]}


KIND = AudioKind()
