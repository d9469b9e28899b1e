"""Which provider serves which model, given this deployment's settings.

A model is *available* iff its provider is configured here (the OpenAI provider needs a key).
Providers are created lazily and shared, so their connection pools are reused.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from apiinone.config import Settings
from apiinone.domain.catalog import ModelSpec
from apiinone.providers.base import ImageProvider

_Made = tuple[tuple[str, str, str], Callable[[], ImageProvider]]


class ProviderRegistry:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._providers: dict[tuple[str, str, str], ImageProvider] = {}
        self._factories: dict[str, Callable[[ModelSpec], _Made | None]] = {
            "openai": self._openai,
            "local-typeset": self._local_typeset,
        }

    def register(self, name: str, provider: ImageProvider) -> None:
        """Serve every model whose ``provider`` is ``name`` with this instance (tests, plugins)."""
        self._factories[name] = lambda spec: ((name, "", ""), lambda: provider)

    def _openai(self, spec: ModelSpec) -> _Made | None:
        key = os.environ.get(spec.api_key_env) if spec.api_key_env else self.settings.openai_api_key
        if not key:
            return None
        base_url = spec.base_url or self.settings.openai_base_url

        def build() -> ImageProvider:
            from apiinone.providers.openai_images import OpenAIImagesProvider

            return OpenAIImagesProvider(
                key, base_url, timeout_s=self.settings.openai_timeout_s,
                max_retries=self.settings.openai_max_retries, backoff_base_s=self.settings.openai_backoff_s,
            )

        return ("openai", base_url, key), build

    def _local_typeset(self, spec: ModelSpec) -> _Made | None:
        def build() -> ImageProvider:
            from apiinone.providers.local_typeset import LocalTypesetProvider

            return LocalTypesetProvider()

        return ("local-typeset", "", ""), build

    def is_available(self, spec: ModelSpec) -> bool:
        factory = self._factories.get(spec.provider)
        return factory is not None and factory(spec) is not None

    def get(self, spec: ModelSpec) -> ImageProvider | None:
        factory = self._factories.get(spec.provider)
        made = factory(spec) if factory else None
        if made is None:
            return None
        ident, build = made
        provider = self._providers.get(ident)
        if provider is None:
            provider = self._providers[ident] = build()
        return provider

    async def aclose(self) -> None:
        for provider in self._providers.values():
            await provider.aclose()
        self._providers.clear()
