"""The OpenAI protocol (api.openai.com and every OpenAI-compatible server)."""

from __future__ import annotations

from apiinone.config import Settings
from apiinone.upstreams.base import Adapter


def build(settings: Settings) -> Adapter:
    from apiinone.upstreams.openai.adapter import OpenAIAdapter

    return OpenAIAdapter(timeout_s=settings.openai_timeout_s)


PROVIDERS = {"openai": build}
