"""Request bodies: strict parsing with our own 400s (never FastAPI's 422)."""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

import orjson
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, ValidationError, field_validator
from starlette.requests import Request

from apiinone.domain.tasks import MAX_INPUT_URLS, MAX_PROMPT_CHARS
from apiinone.errors import InvalidJson, InvalidParameter, PayloadTooLarge
from apiinone.params import CONTROL_CHARACTERS_MESSAGE, ascii_int, has_control_characters

MAX_JSON_BYTES = 1024 * 1024

Url = Annotated[str, StringConstraints(min_length=1, max_length=2048)]


class ImageGenerationBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    model: Annotated[str, StringConstraints(min_length=1, max_length=100)]
    prompt: str
    aspect_ratio: Literal["1:1", "2:3", "3:2"] = "1:1"
    quality: Literal["medium", "high"] = "medium"
    input_urls: Annotated[list[Url], Field(min_length=1, max_length=MAX_INPUT_URLS)] | None = None
    callback_url: Url | None = None

    @field_validator("prompt")
    @classmethod
    def _prompt_length(cls, value: str) -> str:
        value = value.strip()
        if not 1 <= len(value) <= MAX_PROMPT_CHARS:
            raise ValueError(f"prompt must be 1 to {MAX_PROMPT_CHARS} characters after trimming")
        if has_control_characters(value):
            raise ValueError(CONTROL_CHARACTERS_MESSAGE)
        return value


def _trimmed_prompt(value: str) -> str:
    value = value.strip()
    if not 1 <= len(value) <= MAX_PROMPT_CHARS:
        raise ValueError(f"prompt must be 1 to {MAX_PROMPT_CHARS} characters after trimming")
    return value


Prompt = Annotated[str, AfterValidator(_trimmed_prompt)]


class VideoGenerationBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    model: Annotated[str, StringConstraints(min_length=1, max_length=100)]
    prompt: Prompt
    duration_s: Annotated[int, Field(ge=1, le=3600)] | None = None
    aspect_ratio: Literal["16:9", "9:16", "1:1"] = "16:9"
    resolution: Annotated[str, StringConstraints(min_length=1, max_length=20)] | None = None
    input_urls: Annotated[list[Url], Field(min_length=1, max_length=1)] | None = None
    callback_url: Url | None = None



class AudioGenerationBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    model: Annotated[str, StringConstraints(min_length=1, max_length=100)]
    prompt: Prompt
    duration_s: Annotated[int, Field(ge=1, le=3600)] | None = None
    lyrics: Annotated[str, StringConstraints(max_length=5000)] | None = None
    instrumental: bool = False
    callback_url: Url | None = None



_FRIENDLY = {
    "aspect_ratio": "aspect_ratio must be one of 1:1, 2:3, 3:2",
    "quality": "quality must be one of medium, high",
    "input_urls": f"input_urls must be a list of 1 to {MAX_INPUT_URLS} URL strings",
    "duration_s": "duration_s must be a whole number of seconds",
    "lyrics": "lyrics must be a string of at most 5000 characters",
    "instrumental": "instrumental must be true or false",
    "resolution": "resolution must be a string such as 720p",
}
_FRIENDLY_BY_BODY: dict[str, dict[str, str]] = {
    "VideoGenerationBody": {"aspect_ratio": "aspect_ratio must be one of 16:9, 9:16, 1:1",
                            "input_urls": "input_urls must be a list of exactly 1 image URL (the first frame)"},
    "AudioGenerationBody": {},
}

M = TypeVar("M", bound=BaseModel)


async def read_json_body(request: Request, limit: int = MAX_JSON_BYTES) -> bytes:
    """The raw body, refused with 413 as soon as it is known to exceed ``limit``: by its declared
    Content-Length before reading, or while streaming a chunked body, never after buffering it all."""
    declared = ascii_int(request.headers.get("content-length", ""))
    if declared is not None and declared > limit:
        raise PayloadTooLarge(f"JSON bodies are limited to {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"JSON bodies are limited to {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_json_body(raw: bytes, model: type[M]) -> M:
    if len(raw) > MAX_JSON_BYTES:
        raise PayloadTooLarge(f"JSON bodies are limited to {MAX_JSON_BYTES} bytes")
    try:
        data: Any = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidJson(f"request body is not valid JSON: {exc.msg}") from exc
    if not isinstance(data, dict):
        raise InvalidJson("request body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise invalid_parameter_from(exc, _FRIENDLY_BY_BODY.get(model.__name__)) from exc


def invalid_parameter_from(exc: ValidationError, friendly: dict[str, str] | None = None) -> InvalidParameter:
    err = exc.errors(include_url=False)[0]
    loc = [str(p) for p in err["loc"]]
    param = loc[0] if loc else None
    if err["type"] == "extra_forbidden":
        return InvalidParameter(f"unknown field {param!r}", param=param)
    if err["type"] == "missing":
        return InvalidParameter(f"{param} is required", param=param)
    if friendly and param in friendly:
        return InvalidParameter(friendly[param], param=param)
    if param in _FRIENDLY:
        return InvalidParameter(_FRIENDLY[param], param=param)
    message = str(err["msg"]).removeprefix("Value error, ")
    return InvalidParameter(f"{'.'.join(loc)}: {message}" if loc else message, param=param)
