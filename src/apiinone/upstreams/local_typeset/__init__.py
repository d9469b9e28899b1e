"""The embedded offline image "model": typesets the prompt with Pillow (not an AI model)."""

from __future__ import annotations

from apiinone.config import Settings
from apiinone.upstreams.base import Adapter


def build(settings: Settings) -> Adapter:
    from apiinone.upstreams.local_typeset.typeset import LocalTypesetProvider

    return LocalTypesetProvider()


PROVIDERS = {"local-typeset": build}
