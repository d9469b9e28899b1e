"""Ids are ULIDs: unique, and sorted by creation time, which is what makes them usable as cursors."""

from __future__ import annotations

import itertools
import re

from apiinone.ids import new_id, ulid

CROCKFORD_ULID = re.compile(r"^[0-9A-HJKMNP-TV-Z]{26}$")


def test_shape_and_prefix() -> None:
    value = new_id("tsk")
    assert value.startswith("tsk_") and CROCKFORD_ULID.match(value.removeprefix("tsk_"))


def test_time_part_orders_ids_across_milliseconds() -> None:
    assert ulid(1_000) < ulid(1_001) < ulid(2**40) < ulid(2**47)
    assert ulid(0).startswith("0000000000")


def test_ids_made_in_sequence_sort_in_sequence_even_within_one_millisecond() -> None:
    same_ms = [ulid(1_700_000_000_000) for _ in range(1_000)]
    assert same_ms == sorted(same_ms) and len(set(same_ms)) == 1_000
    live = [new_id("tsk") for _ in range(10_000)]
    assert live == sorted(live) and len(set(live)) == 10_000


def decode(value: str) -> int:
    alphabet = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
    number = 0
    for char in value:
        number = number * 32 + alphabet.index(char)
    return number


def test_the_random_part_is_not_a_counter() -> None:
    """Within a millisecond ids step forward by a random amount, so one id does not give away the next."""
    values = [decode(ulid(42)) for _ in range(50)]
    steps = {b - a for a, b in itertools.pairwise(values)}
    assert all(step > 0 for step in steps) and len(steps) > 1
    assert decode(ulid(42)) >> 80 == 42


def test_a_forked_child_never_draws_its_parents_random_bytes() -> None:
    """The random bytes are drawn from the OS in blocks; a child starts with an empty block."""
    import os

    ulid(42)  # the parent has a block of random bytes in hand
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        os.write(write, ulid(99).encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    child = os.read(read, 64).decode()
    os.close(read)
    assert len(child) == 26 and child != ulid(99)
