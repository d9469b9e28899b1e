"""The embedded offline chat "model": echoes the last user message (not an AI model)."""

from __future__ import annotations

from apiinone.config import Settings
from apiinone.upstreams.base import Adapter


def build(settings: Settings) -> Adapter:
    from apiinone.upstreams.local_echo.echo import LocalEchoProvider

    return LocalEchoProvider()


PROVIDERS = {"local-echo": build}
