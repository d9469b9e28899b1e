"""What a chat model's page shows: context window, prices per million tokens, a curl and an SDK
example (both against ``local-echo``-style bodies that run as pasted with a real key)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import orjson

from apiinone.domain.catalog import ModelSpec
from apiinone.kinds.chat import DEFAULT_MAX_OUTPUT_TOKENS

_PRICE_LABELS = (("input_per_mtok", "chat.input_price"), ("cached_input_per_mtok", "chat.cached_price"),
                 ("output_per_mtok", "chat.output_price"))


def _usd(credits: Any) -> str:
    dollars = Decimal(str(credits)) / 100
    cents = dollars.quantize(Decimal("0.01"))
    return f"${cents:f}" if cents == dollars else f"${dollars.normalize():f}"


def chat_prices(spec: ModelSpec) -> list[tuple[str, str, str]]:
    return [(label, str(spec.pricing[key]), _usd(spec.pricing[key])) for key, label in _PRICE_LABELS
            if key in spec.pricing]


def chat_curl(spec: ModelSpec, base_url: str) -> str:
    body = {"model": spec.id, "messages": [{"role": "user", "content": "Hello!"}]}
    pretty = orjson.dumps(body, option=orjson.OPT_INDENT_2).decode()
    return (f"curl {base_url}/v1/chat/completions \\\n"
            '  -H "Authorization: Bearer aio_your_api_key" \\\n'
            '  -H "Content-Type: application/json" \\\n'
            f"  --data-raw '{pretty}'")


def chat_sdk(spec: ModelSpec, base_url: str) -> str:
    return ("from openai import OpenAI\n\n"
            f'client = OpenAI(base_url="{base_url}/v1", api_key="aio_your_api_key")\n'
            "stream = client.chat.completions.create(\n"
            f'    model="{spec.id}",\n'
            '    messages=[{"role": "user", "content": "Hello!"}],\n'
            "    stream=True,\n"
            ")\n"
            "for chunk in stream:\n"
            '    print(chunk.choices[0].delta.content or "", end="")\n')


def chat_page_context(spec: ModelSpec, base_url: str) -> dict[str, Any]:
    return {"prices": chat_prices(spec), "curl": chat_curl(spec, base_url), "sdk": chat_sdk(spec, base_url),
            "max_output": spec.max_output_tokens or DEFAULT_MAX_OUTPUT_TOKENS}
