"""A speech job as upstream adapters receive it, and the capability a speech adapter implements.

The canonical request is OpenAI's ``POST /audio/speech`` body; the answer is audio bytes in the
requested format. Adapters never touch credits or the database: the speech service meters around
them, so a new text-to-speech upstream is one folder with ``synthesize_speech``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from apiinone.upstreams.base import RouteTarget

__all__ = ["CONTENT_TYPES", "FORMATS", "SpeechAudio", "SpeechJob", "SpeechSynthesizer"]

FORMATS = ("mp3", "opus", "aac", "flac", "wav", "pcm")
"""OpenAI's ``response_format`` values, in its documentation's order; ``mp3`` is the default."""

CONTENT_TYPES = {
    "mp3": "audio/mpeg",
    "opus": "audio/opus",
    "aac": "audio/aac",
    "flac": "audio/flac",
    "wav": "audio/wav",
    "pcm": "audio/pcm",
}
"""What OpenAI answers in ``Content-Type`` per format (``pcm``: raw 24 kHz 16-bit mono samples)."""

PCM_SAMPLE_RATE = 24_000


@dataclass(frozen=True, slots=True)
class SpeechJob:
    input: str
    voice: str
    response_format: str
    speed: float
    upstream_model: str
    instructions: str | None = None


@dataclass(frozen=True, slots=True)
class SpeechAudio:
    data: bytes
    content_type: str


class SpeechSynthesizer(Protocol):
    """Speaks one job on one route. Implementations must be safe to call concurrently."""

    provider: str
    needs_key: bool

    def speech_formats(self) -> frozenset[str]:
        """The ``response_format`` values this adapter can produce here (on this machine)."""
        ...

    async def synthesize_speech(self, target: RouteTarget, job: SpeechJob) -> SpeechAudio: ...

    async def aclose(self) -> None: ...
