"""Strict parsing of the integers and texts that come in headers, query strings and form fields.

Python's ``str.isdigit()`` accepts Unicode digits (``"²"``, ``"١"``) that ``int()`` then refuses or,
worse, reads; so every integer a client sends goes through :func:`parse_int`: ASCII digits only, a
bounded length and a documented range, else 400 ``invalid_parameter`` naming the field. Parse every
header and option with these before any state changes, so a bad one can never fail accepted work.
"""

from __future__ import annotations

import re

from apiinone.errors import InvalidParameter

_ASCII_INT = re.compile(r"-?[0-9]{1,19}")
"""At most 19 digits, so the text stays short; values beyond 64 bits are refused too."""
MAX_INT64 = 2**63 - 1


def ascii_int(text: str) -> int | None:
    """The integer written in ``text`` (ASCII digits, optional ``-``) if it fits a signed 64-bit
    column, else None."""
    if not _ASCII_INT.fullmatch(text):
        return None
    value = int(text)
    return value if -MAX_INT64 - 1 <= value <= MAX_INT64 else None


class NotAnInteger(InvalidParameter):
    """The value is not an integer written in ASCII digits."""


class IntegerOutOfRange(InvalidParameter):
    """An integer outside the field's documented range."""


def parse_int(value: object, param: str, *, low: int, high: int, name: str | None = None) -> int:
    """An integer from JSON (a number, never a bool) or from text (ASCII digits, optional ``-``,
    no spaces), within ``low..high``. ``name`` is how the message calls the field (default ``param``)."""
    label = name or param
    number: int
    if isinstance(value, bool):
        raise NotAnInteger(f"{label} must be an integer", param=param)
    if isinstance(value, int):
        number = value
    elif isinstance(value, str) and (parsed := ascii_int(value)) is not None:
        number = parsed
    else:
        raise NotAnInteger(f"{label} must be an integer written in ASCII digits", param=param)
    if not low <= number <= high:
        raise IntegerOutOfRange(f"{label} must be an integer from {low} to {high}", param=param)
    return number


def parse_optional_int(value: str | None, param: str, *, low: int, high: int, default: int,
                       name: str | None = None) -> int:
    """``default`` when the value is absent, else :func:`parse_int`."""
    return default if value is None else parse_int(value, param, low=low, high=high, name=name)


def header_text(value: str) -> str | None:
    """A header value as the UTF-8 text the client sent (ASGI servers hand it over as Latin-1), or
    None when its bytes are not UTF-8. Lengths of such headers are counted in characters."""
    try:
        return value.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return None


_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]|\r(?!\n)")
CONTROL_CHARACTERS_MESSAGE = "must not contain control characters other than tab and newline"


def has_control_characters(text: str) -> bool:
    """Text sent upstream may hold tab and newline (and CR of a CRLF line end), no other control
    character: a NUL or an escape code is never a real prompt, and some upstreams choke on them."""
    return _CONTROL.search(text) is not None
