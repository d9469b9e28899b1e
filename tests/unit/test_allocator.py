"""The allocator settings the serving processes apply (glibc on Linux, as in CI)."""

from __future__ import annotations

import pytest

from apiinone.allocator import tune_for_large_bodies


def test_glibc_takes_the_settings() -> None:
    assert tune_for_large_bodies() is True  # mallopt answered 1 to each of the three


def test_an_operators_own_malloc_settings_are_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_TOP_PAD_", "0")
    assert tune_for_large_bodies() is False
