"""Benchmarks side by side: apiinone and the fake OpenAI upstream, loaded by wrk on loopback.

One command (``make bench`` runs ``scripts/bench.sh``, which calls this) starts everything fresh:
the fake upstream (``tests/fakes/fake_openai.py``), then ``apiinone serve`` on a new SQLite file
(or, with ``--postgres``, a new PostgreSQL database), creates a user and a key with the CLI, loads
each route with wrk (``bench/request.lua``, which counts only 2xx answers as success) and prints
one table, with the figures of the upstream alone, measured in the same run, beside ours. Results
are also written as JSON under ``bench/results/`` so runs can be compared.

Two server runs, so no row measures another row's leftovers:

* run 1, ``apiinone serve`` as shipped (API + embedded worker): time to first ``/healthz`` 200,
  idle memory, the OpenAI-compatible route (small and realistic images), end-to-end tasks/s, and
  memory after all of it;
* run 2, ``apiinone serve --no-worker`` (the API tier alone): task creation and task reads, so the
  creation row measures the API, not the local-typeset renderer drawing the tasks it queues.

``--short`` is the CI version: one-second loads, same rows, no timing is judged.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
LUA = ROOT / "bench" / "request.lua"
FAKE = ROOT / "tests" / "fakes" / "fake_openai.py"
RESULTS = ROOT / "bench" / "results"
VENV_BIN = ROOT / ".venv" / "bin"

REALISTIC_PNG_BYTES = 1_600_000
EMAIL = "bench@example.com"
CREDITS = 10**9  # the most the CLI grants at once
SEED_BODY = {
    "model": "local-typeset",
    "prompt": 'A modern logo design for a coffee shop called "Bean & Brew" with clean typography',
    "quality": "medium",
    "aspect_ratio": "1:1",
}
E2E_BODY = {**SEED_BODY, "model": "gpt-image-1.5-official"}
E2E_PRICE = 10  # credits of gpt-image-1.5-official at medium quality (the catalog)
OPENAI_BODY = {"model": "gpt-image-1.5", "prompt": SEED_BODY["prompt"], "size": "1024x1024", "quality": "medium"}

# The targets for this machine (2 cores shared by server and load generator).
TARGETS = {
    "create_rps": 1500, "read_rps": 5000, "openai_rps": 1300, "openai_added_p50_ms": 2.0,
    "openai_realistic_ratio": 0.70, "e2e_tps": 500, "idle_rss_mb": 100, "ready_s": 2.0, "chat_rps": 1500,
}


# ------------------------------------------------------------------------------------------ helpers


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_request(port: int, method: str, path: str, body: bytes | None = None,
                 headers: dict[str, str] | None = None, timeout: float = 30.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def wait_ready(port: int, path: str, started: float, proc: subprocess.Popen[bytes], timeout: float = 180.0) -> float:
    """Seconds from ``started`` to the first 200 on ``path``, polling every 5 ms."""
    deadline = started + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before answering {path}")
        try:
            status, _ = http_request(port, "GET", path, timeout=2)
            if status == 200:
                return time.monotonic() - started
        except OSError:
            pass
        time.sleep(0.005)
    raise RuntimeError(f"no 200 from {path} on port {port} within {timeout:.0f} s")


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (uvicorn's worker processes, a multiprocessing tracker)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def rss_mb(pid: int) -> float:
    total_kb = 0
    for p in process_tree(pid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total_kb += int(line.split()[1])
    return total_kb / 1024


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of the whole process tree."""
    ticks = 0
    for p in process_tree(pid):
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


@dataclass
class Load:
    """One wrk run, as bench/request.lua reports it."""

    ok: int
    non2xx: int
    socket_errors: int
    seconds: float
    p50_ms: float
    p99_ms: float
    server_cpu_s: float
    first_non2xx: str = ""

    @property
    def rps(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0

    @property
    def cpu_us_per_ok(self) -> float | None:
        return self.server_cpu_s / self.ok * 1e6 if self.ok else None

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "non2xx": self.non2xx, "socket_errors": self.socket_errors,
                "seconds": round(self.seconds, 3), "rps": round(self.rps, 1), "p50_ms": round(self.p50_ms, 3),
                "p99_ms": round(self.p99_ms, 3), "server_cpu_s": round(self.server_cpu_s, 3),
                "server_cpu_us_per_request": round(self.cpu_us_per_ok, 1) if self.cpu_us_per_ok else None,
                "first_non2xx": self.first_non2xx}


def wrk(port: int, path: str, *, connections: int, seconds: float, server_pid: int, workdir: Path,
        method: str = "GET", auth: str | None = None, body: dict[str, Any] | None = None,
        paths: list[str] | None = None) -> Load:
    env = {**os.environ, "BENCH_METHOD": method}
    if auth:
        env["BENCH_AUTH"] = auth
    if body is not None:
        body_file = workdir / f"body-{uuid.uuid4().hex[:8]}.json"
        body_file.write_bytes(json.dumps(body).encode())
        env["BENCH_BODY_FILE"] = str(body_file)
    if paths:
        paths_file = workdir / f"paths-{uuid.uuid4().hex[:8]}.txt"
        paths_file.write_text("\n".join(paths) + "\n")
        env["BENCH_PATHS_FILE"] = str(paths_file)
    threads = max(1, min(2, connections))
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "30s",
           "-s", str(LUA), f"http://127.0.0.1:{port}{path}"]
    cpu_before = cpu_s(server_pid)
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    cpu_used = cpu_s(server_pid) - cpu_before
    match = re.search(r"^BENCH_RESULT (\{.*\})$", out.stdout, re.MULTILINE)
    if out.returncode != 0 or match is None:
        raise RuntimeError(f"wrk failed ({out.returncode}): {out.stdout[-2000:]} {out.stderr[-2000:]}")
    r = json.loads(match.group(1))
    errors = sum(r["socket_errors"].values())
    return Load(ok=r["ok"], non2xx=r["non2xx"], socket_errors=errors, seconds=r["duration_us"] / 1e6,
                p50_ms=r["latency_us"]["p50"] / 1000, p99_ms=r["latency_us"]["p99"] / 1000,
                server_cpu_s=cpu_used, first_non2xx=r["first_non2xx"])


# ---------------------------------------------------------------------------------------- processes


@dataclass
class Service:
    name: str
    proc: subprocess.Popen[bytes]
    port: int
    ready_s: float
    log_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        """SIGTERM to the process group we started, then SIGKILL if it lingers."""
        if self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)


def start_fake(workdir: Path) -> Service:
    port_file = workdir / "fake.port"
    log_path = workdir / "fake.log"
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, str(FAKE), "--port", "0", "--port-file", str(port_file), "--max-recorded", "0"],
        stdout=log_path.open("wb"), stderr=subprocess.STDOUT, start_new_session=True, cwd=ROOT,
    )
    service = Service("fake-openai", proc, 0, 0.0, log_path)
    try:
        deadline = started + 60
        while not port_file.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the fake upstream did not start; see {log_path}")
            time.sleep(0.005)
        service.port = int(port_file.read_text())
        service.ready_s = wait_ready(service.port, "/_fake/config", started, proc)
    except BaseException:
        service.stop()
        raise
    return service


def fake_config(fake: Service, **values: Any) -> None:
    status, body = http_request(fake.port, "POST", "/_fake/config", json.dumps(values).encode())
    if status != 200:
        raise RuntimeError(f"fake config failed: {status} {body[:200]!r}")


def apiinone_bin() -> str:
    candidate = VENV_BIN / "apiinone"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("apiinone")
    if not found:
        raise RuntimeError("apiinone is not installed: run scripts/setup.sh")
    return found


def server_env(data_dir: Path, database_url: str | None, fake: Service) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("APIINONE_")}
    env.update({
        "APIINONE_DATA_DIR": str(data_dir), "APIINONE_ENV": "development", "APIINONE_LOG_LEVEL": "WARNING",
        "OPENAI_API_KEY": "sk-bench-fake", "OPENAI_BASE_URL": f"http://127.0.0.1:{fake.port}/v1",
    })
    if database_url:
        env["APIINONE_DATABASE_URL"] = database_url
    return env


def start_server(env: dict[str, str], workdir: Path, name: str, extra: list[str]) -> Service:
    port = free_port()
    log_path = workdir / f"{name}.log"
    started = time.monotonic()
    proc = subprocess.Popen(
        [apiinone_bin(), "serve", "--host", "127.0.0.1", "--port", str(port), *extra],
        env=env, stdout=log_path.open("wb"), stderr=subprocess.STDOUT, start_new_session=True, cwd=workdir,
    )
    service = Service(name, proc, port, 0.0, log_path)
    try:
        service.ready_s = wait_ready(port, "/healthz", started, proc)
    except BaseException as exc:
        service.stop()
        raise RuntimeError(f"{exc}; log tail:\n{log_path.read_text()[-3000:]}") from exc
    return service


def cli(env: dict[str, str], *args: str) -> str:
    out = subprocess.run([apiinone_bin(), *args], env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"apiinone {' '.join(args)} failed: {out.stderr[-2000:]}")
    return out.stdout.strip()


@contextlib.contextmanager
def postgres_database() -> Iterator[str]:
    """A fresh PostgreSQL database for one run, dropped afterwards."""
    import asyncio

    import asyncpg

    admin = os.environ.get("APIINONE_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/test")
    name = f"apiinone_bench_{uuid.uuid4().hex[:10]}"

    async def run(sql: str) -> None:
        conn = await asyncpg.connect(admin)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run(f'CREATE DATABASE "{name}"'))
    try:
        yield admin.replace("postgresql://", "postgresql+asyncpg://").rsplit("/", 1)[0] + f"/{name}"
    finally:
        asyncio.run(run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


# ------------------------------------------------------------------------------------------- phases


@dataclass
class Options:
    seconds: float
    connections: int
    workers: int
    e2e_seconds: float
    postgres: bool
    short: bool


@dataclass
class Results:
    meta: dict[str, Any]
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)


def auth_of(key: str) -> str:
    return f"Bearer {key}"


def openai_route_exists(server: Service, key: str) -> tuple[bool, str]:
    """The route is being built in parallel; a missing route answers our own 404 ``not_found``."""
    status, body = http_request(server.port, "POST", "/v1/images/generations", json.dumps(OPENAI_BODY).encode(),
                                {"Authorization": auth_of(key), "Content-Type": "application/json"})
    if status == 404 and b'"not_found"' in body:
        return False, "POST /v1/images/generations does not exist in this build"
    if not 200 <= status < 300:
        return False, f"POST /v1/images/generations answered {status}: {body[:200].decode(errors='replace')}"
    return True, ""


def openai_rows(results: Results, opts: Options, server: Service, fake: Service, key: str, workdir: Path,
                realistic: bool) -> None:
    name = "openai_realistic" if realistic else "openai"
    fake_config(fake, png_bytes=REALISTIC_PNG_BYTES if realistic else 0)
    http_request(fake.port, "POST", "/v1/images/generations", json.dumps(OPENAI_BODY).encode(),
                 {"Content-Type": "application/json", "Authorization": "Bearer sk-bench-fake"})  # build the image once
    exists, note = openai_route_exists(server, key)
    if not exists:
        results.rows[name] = {"status": "skipped", "note": note}
        log(f"{name}: skipped ({note})")
        return
    common = {"method": "POST", "body": OPENAI_BODY, "workdir": workdir, "seconds": opts.seconds}
    log(f"{name}: upstream direct, {opts.connections} clients")
    direct = wrk(fake.port, "/v1/images/generations", connections=opts.connections, server_pid=fake.pid,
                 auth="Bearer sk-bench-fake", **common)
    log(f"{name}: through apiinone, {opts.connections} clients")
    ours = wrk(server.port, "/v1/images/generations", connections=opts.connections, server_pid=server.pid,
               auth=auth_of(key), **common)
    log(f"{name}: upstream direct, 1 client")
    direct1 = wrk(fake.port, "/v1/images/generations", connections=1, server_pid=fake.pid,
                  auth="Bearer sk-bench-fake", **common)
    log(f"{name}: through apiinone, 1 client")
    ours1 = wrk(server.port, "/v1/images/generations", connections=1, server_pid=server.pid,
                auth=auth_of(key), **common)
    results.rows[name] = {
        "status": "ok", "connections": opts.connections, "png_bytes": REALISTIC_PNG_BYTES if realistic else None,
        "apiinone": ours.to_json(), "upstream_direct": direct.to_json(),
        "apiinone_1_client": ours1.to_json(), "upstream_direct_1_client": direct1.to_json(),
        "added_p50_ms_1_client": round(ours1.p50_ms - direct1.p50_ms, 3),
        "added_p99_ms_1_client": round(ours1.p99_ms - direct1.p99_ms, 3),
        "ratio_to_direct": round(ours.rps / direct.rps, 3) if direct.rps else None,
    }
    fake_config(fake, png_bytes=0)


def account_credits(server: Service, key: str) -> dict[str, int]:
    status, body = http_request(server.port, "GET", "/api/v1/account", headers={"Authorization": auth_of(key)})
    if status != 200:
        raise RuntimeError(f"GET /api/v1/account answered {status}: {body[:200]!r}")
    credits: dict[str, int] = json.loads(body)["credits"]
    return credits


def e2e_row(results: Results, opts: Options, server: Service, fake: Service, key: str, workdir: Path) -> None:
    """Open loop: wrk creates tasks on the instant upstream for a while; the row is the number that
    succeeded divided by the time from the first create to the last one finishing."""
    fake_config(fake, png_bytes=0, latency_ms=0)
    before = account_credits(server, key)
    quiet_by = time.monotonic() + 60
    while before["held"] and time.monotonic() < quiet_by:  # tasks of earlier rows still ending
        time.sleep(0.05)
        before = account_credits(server, key)
    log(f"e2e: creating gpt-image-1.5-official tasks for {opts.e2e_seconds:.0f} s, then waiting for all to end")
    started = time.monotonic()
    cpu_before = cpu_s(server.pid)
    load = wrk(server.port, "/api/v1/images/generations", connections=opts.connections, seconds=opts.e2e_seconds,
               server_pid=server.pid, workdir=workdir, method="POST", auth=auth_of(key), body=E2E_BODY)
    deadline = time.monotonic() + max(120.0, opts.e2e_seconds * 30)
    credits = account_credits(server, key)
    while credits["held"] > before["held"] and time.monotonic() < deadline:
        time.sleep(0.02)
        credits = account_credits(server, key)
    finished = time.monotonic()
    succeeded = (before["balance"] - credits["balance"]) // E2E_PRICE
    drained = credits["held"] <= before["held"]
    elapsed = finished - started
    results.rows["e2e"] = {
        "status": "ok" if drained else "timeout", "created": load.ok, "create_non2xx": load.non2xx,
        "succeeded": succeeded, "not_succeeded": max(0, load.ok - succeeded), "seconds": round(elapsed, 3),
        "tasks_per_s": round(succeeded / elapsed, 1) if elapsed else 0.0,
        "create_rps": round(load.rps, 1), "server_cpu_s": round(cpu_s(server.pid) - cpu_before, 3),
    }


def serving_run(results: Results, opts: Options, env: dict[str, str], fake: Service, workdir: Path,
                extra: list[str]) -> None:
    """Run 1: the server as shipped (embedded worker)."""
    log("run 1: apiinone serve (API + embedded worker)")
    server = start_server(env, workdir, "serve", extra)
    try:
        time.sleep(1.0)  # let start-up work (first heartbeat, lazy imports) settle before reading memory
        results.rows["startup"] = {"status": "ok", "apiinone_ready_s": round(server.ready_s, 3),
                                   "upstream_direct_ready_s": round(fake.ready_s, 3),
                                   "apiinone_idle_rss_mb": round(rss_mb(server.pid), 1),
                                   "upstream_direct_idle_rss_mb": round(rss_mb(fake.pid), 1),
                                   "apiinone_processes": len(process_tree(server.pid))}
        cli(env, "admin", "create-user", EMAIL, "--credits", str(CREDITS))
        key = cli(env, "admin", "create-key", EMAIL, "--name", "bench")
        openai_rows(results, opts, server, fake, key, workdir, realistic=False)
        openai_rows(results, opts, server, fake, key, workdir, realistic=True)
        e2e_row(results, opts, server, fake, key, workdir)
        results.rows["startup"]["apiinone_rss_after_mb"] = round(rss_mb(server.pid), 1)
        results.rows["startup"]["upstream_direct_rss_after_mb"] = round(rss_mb(fake.pid), 1)
    finally:
        server.stop()


def api_tier_run(results: Results, opts: Options, env: dict[str, str], fake: Service, workdir: Path,
                 extra: list[str]) -> None:
    """Run 2: ``--no-worker``, for task creation and reads (the API tier alone)."""
    log("run 2: apiinone serve --no-worker (API tier)")
    server = start_server(env, workdir, "serve-api", [*extra, "--no-worker"])
    try:
        key = cli(env, "admin", "create-key", EMAIL, "--name", "bench-api")
        common = {"connections": opts.connections, "seconds": opts.seconds, "workdir": workdir}
        log(f"create: upstream direct, {opts.connections} clients")
        direct = wrk(fake.port, "/v1/images/generations", server_pid=fake.pid, method="POST",
                     auth="Bearer sk-bench-fake", body=OPENAI_BODY, **common)
        log(f"create: apiinone, {opts.connections} clients")
        create = wrk(server.port, "/api/v1/images/generations", server_pid=server.pid, method="POST",
                     auth=auth_of(key), body=SEED_BODY, **common)
        results.rows["create"] = {"status": "ok", "connections": opts.connections,
                                  "serve_args": [*extra, "--no-worker"], "apiinone": create.to_json(),
                                  "upstream_direct": direct.to_json()}
        status, body = http_request(server.port, "GET", "/api/v1/tasks?limit=100",
                                    headers={"Authorization": auth_of(key)})
        if status != 200:
            raise RuntimeError(f"GET /api/v1/tasks answered {status}: {body[:200]!r}")
        paths = [f"/api/v1/tasks/{t['task_id']}" for t in json.loads(body)["data"]]
        log(f"read: upstream direct, {opts.connections} clients")
        direct_read = wrk(fake.port, "/v1/models", server_pid=fake.pid, auth="Bearer sk-bench-fake", **common)
        log(f"read: apiinone, {opts.connections} clients over {len(paths)} tasks")
        read = wrk(server.port, "/api/v1/tasks", server_pid=server.pid, auth=auth_of(key), paths=paths, **common)
        results.rows["read"] = {"status": "ok", "connections": opts.connections, "tasks": len(paths),
                                "apiinone": read.to_json(), "upstream_direct": direct_read.to_json()}
        results.rows["startup"]["apiinone_api_tier_ready_s"] = round(server.ready_s, 3)
    finally:
        server.stop()


def chat_run(results: Results, opts: Options, database_url: str | None, workdir: Path) -> None:
    """Run 3: ``apiinone serve`` with a chat model on the fake chat upstream (bench/chat_bench.py)."""
    from chat_bench import chat_rows

    log("run 3: chat (non-streamed at 16 clients, then sequential streams)")
    chat_rows(results.rows, seconds=opts.seconds, connections=opts.connections,
              streams=20 if opts.short else 200, database_url=database_url, workdir=workdir)


# -------------------------------------------------------------------------------------------- table


def _fmt(value: float | None, unit: str = "", digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}{unit}"


def table(results: Results) -> str:
    rows = results.rows
    lines = [
        "| metric | apiinone | upstream direct | target |",
        "|---|---:|---:|---:|",
    ]

    def load_cells(row: dict[str, Any], key: str) -> str:
        r = row[key]
        return f"{_fmt(r['rps'])}/s (p50 {_fmt(r['p50_ms'], ' ms', 1)}, p99 {_fmt(r['p99_ms'], ' ms', 1)})"

    c = rows.get("create", {})
    if c.get("status") == "ok":
        lines.append(f"| task creation, {c['connections']} clients (local-typeset; serve {' '.join(c['serve_args'])})"
                     f" | {load_cells(c, 'apiinone')} | {load_cells(c, 'upstream_direct')}"
                     f" | ≥ {TARGETS['create_rps']:,}/s |")
    r = rows.get("read", {})
    if r.get("status") == "ok":
        lines.append(f"| task read, {r['connections']} clients | {load_cells(r, 'apiinone')}"
                     f" | {load_cells(r, 'upstream_direct')} (GET /v1/models) | ≥ {TARGETS['read_rps']:,}/s |")
    for name, label in (("openai", "small PNG"), ("openai_realistic", "~1.6 MB PNG")):
        o = rows.get(name, {})
        if o.get("status") != "ok":
            lines.append(f"| POST /v1/images/generations ({label}) | skipped: {o.get('note', 'not run')} | | |")
            continue
        target = (f"≥ {TARGETS['openai_rps']:,}/s" if name == "openai"
                  else f"≥ {TARGETS['openai_realistic_ratio']:.0%} of direct")
        lines.append(f"| POST /v1/images/generations ({label}), {o['connections']} clients"
                     f" | {load_cells(o, 'apiinone')} ({o['ratio_to_direct']:.0%} of direct)"
                     f" | {load_cells(o, 'upstream_direct')} | {target} |")
        a1, d1 = o["apiinone_1_client"], o["upstream_direct_1_client"]
        lines.append(f"| same, 1 client: p50 / p99 (added)"
                     f" | {_fmt(a1['p50_ms'], ' ms', 2)} / {_fmt(a1['p99_ms'], ' ms', 2)}"
                     f" (+{_fmt(o['added_p50_ms_1_client'], ' ms', 2)} / +{_fmt(o['added_p99_ms_1_client'], ' ms', 2)})"
                     f" | {_fmt(d1['p50_ms'], ' ms', 2)} / {_fmt(d1['p99_ms'], ' ms', 2)}"
                     f" | {'≤ +2 ms p50' if name == 'openai' else ''} |")
    ch = rows.get("chat", {})
    if ch.get("status") == "ok":
        lines.append(f"| POST /v1/chat/completions, non-streamed, {ch['connections']} clients"
                     f" | {load_cells(ch, 'apiinone')} ({ch['ratio_to_direct']:.0%} of direct)"
                     f" | {load_cells(ch, 'upstream_direct')} | ≥ {TARGETS['chat_rps']:,}/s |")
    cs = rows.get("chat_stream", {})
    if cs.get("status") == "ok":
        lines.append(f"| same, streamed: time to first token p50 (added)"
                     f" | {_fmt(cs['apiinone_ttft']['p50_ms'], ' ms', 2)} (+{_fmt(cs['added_ttft_p50_ms'], ' ms', 2)})"
                     f" | {_fmt(cs['upstream_direct_ttft']['p50_ms'], ' ms', 2)} | ≤ +2 ms |")
        lines.append(f"| same, streamed: time per chunk, median ({cs['chunks_per_stream']} chunks; added)"
                     f" | {_fmt(cs['apiinone_per_chunk_ms'], ' ms', 3)} (+{_fmt(cs['added_per_chunk_ms'], ' ms', 3)})"
                     f" | {_fmt(cs['upstream_direct_per_chunk_ms'], ' ms', 3)} | |")
    e = rows.get("e2e", {})
    if e:
        lines.append(f"| end to end, created → succeeded (instant upstream) | {_fmt(e['tasks_per_s'])} tasks/s"
                     f" ({e['succeeded']:,} tasks in {e['seconds']:.1f} s) | - | ≥ {TARGETS['e2e_tps']}/s |")
    s = rows.get("startup", {})
    if s:
        lines.append(f"| time to first /healthz 200 | {_fmt(s['apiinone_ready_s'], ' s', 2)}"
                     f" | {_fmt(s['upstream_direct_ready_s'], ' s', 2)} | < {TARGETS['ready_s']:.0f} s |")
        lines.append(f"| idle memory (RSS, {s['apiinone_processes']} process(es))"
                     f" | {_fmt(s['apiinone_idle_rss_mb'], ' MB')}"
                     f" | {_fmt(s['upstream_direct_idle_rss_mb'], ' MB')} | < {TARGETS['idle_rss_mb']} MB |")
        if "apiinone_rss_after_mb" in s:
            lines.append(f"| memory after the run (RSS) | {_fmt(s['apiinone_rss_after_mb'], ' MB')}"
                         f" | {_fmt(s['upstream_direct_rss_after_mb'], ' MB')} | |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--postgres", action="store_true", help="run on a fresh PostgreSQL database instead of SQLite")
    p.add_argument("--short", action="store_true", help="the CI version: 1 s loads")
    p.add_argument("--seconds", type=float, default=None, help="seconds per load (default 10, --short 1)")
    p.add_argument("--connections", type=int, default=16, help="concurrent clients of the throughput rows")
    p.add_argument("--workers", type=int, default=1,
                   help="serve --workers for run 1 (as shipped: 1 process with its embedded worker)")
    p.add_argument("--api-workers", type=int, default=2,
                   help="serve --workers for run 2, the API tier (default 2: one per core of the target machine)")
    p.add_argument("--json", type=Path, default=None, help="where to write the JSON (default bench/results/)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk is not installed (scripts/bench.sh installs it with apt-get)", file=sys.stderr)
        return 2
    seconds = args.seconds if args.seconds is not None else (1.0 if args.short else 10.0)
    opts = Options(seconds=seconds, connections=args.connections, workers=args.workers,
                   e2e_seconds=1.0 if args.short else max(3.0, seconds / 2), postgres=args.postgres, short=args.short)
    extra = ["--workers", str(args.workers)] if args.workers > 1 else []
    api_extra = ["--workers", str(args.api_workers)] if args.api_workers > 1 else []
    machine = {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
               "load_average_at_start": list(os.getloadavg())}
    results = Results(meta={
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "database": "postgresql" if args.postgres else "sqlite", "short": args.short, "seconds_per_load": seconds,
        "connections": args.connections, "serve_args_run1": extra, "serve_args_run2": [*api_extra, "--no-worker"],
        "machine": machine,
    })
    workdir = Path(tempfile.mkdtemp(prefix="apiinone-bench-"))
    fake = start_fake(workdir)
    try:
        with contextlib.ExitStack() as stack:
            database_url = stack.enter_context(postgres_database()) if args.postgres else None
            env = server_env(workdir / "data", database_url, fake)
            if args.postgres:
                cli(env, "db", "upgrade")
            serving_run(results, opts, env, fake, workdir, extra)
            api_tier_run(results, opts, env, fake, workdir, api_extra)
            chat_run(results, opts, database_url, workdir)
    finally:
        fake.stop()
    results.meta["load_average_at_end"] = list(os.getloadavg())
    out = args.json or RESULTS / f"{time.strftime('%Y%m%d-%H%M%S')}-{results.meta['database']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"meta": results.meta, "rows": results.rows, "table": table(results)}
    out.write_text(json.dumps(payload, indent=2) + "\n")
    if args.json is None:
        (RESULTS / "latest.json").write_text(json.dumps(payload, indent=2) + "\n")
    print(f"\napiinone benchmark ({results.meta['database']}, {opts.connections} clients, {seconds:g} s per load,"
          f" {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end)\n")
    print(table(results))
    print(f"\nJSON: {out}")
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
