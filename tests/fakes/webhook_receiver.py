"""A real HTTP/1.1 webhook receiver on loopback, scriptable per request.

Tests decide each answer with ``respond`` (a status, a redirect, or hang until ``release``), read
back every request it got (headers and exact body bytes), and can see how many were in flight at
once. Keep-alive is supported, so it also serves as the benchmark's receiver:

    python -m tests.fakes.webhook_receiver --port-file /tmp/port   # answers 204 to everything
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import inspect
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

REASONS = {200: "OK", 204: "No Content", 302: "Found", 410: "Gone", 500: "Internal Server Error"}


@dataclass(frozen=True)
class Received:
    method: str
    path: str
    headers: dict[str, str]  # lower-cased names
    body: bytes
    at: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    hang: bool = False  # hold the request open until ``release()`` (or the client gives up)


Responder = Callable[[Received], Reply | Awaitable[Reply]]


class WebhookReceiver:
    def __init__(self, respond: Responder | None = None, *, sock: socket.socket | None = None) -> None:
        self.respond: Responder = respond or (lambda _r: Reply(200))
        self.received: list[Received] = []
        self.connections = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.port = 0
        self._sock = sock
        self._changed = asyncio.Condition()
        self._released = asyncio.Event()
        self._handlers: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> WebhookReceiver:
        if self._sock is not None:
            self._server = await asyncio.start_server(self._handle, sock=self._sock)
        else:
            self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        self.release()
        if self._server is not None:
            self._server.close()
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def __aenter__(self) -> WebhookReceiver:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def release(self) -> None:
        """Let every hanging request (and any later one told to hang) answer."""
        self._released.set()

    async def wait_for(self, predicate: Callable[[list[Received]], bool], timeout: float = 30.0) -> list[Received]:
        """Wait until ``predicate(received)`` holds; raises TimeoutError after ``timeout`` seconds."""
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(lambda: predicate(self.received))
        return list(self.received)

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self.connections += 1
        try:
            while True:
                request = await _read_request(reader)
                if request is None:
                    return
                self.in_flight += 1
                self.max_in_flight = max(self.max_in_flight, self.in_flight)
                try:
                    self.received.append(request)
                    await self._notify()
                    reply = self.respond(request)
                    if inspect.isawaitable(reply):
                        reply = await reply
                    if reply.hang:
                        await self._released.wait()
                finally:
                    self.in_flight -= 1
                head = f"HTTP/1.1 {reply.status} {REASONS.get(reply.status, 'Status')}\r\nContent-Length: 0\r\n"
                head += "".join(f"{k}: {v}\r\n" for k, v in reply.headers.items())
                writer.write((head + "\r\n").encode())
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            return  # a client gone, or stop(): either way this connection is over
        finally:
            self._handlers.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


async def _read_request(reader: asyncio.StreamReader) -> Received | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    lines = head.decode("latin-1").split("\r\n")
    method, path, _version = lines[0].split(" ", 2)
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return Received(method=method, path=path, headers=headers, body=body)


def loopback_socket() -> socket.socket:
    """A bound, not yet listening loopback socket: its port refuses connections until it is
    handed to ``WebhookReceiver(sock=...)``, which makes a receiver that is down, then up."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


async def _serve_forever(port_file: Path) -> None:
    receiver = await WebhookReceiver(lambda _r: Reply(204)).start()
    port_file.write_text(str(receiver.port))
    await asyncio.Event().wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port-file", type=Path, required=True)
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve_forever(args.port_file))
