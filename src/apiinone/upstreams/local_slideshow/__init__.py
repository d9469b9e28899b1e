"""The embedded offline video "model": the prompt typeset over a few seconds of H.264 frames
(PyAV). Not an AI model."""

from __future__ import annotations

from apiinone.config import Settings
from apiinone.upstreams.base import Adapter


def build(settings: Settings) -> Adapter:
    from apiinone.upstreams.local_slideshow.slideshow import LocalSlideshowProvider

    return LocalSlideshowProvider()


PROVIDERS = {"local-slideshow": build}
