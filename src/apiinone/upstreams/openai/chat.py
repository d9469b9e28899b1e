"""Chat Completions for the ``openai`` provider (filled in by the chat kind's work)."""

from __future__ import annotations


class OpenAIChat:
    """The Chat Completions half of :class:`~apiinone.upstreams.openai.adapter.OpenAIAdapter`."""
