"""Request body parsing: every rejection is our 400 with the offending field named in ``param``."""

from __future__ import annotations

import orjson
import pytest

from apiinone.errors import ApiError, InvalidJson, InvalidParameter, PayloadTooLarge
from apiinone.web.schemas import MAX_JSON_BYTES, ImageGenerationBody, parse_json_body

VALID = {"model": "gpt-image-1-5", "prompt": "  a logo  "}


def parse(body: object) -> ImageGenerationBody:
    return parse_json_body(orjson.dumps(body), ImageGenerationBody)


def test_defaults_and_trimmed_prompt() -> None:
    body = parse(VALID)
    assert (body.model, body.prompt, body.aspect_ratio, body.quality) == ("gpt-image-1-5", "a logo", "1:1", "medium")
    assert body.input_urls is None and body.callback_url is None


def test_every_field_accepted() -> None:
    body = parse({**VALID, "aspect_ratio": "3:2", "quality": "high", "input_urls": ["https://a/x.png"],
                  "callback_url": "https://b/hook"})
    assert (body.aspect_ratio, body.quality, body.input_urls, body.callback_url) == (
        "3:2", "high", ["https://a/x.png"], "https://b/hook")


@pytest.mark.parametrize(("body", "param", "message"), [
    ({"prompt": "p"}, "model", "model is required"),
    ({"model": "m"}, "prompt", "prompt is required"),
    ({**VALID, "model": ""}, "model", None),
    ({**VALID, "model": 7}, "model", None),
    ({**VALID, "prompt": ""}, "prompt", "1 to 5000 characters"),
    ({**VALID, "prompt": " \n\t "}, "prompt", "1 to 5000 characters"),
    ({**VALID, "prompt": "x" * 5001}, "prompt", "1 to 5000 characters"),
    ({**VALID, "prompt": ["a"]}, "prompt", None),
    ({**VALID, "aspect_ratio": "16:9"}, "aspect_ratio", "aspect_ratio must be one of 1:1, 2:3, 3:2"),
    ({**VALID, "quality": "low"}, "quality", "quality must be one of medium, high"),
    ({**VALID, "input_urls": []}, "input_urls", "1 to 16"),
    ({**VALID, "input_urls": ["https://a/x.png"] * 17}, "input_urls", "1 to 16"),
    ({**VALID, "input_urls": [3]}, "input_urls", "1 to 16"),
    ({**VALID, "input_urls": "https://a/x.png"}, "input_urls", "1 to 16"),
    ({**VALID, "callback_url": 1}, "callback_url", None),
    ({**VALID, "n": 2}, "n", "unknown field 'n'"),
])
def test_bad_fields_name_the_param(body: dict[str, object], param: str, message: str | None) -> None:
    with pytest.raises(InvalidParameter) as caught:
        parse(body)
    error = caught.value
    assert (error.status, error.code, error.param) == (400, "invalid_parameter", param)
    assert error.message
    if message is not None:
        assert message in error.message
    assert error.to_body() == {"error": {"code": "invalid_parameter", "message": error.message, "param": param}}


def test_prompt_of_exactly_5000_characters_is_fine() -> None:
    assert len(parse({**VALID, "prompt": "x" * 5000}).prompt) == 5000


@pytest.mark.parametrize("raw", [b"", b"{not json", b"[1, 2]", b'"text"', b"null"])
def test_non_object_bodies_are_invalid_json(raw: bytes) -> None:
    with pytest.raises(InvalidJson) as caught:
        parse_json_body(raw, ImageGenerationBody)
    assert (caught.value.status, caught.value.code, caught.value.param) == (400, "invalid_json", None)


def test_body_over_the_limit_is_413() -> None:
    with pytest.raises(PayloadTooLarge) as caught:
        parse_json_body(b" " * (MAX_JSON_BYTES + 1), ImageGenerationBody)
    error: ApiError = caught.value
    assert (error.status, error.code) == (413, "payload_too_large")
