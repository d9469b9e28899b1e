"""The one strict integer parser and the text checks every input goes through."""

from __future__ import annotations

import pytest

from apiinone.params import (
    IntegerOutOfRange,
    NotAnInteger,
    ascii_int,
    has_control_characters,
    header_text,
    parse_int,
    parse_optional_int,
)


@pytest.mark.parametrize(("text", "value"), [("0", 0), ("42", 42), ("-7", -7), ("007", 7), (str(2**63 - 1), 2**63 - 1), (str(-(2**63)), -(2**63))])
def test_ascii_int_reads_ascii_digits(text: str, value: int) -> None:
    assert ascii_int(text) == value


@pytest.mark.parametrize("text", ["", "²", "١", "٣", "१", "1.5", " 1", "1 ", "+1", "0x1", "1_000", "9" * 20, "9" * 19, str(2**63), "--1", "-"])
def test_ascii_int_refuses_everything_else(text: str) -> None:
    assert ascii_int(text) is None


def test_parse_int_types_and_range() -> None:
    assert parse_int(5, "n", low=1, high=10) == 5
    assert parse_int("5", "n", low=1, high=10) == 5
    for bad in (True, 5.0, None, [5], "١"):
        with pytest.raises(NotAnInteger) as caught:
            parse_int(bad, "n", low=1, high=10)
        assert caught.value.param == "n" and caught.value.code == "invalid_parameter"
    for out in (0, 11, "11", 10**30):
        with pytest.raises(IntegerOutOfRange) as out_caught:
            parse_int(out, "n", low=1, high=10)
        assert out_caught.value.status == 400
    assert parse_optional_int(None, "limit", low=1, high=100, default=20) == 20


def test_header_text_is_the_utf8_the_client_sent() -> None:
    assert header_text("键".encode().decode("latin-1")) == "键"
    assert header_text("plain") == "plain"
    assert header_text(b"\xff".decode("latin-1")) is None


@pytest.mark.parametrize(("text", "bad"), [("a\tb\nc", False), ("a\r\nb", False), ("中文 prompt", False),
                                          ("a\x00b", True), ("a\rb", True), ("a\x1b", True), ("\x7f", True),
                                          ("\x85", True), ("\x0b", True)])
def test_control_characters(text: str, bad: bool) -> None:
    assert has_control_characters(text) is bad


def test_require_fails_in_ci_and_skips_loudly_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.conftest import require

    require(True, "present")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="must run in CI"):
        require(False, "wrk is not installed")
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="outside CI only"):
        require(False, "wrk is not installed")
