"""Programmatic Alembic: ``apiinone db upgrade`` and the automatic upgrade of embedded SQLite."""

from __future__ import annotations

import asyncio
import threading
from importlib import resources

from alembic import command
from alembic.config import Config


def alembic_config(database_url: str) -> Config:
    ini = resources.files("apiinone.db").joinpath("alembic.ini")
    cfg = Config(str(ini))
    cfg.set_main_option("script_location", str(resources.files("apiinone.db").joinpath("migrations")))
    cfg.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return cfg


def upgrade(database_url: str, revision: str = "head") -> None:
    """Run migrations. Safe to call from inside a running event loop (runs in its own thread)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        command.upgrade(alembic_config(database_url), revision)
        return
    error: list[BaseException] = []

    def _target() -> None:
        try:
            command.upgrade(alembic_config(database_url), revision)
        except BaseException as exc:  # re-raised in the caller's thread
            error.append(exc)

    thread = threading.Thread(target=_target)
    thread.start()
    thread.join()
    if error:
        raise error[0]


if __name__ == "__main__":  # ``python -m apiinone.db.migrate URL``: how ``serve`` migrates in a child process
    import sys

    upgrade(sys.argv[1])
