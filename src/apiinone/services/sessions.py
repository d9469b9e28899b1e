"""Console sessions: server-side rows in ``web_sessions``, a CSRF token per session, and a login
throttle.

The cookie carries 256 random bits; only their SHA-256 is stored, so a leaked database cannot be
replayed as cookies. Each session has its own CSRF token, compared in constant time on every
state-changing form.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import deque
from dataclasses import dataclass

from apiinone.db.database import Database
from apiinone.db.sessions import SessionRepository
from apiinone.domain.accounts import Account
from apiinone.errors import RateLimited
from apiinone.ids import now_ms

SESSION_COOKIE = "aio_session"
DEFAULT_SESSION_TTL_MS = 30 * 24 * 3600 * 1000


def _digest(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class WebSession:
    id_hash: str
    account: Account
    csrf_token: str
    expires_at: int


@dataclass(frozen=True, slots=True)
class NewSession:
    cookie_value: str
    csrf_token: str
    expires_at: int


class SessionService:
    """Create, load and end console sessions. A disabled account's sessions stop working at once."""

    def __init__(self, db: Database, *, ttl_ms: int = DEFAULT_SESSION_TTL_MS) -> None:
        self.db = db
        self.ttl_ms = ttl_ms

    async def create(self, account_id: str) -> NewSession:
        raw = secrets.token_urlsafe(32)
        csrf = secrets.token_urlsafe(32)
        now = now_ms()
        async with self.db.uow() as uow:
            sessions = SessionRepository(uow.conn)
            await sessions.delete_expired(now)
            await sessions.add(_digest(raw), account_id, csrf, at=now, expires_at=now + self.ttl_ms)
            await uow.commit()
        return NewSession(cookie_value=raw, csrf_token=csrf, expires_at=now + self.ttl_ms)

    async def load(self, cookie_value: str | None) -> WebSession | None:
        if not cookie_value or len(cookie_value) > 100:
            return None
        id_hash = _digest(cookie_value)
        async with self.db.uow(write=False) as uow:
            found = await SessionRepository(uow.conn).get(id_hash)
            if found is None:
                return None
            account_id, csrf, expires_at = found
            account = await uow.accounts.get(account_id)
        if account is None or account.disabled or expires_at < now_ms():
            return None
        return WebSession(id_hash=id_hash, account=account, csrf_token=csrf, expires_at=expires_at)

    async def destroy(self, cookie_value: str | None) -> None:
        if not cookie_value:
            return
        async with self.db.uow() as uow:
            await SessionRepository(uow.conn).delete(_digest(cookie_value))
            await uow.commit()

    async def destroy_all(self, account_id: str, *, except_hash: str | None = None) -> int:
        """End every session of an account (password change keeps the current one; disable ends all)."""
        async with self.db.uow() as uow:
            count = await SessionRepository(uow.conn).delete_for_account(account_id, keep=except_hash)
            await uow.commit()
        return count


def csrf_matches(expected: str | None, given: str | None) -> bool:
    return bool(expected) and bool(given) and hmac.compare_digest(str(expected), str(given))


def anonymous_csrf_token(secret_key: str, pre_session: str) -> str:
    """The CSRF token of a form shown before login (sign-up, login): bound to a random cookie and
    to the server secret, so another site can neither read nor forge it."""
    return hmac.new(secret_key.encode(), b"csrf:" + pre_session.encode(), hashlib.sha256).hexdigest()


class LoginThrottle:
    """Failed logins in a sliding window, counted so that nobody can lock another user out.

    * per (email, client address): after ``max_failures`` that pair is refused (429) until the
      window moves on; the same email from another address is not;
    * per client address, whatever the email: ``max_failures × per_address_factor``, against one
      address trying many accounts;
    * per email from all addresses together: past ``max_failures`` every further attempt on that
      email is slowed by ``slow_s`` (a delay, never a lock), against guessing from many addresses.

    A success clears the email's counts. In-process state: each API process keeps its own window.
    """

    def __init__(self, *, max_failures: int = 10, window_s: float = 900.0, per_address_factor: int = 3,
                 slow_s: float = 1.0) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self.max_per_address = max_failures * per_address_factor
        self.slow_s = slow_s
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, bucket: str, now: float) -> deque[float]:
        entries = self._failures.setdefault(bucket, deque())
        while entries and entries[0] <= now - self.window_s:
            entries.popleft()
        return entries

    @staticmethod
    def _buckets(email: str, address: str) -> tuple[str, str, str]:
        email = email.strip().lower()
        return f"p:{email}\0{address}", f"a:{address}", f"e:{email}"

    def check(self, email: str, address: str) -> float:
        """Raise RateLimited when this email from this address, or this address, has failed too
        often recently; else the seconds to wait before trying the password (0 or ``slow_s``)."""
        now = time.monotonic()
        pair, by_address, by_email = self._buckets(email, address)
        for bucket, limit in ((pair, self.max_failures), (by_address, self.max_per_address)):
            entries = self._recent(bucket, now)
            if len(entries) >= limit:
                retry = int(entries[0] + self.window_s - now) + 1
                raise RateLimited("too many failed logins; try again later", retry_after=retry)
        return self.slow_s if len(self._recent(by_email, now)) >= self.max_failures else 0.0

    def failed(self, email: str, address: str) -> None:
        now = time.monotonic()
        if len(self._failures) > 50_000:
            self._failures.clear()
        for bucket in self._buckets(email, address):
            self._recent(bucket, now).append(now)

    def succeeded(self, email: str, address: str) -> None:
        pair, _by_address, by_email = self._buckets(email, address)
        self._failures.pop(pair, None)
        self._failures.pop(by_email, None)
