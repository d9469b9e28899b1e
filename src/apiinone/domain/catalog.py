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

from apiinone.domain.tasks import ASPECT_RATIOS, MAX_INPUT_URLS, MAX_PROMPT_CHARS, QUALITIES

LANGS = ("en", "zh-CN")


@dataclass(frozen=True, slots=True)
class ModelSpec:
    id: str
    name: str
    type: str
    provider: str
    upstream_model: str
    pricing: dict[str, int]
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

    def price(self, quality: str) -> int:
        return self.pricing[quality]

    def text(self, attr: str, lang: str) -> Any:
        value: dict[str, Any] = getattr(self, attr)
        return value.get(lang) or value.get("en") or next(iter(value.values()), None)

    def parameters_schema(self) -> dict[str, Any]:
        """JSON Schema of the request body for this model's endpoint."""
        qualities = [q for q in QUALITIES if q in self.pricing]
        return {
            "type": "object",
            "additionalProperties": False,
            "required": ["model", "prompt"],
            "properties": {
                "model": {"type": "string", "enum": [self.id, *self.aliases]},
                "prompt": {
                    "type": "string", "minLength": 1, "maxLength": MAX_PROMPT_CHARS,
                    "description": "Text description of the image to generate",
                },
                "aspect_ratio": {
                    "type": "string", "enum": list(ASPECT_RATIOS), "default": "1:1",
                    "description": 'Output aspect ratio: "1:1", "2:3", or "3:2"',
                },
                "quality": {
                    "type": "string", "enum": qualities, "default": "medium",
                    "description": "Image quality: " + ", ".join(
                        f'"{q}" ({self.pricing[q]} credits)' for q in qualities
                    ),
                },
                "input_urls": {
                    "type": "array", "minItems": 1, "maxItems": MAX_INPUT_URLS,
                    "items": {"type": "string", "format": "uri"},
                    "description": "Array of image URLs for editing mode",
                },
                "callback_url": {
                    "type": "string", "format": "uri",
                    "description": "Webhook URL notified when the task ends",
                },
            },
        }

    def to_public(self, available: bool) -> dict[str, Any]:
        return {
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
            "parameters": self.parameters_schema(),
        }


_LIST_FIELDS = ("aliases", "input_modalities", "output_modalities", "related")


def _spec_from_mapping(data: dict[str, Any], base: ModelSpec | None = None) -> ModelSpec:
    values: dict[str, Any] = {}
    for key, value in data.items():
        if key in _LIST_FIELDS or key == "faq":
            values[key] = tuple(value)
        elif key == "pricing":
            values[key] = {str(q): int(p) for q, p in value.items()}
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
