"""Real processes for scale-out tests and benchmarks: `apiinone serve` and `apiinone worker`
subprocesses, a private redis-server, and a throwaway PostgreSQL cluster that a test may stop and
start (never the shared server on 5432, which other tests use)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]
APIINONE = str(ROOT / ".venv" / "bin" / "apiinone") if (ROOT / ".venv" / "bin" / "apiinone").exists() else "apiinone"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_until(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = check()
        except Exception:
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class Proc:
    """One child process with its output in a log file (read it when a test fails)."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = self.log_path.open("ab")
        self.popen = subprocess.Popen(argv, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                      start_new_session=True)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def kill9(self) -> None:
        """SIGKILL the process group: no shutdown code runs, as when a machine dies."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait(10)

    def stop(self, timeout: float = 30) -> None:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill9()
        self._log.close()


def app_env(database_url: str, data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("APIINONE_", "OPENAI_"))}
    env.update({
        "APIINONE_ENV": "test", "APIINONE_DATABASE_URL": database_url, "APIINONE_DATA_DIR": str(data_dir),
        "APIINONE_SECRET_KEY": "cluster-test-secret-not-a-placeholder", "APIINONE_LOG_LEVEL": "WARNING",
        "APIINONE_WORKER_POLL_S": "1.0", "PYTHONUNBUFFERED": "1",
    })
    env.update(extra)
    return env


def start_api(env: dict[str, str], log_dir: Path, *, workers: int = 1, name: str = "api") -> tuple[Proc, str]:
    """`apiinone serve --no-worker` on a free port; returns once /readyz answers."""
    port = free_port()
    env = {**env, "APIINONE_PUBLIC_URL": f"http://127.0.0.1:{port}"}
    proc = Proc(name, [APIINONE, "serve", "--host", "127.0.0.1", "--port", str(port), "--no-worker",
                       "--workers", str(workers)], env, log_dir)
    base = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        if proc.popen.poll() is not None:
            raise RuntimeError(f"{name} exited:\n{proc.log()}")
        return httpx.get(f"{base}/readyz", timeout=2).status_code == 200

    deadline = time.monotonic() + 60
    while True:
        try:
            if ready():
                break
        except RuntimeError:
            raise
        except Exception:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"{name} did not become ready:\n{proc.log()}")
        time.sleep(0.1)
    return proc, base


def start_worker(env: dict[str, str], log_dir: Path, node: str, *extra_args: str) -> Proc:
    """`apiinone worker --node NAME`; returns once it says it is running (it registered itself)."""
    proc = Proc(node, [APIINONE, "worker", "--node", node, *extra_args], env, log_dir)
    deadline = time.monotonic() + 60
    while f"worker {node} running" not in proc.log():
        if proc.popen.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"worker {node} did not start:\n{proc.log()}")
        time.sleep(0.05)
    return proc


class RedisServer:
    """A private redis-server on a free port, which a test may stop and start again."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.workdir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(self.ping, 20, "redis-server to answer")
        return self

    def ping(self) -> bool:
        with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None


def _pg_bin(name: str) -> str:
    found = shutil.which(name) or next(iter(sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))), None)
    if found is None:
        raise FileNotFoundError(f"PostgreSQL's {name} is not installed")
    return str(found)


class ThrowawayPostgres:
    """A private PostgreSQL cluster (initdb) on a free port, in a temporary directory, that a test
    may stop and start. Run as the ``postgres`` user when the tests run as root."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="apiinone-pg-"))
        self.data = self.dir / "data"
        self.port = free_port()
        self._as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    @property
    def admin_dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def url(self, database: str) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, *argv: str) -> None:
        subprocess.run([*self._as_user, *argv], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                       timeout=120)

    def init(self) -> ThrowawayPostgres:
        if self._as_user:
            shutil.chown(self.dir, "postgres", "postgres")
        self._run(_pg_bin("initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-sync")
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(f"\nport = {self.port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = "
                       f"'{self.dir}'\nfsync = off\nmax_connections = 200\nshared_buffers = 64MB\n")
        return self.start()

    def start(self) -> ThrowawayPostgres:
        self._run(_pg_bin("pg_ctl"), "-D", str(self.data), "-l", str(self.dir / "pg.log"), "-w", "-t", "60", "start")
        return self

    def stop(self) -> None:
        self._run(_pg_bin("pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop")

    def destroy(self) -> None:
        with contextlib.suppress(Exception):
            self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    async def create_database(self, name: str) -> str:
        import asyncpg

        conn = await asyncpg.connect(self.admin_dsn)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        return self.url(name)


async def new_account_key(database_url: str, credits: int, *, admin: bool = False) -> tuple[str, str]:
    """An account with ``credits`` and an API key on the given database: (account id, key)."""
    from apiinone.db.database import Database
    from apiinone.ids import new_id
    from apiinone.services.accounts import AccountService

    db = Database(database_url)
    try:
        accounts = AccountService(db)
        account = await accounts.create_user(f"{new_id('u').lower()}@example.com", credits=credits, admin=admin)
        key = await accounts.create_api_key(account.id, "cluster-test")
        return account.id, key.plaintext
    finally:
        await db.dispose()


async def audit_account(database_url: str, account_id: str) -> dict[str, Any]:
    """What the database says about an account's tasks and money, for exactly-once checks."""
    import asyncpg

    conn = await asyncpg.connect(database_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        statuses = dict(await conn.fetch(
            "SELECT status, count(*) FROM tasks WHERE account_id = $1 GROUP BY status", account_id))
        per_task = await conn.fetch(
            """SELECT t.id, t.status, t.charged, t.price, t.node, t.attempts,
                      count(*) FILTER (WHERE l.kind = 'hold') AS holds,
                      count(*) FILTER (WHERE l.kind = 'capture') AS captures,
                      count(*) FILTER (WHERE l.kind = 'release') AS releases
               FROM tasks t LEFT JOIN ledger_entries l ON l.task_id = t.id
               WHERE t.account_id = $1 GROUP BY t.id""", account_id)
        sums = dict(await conn.fetch(
            "SELECT kind, sum(amount) FROM ledger_entries WHERE account_id = $1 GROUP BY kind", account_id))
        balance, held = await conn.fetchrow("SELECT balance, held FROM accounts WHERE id = $1", account_id)
    finally:
        await conn.close()
    ledger_balance = sum(int(sums.get(k, 0)) for k in ("topup", "grant", "adjustment", "capture"))
    ledger_held = sum(int(sums.get(k, 0)) for k in ("hold", "release", "capture"))
    return {
        "statuses": {k: int(v) for k, v in statuses.items()},
        "tasks": {r["id"]: dict(r) for r in per_task},
        "balance": int(balance), "held": int(held),
        "ledger_balance": ledger_balance, "ledger_held": ledger_held,
        "captured": -int(sums.get("capture", 0)),
        "charged": sum(int(r["charged"]) for r in per_task),
    }


def assert_exactly_once(audit: dict[str, Any]) -> None:
    """Every task ended once: one hold, then one capture (succeeded) or one release (otherwise),
    and the balances are exactly what the ledger adds up to."""
    for task_id, row in audit["tasks"].items():
        ended = (row["captures"], row["releases"])
        assert row["holds"] == 1, (task_id, row)
        assert ended == ((1, 0) if row["status"] == "succeeded" else (0, 1)), (task_id, row)
        assert row["charged"] == (row["price"] if row["status"] == "succeeded" else 0), (task_id, row)
    assert (audit["balance"], audit["held"]) == (audit["ledger_balance"], audit["ledger_held"])
    assert audit["held"] == 0 and audit["captured"] == audit["charged"]
