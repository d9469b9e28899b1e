"""``apiinone wait``: the quickstart's readiness wait answers 0 once /readyz answers, and fails
loudly (exit 1, a message) when nothing answers in time, instead of letting the next command fail."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from pathlib import Path

from apiinone.web.ready import ready_line, wait_until_ready
from tests.integration.live_server import LiveServer


def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # closed again when this returns: nothing listens there


def test_wait_exits_1_with_a_message_when_nothing_answers() -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    done = subprocess.run([sys.executable, "-m", "apiinone.cli", "wait", "--url", url, "--timeout", "0.5"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert f"{url} did not answer /readyz within 0.5 s" in done.stderr


async def test_wait_returns_once_the_server_is_ready_and_the_ready_line_says_where(
        tmp_path: Path, sqlite_url: str) -> None:
    async with LiveServer(tmp_path, sqlite_url) as server:
        assert await wait_until_ready(server.base_url, timeout_s=30)
        done = await asyncio.to_thread(subprocess.run, [
            sys.executable, "-m", "apiinone.cli", "wait", "--url", server.base_url, "--timeout", "30"],
            capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert done.stderr.strip() == f"ready: {server.base_url}"
        line = ready_line(server.container, f"127.0.0.1:{server.port}")
    assert line.startswith(f"apiinone ready: {server.base_url} | database sqlite+aiosqlite:///")
    models = line.split("| models ", 1)[1].split(" | worker ", 1)[0]
    available, _, unconfigured = models.partition(" (no upstream configured: ")
    offline = {m.id for m in server.container.catalog.launched() if server.container.pool.is_available(m)}
    assert set(available.split(", ")) == offline and "local-typeset" in offline
    assert "gpt-image-1.5-official" in unconfigured.rstrip(")").split(", ")
    assert "| worker embedded |" in line
    assert line.endswith(f"| console {server.base_url}/console | API reference {server.base_url}/docs")
    assert "listening on" not in line  # bound where it is reached


def test_ready_line_hides_a_database_password(tmp_path: Path) -> None:
    from apiinone.bootstrap import build_container
    from tests.conftest import make_settings

    container = build_container(make_settings(tmp_path, "postgresql+asyncpg://app:s3cret@db.internal:5432/apiinone",
                                              public_url="https://ai.example.com"))
    try:
        line = ready_line(container, "0.0.0.0:8000", embedded_worker=False)
    finally:
        asyncio.run(container.aclose())
    assert "s3cret" not in line and "postgresql+asyncpg://app:***@db.internal:5432/apiinone" in line
    assert line.startswith("apiinone ready: https://ai.example.com (listening on 0.0.0.0:8000) |")
    assert "| worker none in this process (tasks wait for `apiinone worker`) |" in line
