"""fal's queue API (``queue.fal.run``): submit, status, result, cancel; it fronts hundreds of video,
image and audio models."""

from __future__ import annotations

from apiinone.config import Settings
from apiinone.upstreams.base import Adapter


def build(settings: Settings) -> Adapter:
    from apiinone.upstreams.fal.adapter import FalAdapter

    return FalAdapter()


PROVIDERS = {"fal": build}
