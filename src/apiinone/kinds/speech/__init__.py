"""Speech: direct calls (``POST /api/v1/audio/speech``, ``/v1/audio/speech``) priced per million
input characters (``{"per_mchar": 1500}``: N credits per million characters is N µcr a character).

The request is OpenAI's speech request, checked here the way OpenAI checks it (its messages and
codes, so the official SDK raises its usual errors); the model-dependent rules (``voice`` from the
model's catalog ``voices``, ``response_format`` from what its routes can produce) are checked once
the model is known, all before anything is held or sent upstream.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass, replace
from typing import Any

from apiinone.domain.catalog import ModelSpec
from apiinone.domain.credits import cost_per_mchar, credits_to_ucr
from apiinone.errors import InvalidParameter
from apiinone.kinds.base import require_price
from apiinone.kinds.speech.job import CONTENT_TYPES, FORMATS, SpeechJob

MAX_INPUT_CHARS = 4096
MAX_INSTRUCTIONS_CHARS = 4096
MIN_SPEED, MAX_SPEED = 0.25, 4.0
MAX_VOICE_CHARS = 100
REQUEST_FIELDS = frozenset({"model", "input", "voice", "response_format", "speed", "instructions", "stream_format"})


class SpeechParamError(InvalidParameter):
    """400 ``invalid_parameter`` on ``/api/v1``; on ``/v1`` answered with OpenAI's ``openai_code``."""

    def __init__(self, message: str, *, param: str | None, openai_code: str = "invalid_value") -> None:
        super().__init__(message, param=param)
        self.openai_code = openai_code


@dataclass(frozen=True, slots=True)
class SpeechRequest:
    """A speech request whose fields have the right types and ranges (model rules not yet checked)."""

    model: str
    input: str
    voice: str
    response_format: str = "mp3"
    speed: float = 1.0
    instructions: str | None = None
    format_given: bool = True
    """False when the request left ``response_format`` out: a model that cannot make mp3 answers in
    its first format instead (``wav`` for local-speech) rather than refusing the default."""

    @property
    def characters(self) -> int:
        """What is billed: Unicode characters of ``input``, as OpenAI counts its 4096."""
        return len(self.input)


def _string(fields: Mapping[str, Any], name: str, *, required: bool) -> str | None:
    value = fields.get(name)
    if value is None:
        if required:
            raise SpeechParamError(f"Missing required parameter: '{name}'.", param=name,
                                   openai_code="missing_required_parameter")
        return None
    if not isinstance(value, str):
        raise SpeechParamError(f"Invalid type for '{name}': expected a string, but got "
                               f"{type(value).__name__} instead.", param=name, openai_code="invalid_type")
    return value


def _invalid_value(param: str, value: object, allowed: Collection[str]) -> SpeechParamError:
    listed = ", ".join(f"'{a}'" for a in allowed)
    return SpeechParamError(f"Invalid value: '{value}'. Supported values are: {listed}.", param=param)


def parse_speech_request(fields: Mapping[str, Any]) -> SpeechRequest:
    """OpenAI's speech request, checked field by field (unknown fields refused)."""
    for name in fields:
        if name not in REQUEST_FIELDS:
            raise SpeechParamError(f"Unknown parameter: '{name}'.", param=name, openai_code="unknown_parameter")
    model = _string(fields, "model", required=True)
    text = _string(fields, "input", required=True)
    voice = fields.get("voice")
    if voice is None:
        raise SpeechParamError("Missing required parameter: 'voice'.", param="voice",
                               openai_code="missing_required_parameter")
    if not isinstance(voice, str):  # OpenAI's custom voices ({"id": "voice_..."}) are not served here
        raise SpeechParamError("Invalid type for 'voice': expected one of the model's voice names.",
                               param="voice", openai_code="invalid_type")
    assert model is not None and text is not None
    if not model:
        raise SpeechParamError("Invalid 'model': empty string.", param="model", openai_code="empty_string")
    if not text.strip():
        raise SpeechParamError("Invalid 'input': expected a string with at least one character to speak.",
                               param="input", openai_code="empty_string")
    if len(text) > MAX_INPUT_CHARS:
        raise SpeechParamError(
            f"Invalid 'input': string too long. Expected a string with maximum length {MAX_INPUT_CHARS}, "
            f"but got a string with length {len(text)} instead.", param="input",
            openai_code="string_above_max_length")
    given_format = _string(fields, "response_format", required=False)
    response_format = given_format or "mp3"
    if response_format not in FORMATS:
        raise _invalid_value("response_format", response_format, FORMATS)
    instructions = _string(fields, "instructions", required=False)
    if instructions is not None and len(instructions) > MAX_INSTRUCTIONS_CHARS:
        raise SpeechParamError(f"Invalid 'instructions': string too long. Expected a string with maximum "
                               f"length {MAX_INSTRUCTIONS_CHARS}.", param="instructions",
                               openai_code="string_above_max_length")
    stream_format = _string(fields, "stream_format", required=False)
    if stream_format not in (None, "audio"):
        raise SpeechParamError("Invalid value for 'stream_format': only 'audio' is supported by this server.",
                               param="stream_format")
    speed = fields.get("speed", 1.0)
    if speed is None:
        speed = 1.0
    if isinstance(speed, bool) or not isinstance(speed, int | float) or not math.isfinite(speed):
        raise SpeechParamError("Invalid type for 'speed': expected a number.", param="speed",
                               openai_code="invalid_type")
    if speed < MIN_SPEED:
        raise SpeechParamError(f"Invalid 'speed': decimal below minimum value. Expected a value >= {MIN_SPEED:g}, "
                               f"but got {speed:g} instead.", param="speed", openai_code="decimal_below_min_value")
    if speed > MAX_SPEED:
        raise SpeechParamError(f"Invalid 'speed': decimal above maximum value. Expected a value <= {MAX_SPEED:g}, "
                               f"but got {speed:g} instead.", param="speed", openai_code="decimal_above_max_value")
    return SpeechRequest(model=model, input=text, voice=voice, response_format=response_format,
                         speed=float(speed), instructions=instructions or None, format_given=given_format is not None)


class SpeechKind:
    name = "speech"
    queued = False
    create_path = "/api/v1/audio/speech"

    def validate_pricing(self, spec: ModelSpec) -> None:
        if set(spec.pricing) != {"per_mchar"}:
            raise ValueError("a speech model is priced per million input characters, e.g. {per_mchar = 1500}")
        require_price(spec.pricing["per_mchar"], "pricing.per_mchar")

    def price_ucr(self, spec: ModelSpec, characters: int) -> int:
        """µcr for ``characters``: exactly characters × N for a whole-credit N, else rounded up."""
        return cost_per_mchar(characters, credits_to_ucr(spec.pricing["per_mchar"]))

    def for_model(self, request: SpeechRequest, formats: Collection[str]) -> SpeechRequest:
        """The request with its default format settled for a model that produces ``formats``."""
        if request.format_given or request.response_format in formats:
            return request
        fallback = next((f for f in ("wav", *FORMATS) if f in formats), request.response_format)
        return replace(request, response_format=fallback)

    def check_for_model(self, spec: ModelSpec, request: SpeechRequest, formats: Collection[str]) -> None:
        """The rules that depend on the model: its voices, and the formats its routes produce."""
        if spec.voices and request.voice not in spec.voices:
            raise _invalid_value("voice", request.voice, spec.voices)
        if not spec.voices and not 1 <= len(request.voice) <= MAX_VOICE_CHARS:  # passed on as given
            raise SpeechParamError(f"Invalid 'voice': expected 1 to {MAX_VOICE_CHARS} characters.", param="voice")
        if request.response_format not in formats:
            supported = [f for f in FORMATS if f in formats]
            raise SpeechParamError(
                f"Invalid value: '{request.response_format}'. Model '{spec.id}' produces only: "
                + (", ".join(f"'{f}'" for f in supported) or "nothing right now") + ".",
                param="response_format")

    def job_for(self, request: SpeechRequest, upstream_model: str) -> SpeechJob:
        return SpeechJob(input=request.input, voice=request.voice, response_format=request.response_format,
                         speed=request.speed, upstream_model=upstream_model, instructions=request.instructions)

    def parameters_schema(self, spec: ModelSpec) -> dict[str, Any]:
        per_mchar = spec.pricing.get("per_mchar")
        return {
            "type": "object",
            "additionalProperties": False,
            "required": ["model", "input", "voice"],
            "properties": {
                "model": {"type": "string", "enum": [spec.id, *spec.aliases]},
                "input": {"type": "string", "minLength": 1, "maxLength": MAX_INPUT_CHARS,
                          "description": f"Text to speak; billed per character ({per_mchar} credits per "
                                         "million characters)"},
                "voice": {"type": "string", **({"enum": list(spec.voices)} if spec.voices else {}),
                          "description": "One of the model's voices"},
                "response_format": {"type": "string", "enum": list(FORMATS), "default": "mp3",
                                    "description": "Audio format (only those the model's routes can produce, "
                                                   "else 400; left out: mp3, or wav where the model makes no "
                                                   "mp3); content types "
                                                   + ", ".join(f"{k} = {v}" for k, v in CONTENT_TYPES.items())},
                "speed": {"type": "number", "minimum": MIN_SPEED, "maximum": MAX_SPEED, "default": 1.0},
                "instructions": {"type": "string", "maxLength": MAX_INSTRUCTIONS_CHARS,
                                 "description": "Voice instructions, for models that take them"},
                "stream_format": {"type": "string", "enum": ["audio"], "default": "audio"},
            },
        }


KIND = SpeechKind()
