"""The seam between the task runner and whoever actually makes the pixels.

A provider receives a fully validated, already-downloaded job and returns image bytes. It never
touches the database, credits or storage: the worker does that around it, so a provider is easy
to fake and easy to add.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

ASPECT_SIZES: dict[str, tuple[int, int]] = {
    "1:1": (1024, 1024),
    "2:3": (1024, 1536),
    "3:2": (1536, 1024),
}


@dataclass(frozen=True, slots=True)
class InputImage:
    """An input image already fetched through the egress guard and sniffed."""

    data: bytes
    content_type: str  # image/png, image/jpeg or image/webp
    filename: str = "image.png"


@dataclass(frozen=True, slots=True)
class ImageJob:
    prompt: str
    aspect_ratio: str
    quality: str
    upstream_model: str
    inputs: tuple[InputImage, ...] = ()
    n: int = 1
    output_format: str = "png"  # png | jpeg | webp
    background: str | None = None
    user: str | None = None
    extra: dict[str, str] = field(default_factory=dict)
    mask: InputImage | None = None  # edit mode: a PNG whose transparent pixels mark what to change

    @property
    def size(self) -> tuple[int, int]:
        return ASPECT_SIZES[self.aspect_ratio]

    @property
    def size_text(self) -> str:
        w, h = self.size
        return f"{w}x{h}"


@dataclass(frozen=True, slots=True)
class GeneratedImage:
    data: bytes
    content_type: str
    width: int
    height: int
    b64: str | None = field(default=None, repr=False, compare=False)
    """The upstream's own base64 of ``data`` when it answered with one, so that a ``b64_json``
    answer can hand it on instead of encoding the bytes again."""


@dataclass(frozen=True, slots=True)
class ImageResult:
    images: tuple[GeneratedImage, ...]
    usage: dict[str, object] | None = None


class ProviderError(Exception):
    """A provider failed in a way the task should report; ``code`` goes into the task's error."""

    code = "upstream_error"

    def __init__(self, message: str, *, code: str | None = None, retryable: bool = False) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        self.message = message
        self.retryable = retryable


class ContentPolicyError(ProviderError):
    code = "content_policy"


class UpstreamTimeoutError(ProviderError):
    code = "timeout"


class ImageProvider(Protocol):
    """Makes images for one job. Implementations must be safe to call concurrently."""

    name: str

    async def generate(self, job: ImageJob) -> ImageResult: ...

    async def aclose(self) -> None: ...
