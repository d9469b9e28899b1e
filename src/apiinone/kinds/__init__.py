"""Kinds of work, one package each; see :mod:`.base` for the interface."""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any, cast

from apiinone.kinds.base import Kind, QueuedKind


class KindRegistry:
    """Every kind package's ``KIND``, by name. Adding a kind is one new package."""

    def __init__(self, kinds: dict[str, Kind] | None = None) -> None:
        self._kinds = kinds if kinds is not None else discover_kinds()

    def get(self, name: str) -> Kind | None:
        return self._kinds.get(name)

    def queued(self, name: str) -> QueuedKind | None:
        kind = self._kinds.get(name)
        return cast(QueuedKind, kind) if kind is not None and kind.queued else None

    def names(self) -> list[str]:
        return sorted(self._kinds)

    def validate_catalog(self, models: Any) -> None:
        """Refuse a catalog whose models have an unknown type or mis-shaped prices (names the model)."""
        for spec in models:
            kind = self._kinds.get(spec.type)
            if kind is None:
                raise ValueError(f"model {spec.id!r}: unknown type {spec.type!r} "
                                 f"(one of {', '.join(self.names())})")
            try:
                kind.validate_pricing(spec)
            except ValueError as exc:
                raise ValueError(f"model {spec.id!r}: {exc}") from None


def discover_kinds() -> dict[str, Kind]:
    import apiinone.kinds as package

    found: dict[str, Kind] = {}
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name):
        if info.ispkg:
            module = importlib.import_module(f"{package.__name__}.{info.name}")
            kind = getattr(module, "KIND", None)
            if kind is not None:
                found[kind.name] = kind
    return found


__all__ = ["Kind", "KindRegistry", "QueuedKind"]
