"""One way for a test to wait for something that happens on another thread or process."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any


async def until(check: Callable[[], Awaitable[Any]], what: str, timeout: float = 60.0,
                interval: float = 0.05) -> Any:
    """Poll ``check`` until it returns something true and return that; fail after ``timeout`` s."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await check()
        if value:
            return value
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(interval)
