"""Accounts, API keys and credit grants. Amounts are µcr except where a parameter says credits."""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time
from dataclasses import dataclass
from decimal import Decimal

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy.exc import IntegrityError

from apiinone.db.channels import KEYS_CHANNEL
from apiinone.db.database import Database
from apiinone.domain.accounts import Account, ApiKey
from apiinone.domain.credits import LedgerKind, credits_to_ucr, format_credits_text
from apiinone.errors import Forbidden, InvalidParameter, NotFound, Unauthorized
from apiinone.ids import new_id, now_ms
from apiinone.webhooks.signing import new_webhook_secret

API_KEY_PREFIX = "aio_"
"""NOTIFY channel for key-cache invalidation: the payload is a key hash, or empty for "drop all"."""
_password_hasher = PasswordHasher()  # argon2id with the library's current recommended cost


def hash_api_key(key: str) -> str:
    """API keys carry 256 bits of randomness, so a fast hash is enough (no salt, indexable)."""
    return hashlib.sha256(key.encode()).hexdigest()


def hash_password(password: str) -> str:
    return _password_hasher.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    if not password_hash:
        return False
    try:
        return _password_hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def normalize_email(email: str) -> str:
    value = email.strip().lower()
    local, _, domain = value.partition("@")
    if not local or "." not in domain or len(value) > 320 or " " in value:
        raise InvalidParameter("email is not a valid address", param="email")
    return value


@dataclass(frozen=True, slots=True)
class CreatedKey:
    key: ApiKey
    plaintext: str


class AccountService:
    def __init__(self, db: Database, *, starter_credits: int | str | Decimal = 0) -> None:
        self.db = db
        self.starter_ucr = credits_to_ucr(starter_credits)

    async def create_user(self, email: str, password: str | None = None, *, credits: int | str | Decimal = 0,
                          admin: bool = False, first_is_admin: bool = False) -> Account:
        """``credits`` (whole or decimal credits, not µcr) plus the starter credits are granted."""
        grant = credits_to_ucr(credits) + self.starter_ucr
        if grant < 0:
            raise InvalidParameter("credits must not be negative", param="credits")
        email = normalize_email(email)
        if password is not None and len(password) < 8:
            raise InvalidParameter("password must be at least 8 characters", param="password")
        password_hash = await asyncio.to_thread(hash_password, password) if password else None
        taken = InvalidParameter("an account with this email already exists", param="email")
        try:
            async with self.db.uow() as uow:
                # Account creations take turns, so "no admin yet" cannot be true for two at once
                # and a duplicate email is found by the lookup rather than by the unique index.
                await uow.accounts.lock_account_creation()
                if await uow.accounts.get_by_email(email) is not None:
                    raise taken
                is_admin = admin or (first_is_admin and not await uow.accounts.any_admin())
                account = Account(id=new_id("acc"), email=email, created_at=now_ms(), is_admin=is_admin,
                                  webhook_secret=new_webhook_secret())
                await uow.accounts.add(account, password_hash)
                if grant:
                    await uow.accounts.change(account.id, balance=grant)
                    await uow.ledger.add(account.id, LedgerKind.GRANT, grant, note="starter credits")
                await uow.commit()
        except IntegrityError as exc:  # the unique email index, should another path have raced us
            raise taken from exc
        return account

    async def authenticate_password(self, email: str, password: str) -> Account:
        async with self.db.uow(write=False) as uow:
            account = await uow.accounts.get_by_email(email.strip().lower())
        if account is None:
            await asyncio.to_thread(hash_password, password)  # same cost whether or not the account exists
            raise Unauthorized("wrong email or password")
        if not await asyncio.to_thread(verify_password, account.password_hash, password):
            raise Unauthorized("wrong email or password")
        if account.disabled:
            raise Forbidden("this account is disabled")
        return account

    async def change_password(self, account_id: str, current: str, new: str, *,
                              keep_session_hash: str | None = None) -> int:
        """Set a new password and end the account's other console sessions in one transaction (a
        stolen session must not outlive the password change). Returns how many sessions ended."""
        from apiinone.db.sessions import SessionRepository

        if len(new) < 8:
            raise InvalidParameter("password must be at least 8 characters", param="password")
        wrong = InvalidParameter("current password is wrong", param="current_password")
        async with self.db.uow(write=False) as uow:
            account = await uow.accounts.get(account_id)
        if account is None or not await asyncio.to_thread(verify_password, account.password_hash, current):
            raise wrong
        new_hash = await asyncio.to_thread(hash_password, new)  # argon2 off the event loop, outside the write
        async with self.db.uow() as uow:
            if not await uow.accounts.replace_password(account_id, account.password_hash, new_hash):
                raise wrong  # changed meanwhile by another request
            ended = await SessionRepository(uow.conn).delete_for_account(account_id, keep=keep_session_hash)
            await uow.commit()
        return ended

    async def get(self, account_id: str) -> Account:
        async with self.db.uow(write=False) as uow:
            account = await uow.accounts.get(account_id)
        if account is None:
            raise NotFound("account not found")
        return account

    async def get_by_email(self, email: str) -> Account:
        async with self.db.uow(write=False) as uow:
            account = await uow.accounts.get_by_email(email)
        if account is None:
            raise NotFound(f"no account with email {email}")
        return account

    async def create_api_key(self, account_id: str, name: str = "", *, allowed_models: list[str] | None = None,
                             credit_budget: int | None = None) -> CreatedKey:
        """``credit_budget`` in µcr: the most the key may have held or spent at once."""
        plaintext = API_KEY_PREFIX + secrets.token_urlsafe(32)
        key = ApiKey(id=new_id("key"), account_id=account_id, name=name.strip()[:200],
                     prefix=plaintext[:12], created_at=now_ms(),
                     allowed_models=tuple(allowed_models) if allowed_models else None,
                     credit_budget=credit_budget)
        async with self.db.uow() as uow:
            await uow.api_keys.add(key, hash_api_key(plaintext))
            await uow.commit()
        return CreatedKey(key=key, plaintext=plaintext)

    async def revoke_api_key(self, account_id: str, key_id: str) -> str:
        """Revoke and return the key's hash so callers can drop it from caches at once."""
        async with self.db.uow() as uow:
            if not await uow.api_keys.revoke(account_id, key_id):
                raise NotFound("API key not found")
            key_hash = await uow.api_keys.hash_of(key_id)
            await uow.notify(KEYS_CHANNEL, key_hash or "")  # other API processes drop it from their caches
            await uow.commit()
        assert key_hash is not None
        return key_hash

    async def list_api_keys(self, account_id: str) -> list[ApiKey]:
        async with self.db.uow(write=False) as uow:
            return await uow.api_keys.list_for_account(account_id)

    async def grant(self, account_id: str, amount: int, *, kind: LedgerKind = LedgerKind.GRANT,
                    note: str | None = None, actor: str | None = None) -> Account:
        """Add (or, for an adjustment, remove) ``amount`` µcr. A deduction never makes available < 0."""
        if amount == 0:
            raise InvalidParameter("credits must not be zero", param="credits")
        if amount < 0 and kind is not LedgerKind.ADJUSTMENT:
            raise InvalidParameter("only an adjustment may be negative", param="credits")
        async with self.db.uow() as uow:
            if await uow.accounts.get(account_id) is None:
                raise NotFound("account not found")
            if amount > 0:
                await uow.accounts.change(account_id, balance=amount)
            elif not await uow.accounts.try_debit(account_id, -amount):
                raise InvalidParameter("deduction exceeds the available credits", param="credits")
            await uow.ledger.add(account_id, kind, amount, note=note, actor=actor)
            await uow.audit.add(actor, "credits.grant" if amount > 0 else "credits.deduct", account_id,
                                {"credits": format_credits_text(amount), "kind": kind.value, "note": note})
            account = await uow.accounts.get(account_id)
            await uow.commit()
        assert account is not None
        return account

    async def rotate_webhook_secret(self, account_id: str, grace_ms: int = 24 * 3600 * 1000) -> str:
        async with self.db.uow() as uow:
            account = await uow.accounts.get(account_id)
            if account is None:
                raise NotFound("account not found")
            secret = new_webhook_secret()
            await uow.accounts.update(account_id, webhook_secret=secret,
                                      webhook_secret_prev=account.webhook_secret,
                                      webhook_secret_prev_until=now_ms() + grace_ms)
            await uow.commit()
        return secret


@dataclass(slots=True)
class _CachedKey:
    key: ApiKey
    account: Account
    expires: float


class ApiKeyAuthenticator:
    """Bearer key → (key, account), cached in process for ``ttl_s``. Revocation in this process
    drops the entry at once; other processes see it within the TTL."""

    def __init__(self, db: Database, ttl_s: float = 2.0, touch_every_ms: int = 60_000) -> None:
        self.db = db
        self.ttl_s = ttl_s
        self.touch_every_ms = touch_every_ms
        self._cache: dict[str, _CachedKey] = {}
        self._touched: dict[str, int] = {}

    def invalidate(self, key_hash: str | None = None) -> None:
        if key_hash is None:
            self._cache.clear()
        else:
            self._cache.pop(key_hash, None)

    async def authenticate(self, authorization: str | None) -> tuple[ApiKey, Account]:
        if not authorization:
            raise Unauthorized("missing API key: send Authorization: Bearer aio_...")
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token.startswith(API_KEY_PREFIX) or len(token) > 200:
            raise Unauthorized("malformed API key: send Authorization: Bearer aio_...")
        key_hash = hash_api_key(token)
        now = time.monotonic()
        cached = self._cache.get(key_hash)
        if cached is None or cached.expires < now:
            async with self.db.uow(write=False) as uow:
                found = await uow.api_keys.get_by_hash(key_hash)
            if found is None:
                raise Unauthorized("invalid API key")
            cached = _CachedKey(key=found[0], account=found[1], expires=now + self.ttl_s)
            if len(self._cache) > 100_000:
                self._cache.clear()
            self._cache[key_hash] = cached
        if cached.key.revoked:
            raise Unauthorized("this API key has been revoked")
        if cached.account.disabled:
            raise Forbidden("this account is disabled")
        return cached.key, cached.account

    def due_for_touch(self, key_id: str) -> bool:
        """True at most once per ``touch_every_ms`` per key: last-used is recorded, not every hit."""
        now = now_ms()
        if now - self._touched.get(key_id, 0) < self.touch_every_ms:
            return False
        self._touched[key_id] = now
        return True
