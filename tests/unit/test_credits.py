"""Micro-credits: exact conversion, formatting and strict parsing of credit amounts."""

from __future__ import annotations

from decimal import Decimal

import orjson
import pytest

from apiinone.domain.credits import (
    UCR_PER_CREDIT,
    Credits,
    cost_per_mchar,
    cost_per_mtok,
    credits_to_ucr,
    format_credits,
    format_credits_text,
    parse_credit_amount,
)
from apiinone.errors import InvalidParameter


@pytest.mark.parametrize(("value", "ucr"), [
    (0, 0), (1, 1_000_000), (10, 10_000_000), ("0.000001", 1), ("0.0025", 2_500), ("99.997475", 99_997_475),
    (Decimal("99.997475"), 99_997_475), ("-3", -3_000_000), (-3, -3_000_000), ("1.500000", 1_500_000),
    ("  7 ", 7_000_000), (Decimal("1E+2"), 100_000_000), (10**12, 10**18),
])
def test_credits_to_ucr_is_exact(value: int | str | Decimal, ucr: int) -> None:
    assert credits_to_ucr(value) == ucr


@pytest.mark.parametrize("value", ["0.0000001", "1.2345678", Decimal("0.0000005"), "NaN", "inf", "", "abc", "1,5"])
def test_credits_to_ucr_refuses_what_it_cannot_hold_exactly(value: str | Decimal) -> None:
    with pytest.raises(ValueError):
        credits_to_ucr(value)


@pytest.mark.parametrize(("value", "ucr"), [(0.5, 500_000), (0.0025, 2_500), (99.997475, 99_997_475), (15.0, 15_000_000),
                                          (0.000001, 1)])
def test_catalog_floats_convert_as_written(value: float, ucr: int) -> None:
    assert credits_to_ucr(value) == ucr


@pytest.mark.parametrize("value", [0.1234567, float("nan"), float("inf"), 1e-7, True, None, [1]])
def test_credits_to_ucr_refuses_inexact_floats_and_other_types(value: object) -> None:
    with pytest.raises(ValueError):
        credits_to_ucr(value)  # type: ignore[arg-type]


@pytest.mark.parametrize(("ucr", "text"), [
    (0, "0"), (1, "0.000001"), (1_000_000, "1"), (10_000_000, "10"), (2_500, "0.0025"),
    (99_997_475, "99.997475"), (-3_000_000, "-3"), (-1, "-0.000001"), (-2_500, "-0.0025"),
    (1_500_000, "1.5"), (10**18 + 1, "1000000000000.000001"),
])
def test_format_credits_has_no_trailing_zeros_and_no_float(ucr: int, text: str) -> None:
    assert format_credits_text(ucr) == text
    assert orjson.dumps({"a": format_credits(ucr)}) == b'{"a":' + text.encode() + b"}"
    assert credits_to_ucr(text) == ucr  # round trip


def test_format_survives_amounts_a_float_would_round() -> None:
    ucr = 9_007_199_254_740_993  # 2**53 + 1: a float cannot hold it
    assert format_credits_text(ucr) == "9007199254.740993"
    assert orjson.dumps([format_credits(ucr)]) == b"[9007199254.740993]"


def test_credits_public_shape_is_exact_json() -> None:
    body = orjson.dumps(Credits(balance=99_997_475, held=2_500).to_public())
    assert body == b'{"balance":99.997475,"held":0.0025,"available":99.994975}'


@pytest.mark.parametrize(("text", "ucr"), [
    ("1", 1_000_000), ("0.5", 500_000), ("0.000001", 1), ("99.997475", 99_997_475), ("100", 100_000_000),
    (" 12.25 ", 12_250_000), ("000012", 12_000_000),
])
def test_parse_credit_amount_accepts_plain_decimals(text: str, ucr: int) -> None:
    assert parse_credit_amount(text, param="amount", max_credits=100) == ucr


@pytest.mark.parametrize("text", [
    "", " ", "0", "0.0000000", "0.0000001", "1.2345678", "-1", "+1", "1e3", "1E3", "1.", ".5", "1,000", "1 000",
    "１２", "١٢", "²", "12\u00a0", "0x10", "NaN", "inf", "101", "100.000001", "1234567890123",
    "9" * 40, "1.5.5", "½",
])
def test_parse_credit_amount_refuses_everything_else(text: str) -> None:
    with pytest.raises(InvalidParameter) as info:
        parse_credit_amount(text, param="amount", max_credits=100)
    assert info.value.param == "amount" and info.value.status == 400


def test_parse_credit_amount_zero_only_when_allowed() -> None:
    assert parse_credit_amount("0", param="price", max_credits=5, allow_zero=True) == 0
    assert parse_credit_amount("0.000000", param="price", max_credits=5, allow_zero=True) == 0
    with pytest.raises(InvalidParameter):
        parse_credit_amount("0", param="price", max_credits=5)


def test_parse_credit_amount_refuses_non_strings() -> None:
    with pytest.raises(InvalidParameter):
        parse_credit_amount(5, param="amount", max_credits=10)  # type: ignore[arg-type]


@pytest.mark.parametrize(("tokens", "price_credits", "ucr"), [
    (0, 15, 0), (1, 15, 15), (1_000_000, 15, 15_000_000), (1234, 60, 74_040),
    (3, Decimal("0.3"), 1),  # 0.9 µcr rounds up to one whole µcr
    (10, Decimal("0.3"), 3), (7, Decimal("2.5"), 18),  # 17.5 → 18
])
def test_token_cost_is_tokens_times_price_rounded_up(tokens: int, price_credits: int | Decimal, ucr: int) -> None:
    assert cost_per_mtok(tokens, credits_to_ucr(price_credits)) == ucr
    assert cost_per_mchar(tokens, credits_to_ucr(price_credits)) == ucr


def test_costs_refuse_negative_inputs() -> None:
    with pytest.raises(ValueError):
        cost_per_mtok(-1, 15 * UCR_PER_CREDIT)
    with pytest.raises(ValueError):
        cost_per_mchar(1, -1)
