"""Lifting base64 out of an Images answer before parsing it gives exactly what a whole parse
gives, and falls back to the whole parse whenever the answer is not the plain shape."""

from __future__ import annotations

import base64
import json

import orjson
import pytest

from apiinone.upstreams.base import UpstreamError
from apiinone.upstreams.openai.images import without_b64

B64 = [base64.b64encode(bytes(range(n % 256)) * 7).decode() for n in (3, 40, 255)]


def answers() -> list[bytes]:
    body = {"created": 1, "data": [{"b64_json": b, "revised_prompt": 'say "b64_json":"x"'} for b in B64],
            "usage": {"total_tokens": 3}, "output_format": "png"}
    return [
        orjson.dumps(body),
        json.dumps(body).encode(),  # ", " and ": " separators
        json.dumps(body, indent=2).encode(),
        json.dumps({"data": [{"b64_json": B64[0]}]}).encode(),
        json.dumps({"data": [{"b64_json": B64[0]}, {"url": "https://x/y.png"}]}).encode(),
    ]


@pytest.mark.parametrize("raw", answers())
def test_the_rest_and_the_values_are_what_a_whole_parse_gives(raw: bytes) -> None:
    whole = orjson.loads(raw)
    payload, cut = without_b64(raw)
    assert cut is not None
    assert [c.decode() for c in cut] == [i["b64_json"] for i in whole["data"] if "b64_json" in i]
    for item, original in zip(payload["data"], whole["data"], strict=True):
        assert {k: v for k, v in item.items() if k != "b64_json"} == {
            k: v for k, v in original.items() if k != "b64_json"}
    assert {k: v for k, v in payload.items() if k != "data"} == {k: v for k, v in whole.items() if k != "data"}


@pytest.mark.parametrize("raw", [
    b'{"data":[{"b64_json":"aGVs\\/bG8="}]}',  # an escaped slash: the value is not plain base64
    b'{"data":[{"url":"https://x/y.png"}]}',  # nothing to lift
    b'{"data":[{"b64_json":null}]}',
    b'{"note":{"b64_json":"aGVsbG8="},"data":[]}',  # not an image entry
])
def test_anything_else_is_parsed_whole(raw: bytes) -> None:
    payload, cut = without_b64(raw)
    assert cut is None
    assert payload == orjson.loads(raw)


@pytest.mark.parametrize("raw", [b'{"data":[{"b64_json":"aGVs', b"[]", b"not json", b'{"data":[{"b64_json":"x"}'])
def test_a_broken_answer_is_refused_as_the_whole_parse_refuses_it(raw: bytes) -> None:
    with pytest.raises(UpstreamError):
        without_b64(raw)


def test_an_empty_value_is_lifted_as_empty() -> None:
    assert without_b64(b'{"data":[{"b64_json":""}]}') == ({"data": [{"b64_json": ""}]}, [b""])
