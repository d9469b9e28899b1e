"""Replicate's predictions API: create (``Prefer: wait``), get, cancel."""

from __future__ import annotations

from apiinone.config import Settings
from apiinone.upstreams.base import Adapter


def build(settings: Settings) -> Adapter:
    from apiinone.upstreams.replicate.adapter import ReplicateAdapter

    return ReplicateAdapter()


PROVIDERS = {"replicate": build}
