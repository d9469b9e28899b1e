"""Which adapter speaks which ``provider`` name. Every ``apiinone.upstreams.<protocol>`` package
declares ``PROVIDERS = {"name": build}`` (``build(settings) -> Adapter``), so adding an upstream
protocol is one new folder: nothing here changes."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from typing import Any

import structlog

from apiinone.config import Settings
from apiinone.upstreams.base import Adapter

log = structlog.get_logger(__name__)

AdapterFactory = Callable[[Settings], Adapter]


def discover_factories() -> dict[str, AdapterFactory]:
    import apiinone.upstreams as package

    factories: dict[str, AdapterFactory] = {}
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name):
        if not info.ispkg:
            continue
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        declared: dict[str, AdapterFactory] = getattr(module, "PROVIDERS", {})
        for name, factory in declared.items():
            if name in factories:
                raise RuntimeError(f"two upstream packages declare provider {name!r}")
            factories[name] = factory
    return factories


class AdapterRegistry:
    """One adapter instance per provider name, built on first use and shared by every route."""

    def __init__(self, settings: Settings, factories: dict[str, AdapterFactory] | None = None) -> None:
        self.settings = settings
        self._factories = factories if factories is not None else discover_factories()
        self._adapters: dict[str, Adapter] = {}

    def knows(self, provider: str) -> bool:
        return provider in self._factories or provider in self._adapters

    def names(self) -> list[str]:
        return sorted(set(self._factories) | set(self._adapters))

    def register(self, provider: str, adapter: Any) -> None:
        """Serve ``provider`` with this instance (tests, plugins)."""
        self._adapters[provider] = adapter

    def get(self, provider: str) -> Adapter | None:
        adapter = self._adapters.get(provider)
        if adapter is None:
            factory = self._factories.get(provider)
            if factory is None:
                return None
            adapter = self._adapters[provider] = factory(self.settings)
        return adapter

    async def aclose(self) -> None:
        for provider, adapter in list(self._adapters.items()):
            try:
                await adapter.aclose()
            except Exception as exc:  # closing one must not keep the others open
                log.warning("adapter_close_failed", provider=provider, error=str(exc))
        self._adapters.clear()
