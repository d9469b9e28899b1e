"""The chat kind: price validation, the ⌈bytes/4⌉ estimate, holds and charges in µcr, strict
request rules (what is accepted, what is a 400 and which field it names)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from apiinone.domain.catalog import Catalog, ModelSpec
from apiinone.kinds.chat import KIND, ChatRequestError, estimate_input_tokens, estimate_tokens, validate_body
from apiinone.kinds.chat.job import Usage


@pytest.fixture
def spec() -> ModelSpec:
    echo = Catalog.load().models["local-echo"]
    return replace(echo, pricing={"input_per_mtok": 150, "output_per_mtok": 600, "cached_input_per_mtok": "37.5"},
                   max_output_tokens=1000)


@pytest.mark.parametrize(("pricing", "message"), [
    ({"input_per_mtok": 1}, "output_per_mtok"),
    ({"input_per_mtok": -1, "output_per_mtok": 1}, "non-negative"),
    ({"input_per_mtok": "0.0000001", "output_per_mtok": 1}, "6 decimals"),
    ({"input_per_mtok": 1, "output_per_mtok": 1, "per_image": 3}, "not one of"),
    ({"input_per_mtok": True, "output_per_mtok": 1}, "number"),
])
def test_bad_prices_are_refused(spec: ModelSpec, pricing: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        KIND.validate_pricing(replace(spec, pricing=pricing))


def test_estimate_is_the_ceiling_of_bytes_over_four() -> None:
    assert [estimate_tokens(n) for n in (0, 1, 4, 5, 8)] == [0, 1, 1, 2, 2]
    body = {"messages": [{"role": "user", "content": "héllo"}]}
    assert estimate_input_tokens(body) == -(-len(b'[{"role":"user","content":"h\xc3\xa9llo"}]') // 4)


def test_hold_and_charge_in_micro_credits(spec: ModelSpec) -> None:
    body = validate_body({"model": "local-echo", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 50})
    call = KIND.prepare(spec, body)
    assert call.hold == call.input_estimate * 150 + 50 * 600
    assert call.request.max_output_tokens == 50 and call.request.body["model"] == "local-echo"
    # cached input at 37.5 credits/Mtok = 37.5 µcr per token, rounded up once per part
    assert call.prices.cost(Usage(input_tokens=10, output_tokens=3, cached_input_tokens=4)) == 6 * 150 + 150 + 3 * 600
    assert call.charge(Usage(input_tokens=10_000, output_tokens=10_000)) == call.hold, "never above the hold"
    default = KIND.prepare(spec, validate_body({"model": "x", "messages": [{"role": "user", "content": "Hi"}]}))
    assert default.request.max_output_tokens == 1000


def test_a_full_valid_body_is_accepted() -> None:
    body = {
        "model": "gpt-4o", "stream": True, "stream_options": {"include_usage": True}, "max_completion_tokens": 20,
        "temperature": 0.5, "top_p": 1, "stop": ["\n"], "seed": 7, "user": "u-1", "n": 1,
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}},
        "tools": [{"type": "function", "function": {"name": "f", "description": "d", "parameters": {}, "strict": True}}],
        "tool_choice": {"type": "function", "function": {"name": "f"}}, "parallel_tool_calls": False,
        "messages": [
            {"role": "system", "content": "s"}, {"role": "developer", "content": [{"type": "text", "text": "d"}]},
            {"role": "user", "content": [{"type": "text", "text": "what is this?"},
                                         {"type": "image_url", "image_url": {"url": "https://x.test/a.png",
                                                                             "detail": "low"}}]},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "ok"},
        ],
    }
    assert validate_body(body) is body


@pytest.mark.parametrize(("body", "param"), [
    ({"messages": []}, "messages"),
    ({"messages": "hi"}, "messages"),
    ({"messages": [{"role": "user"}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": "x", "extra": 1}]}, "messages[0].extra"),
    ({"messages": [{"role": "system", "content": [{"type": "image_url", "image_url": {"url": "https://a"}}]}]},
     "messages[0].content[0].type"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].tool_call_id"),
    ({"model": 5}, "model"),
    ({"stream": "yes"}, "stream"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_tokens": 5, "max_completion_tokens": 5}, "max_tokens"),
    ({"top_p": 1.5}, "top_p"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"tools": [{"type": "function", "function": {"name": "bad name"}}]}, "tools[0].function.name"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"response_format": {"type": "yaml"}}, "response_format"),
    ({"user": "u" * 300}, "user"),
    ({"seed": 1.5}, "seed"),
    ({"logit_bias": {}}, "logit_bias"),
])
def test_invalid_bodies_name_the_field(body: dict[str, Any], param: str) -> None:
    full = {"model": "m", "messages": [{"role": "user", "content": "x"}], **body}
    with pytest.raises(ChatRequestError) as caught:
        validate_body(full)
    assert caught.value.param == param and caught.value.status == 400 and caught.value.code == "invalid_parameter"


def test_parameters_schema(spec: ModelSpec) -> None:
    schema = KIND.parameters_schema(spec)
    assert schema["required"] == ["model", "messages"] and schema["additionalProperties"] is False
    assert schema["properties"]["max_completion_tokens"]["maximum"] == 1000
