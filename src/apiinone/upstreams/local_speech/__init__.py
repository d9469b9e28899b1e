"""The embedded offline speech "model": Debian's ``espeak-ng`` speaks the text (not an AI model).

Available only where the ``espeak-ng`` binary is installed; elsewhere its routes count as not
configured, so the model is listed with ``available: false`` and calls get 503."""

from __future__ import annotations

from apiinone.config import Settings
from apiinone.upstreams.base import Adapter


def build(settings: Settings) -> Adapter:
    from apiinone.upstreams.local_speech.espeak import LocalSpeechProvider

    return LocalSpeechProvider()


PROVIDERS = {"local-speech": build}
