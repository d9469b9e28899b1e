"""HTTP adapters: the public API, the OpenAI-compatible routes and the console."""

from apiinone.web.app import create_app

__all__ = ["create_app"]
