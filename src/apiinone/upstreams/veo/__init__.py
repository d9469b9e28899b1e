"""Google's Veo through the Gemini API: ``predictLongRunning`` and the operation poll."""

from __future__ import annotations

from apiinone.config import Settings
from apiinone.upstreams.base import Adapter


def build(settings: Settings) -> Adapter:
    from apiinone.upstreams.veo.adapter import VeoAdapter

    return VeoAdapter()


PROVIDERS = {"veo": build}
