"""Webhook delivery worker (the webhooks issue fills this in)."""

from __future__ import annotations

from typing import Any


async def start_delivery_worker(container: Any) -> Any:
    """Start the delivery loop for ``container``; None while delivery is not built yet."""
    return None
