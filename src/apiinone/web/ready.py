"""The one line ``apiinone serve`` prints once it listens, and the readiness wait of ``apiinone wait``.

A person who just ran ``make run`` should not have to guess whether the server is up, where its
data went, or which models will answer: the ready line says it, after the socket is bound and the
app's startup (migrations, worker) is done.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

import uvicorn
from sqlalchemy.engine import make_url

if TYPE_CHECKING:
    from apiinone.bootstrap import Container

__all__ = ["AnnouncingServer", "announce_when_ready", "ready_line", "wait_until_ready"]


def _safe_database_url(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # an unparsable URL would have failed earlier; never let the banner fail
        return url.split("@")[-1]


def ready_line(container: Container, bound: str | None = None, embedded_worker: bool | None = None) -> str:
    """``apiinone ready: URL | database … | storage … | models … | worker … | console … | API reference …``.

    ``embedded_worker`` defaults to whether the app started one (known once it has started)."""
    settings = container.settings
    base = container.base_url()
    available: list[str] = []
    unconfigured: list[str] = []
    for spec in container.catalog.launched():
        (available if container.pool.is_available(spec) else unconfigured).append(spec.id)
    models = ", ".join(available) or "none"
    if unconfigured:
        models += f" (no upstream configured: {', '.join(unconfigured)})"
    if embedded_worker is None:
        embedded_worker = container.worker is not None
    worker = "embedded" if embedded_worker else "none in this process (tasks wait for `apiinone worker`)"
    where = f"{base} (listening on {bound})" if bound and bound not in base else base
    return (f"apiinone ready: {where} | database {_safe_database_url(settings.resolved_database_url)}"
            f" | storage {settings.resolved_storage_url} | models {models} | worker {worker}"
            f" | console {base}/console | API reference {base}/docs")


def _print_line(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


class AnnouncingServer(uvicorn.Server):
    """A uvicorn server that prints the ready line right after it starts listening."""

    def __init__(self, config: uvicorn.Config, container: Container) -> None:
        super().__init__(config)
        self._container = container

    async def startup(self, sockets: list[Any] | None = None) -> None:
        await super().startup(sockets)
        if self.started and not self.should_exit:
            _print_line(ready_line(self._container, f"{self.config.host}:{self.config.port}"))


def announce_when_ready(url: str, line: str, timeout_s: float = 600.0) -> threading.Thread:
    """For ``serve --workers N``: the supervisor prints the line when the first process answers."""

    def run() -> None:
        if asyncio.run(wait_until_ready(url, timeout_s)):
            _print_line(line)

    thread = threading.Thread(target=run, name="announce-ready", daemon=True)
    thread.start()
    return thread


async def wait_until_ready(url: str, timeout_s: float, interval_s: float = 0.25) -> bool:
    """Poll ``{url}/readyz`` until it answers 200 (True) or the timeout passes (False)."""
    import httpx

    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(timeout=5.0, trust_env=False) as client:
        while True:
            try:
                if (await client.get(f"{url.rstrip('/')}/readyz")).status_code == 200:
                    return True
            except httpx.HTTPError:
                pass
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(interval_s)
