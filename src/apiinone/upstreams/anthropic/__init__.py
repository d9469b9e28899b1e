"""Anthropic's Messages API (api.anthropic.com and compatible servers) for chat models."""

from __future__ import annotations

from apiinone.config import Settings
from apiinone.upstreams.base import Adapter


def build(settings: Settings) -> Adapter:
    from apiinone.upstreams.anthropic.adapter import AnthropicAdapter

    return AnthropicAdapter(timeout_s=settings.openai_timeout_s)


PROVIDERS = {"anthropic": build}
