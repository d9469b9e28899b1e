"""What a model page shows for any model type: its price rows (per image, per second by
resolution, per request, per million characters or tokens), its facts (durations, resolutions,
voices, formats), the create route, a curl example and which playground it gets."""

from __future__ import annotations

from typing import Any

import orjson

from apiinone.domain.catalog import ModelSpec
from apiinone.domain.credits import credits_to_ucr
from apiinone.web.i18n import Translator

PLAYGROUNDS = ("image", "speech")
"""Model types whose page has a playground (the console runs them through its same-origin routes)."""

BILLING_KEYS = {"speech": "model.billing_speech", "video": "model.billing_video", "audio": "model.billing_audio"}

EXAMPLE_SPEECH = "Hello! This is API in One speaking."


def ucr(value: Any) -> int:
    try:
        return credits_to_ucr(value)
    except (TypeError, ValueError):
        return 0


def price_rows(spec: ModelSpec, t: Translator) -> list[dict[str, Any]]:
    """``{"label", "ucr"}`` per price the model has, in the page's language."""
    rows: list[dict[str, Any]] = []
    for key, value in spec.pricing.items():
        if isinstance(value, dict):  # e.g. per_second by resolution
            for sub, price in value.items():
                rows.append({"label": t(f"price.{key}_of", what=sub), "ucr": ucr(price)})
        else:
            label_key = f"price.{key}"
            label = t(label_key) if t.has(label_key) else t(f"quality.{key}") if t.has(f"quality.{key}") else key
            rows.append({"label": label, "ucr": ucr(value)})
    return rows


def price_summary(spec: ModelSpec, t: Translator) -> str:
    """One line for the model list: the range per image, or the lowest price with its unit."""
    from apiinone.domain.credits import format_credits_text

    pricing = spec.pricing
    if spec.type == "image" or all(k in ("medium", "high") for k in pricing):
        values = [ucr(v) for v in pricing.values()] or [0]
        return t("models.price_range", low=format_credits_text(min(values)), high=format_credits_text(max(values)))
    for unit in ("per_mchar", "per_second", "per_request", "input_per_mtok"):
        if unit in pricing:
            value = pricing[unit]
            lowest = min(ucr(v) for v in value.values()) if isinstance(value, dict) and value else ucr(value)
            return t(f"models.price_{unit}", n=format_credits_text(lowest))
    return t("models.price_from", n=format_credits_text(base_price_ucr(spec)))


def base_price_ucr(spec: ModelSpec) -> int:
    """The lowest price the model lists (its "from" price)."""
    prices = [ucr(v) for value in spec.pricing.values()
              for v in (value.values() if isinstance(value, dict) else (value,))]
    return min(prices) if prices else 0


def speech_price_examples(spec: ModelSpec) -> list[tuple[int, int]]:
    """(characters, µcr) for a few lengths: what people actually send."""
    per_mchar = ucr(spec.pricing.get("per_mchar", 0))
    return [(n, -(-n * per_mchar // 1_000_000)) for n in (100, 1000, 4096)]


def facts(spec: ModelSpec, speech_formats: frozenset[str] | None) -> dict[str, list[str]]:
    """Lists a page shows as facts: durations, resolutions, voices, formats (where they apply)."""
    out: dict[str, list[str]] = {}
    if spec.durations:
        out["durations"] = [f"{d} s" for d in spec.durations]
    per_second = spec.pricing.get("per_second")
    if isinstance(per_second, dict):
        out["resolutions"] = list(per_second)
    if spec.voices:
        out["voices"] = list(spec.voices)
    if speech_formats is not None:
        from apiinone.kinds.speech.job import FORMATS

        out["formats"] = [f for f in FORMATS if f in speech_formats]
    return out


def curl_example(spec: ModelSpec, base_url: str, create_path: str, image_prompt: str,
                 speech_formats: frozenset[str] | None = None) -> str:
    name = spec.aliases[0] if spec.aliases else spec.id
    body: dict[str, Any]
    tail = ""
    if spec.type == "speech":
        fmt = "wav" if speech_formats is None or "wav" in speech_formats else sorted(speech_formats)[0]
        body = {"model": name, "input": EXAMPLE_SPEECH, "voice": spec.voices[0] if spec.voices else "alloy",
                "response_format": fmt}
        tail = f" \\\n  -o speech.{fmt}"
    elif spec.type in ("video", "audio"):
        body = {"model": name, "prompt": image_prompt}
        if spec.durations:
            body["duration_s"] = spec.durations[0]
    else:
        body = {"model": name, "prompt": image_prompt,
                "quality": "medium" if "medium" in spec.pricing else next(iter(spec.pricing), "medium"),
                "aspect_ratio": "1:1"}
    pretty = orjson.dumps(body, option=orjson.OPT_INDENT_2).decode()
    return (f"curl -X POST {base_url}{create_path} \\\n"
            '  -H "Authorization: Bearer aio_your_api_key" \\\n'
            '  -H "Content-Type: application/json" \\\n'
            f"  --data-raw '{pretty}'{tail}")


def pricing_ucr_json(spec: ModelSpec) -> str:
    """The prices in µcr for the playground's script (integers: no float arithmetic on money)."""
    def convert(value: Any) -> Any:
        return {k: convert(v) for k, v in value.items()} if isinstance(value, dict) else ucr(value)
    return orjson.dumps({k: convert(v) for k, v in spec.pricing.items()}).decode()


__all__ = ["PLAYGROUNDS", "base_price_ucr", "curl_example", "facts", "price_rows", "price_summary", "pricing_ucr_json",
           "speech_price_examples"]
