"""An image job as upstream adapters receive it, and the capability an image adapter implements.

An adapter receives a fully validated, already-downloaded job and returns image bytes. It never
touches the database, credits or storage: the kind does that around it, so an adapter is easy
to fake and easy to add.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from apiinone.net.fetch import InputImage
from apiinone.upstreams.base import RouteTarget

__all__ = ["ASPECT_SIZES", "GeneratedImage", "ImageGenerator", "ImageJob", "ImageResult", "InputImage"]

ASPECT_SIZES: dict[str, tuple[int, int]] = {
    "1:1": (1024, 1024),
    "2:3": (1024, 1536),
    "3:2": (1536, 1024),
}


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
    b64: bytes | None = field(default=None, repr=False, compare=False)
    """The upstream's own base64 of ``data`` (ASCII bytes) when it answered with one, so that a
    ``b64_json`` answer can hand it on instead of encoding the bytes again."""


@dataclass(frozen=True, slots=True)
class ImageResult:
    images: tuple[GeneratedImage, ...]
    usage: dict[str, object] | None = None


class ImageGenerator(Protocol):
    """Makes images for one job on one route. Implementations must be safe to call concurrently."""

    provider: str
    needs_key: bool

    async def generate_images(self, target: RouteTarget, job: ImageJob) -> ImageResult: ...

    async def aclose(self) -> None: ...
