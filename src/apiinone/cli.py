"""The ``apiinone`` command line: serve, worker, db, admin."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer

from apiinone.config import Settings, SettingsError, load_settings

if TYPE_CHECKING:
    from apiinone.bootstrap import Container

app = typer.Typer(help="apiinone: one API, one key, one credit balance for many AI models.",
                  no_args_is_help=True, add_completion=False)
db_app = typer.Typer(help="Database migrations.", no_args_is_help=True)
admin_app = typer.Typer(help="Accounts, keys and credits.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(admin_app, name="admin")

T = TypeVar("T")


def _settings(**overrides: object) -> Settings:
    try:
        return load_settings(**overrides)
    except SettingsError as exc:
        typer.echo(f"configuration error: {exc}", err=True)
        raise typer.Exit(2) from None


def _migrate_embedded(settings: Settings) -> None:
    if settings.is_sqlite:
        from apiinone.db.migrate import upgrade

        upgrade(settings.resolved_database_url)


def _start_embedded_migration(settings: Settings) -> subprocess.Popen[bytes] | None:
    """``serve`` migrates embedded SQLite in a child process, while it imports the app: Alembic
    would otherwise stay in the server's memory (~10 MB) for its whole life."""
    if not settings.is_sqlite:
        return None
    command = [sys.executable, "-m", "apiinone.db.migrate", settings.resolved_database_url]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # noqa: S603  # our own interpreter, no shell


def _finish_embedded_migration(migration: subprocess.Popen[bytes] | None) -> None:
    if migration is None:
        return
    _, stderr = migration.communicate()
    if migration.returncode != 0:
        typer.echo(f"database migration failed:\n{stderr.decode(errors='replace')}", err=True)
        raise typer.Exit(1)


def _run_with_container(settings: Settings, body: Callable[[Container], Awaitable[T]]) -> T:
    from apiinone.bootstrap import build_container

    async def main() -> T:
        container = build_container(settings)
        try:
            return await body(container)
        finally:
            await container.aclose()

    return asyncio.run(main())


MAX_CLI_CREDITS = 1_000_000_000


def _credit_amount(text: str, param: str, *, allow_zero: bool) -> int:
    """A credit amount argument (``10``, ``0.5``) → µcr, or exit 1 with the reason, before any work."""
    from apiinone.domain.credits import parse_credit_amount
    from apiinone.errors import InvalidParameter

    try:
        return parse_credit_amount(text, param=param, max_credits=MAX_CLI_CREDITS, allow_zero=allow_zero)
    except InvalidParameter as exc:
        raise _fail(exc) from exc


def _fail(exc: Exception) -> typer.Exit:
    from apiinone.errors import ApiError

    message = exc.message if isinstance(exc, ApiError) else str(exc)
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(1)


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    no_worker: Annotated[bool, typer.Option("--no-worker", help="Do not run the embedded worker.")] = False,
    workers: Annotated[int, typer.Option(help="API processes (PostgreSQL for more than one).")] = 1,
    access_log: Annotated[bool, typer.Option(help="Log every request.")] = False,
) -> None:
    """API + dashboard + an embedded worker; migrates the embedded database first."""
    import os

    settings = _settings()
    if not settings.public_url:
        shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        os.environ["APIINONE_PUBLIC_URL"] = f"http://{shown}:{port}"
        settings = _settings()
    migration = _start_embedded_migration(settings)  # runs while the imports below load

    import uvicorn

    from apiinone.allocator import tune_for_large_bodies
    from apiinone.logging import configure_logging
    from apiinone.web.server import CoalescingHttpToolsProtocol

    tune_for_large_bodies()  # a --workers child is a fresh process: the app factory sets it there
    configure_logging(settings.log_level, settings.log_json)
    settings.resolved_secret_key()
    if workers > 1:
        _finish_embedded_migration(migration)
        if settings.is_sqlite:
            typer.echo("note: several API processes share one SQLite writer; PostgreSQL scales writes better",
                       err=True)
        os.environ["APIINONE_EMBEDDED_WORKER"] = "0" if no_worker else "1"
        _announce_for_workers(settings, host, port, embedded_worker=not no_worker)
        uvicorn.run("apiinone.web.factory:app_from_env", factory=True, host=host, port=port, workers=workers,
                    loop="uvloop", http=CoalescingHttpToolsProtocol, access_log=access_log, log_level="warning",
                    timeout_graceful_shutdown=25)
        return
    from apiinone.web.app import container_from, create_app
    from apiinone.web.ready import AnnouncingServer

    application = create_app(settings, embedded_worker=not no_worker, migrate=False)
    _finish_embedded_migration(migration)
    config = uvicorn.Config(application, host=host, port=port, loop="uvloop", http=CoalescingHttpToolsProtocol,
                            access_log=access_log, log_level="warning", timeout_graceful_shutdown=25)
    server = AnnouncingServer(config, container_from(application))
    server.run()
    if server.started is False:  # the port was taken, or the app's startup failed: uvicorn said why
        raise typer.Exit(1)


def _announce_for_workers(settings: Settings, host: str, port: int, *, embedded_worker: bool) -> None:
    """Several API processes: the supervisor prints the ready line once the first one answers."""
    from apiinone.web.ready import announce_when_ready, ready_line

    async def body(container: Container) -> str:
        return ready_line(container, f"{host}:{port}", embedded_worker)

    line = _run_with_container(settings, body)
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    announce_when_ready(f"http://{shown}:{port}", line)


@app.command()
def wait(
    url: Annotated[str, typer.Option(envvar="APIINONE_BASE_URL", help="The server to wait for.")]
        = "http://127.0.0.1:8000",
    timeout: Annotated[float, typer.Option(help="Seconds to wait before giving up (exit 1).")] = 60.0,
) -> None:
    """Block until the server answers GET /readyz (the database is reachable); exit 1 on timeout."""
    from apiinone.web.ready import wait_until_ready

    if not asyncio.run(wait_until_ready(url, timeout)):
        typer.echo(f"error: {url} did not answer /readyz within {timeout:g} s (is `make run` running? "
                   "its output says why it stopped)", err=True)
        raise typer.Exit(1)
    typer.echo(f"ready: {url.rstrip('/')}", err=True)


@app.command()
def worker(
    node: Annotated[str | None, typer.Option(help="Node name shown on tasks (default: host name).")] = None,
    concurrency: Annotated[int | None, typer.Option(help="Tasks run at once.")] = None,
    models: Annotated[str | None, typer.Option(
        help="Comma-separated model ids this node serves, each optionally with its own limit: a=4,b.")] = None,
) -> None:
    """A standalone worker on a named node."""
    from apiinone.allocator import tune_for_large_bodies
    from apiinone.logging import configure_logging

    tune_for_large_bodies()

    settings = _settings()
    configure_logging(settings.log_level, settings.log_json)
    _migrate_embedded(settings)
    model_list = tuple(m.strip() for m in models.split(",") if m.strip()) if models else None

    async def body(container: Container) -> None:
        if model_list is not None:
            model_ids, limits = [], {}
            for entry in model_list:
                name, _, limit = entry.partition("=")
                spec = container.catalog.resolve(name.strip())
                if spec is None:
                    raise typer.BadParameter(f"unknown model {name!r}")
                if limit and not (limit.strip().isascii() and limit.strip().isdigit()):
                    raise typer.BadParameter(f"--models {entry!r}: the limit after '=' must be a whole number")
                model_ids.append(spec.id)
                if limit:
                    limits[spec.id] = int(limit)
            task_worker = container.make_worker(node, concurrency, tuple(model_ids), limits)
        else:
            task_worker = container.make_worker(node, concurrency)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await container.start(delivery=True, console=False)
        await task_worker.start()
        typer.echo(f"worker {task_worker.options.node} running (concurrency {task_worker.options.concurrency})",
                   err=True)
        await stop.wait()
        await container.stop()

    _run_with_container(settings, body)


@app.command("storage-purge")
def storage_purge(
    days: Annotated[float | None, typer.Option(help="Age in days (default APIINONE_STORAGE_RETENTION_DAYS).")] = None,
) -> None:
    """Delete stored images older than the retention period (S3 storage; run it from cron)."""
    from apiinone.storage import storage_from_url
    from apiinone.storage.s3 import S3Options, S3Storage

    settings = _settings()
    days = days if days is not None else settings.storage_retention_days
    storage = storage_from_url(settings.resolved_storage_url, s3=S3Options.from_settings(settings))
    if days is None or not isinstance(storage, S3Storage):
        typer.echo("error: needs --days (or APIINONE_STORAGE_RETENTION_DAYS) and s3:// storage", err=True)
        raise typer.Exit(2)
    deleted = asyncio.run(storage.purge_older_than(days))
    typer.echo(f"deleted {deleted} objects older than {days:g} days", err=True)


@app.command()
def generate(
    prompt: Annotated[str, typer.Argument(help="What the image should show.")],
    model: Annotated[str, typer.Option(help="Model id or alias.")] = "gpt-image-1-5",
    aspect: Annotated[str, typer.Option(help="Aspect ratio: 1:1, 2:3 or 3:2.")] = "1:1",
    quality: Annotated[str, typer.Option(help="medium or high.")] = "medium",
    output: Annotated[str | None, typer.Option("-o", "--output", help="File to write (default <task id>.png).")] = None,
    base_url: Annotated[str | None, typer.Option(envvar="APIINONE_BASE_URL", help="The server.")] = None,
    api_key: Annotated[str | None, typer.Option(envvar="APIINONE_API_KEY", show_default=False,
                                                help="API key (aio_...); better set APIINONE_API_KEY.")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the image.")] = 600.0,
) -> None:
    """Generate an image through a running server, show its progress, save it, print the path."""
    from apiinone.client.cli import run_generate

    raise typer.Exit(run_generate(prompt, model=model, aspect_ratio=aspect, quality=quality, output=output,
                                  base_url=base_url, api_key=api_key, timeout=timeout))


@db_app.command("upgrade")
def db_upgrade(revision: Annotated[str, typer.Argument()] = "head") -> None:
    """Run the database migrations."""
    from apiinone.db.migrate import upgrade

    settings = _settings()
    upgrade(settings.resolved_database_url, revision)
    typer.echo("database is up to date", err=True)


@admin_app.command("create-user")
def create_user(
    email: str,
    password: Annotated[str | None, typer.Option(help="Login password (min 8 chars).")] = None,
    credits: Annotated[str, typer.Option(help="Starting credits (a grant), e.g. 100 or 0.5.")] = "0",
    admin: Annotated[bool, typer.Option("--admin", help="Make an administrator.")] = False,
) -> None:
    """Create an account."""
    _credit_amount(credits, "credits", allow_zero=True)
    settings = _settings()
    _migrate_embedded(settings)

    async def body(container: Container) -> str:
        account = await container.accounts.create_user(email, password, credits=credits.strip(), admin=admin)
        return account.id

    try:
        account_id = _run_with_container(settings, body)
    except Exception as exc:
        raise _fail(exc) from exc
    typer.echo(f"created account {account_id} ({email})", err=True)


@admin_app.command("create-key")
def create_key(email: str, name: Annotated[str, typer.Option(help="A label for the key.")] = "cli") -> None:
    """Print a new API key, alone, on stdout."""
    settings = _settings()
    _migrate_embedded(settings)

    async def body(container: Container) -> str:
        account = await container.accounts.get_by_email(email)
        created = await container.accounts.create_api_key(account.id, name)
        return created.plaintext

    try:
        key = _run_with_container(settings, body)
    except Exception as exc:
        raise _fail(exc) from exc
    sys.stdout.write(key + "\n")


@admin_app.command("grant")
def grant(email: str, credits: str, note: Annotated[str | None, typer.Option(help="Ledger note.")] = None) -> None:
    """Add credits to an account (a ledger entry); decimals such as 0.5 are fine."""
    from apiinone.domain.credits import format_credits_text

    amount = _credit_amount(credits, "credits", allow_zero=False)
    settings = _settings()
    _migrate_embedded(settings)

    async def body(container: Container) -> str:
        account = await container.accounts.get_by_email(email)
        updated = await container.accounts.grant(account.id, amount, note=note, actor="cli")
        return format_credits_text(updated.credits.available)

    try:
        available = _run_with_container(settings, body)
    except Exception as exc:
        raise _fail(exc) from exc
    typer.echo(f"granted {format_credits_text(amount)} credits to {email}; available now {available}", err=True)


@admin_app.command("purge-requests")
def purge_requests(
    days: Annotated[int | None, typer.Option(min=1, help="Keep this many days (default: "
                                             "APIINONE_REQUEST_LOG_RETENTION_DAYS).")] = None,
) -> None:
    """Delete request-log records older than the retention period, in batches (ledger entries stay)."""
    settings = _settings()
    retention = days or settings.request_log_retention_days
    if retention is None:
        typer.echo("error: give --days or set APIINONE_REQUEST_LOG_RETENTION_DAYS", err=True)
        raise typer.Exit(1)
    _migrate_embedded(settings)

    async def body(container: Container) -> int:
        from apiinone.services.usage import UsageService

        return await UsageService(container.db, container.catalog_source).purge(retention)

    try:
        removed = _run_with_container(settings, body)
    except Exception as exc:
        raise _fail(exc) from exc
    typer.echo(f"deleted {removed} request records older than {retention} days", err=True)
    sys.stdout.write(f"{removed}\n")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
