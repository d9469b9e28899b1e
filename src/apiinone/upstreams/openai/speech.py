"""The speech endpoint for the ``openai`` provider (filled in by the speech kind's work)."""

from __future__ import annotations


class OpenAISpeech:
    """The ``/audio/speech`` half of :class:`~apiinone.upstreams.openai.adapter.OpenAIAdapter`."""
