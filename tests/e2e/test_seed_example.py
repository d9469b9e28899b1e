"""The issue's "done when": the product page's curl example against a real ``apiinone serve`` process.

Everything a newcomer would do happens here for real: the server is a subprocess on a free loopback
port with its own data dir, the user and key come from the ``apiinone admin`` CLI, the upstream is
the fake OpenAI server on loopback, and the image is fetched with no key.
"""

from __future__ import annotations

import io
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from tests.fakes.fake_openai import FakeOpenAI

pytestmark = pytest.mark.e2e

# The request body of the seed's curl example, byte for byte.
SEED_BODY = b"""{
  "model": "gpt-image-1-5",
  "prompt": "A modern logo design for a coffee shop called \\"Bean & Brew\\" with clean typography",
  "quality": "medium",
  "aspect_ratio": "1:1"
}"""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS in /proc status")


@dataclass
class RunningServer:
    url: str
    env: dict[str, str]
    process: subprocess.Popen[bytes]
    startup_s: float
    idle_rss_kib: int
    log_path: Path

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "apiinone.cli", *args], env=self.env, capture_output=True,
                              text=True, timeout=120, check=False)


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as server:
        yield server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, fake: FakeOpenAI) -> Iterator[RunningServer]:
    data_dir = tmp_path_factory.mktemp("serve") / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("APIINONE_", "OPENAI_"))}
    env |= {"APIINONE_DATA_DIR": str(data_dir), "OPENAI_API_KEY": fake.api_key,
            "OPENAI_BASE_URL": fake.base_url, "APIINONE_EGRESS_ALLOW": "127.0.0.0/8",
            "APIINONE_LOG_LEVEL": "WARNING"}
    port = free_port()
    log_path = data_dir.parent / "serve.log"
    with log_path.open("wb") as log:
        started = time.monotonic()
        process = subprocess.Popen([sys.executable, "-m", "apiinone.cli", "serve", "--port", str(port)],
                                   env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        startup_s = _wait_healthy(url, process, started, log_path)
        time.sleep(2.0)  # let start-up garbage settle before sampling idle memory
        yield RunningServer(url=url, env=env, process=process, startup_s=startup_s,
                            idle_rss_kib=rss_kib(process.pid), log_path=log_path)
    finally:
        if process.poll() is None:
            process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_healthy(url: str, process: subprocess.Popen[bytes], started: float, log_path: Path) -> float:
    deadline = started + 120
    with httpx.Client(timeout=5, trust_env=False) as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise AssertionError(f"serve exited with {process.returncode}:\n{log_path.read_text()}")
            try:
                if client.get(f"{url}/healthz").status_code == 200:
                    return time.monotonic() - started
            except httpx.TransportError:
                pass
            time.sleep(0.02)
    raise AssertionError(f"serve did not answer /healthz in time:\n{log_path.read_text()}")


@pytest.fixture(scope="module")
def api_key(server: RunningServer) -> str:
    created = server.cli("admin", "create-user", "newcomer@example.com", "--password", "password123")
    assert created.returncode == 0, created.stderr
    granted = server.cli("admin", "grant", "newcomer@example.com", "100", "--note", "e2e")
    assert granted.returncode == 0, granted.stderr
    key = server.cli("admin", "create-key", "newcomer@example.com", "--name", "e2e")
    assert key.returncode == 0, key.stderr
    assert key.stdout.count("\n") == 1 and key.stdout.startswith("aio_"), "create-key prints the key alone"
    return key.stdout.strip()


def wait_for_task(client: httpx.Client, url: str, key: str, task_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 120
    while True:
        body: dict[str, Any] = client.get(f"{url}/api/v1/tasks/{task_id}",
                                          headers={"Authorization": f"Bearer {key}"}).json()
        if body["status"] in ("succeeded", "failed", "canceled"):
            return body
        if time.monotonic() > deadline:
            raise AssertionError(f"task {task_id} still {body['status']}")
        time.sleep(0.05)


def test_seed_curl_example_succeeds_end_to_end(
    server: RunningServer, api_key: str, fake: FakeOpenAI, capsys: pytest.CaptureFixture[str]
) -> None:
    with capsys.disabled():
        print(f"\n[serve] first /healthz 200 after {server.startup_s:.2f} s; "
              f"idle RSS {server.idle_rss_kib / 1024:.1f} MiB")
    fake.reset()
    with httpx.Client(timeout=30, trust_env=False) as client:
        r = client.post(f"{server.url}/api/v1/images/generations", content=SEED_BODY,
                        headers={"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"})
        assert r.status_code == 202, r.text
        task = r.json()
        assert task["model"] == "gpt-image-1.5-official" and task["status"] == "queued"
        assert r.headers["location"] == f"/api/v1/tasks/{task['task_id']}"
        assert task["urls"]["get"] == f"{server.url}/api/v1/tasks/{task['task_id']}"
        done = wait_for_task(client, server.url, api_key, task["task_id"])
        assert done["status"] == "succeeded", done
        assert done["credits"] == {"price": 10, "charged": 10} and done["node"]
        [image] = done["output"]["images"]
        assert (image["width"], image["height"], image["content_type"]) == (1024, 1024, "image/png")
        served = client.get(image["url"])  # no Authorization header
        account = client.get(f"{server.url}/api/v1/account", headers={"Authorization": f"Bearer {api_key}"})
    assert served.status_code == 200 and served.headers["content-type"] == "image/png"
    picture = Image.open(io.BytesIO(served.content))
    assert (picture.format, picture.size) == ("PNG", (1024, 1024))
    assert served.content == fake.image_for("1024x1024")
    [sent] = fake.requests
    assert sent.path == "/v1/images/generations"
    assert sent.headers["authorization"] == f"Bearer {fake.api_key}"
    assert (sent.json["model"], sent.json["size"], sent.json["quality"]) == ("gpt-image-1.5", "1024x1024", "medium")
    assert sent.json["prompt"] == 'A modern logo design for a coffee shop called "Bean & Brew" with clean typography'
    assert account.json()["credits"] == {"balance": 90, "held": 0, "available": 90}


class _PngHandler(BaseHTTPRequestHandler):
    png = b""

    def do_GET(self) -> None:
        if self.path != "/input.png":
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(self.png)))
        self.end_headers()
        self.wfile.write(self.png)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def input_png_url() -> Iterator[tuple[str, bytes]]:
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 30, 90)).save(buf, format="PNG")
    handler = type("Handler", (_PngHandler,), {"png": buf.getvalue()})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/input.png", buf.getvalue()
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_edit_mode_sends_the_input_images_upstream(
    server: RunningServer, api_key: str, fake: FakeOpenAI, input_png_url: tuple[str, bytes]
) -> None:
    url, png = input_png_url
    fake.reset()
    body = {"model": "gpt-image-1-5", "prompt": "put the logo on a mug", "aspect_ratio": "3:2",
            "input_urls": [url, url]}
    with httpx.Client(timeout=30, trust_env=False) as client:
        r = client.post(f"{server.url}/api/v1/images/generations", json=body,
                        headers={"Authorization": f"Bearer {api_key}"})
        assert r.status_code == 202, r.text
        done = wait_for_task(client, server.url, api_key, r.json()["task_id"])
    assert done["status"] == "succeeded", done
    assert done["input"]["input_urls"] == [url, url]
    [image] = done["output"]["images"]
    assert (image["width"], image["height"]) == (1536, 1024)
    [sent] = fake.requests
    assert sent.path == "/v1/images/edits"
    assert (sent.form["model"], sent.form["size"], sent.form["quality"]) == ("gpt-image-1.5", "1536x1024", "medium")
    images = sent.file_fields("image[]")
    assert [f.data for f in images] == [png, png]
    assert all(f.content_type == "image/png" for f in images)


def test_sigterm_stops_the_server_cleanly(server: RunningServer) -> None:
    """Runs last in this module: SIGTERM takes the graceful path, which stops the embedded worker
    and marks its node stopped (uvicorn re-raises the signal afterwards, hence -SIGTERM)."""
    server.process.terminate()
    assert server.process.wait(timeout=60) in (0, -signal.SIGTERM)
    log = server.log_path.read_text(errors="replace")
    assert "Traceback" not in log, log
    with sqlite3.connect(Path(server.env["APIINONE_DATA_DIR"]) / "apiinone.db") as conn:
        nodes = conn.execute("SELECT name, stopped_at FROM worker_nodes").fetchall()
    assert nodes and all(stopped_at is not None for _name, stopped_at in nodes), nodes
