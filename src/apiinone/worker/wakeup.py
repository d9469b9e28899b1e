"""Prompt wake-ups for idle workers, so a new task starts in milliseconds, not a poll later.

In one process the API signals the embedded worker directly. Across processes PostgreSQL's
LISTEN/NOTIFY carries the signal (the NOTIFY is sent inside the creating transaction). Polling
remains as the safety net.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import structlog

log = structlog.get_logger(__name__)


class Wakeup:
    """A level-triggered signal: ``set`` from anywhere in the loop, ``wait`` with a timeout."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def set(self) -> None:
        self._event.set()

    async def wait(self, seconds: float) -> bool:
        if not self._event.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(seconds):  # wait_for would make a task per wait
                    await self._event.wait()
        fired = self._event.is_set()
        self._event.clear()
        return fired


PayloadHandler = Callable[[str], None]
"""Receives each NOTIFY payload of its channel, and ``""`` after a (re)connect: "you may have missed some"."""


class PostgresListener:
    """Holds one asyncpg connection LISTENing on channels and sets the matching Wakeups (or hands
    the payload to a handler)."""

    def __init__(self, database_url: str, channels: dict[str, Wakeup | PayloadHandler]) -> None:
        self.dsn = database_url.replace("postgresql+asyncpg://", "postgresql://")
        self.channels = channels
        self._conn: Any = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        import asyncpg

        while not self._stopping:
            try:
                self._conn = await asyncpg.connect(self.dsn)
                for channel, target in self.channels.items():
                    await self._conn.add_listener(channel, _listener_for(target))
                for target in self.channels.values():  # catch up on anything sent while we were not listening
                    if isinstance(target, Wakeup):
                        target.set()
                    else:
                        target("")
                closed = asyncio.Event()
                self._conn.add_termination_listener(lambda *_args, c=closed: c.set())
                await closed.wait()
            except (OSError, asyncpg.PostgresError) as exc:
                log.warning("listen_connection_failed", error=str(exc))
            finally:
                if self._conn is not None and not self._conn.is_closed():
                    with contextlib.suppress(Exception):
                        await self._conn.close()
            if not self._stopping:
                await asyncio.sleep(1.0)

    async def stop(self) -> None:
        self._stopping = True
        if self._conn is not None and not self._conn.is_closed():
            with contextlib.suppress(Exception):
                await self._conn.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def _listener_for(target: Wakeup | PayloadHandler) -> Callable[..., None]:
    if isinstance(target, Wakeup):
        return lambda *_args: target.set()
    return lambda _conn, _pid, _channel, payload: target(payload)
