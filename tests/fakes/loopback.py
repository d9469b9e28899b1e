"""What the chat vendor fakes share: a real uvicorn server on a loopback port in a background
thread, the recorded requests, and the scripted misbehaviour tests steer (fail, hang, cut, latency).

A fake is also steerable over HTTP through the control routes under ``/_fake/`` (for a fake
running as a subprocess): ``POST /_fake/fail_next {"status", "body", "count"}``,
``POST /_fake/hang_next {"seconds", "count"}``, ``POST /_fake/cut_next {"after_events", "count",
"error"}``, ``POST /_fake/config {"latency_ms"}``, ``POST /_fake/reset``, ``GET /_fake/requests``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


@dataclass(slots=True)
class RecordedRequest:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    json: Any | None
    status: int = 0


@dataclass(slots=True)
class Misbehaviour:
    """One scripted answer: a failure status/body, a hang, or a stream cut after N events
    (``error`` set: an ``error`` event is sent at the cut instead of just closing)."""

    status: int = 0
    body: Any | None = None
    headers: dict[str, str] = field(default_factory=dict)
    hang_s: float = 0.0
    cut_after: int | None = None
    error: Any | None = None


class FakeState:
    def __init__(self, *, api_key: str | None, latency_s: float = 0.0, max_recorded: int | None = 1000) -> None:
        self.lock = threading.Lock()
        self.api_key = api_key
        self.latency_s = latency_s
        self.recorded: deque[RecordedRequest] = deque(maxlen=max_recorded)
        self.script: deque[Misbehaviour] = deque()
        self.received = 0
        self.options: dict[str, Any] = {}
        self.counters: dict[str, int] = {}

    def count(self, name: str) -> None:
        with self.lock:
            self.counters[name] = self.counters.get(name, 0) + 1

    def record(self, rec: RecordedRequest) -> None:
        with self.lock:
            self.recorded.append(rec)
            self.received += 1

    def next_misbehaviour(self) -> Misbehaviour | None:
        with self.lock:
            return self.script.popleft() if self.script else None

    def push(self, item: Misbehaviour, count: int) -> None:
        with self.lock:
            self.script.extend([item] * count)

    def reset(self) -> None:
        with self.lock:
            self.recorded.clear()
            self.script.clear()
            self.received = 0
            self.counters.clear()


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, headers=headers, media_type="application/json")


def control_routes(state: FakeState) -> list[Route]:
    async def fail_next(request: Request) -> Response:
        spec = orjson.loads(await request.body() or b"{}")
        state.push(Misbehaviour(status=int(spec["status"]), body=spec.get("body"),
                                headers=dict(spec.get("headers") or {})), int(spec.get("count", 1)))
        return json_response({"ok": True})

    async def hang_next(request: Request) -> Response:
        spec = orjson.loads(await request.body() or b"{}")
        state.push(Misbehaviour(hang_s=float(spec.get("seconds", 3600))), int(spec.get("count", 1)))
        return json_response({"ok": True})

    async def cut_next(request: Request) -> Response:
        spec = orjson.loads(await request.body() or b"{}")
        state.push(Misbehaviour(cut_after=int(spec.get("after_events", 3)), error=spec.get("error")),
                   int(spec.get("count", 1)))
        return json_response({"ok": True})

    async def config(request: Request) -> Response:
        if request.method == "POST":
            spec = orjson.loads(await request.body() or b"{}")
            if "latency_ms" in spec:
                state.latency_s = float(spec["latency_ms"]) / 1000
            state.options.update({k: v for k, v in spec.items() if k != "latency_ms"})
        return json_response({"latency_ms": state.latency_s * 1000, **state.options})

    async def reset(request: Request) -> Response:
        state.reset()
        return json_response({"ok": True})

    async def requests(request: Request) -> Response:
        with state.lock:
            items = [{"method": r.method, "path": r.path, "query": r.query, "headers": r.headers,
                      "json": r.json, "status": r.status} for r in state.recorded]
        return json_response({"data": items, "received": state.received})

    return [
        Route("/_fake/fail_next", fail_next, methods=["POST"]),
        Route("/_fake/hang_next", hang_next, methods=["POST"]),
        Route("/_fake/cut_next", cut_next, methods=["POST"]),
        Route("/_fake/config", config, methods=["GET", "POST"]),
        Route("/_fake/reset", reset, methods=["POST"]),
        Route("/_fake/requests", requests, methods=["GET"]),
    ]


async def record_of(request: Request) -> RecordedRequest:
    raw = await request.body()
    try:
        parsed = orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        parsed = None
    return RecordedRequest(method=request.method, path=request.url.path, query=dict(request.query_params),
                           headers={k.lower(): v for k, v in request.headers.items()}, json=parsed)


async def pause(state: FakeState, misbehaviour: Misbehaviour | None) -> None:
    if state.latency_s:
        await asyncio.sleep(state.latency_s)
    if misbehaviour is not None and misbehaviour.hang_s:
        await asyncio.sleep(misbehaviour.hang_s)


class StreamCut(Exception):
    """Raised inside a streaming body: uvicorn drops the connection mid-response (no terminating
    chunk), which the client sees as an incomplete read, as when a vendor's server dies."""


def bind_loopback(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


class LoopbackFake:
    """A fake vendor in a background thread; subclasses give ``build_app`` and ``base_url``."""

    name = "fake"
    default_api_key = "fake-key"

    def __init__(self, *, api_key: str | None = None, latency_ms: float = 0.0, host: str = "127.0.0.1") -> None:
        self.state = FakeState(api_key=api_key if api_key is not None else self.default_api_key,
                               latency_s=latency_ms / 1000)
        self._host = host
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    def build_app(self, state: FakeState) -> Starlette:
        raise NotImplementedError

    def start(self) -> LoopbackFake:
        sock = bind_loopback(self._host, 0)
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(self.build_app(self.state), log_level="warning", access_log=False,
                                lifespan="off", loop="asyncio", timeout_keep_alive=30)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]},
                                        name=f"{self.name}-{self.port}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} server did not start")
            time.sleep(0.005)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
            self._server.force_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server = None
        self._thread = None

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    @property
    def origin(self) -> str:
        return f"http://{self._host}:{self.port}"

    @property
    def api_key(self) -> str:
        return self.state.api_key or self.default_api_key

    @property
    def requests(self) -> list[RecordedRequest]:
        with self.state.lock:
            return list(self.state.recorded)

    @property
    def received(self) -> int:
        return self.state.received

    @property
    def latency_ms(self) -> float:
        return self.state.latency_s * 1000

    @latency_ms.setter
    def latency_ms(self, value: float) -> None:
        self.state.latency_s = value / 1000

    def fail_next(self, status: int, body: Any | None = None, count: int = 1, *,
                  headers: dict[str, str] | None = None) -> None:
        """Answer the next ``count`` API requests with ``status`` and ``body`` (``None``: the
        vendor's usual body for that status)."""
        self.state.push(Misbehaviour(status=status, body=body, headers=dict(headers or {})), count)

    def hang_next(self, seconds: float = 3600.0, count: int = 1) -> None:
        """Hold the next answers back this long (longer than the client's timeout: a hang)."""
        self.state.push(Misbehaviour(hang_s=seconds), count)

    def cut_next(self, after_events: int = 3, *, error: Any | None = None, count: int = 1) -> None:
        """Drop the next streams' connections after ``after_events`` events (with ``error``: send
        that vendor error event there instead, then end the stream)."""
        self.state.push(Misbehaviour(cut_after=after_events, error=error), count)

    def reset(self) -> None:
        self.state.reset()


def serve_main(name: str, build: Callable[[FakeState], Starlette], default_key: str,
               argv: list[str] | None = None) -> int:
    """``python tests/fakes/fake_X.py --port 0 --port-file F``: a fake as its own process."""
    parser = argparse.ArgumentParser(description=f"{name} on loopback.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--port-file", type=Path)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--api-key", default=default_key)
    args = parser.parse_args(argv)
    state = FakeState(api_key=args.api_key, latency_s=args.latency_ms / 1000)
    sock = bind_loopback(args.host, args.port)
    port = sock.getsockname()[1]
    config = uvicorn.Config(build(state), log_level="warning", access_log=False, lifespan="off",
                            timeout_keep_alive=30, backlog=2048)
    server = uvicorn.Server(config)

    async def serve() -> None:
        async def announce() -> None:
            while not server.started:
                if server.should_exit:
                    return
                await asyncio.sleep(0.005)
            if args.port_file is not None:
                tmp = args.port_file.with_name(args.port_file.name + ".tmp")
                tmp.write_text(str(port))
                os.replace(tmp, args.port_file)
            print(f"{name} listening on http://{args.host}:{port}", file=sys.stderr, flush=True)

        announcer = asyncio.create_task(announce())
        await server.serve(sockets=[sock])
        announcer.cancel()

    asyncio.run(serve())
    return 0
