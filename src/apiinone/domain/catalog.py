"""The model catalog: which models exist, what they cost, which provider serves them.

Built in from ``catalog.toml`` beside the package; an operator's TOML file merges over it by id.
Availability is not a catalog fact: the wiring knows which providers are configured.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

LANGS = ("en", "zh-CN")


@dataclass(frozen=True, slots=True, eq=False)
class RouteSpec:
    """One way to reach a model: an adapter (``provider``), a base URL, keys and the upstream's name
    for the model. Unset fields fall back to the model's own (the single-route form)."""

    name: str
    provider: str
    base_url: str | None = None
    api_key_env: str | None = None
    upstream_model: str | None = None
    priority: int = 0
    weight: int = 1
    timeout_s: float | None = None
    options: dict[str, Any] = field(default_factory=dict)
    keys: tuple[str, ...] = field(default=(), repr=False)
    """Keys held by the route itself (a route made in the console); else ``api_key_env`` is read."""
    stored: bool = False  # made or edited in the console (domain/routes.py)


_ROUTE_FIELDS = {"name", "provider", "base_url", "api_key_env", "upstream_model", "priority", "weight", "timeout_s"}


def _route_from_mapping(model_id: str, data: dict[str, Any]) -> RouteSpec:
    if not isinstance(data, dict) or not data.get("name") or not data.get("provider"):
        raise ValueError(f"model {model_id!r}: every [[models.routes]] entry needs a name and a provider")
    values = {k: v for k, v in data.items() if k in _ROUTE_FIELDS}
    options = {k: v for k, v in data.items() if k not in _ROUTE_FIELDS}
    priority, weight = values.get("priority", 0), values.get("weight", 1)
    if not isinstance(priority, int) or isinstance(priority, bool):
        raise ValueError(f"model {model_id!r} route {data['name']!r}: priority must be an integer")
    if not isinstance(weight, int) or isinstance(weight, bool) or weight < 0:
        raise ValueError(f"model {model_id!r} route {data['name']!r}: weight must be a non-negative integer")
    return RouteSpec(**values, options=options)


@dataclass(frozen=True, slots=True)
class ModelSpec:
    id: str
    name: str
    type: str
    provider: str
    upstream_model: str
    pricing: dict[str, Any]
    aliases: tuple[str, ...] = ()
    launched: bool = True
    enabled: bool = True
    input_modalities: tuple[str, ...] = ("text",)
    output_modalities: tuple[str, ...] = ("image",)
    description: dict[str, str] = field(default_factory=dict)
    capabilities: dict[str, list[str]] = field(default_factory=dict)
    use_cases: dict[str, list[str]] = field(default_factory=dict)
    faq: tuple[dict[str, dict[str, str]], ...] = ()
    related: tuple[str, ...] = ()
    base_url: str | None = None
    api_key_env: str | None = None
    routes: tuple[RouteSpec, ...] = ()
    context_window: int | None = None
    max_output_tokens: int | None = None
    durations: tuple[int, ...] = ()
    voices: tuple[str, ...] = ()

    def price(self, quality: str) -> Any:
        return self.pricing[quality]

    def price_rows(self) -> list[tuple[str, Any]]:
        """The prices as (what, credits) rows: per quality for images, per second of a resolution
        for videos (``"720p / s"``), per request or per second for audio."""
        rows: list[tuple[str, Any]] = []
        for key, value in self.pricing.items():
            if isinstance(value, dict):
                rows.extend((f"{sub} / s", price) for sub, price in value.items())
            else:
                rows.append((key, value))
        return rows

    _single_route: tuple[RouteSpec, ...] = field(default=(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.routes:  # made once: the route pool caches what it resolves per route object
            object.__setattr__(self, "_single_route", (RouteSpec(
                name=self.provider, provider=self.provider, base_url=self.base_url,
                api_key_env=self.api_key_env, upstream_model=self.upstream_model),))

    def effective_routes(self) -> tuple[RouteSpec, ...]:
        """The model's routes; a model without ``routes`` has one, made of its own fields (the
        same object every time: a new one per call made the pool resolve, and keep, a route per
        request)."""
        return self.routes or self._single_route

    def text(self, attr: str, lang: str) -> Any:
        value: dict[str, Any] = getattr(self, attr)
        return value.get(lang) or value.get("en") or next(iter(value.values()), None)

    def to_public(self, available: bool, parameters: dict[str, Any] | None = None) -> dict[str, Any]:
        """The public model object; ``parameters`` is the JSON Schema the model's kind gives."""
        public: dict[str, Any] = {
            "id": self.id,
            "object": "model",
            "name": self.name,
            "aliases": list(self.aliases),
            "type": self.type,
            "input_modalities": list(self.input_modalities),
            "output_modalities": list(self.output_modalities),
            "pricing": dict(self.pricing),
            "available": available,
            "description": self.text("description", "en"),
            "parameters": parameters or {},
        }
        if self.context_window is not None:
            public["context_window"] = self.context_window
        if self.max_output_tokens is not None:
            public["max_output_tokens"] = self.max_output_tokens
        if self.durations:
            public["durations"] = list(self.durations)
        if self.voices:
            public["voices"] = list(self.voices)
        return public


_LIST_FIELDS = ("aliases", "input_modalities", "output_modalities", "related", "durations", "voices")


def _spec_from_mapping(data: dict[str, Any], base: ModelSpec | None = None) -> ModelSpec:
    values: dict[str, Any] = {}
    for key, value in data.items():
        if key in _LIST_FIELDS or key == "faq":
            values[key] = tuple(value)
        elif key == "pricing":
            if not isinstance(value, dict):
                raise ValueError(f"model {data.get('id', '?')!r}: pricing must be a table")
            values[key] = dict(value)
        elif key == "routes":
            values[key] = tuple(_route_from_mapping(str(data.get("id", "?")), r) for r in value)
        else:
            values[key] = value
    if base is not None:
        return replace(base, **values)
    missing = {"id", "name", "type", "provider", "upstream_model", "pricing"} - values.keys()
    if missing:
        raise ValueError(f"model {data.get('id', '?')!r} is missing {sorted(missing)}")
    return ModelSpec(**values)


class Catalog:
    """Models by id and alias. Lookups are exact, then case-insensitive."""

    def __init__(self, models: list[ModelSpec]) -> None:
        self.models = {m.id: m for m in models}
        self._names: dict[str, str] = {}
        for m in models:
            for name in (m.id, *m.aliases):
                self._names[name] = m.id
                self._names.setdefault(name.lower(), m.id)

    def resolve(self, name: str) -> ModelSpec | None:
        model_id = self._names.get(name) or self._names.get(name.lower())
        return self.models.get(model_id) if model_id else None

    def launched(self) -> list[ModelSpec]:
        return [m for m in self.models.values() if m.launched and m.enabled]

    def with_overrides(self, overrides: dict[str, dict[str, Any]]) -> Catalog:
        """A copy with admin overrides (enabled, pricing) applied; used by the admin console."""
        models = []
        for m in self.models.values():
            o = overrides.get(m.id)
            models.append(_spec_from_mapping(o, m) if o else m)
        return Catalog(models)

    def with_routes(self, routes: dict[str, tuple[RouteSpec, ...]]) -> Catalog:
        """A copy whose models listed in ``routes`` are served by those routes instead."""
        models = [replace(m, routes=routes[m.id]) if m.id in routes else m for m in self.models.values()]
        return Catalog(models)

    @classmethod
    def load(cls, override_file: Path | None = None) -> Catalog:
        text = resources.files("apiinone").joinpath("catalog.toml").read_text(encoding="utf-8")
        specs = {d["id"]: _spec_from_mapping(d) for d in tomllib.loads(text)["models"]}
        if override_file is not None:
            data = tomllib.loads(Path(override_file).read_text(encoding="utf-8"))
            for entry in data.get("models", []):
                if "id" not in entry:
                    raise ValueError("every [[models]] entry needs an id")
                base = specs.get(entry["id"])
                specs[entry["id"]] = _spec_from_mapping(entry, base)
        return cls(list(specs.values()))
