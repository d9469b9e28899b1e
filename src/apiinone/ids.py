"""Time-ordered, unguessable identifiers (ULID layout) so ids double as pagination cursors."""

from __future__ import annotations

import os
import re
import threading
import time

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_RANDOM_LIMIT = 1 << 80
_last_lock = threading.Lock()
_last_ms = -1
_last_random = 0


def _random_part(ms: int) -> int:
    """Fresh randomness per millisecond; within one millisecond the previous value plus a random
    step, so ids this process makes in sequence also sort in sequence (lists are newest-first by
    id, and a cursor is an id) while staying hard to guess."""
    global _last_ms, _last_random
    with _last_lock:
        step = 1 + int.from_bytes(os.urandom(4), "big")
        if ms == _last_ms and _last_random + step < _RANDOM_LIMIT:
            value = _last_random + step
        else:
            value = int.from_bytes(os.urandom(10), "big")
        _last_ms, _last_random = ms, value
    return value


def ulid(now_ms: int | None = None) -> str:
    ms = int(time.time() * 1000) if now_ms is None else now_ms
    value = (ms << 80) | _random_part(ms)
    chars = []
    for _ in range(26):
        chars.append(_CROCKFORD[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def new_id(prefix: str, now_ms: int | None = None) -> str:
    return f"{prefix}_{ulid(now_ms)}"


_ULID = re.compile(f"[{_CROCKFORD}]{{26}}")


def is_id(value: str, prefix: str) -> bool:
    """Whether ``value`` has the shape of an id made by :func:`new_id` with ``prefix``."""
    head, sep, tail = value.partition("_")
    return bool(sep) and head == prefix and _ULID.fullmatch(tail) is not None


def is_task_id(value: str) -> bool:
    return is_id(value, "tsk")


def now_ms() -> int:
    return int(time.time() * 1000)
