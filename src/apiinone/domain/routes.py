"""Routes made in the console: stored rows that merge with the catalog file's routes.

A stored route named like a file route of the same model replaces it (that is how a file route is
edited, reordered or disabled from the console); any other stored route is added. A stored route
without keys of its own keeps the replaced file route's ``api_key_env``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from apiinone.domain.catalog import RouteSpec

ROUTE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}")
MAX_KEYS = 20


@dataclass(frozen=True, slots=True)
class StoredRoute:
    id: str
    model_id: str
    name: str
    provider: str
    base_url: str | None
    upstream_model: str | None
    priority: int
    weight: int
    timeout_s: int | None
    enabled: bool
    key_hint: str | None
    created_at: int
    updated_at: int
    keys: tuple[str, ...] = field(default=(), repr=False)
    keys_unreadable: bool = False  # sealed with another secret key

    def to_spec(self) -> RouteSpec:
        return RouteSpec(name=self.name, provider=self.provider, base_url=self.base_url or None,
                         upstream_model=self.upstream_model or None, priority=self.priority, weight=self.weight,
                         timeout_s=float(self.timeout_s) if self.timeout_s else None, keys=self.keys,
                         stored=True)

    def public(self) -> dict[str, Any]:
        """What the console may show: never a key, only the last 4 characters of each."""
        return {"id": self.id, "model": self.model_id, "name": self.name, "provider": self.provider,
                "base_url": self.base_url, "upstream_model": self.upstream_model, "priority": self.priority,
                "weight": self.weight, "timeout_s": self.timeout_s, "enabled": self.enabled,
                "key_hint": self.key_hint}


def key_hint(keys: Iterable[str]) -> str | None:
    """The last 4 characters of the first key (more keys: a count), e.g. ``…x9Qz +2``."""
    keys = list(keys)
    if not keys:
        return None
    return keys[0][-4:] + (f"+{len(keys) - 1}" if len(keys) > 1 else "")


def split_keys(text: str) -> tuple[str, ...]:
    return tuple(k.strip() for k in re.split(r"[,\s]+", text) if k.strip())


def merge_routes(file_routes: tuple[RouteSpec, ...], stored: Iterable[StoredRoute]) -> tuple[RouteSpec, ...]:
    """The model's routes once the console's rows are applied (disabled rows remove their name)."""
    by_name = {s.name: s for s in stored}
    merged: list[RouteSpec] = []
    for route in file_routes:
        row = by_name.pop(route.name, None)
        if row is None:
            merged.append(route)
        elif row.enabled:
            spec = row.to_spec()
            if not spec.keys:  # an edited file route keeps the file's key variable
                spec = replace(spec, base_url=spec.base_url or route.base_url, api_key_env=route.api_key_env,
                               upstream_model=spec.upstream_model or route.upstream_model,
                               timeout_s=spec.timeout_s or route.timeout_s, options=dict(route.options))
            merged.append(spec)
    merged.extend(row.to_spec() for row in sorted(by_name.values(), key=lambda r: (r.priority, r.name)) if row.enabled)
    return tuple(merged)
