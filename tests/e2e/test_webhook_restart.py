"""A webhook survives ``kill -9`` of the server between the task's end and the delivery.

A real ``apiinone serve`` process (SQLite in its own data dir, egress opened to loopback only) runs
a task with a ``callback_url`` on a real receiver on 127.0.0.1. The server is killed while the
delivery is still owed, in two ways: the receiver is down (the first attempt failed and a retry is
scheduled) or the receiver holds the first attempt open (killed mid-request, lease held). After a
restart the webhook arrives, signed, with the ``webhook-id`` it had before the crash.
"""

from __future__ import annotations

import asyncio
import functools
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from standardwebhooks import Webhook

from tests.fakes.webhook_receiver import Reply, WebhookReceiver, loopback_socket
from tests.waiting import until as wait_until

pytestmark = pytest.mark.e2e

SEED = {"model": "local-typeset", "prompt": 'A sign that says "still here"', "quality": "medium"}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """``apiinone serve`` as a subprocess that can be killed hard and started again."""

    def __init__(self, data_dir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = data_dir.parent / "serve.log"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("APIINONE_", "OPENAI_"))}
        self.env |= {
            "APIINONE_DATA_DIR": str(data_dir), "APIINONE_EGRESS_ALLOW": "127.0.0.0/8",
            "APIINONE_WEBHOOK_RETRY_SCHEDULE_S": "[1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]",
            "APIINONE_WEBHOOK_TIMEOUT_S": "2", "APIINONE_WEBHOOK_LEASE_S": "3", "APIINONE_WEBHOOK_POLL_S": "0.2",
            "APIINONE_LOG_LEVEL": "INFO",
        }
        self.process: subprocess.Popen[bytes] | None = None

    def cli(self, *args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "apiinone.cli", *args], env=self.env, capture_output=True,
                              text=True, timeout=120, check=False)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    async def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "apiinone.cli", "serve", "--port", str(self.port)],
                env=self.env, stdout=log, stderr=subprocess.STDOUT)
        deadline = asyncio.get_running_loop().time() + 90
        async with httpx.AsyncClient() as client:
            while True:
                assert self.process.poll() is None, f"server exited:\n{self.log_tail()}"
                try:
                    if (await client.get(f"{self.url}/healthz")).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                assert asyncio.get_running_loop().time() < deadline, f"server did not start:\n{self.log_tail()}"
                await asyncio.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL: no shutdown hook runs, no lease is handed back."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=30)

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else ""


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    running = Server(tmp_path / "data")
    try:
        yield running
    finally:
        running.kill()


async def deliveries(client: httpx.AsyncClient, task_id: str) -> list[dict[str, Any]]:
    r = await client.get(f"/api/v1/tasks/{task_id}/deliveries")
    assert r.status_code == 200, r.text
    data: list[dict[str, Any]] = r.json()["data"]
    return data


until = functools.partial(wait_until, timeout=60.0, interval=0.1)


@pytest.mark.parametrize("crash_point", ["receiver_down", "attempt_in_flight"])
async def test_webhook_arrives_after_kill_and_restart(server: Server, crash_point: str) -> None:
    server.cli("admin", "create-user", "hook@example.com", "--password", "password123", "--credits", "10")
    key = server.cli("admin", "create-key", "hook@example.com")
    reserved = loopback_socket()  # bound, not listening: connections are refused until it serves
    port = reserved.getsockname()[1]
    receiver = WebhookReceiver(sock=reserved)
    if crash_point == "attempt_in_flight":
        answered = [False]

        def hang_until_restart(_request: Any) -> Reply:
            return Reply(200) if answered[0] else Reply(hang=True)

        receiver.respond = hang_until_restart
        await receiver.start()

    await server.start()
    async with httpx.AsyncClient(base_url=server.url, headers={"Authorization": f"Bearer {key}"}) as api:
        secret = (await api.get("/api/v1/account/webhook-secret")).json()["secret"]
        r = await api.post("/api/v1/images/generations",
                           json={**SEED, "callback_url": f"http://127.0.0.1:{port}/hook"})
        assert r.status_code == 202, r.text
        task_id = r.json()["task_id"]

        async def ended() -> bool:
            return bool((await api.get(f"/api/v1/tasks/{task_id}")).json()["status"] == "succeeded")

        await until(ended, "the task to succeed")
        if crash_point == "receiver_down":
            async def failed_once() -> list[dict[str, Any]]:
                found = await deliveries(api, task_id)
                return found if found and found[0]["attempts"] else []

            before = (await until(failed_once, "a refused first attempt"))[0]
            assert before["status"] == "pending" and before["attempts"][0]["status_code"] is None
        else:
            hung = await receiver.wait_for(lambda got: len(got) >= 1, timeout=60)
            before = {"id": hung[0].headers["webhook-id"]}
        server.kill()

    seen_before_restart = len(receiver.received)
    if crash_point == "receiver_down":
        await receiver.start()
    else:
        answered[0] = True
    try:
        await server.start()
        arrived = await receiver.wait_for(lambda got: len(got) > seen_before_restart, timeout=60)
        request = arrived[-1]
        assert request.headers["webhook-id"] == before["id"]
        payload = Webhook(secret).verify(request.body, request.headers)
        assert payload["task_id"] == task_id and payload["status"] == "succeeded"
        async with httpx.AsyncClient(base_url=server.url, headers={"Authorization": f"Bearer {key}"}) as api:
            async def delivered() -> list[dict[str, Any]]:
                found = await deliveries(api, task_id)
                return found if found and found[0]["status"] == "delivered" else []

            (after,) = await until(delivered, "the delivery to be marked delivered")
        assert after["id"] == before["id"] and after["attempts"][-1]["status_code"] == 200
    finally:
        await receiver.stop()
