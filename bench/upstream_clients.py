"""Which HTTP client should call the upstreams? httpx, aiohttp, a bare httpcore pool and our lean one.

The workload is the adapters' own: ``POST /v1/images/generations`` with a small JSON body to the
fake OpenAI upstream (a separate process, as in ``bench/run.py``), reading the whole JSON answer,
16 requests in flight over kept-alive connections, for a small PNG answer and a ~1.6 MB one.
Each client keeps its timeouts and connection reuse; the loop is uvloop and the allocator tuned, as
in ``apiinone serve``; ``lean`` is apiinone's own (``upstreams/http1.py``). The figure that survives a busy machine is
the client's own CPU per request (this process's CPU time ÷ requests); requests/s is printed too.

    .venv/bin/python bench/upstream_clients.py [--seconds 5] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import uvloop

from apiinone.allocator import tune_for_large_bodies

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import REALISTIC_PNG_BYTES, fake_config, http_request, start_fake

BODY = orjson.dumps({"model": "gpt-image-1.5", "prompt": "a lighthouse", "size": "1024x1024", "quality": "medium"})
HEADERS = {"Authorization": "Bearer sk-bench-fake", "Content-Type": "application/json"}

Call = Callable[[], Awaitable[bytes]]


async def _httpx(url: str) -> tuple[Call, Callable[[], Awaitable[None]]]:
    import httpx

    client = httpx.AsyncClient(timeout=httpx.Timeout(120.0), limits=httpx.Limits(max_keepalive_connections=64),
                               trust_env=False)

    async def call() -> bytes:
        response = await client.send(client.build_request("POST", url, content=BODY, headers=HEADERS))
        assert response.status_code == 200
        return response.content

    return call, client.aclose


async def _aiohttp(url: str) -> tuple[Call, Callable[[], Awaitable[None]]]:
    import aiohttp

    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64, keepalive_timeout=30),
                                    timeout=aiohttp.ClientTimeout(total=120.0), trust_env=False)

    async def call() -> bytes:
        async with session.post(url, data=BODY, headers=HEADERS) as response:
            assert response.status == 200
            return await response.read()

    return call, session.close


async def _httpcore(url: str) -> tuple[Call, Callable[[], Awaitable[None]]]:
    import httpcore

    pool = httpcore.AsyncConnectionPool(max_connections=64, keepalive_expiry=30)
    headers = list(HEADERS.items())
    extensions = {"timeout": {"connect": 10.0, "read": 120.0, "write": 120.0, "pool": 120.0}}

    async def call() -> bytes:
        response = await pool.request("POST", url, headers=headers, content=BODY, extensions=extensions)
        assert response.status == 200
        return response.content

    return call, pool.aclose


async def _lean(url: str) -> tuple[Call, Callable[[], Awaitable[None]]]:
    from apiinone.upstreams.http1 import LeanClient

    client = LeanClient(max_connections=64)

    async def call() -> bytes:
        response = await client.post(url, BODY, HEADERS, timeout_s=120.0)
        assert response.status == 200
        return response.body

    return call, client.aclose


CLIENTS = {"httpx": _httpx, "aiohttp": _aiohttp, "httpcore": _httpcore, "lean": _lean}


async def measure(name: str, url: str, seconds: float, concurrency: int) -> dict[str, Any]:
    call, close = await CLIENTS[name](url)
    try:
        for _ in range(concurrency):  # warm the connections
            orjson.loads(await call())
        done = 0
        stop_at = time.monotonic() + seconds

        async def loop() -> None:
            nonlocal done
            while time.monotonic() < stop_at:
                orjson.loads(await call())  # the adapters parse every answer
                done += 1

        cpu0, t0 = time.process_time(), time.monotonic()
        await asyncio.gather(*(loop() for _ in range(concurrency)))
        cpu, wall = time.process_time() - cpu0, time.monotonic() - t0
    finally:
        await close()
    return {"client": name, "requests": done, "rps": round(done / wall, 1),
            "client_cpu_us_per_request": round(cpu / done * 1e6, 1) if done else None}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--rounds", type=int, default=2, help="each client this many times, interleaved")
    args = p.parse_args()
    tune_for_large_bodies()  # as apiinone serve does
    workdir = Path(tempfile.mkdtemp(prefix="apiinone-clients-"))
    fake = start_fake(workdir)
    results: list[dict[str, Any]] = []
    try:
        url = f"http://127.0.0.1:{fake.port}/v1/images/generations"
        for label, png_bytes in (("small PNG", 0), ("~1.6 MB PNG", REALISTIC_PNG_BYTES)):
            fake_config(fake, png_bytes=png_bytes)
            http_request(fake.port, "POST", "/v1/images/generations", BODY, HEADERS)  # build the image once
            for round_ in range(args.rounds):
                for name in CLIENTS:
                    row = uvloop.run(measure(name, url, args.seconds, args.concurrency))
                    row |= {"payload": label, "round": round_ + 1}
                    results.append(row)
                    print(json.dumps(row), file=sys.stderr, flush=True)
    finally:
        fake.stop()
    print("\n| payload | client | requests/s | client CPU per request |\n|---|---|---:|---:|")
    for label in ("small PNG", "~1.6 MB PNG"):
        for name in CLIENTS:
            rows = [r for r in results if r["payload"] == label and r["client"] == name]
            cpu = min(r["client_cpu_us_per_request"] for r in rows)
            rps = max(r["rps"] for r in rows)
            print(f"| {label} | {name} | {rps:,.0f} | {cpu:,.0f} µs |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
