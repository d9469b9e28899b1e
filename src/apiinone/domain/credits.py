"""Credits: integer micro-credits (µcr), held on accept, captured on success, released otherwise.

1 credit = USD 0.01 = 1,000,000 µcr. Every amount is an ``int`` of µcr from the database to the
edge; the API shows credits as exact decimals made from those integers (never through a float),
and parses credit amounts typed by people straight into µcr.

Ledger sign convention (API.md): topup, grant, adjustment and capture amounts are changes to
``balance`` (capture is negative); hold (+) and release (−) change ``held``. A capture also ends
that much of its hold, so ``held`` = Σ hold + Σ release + Σ capture.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from enum import StrEnum

import orjson

from apiinone.errors import InvalidParameter

UCR_PER_CREDIT = 1_000_000
_DECIMALS = 6
_AMOUNT = re.compile(r"[0-9]{1,12}(?:\.[0-9]{1,6})?")


class LedgerKind(StrEnum):
    TOPUP = "topup"
    HOLD = "hold"
    CAPTURE = "capture"
    RELEASE = "release"
    GRANT = "grant"
    ADJUSTMENT = "adjustment"


BALANCE_KINDS = frozenset({LedgerKind.TOPUP, LedgerKind.GRANT, LedgerKind.ADJUSTMENT, LedgerKind.CAPTURE})


def credits_to_ucr(value: int | str | Decimal | float) -> int:
    """Exact conversion of a credit amount (``10``, ``"0.0025"``, ``Decimal("99.997475")``) to µcr.

    More than 6 decimals cannot be represented and is refused (ValueError), as are bools, NaN and
    infinities: a price is never rounded on its way in. A float (a TOML catalog's ``0.0025``) is read
    as its shortest decimal text, which is exactly what the file spelled."""
    if isinstance(value, bool) or not isinstance(value, int | str | Decimal | float):
        raise ValueError(f"a credit amount must be a number, not {type(value).__name__}")
    if isinstance(value, int):
        return value * UCR_PER_CREDIT
    try:
        if isinstance(value, float):
            number = Decimal(repr(value))
        else:
            number = Decimal(value.strip()) if isinstance(value, str) else value
    except InvalidOperation as exc:
        raise ValueError(f"{value!r} is not a number") from exc
    if not number.is_finite():
        raise ValueError(f"{value!r} is not a finite number")
    scaled = number.scaleb(_DECIMALS)
    if scaled != scaled.to_integral_value():
        raise ValueError(f"{value!r} has more than {_DECIMALS} decimals")
    return int(scaled)


def format_credits_text(ucr: int) -> str:
    """µcr as a credit amount with at most 6 decimals and no trailing zeros: 10, 0.0025, -3."""
    sign = "-" if ucr < 0 else ""
    whole, fraction = divmod(abs(ucr), UCR_PER_CREDIT)
    if not fraction:
        return f"{sign}{whole}"
    return f"{sign}{whole}.{fraction:06d}".rstrip("0")


def format_credits(ucr: int) -> orjson.Fragment:
    """µcr as an exact JSON number in credits, for orjson to embed as is."""
    return orjson.Fragment(format_credits_text(ucr).encode())


def parse_credit_amount(text: str, *, param: str, max_credits: int, allow_zero: bool = False) -> int:
    """A credit amount typed by a person (a form field, a CLI argument) → µcr, strictly.

    ASCII digits with at most 6 decimals (no sign, exponent, spaces inside, Unicode digits or
    thousands separators), above zero unless ``allow_zero``, at most ``max_credits``."""
    value = text.strip(" \t\r\n") if isinstance(text, str) else ""
    if not _AMOUNT.fullmatch(value) or not value.isascii():
        raise InvalidParameter(f"{param} must be a number of credits with at most 6 decimals, e.g. 10 or 0.5",
                               param=param)
    ucr = credits_to_ucr(value)
    lowest = 0 if allow_zero else 1
    if not lowest <= ucr <= max_credits * UCR_PER_CREDIT:
        low = "0" if allow_zero else "0.000001"
        raise InvalidParameter(f"{param} must be from {low} to {max_credits} credits", param=param)
    return ucr


def _ceil_div(numerator: int, denominator: int) -> int:
    return -(-numerator // denominator)


def cost_per_mtok(tokens: int, price_ucr_per_mtok: int) -> int:
    """µcr for ``tokens`` at a price in µcr per million tokens, rounded up to a whole µcr.

    N credits per million tokens is N µcr per token, so a whole-credit price is charged exactly
    (API.md: P × input_per_mtok + C × output_per_mtok µcr); only a fractional one can round up."""
    if tokens < 0 or price_ucr_per_mtok < 0:
        raise ValueError("tokens and prices are never negative")
    return _ceil_div(tokens * price_ucr_per_mtok, 1_000_000)


def cost_per_mchar(chars: int, price_ucr_per_mchar: int) -> int:
    """µcr for ``chars`` characters at a price in µcr per million characters, rounded up."""
    if chars < 0 or price_ucr_per_mchar < 0:
        raise ValueError("characters and prices are never negative")
    return _ceil_div(chars * price_ucr_per_mchar, 1_000_000)


@dataclass(frozen=True, slots=True)
class Credits:
    """An account's credits in µcr."""

    balance: int
    held: int

    @property
    def available(self) -> int:
        return self.balance - self.held

    def to_public(self) -> dict[str, orjson.Fragment]:
        return {"balance": format_credits(self.balance), "held": format_credits(self.held),
                "available": format_credits(self.available)}


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    id: int
    account_id: str
    kind: LedgerKind
    amount: int
    task_id: str | None
    note: str | None
    created_at: int
    request_id: str | None = None
