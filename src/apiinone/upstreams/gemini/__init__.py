"""Google's Gemini API (``generateContent`` / ``streamGenerateContent``) for chat models.

Veo (video) is a separate provider folder; this one speaks only the Gemini chat protocol."""

from __future__ import annotations

from apiinone.config import Settings
from apiinone.upstreams.base import Adapter


def build(settings: Settings) -> Adapter:
    from apiinone.upstreams.gemini.adapter import GeminiAdapter

    return GeminiAdapter(timeout_s=settings.openai_timeout_s)


PROVIDERS = {"gemini": build}
