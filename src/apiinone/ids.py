"""Time-ordered, unguessable identifiers (ULID layout) so ids double as pagination cursors."""

from __future__ import annotations

import os
import re
import threading
import time

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_PAIRS = tuple(a + b for a in _CROCKFORD for b in _CROCKFORD)
"""Every 10-bit value as its two characters: an id is 13 lookups, not 26 shifts."""
_RANDOM_LIMIT = 1 << 80
_POOL_BYTES = 4096
_last_lock = threading.Lock()
_last_ms = -1
_last_random = 0
_pool = b""
_pool_at = 0


def _urandom(n: int) -> bytes:
    """``os.urandom`` bytes drawn 4 KiB at a time (a system call per id was ~8 % of the API's
    CPU creating tasks); the caller holds ``_last_lock``."""
    global _pool, _pool_at
    if _pool_at + n > len(_pool):
        _pool, _pool_at = os.urandom(_POOL_BYTES), 0
    chunk = _pool[_pool_at:_pool_at + n]
    _pool_at += n
    return chunk


def _random_part(ms: int) -> int:
    """Fresh randomness per millisecond; within one millisecond the previous value plus a random
    step, so ids this process makes in sequence also sort in sequence (lists are newest-first by
    id, and a cursor is an id) while staying hard to guess."""
    global _last_ms, _last_random
    with _last_lock:
        step = 1 + int.from_bytes(_urandom(4), "big")
        if ms == _last_ms and _last_random + step < _RANDOM_LIMIT:
            value = _last_random + step
        else:
            value = int.from_bytes(_urandom(10), "big")
        _last_ms, _last_random = ms, value
    return value


def _reset_after_fork() -> None:
    global _pool, _pool_at, _last_ms
    _pool, _pool_at, _last_ms = b"", 0, -1  # a child must never reuse its parent's random bytes


os.register_at_fork(after_in_child=_reset_after_fork)


def ulid(now_ms: int | None = None) -> str:
    ms = int(time.time() * 1000) if now_ms is None else now_ms
    value = (ms << 80) | _random_part(ms)  # 128 bits, written as 26 characters of 5 bits (130)
    pairs = _PAIRS
    return "".join([pairs[(value >> shift) & 1023] for shift in range(120, -10, -10)])


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
