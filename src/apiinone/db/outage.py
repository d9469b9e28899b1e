"""Telling a database outage (answer 503, retry) from any other failure (a bug: 500)."""

from __future__ import annotations

import socket

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError


def is_database_outage(exc: Exception) -> bool:
    """Connection-level failures, also those a pool connect raises unwrapped while PostgreSQL starts
    or stops (SQLSTATE class 08 connection exception, 57P0x shutdown / cannot connect now)."""
    cause: BaseException | None = exc
    for _ in range(5):  # the error itself and a few of its causes
        if cause is None:
            return False
        # not every OSError: a disk error reading an image is no database outage
        if isinstance(cause, (OperationalError, InterfaceError, ConnectionError, socket.gaierror)):
            return True
        if isinstance(cause, DBAPIError) and cause.connection_invalidated:
            return True
        if str(getattr(cause, "sqlstate", None) or "").startswith(("08", "57P")):
            return True
        cause = cause.__cause__ or cause.__context__
    return False
