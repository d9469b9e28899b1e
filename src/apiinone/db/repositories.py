"""Repositories: SQL in, domain objects out. They never commit; the unit of work does."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import orjson
from sqlalchemy import and_, bindparam, delete, func, insert, or_, select, text, update
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncConnection

from apiinone.db import hot
from apiinone.db import tables as t
from apiinone.domain.accounts import Account, ApiKey
from apiinone.domain.credits import Credits, LedgerEntry, LedgerKind
from apiinone.domain.tasks import Task, TaskStatus
from apiinone.ids import now_ms

# Hot statements are built once: SQLAlchemy memoizes a statement object's cache key, so reusing the
# object skips rebuilding the expression tree and its key on every request (profiled: about half of
# the SQL layer's cost per task creation).
_HOLD = (
    update(t.accounts)
    .where(t.accounts.c.id == bindparam("account_id"),
           t.accounts.c.balance - t.accounts.c.held >= bindparam("amount"))
    .values(held=t.accounts.c.held + bindparam("amount"))
)
_SPEND = (
    update(t.api_keys)
    .where(t.api_keys.c.id == bindparam("key_id"),
           or_(t.api_keys.c.credit_budget.is_(None),
               t.api_keys.c.credits_spent + bindparam("amount") <= t.api_keys.c.credit_budget))
    .values(credits_spent=t.api_keys.c.credits_spent + bindparam("amount"))
)
_CHANGE = (
    update(t.accounts).where(t.accounts.c.id == bindparam("account_id"))
    .values(balance=t.accounts.c.balance + bindparam("balance"), held=t.accounts.c.held + bindparam("held"))
)
_REFUND = (
    update(t.api_keys).where(t.api_keys.c.id == bindparam("key_id"))
    .values(credits_spent=t.api_keys.c.credits_spent - bindparam("amount"))
)
_KEY_PREFIXES: dict[str, str] = {}
_KEY_PREFIXES_MAX = 50_000
_KEY_PREFIX = select(t.api_keys.c.prefix).where(t.api_keys.c.id == bindparam("key_id"))
_COUNT_ACTIVE = select(func.count()).select_from(t.tasks).where(  # no IN list: a plain statement (db/hot.py)
    t.tasks.c.account_id == bindparam("account_id"),
    or_(t.tasks.c.status == TaskStatus.QUEUED.value, t.tasks.c.status == TaskStatus.RUNNING.value))
ACCOUNT_CREATION_LOCK = 0x61696F0001
"""The PostgreSQL advisory lock key that account creations take in turn ("aio" + 1)."""
_INSERT_TASK = insert(t.tasks)
_INSERT_LEDGER = insert(t.ledger_entries)
_TASK_BY_ID = select(t.tasks).where(t.tasks.c.id == bindparam("task_id"))
_TASK_BY_ID_IN_ACCOUNT = _TASK_BY_ID.where(t.tasks.c.account_id == bindparam("account_id"))


def _json(value: Any) -> str | None:
    return None if value is None else orjson.dumps(value).decode()


def _unjson(value: str | None) -> Any:
    return None if value is None else orjson.loads(value)


def account_from_row(r: RowMapping) -> Account:
    return Account(
        id=r["id"], email=r["email"], password_hash=r["password_hash"], display_name=r["display_name"],
        is_admin=bool(r["is_admin"]), disabled=bool(r["disabled"]),
        credits=Credits(balance=int(r["balance"]), held=int(r["held"])),
        webhook_secret=r["webhook_secret"], webhook_secret_prev=r["webhook_secret_prev"],
        webhook_secret_prev_until=r["webhook_secret_prev_until"],
        rate_limit_rpm=r["rate_limit_rpm"], max_concurrent_tasks=r["max_concurrent_tasks"],
        locale=r["locale"], created_at=int(r["created_at"]),
    )


def api_key_from_row(r: RowMapping) -> ApiKey:
    return ApiKey(
        id=r["id"], account_id=r["account_id"], name=r["name"], prefix=r["prefix"],
        allowed_models=tuple(_unjson(r["allowed_models"]) or ()) or None,
        credit_budget=r["credit_budget"], credits_spent=int(r["credits_spent"]),
        rate_limit_rpm=r["rate_limit_rpm"],
        created_at=int(r["created_at"]), last_used_at=r["last_used_at"], revoked_at=r["revoked_at"],
    )


def task_from_row(r: RowMapping) -> Task:
    return Task(
        id=r["id"], account_id=r["account_id"], api_key_id=r["api_key_id"], model=r["model"],
        type=r["type"], status=TaskStatus(r["status"]), input=orjson.loads(r["input"]),
        output=_unjson(r["output"]), error=_unjson(r["error"]), price=int(r["price"]),
        charged=int(r["charged"]), callback_url=r["callback_url"], node=r["node"],
        created_at=int(r["created_at"]), started_at=r["started_at"], finished_at=r["finished_at"],
        attempts=int(r["attempts"]), lease_token=r["lease_token"], lease_expires_at=r["lease_expires_at"],
        route=r["route"], progress=r["progress"], remote_job=_unjson(r["remote_job"]), poll_at=r["poll_at"],
    )


class AccountRepository:
    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn

    async def add(self, account: Account, password_hash: str | None) -> None:
        await self.conn.execute(insert(t.accounts).values(
            id=account.id, email=account.email, password_hash=password_hash,
            display_name=account.display_name, is_admin=account.is_admin, disabled=account.disabled,
            balance=0, held=0, webhook_secret=account.webhook_secret, created_at=account.created_at,
        ))

    async def get(self, account_id: str) -> Account | None:
        row = (await self.conn.execute(select(t.accounts).where(t.accounts.c.id == account_id))).mappings().first()
        return account_from_row(row) if row else None

    async def get_by_email(self, email: str) -> Account | None:
        row = (await self.conn.execute(
            select(t.accounts).where(t.accounts.c.email == email.strip().lower())
        )).mappings().first()
        return account_from_row(row) if row else None

    async def count(self) -> int:
        return int((await self.conn.execute(select(func.count()).select_from(t.accounts))).scalar_one())

    async def lock_account_creation(self) -> None:
        """Until this transaction ends, other account creations wait: a PostgreSQL advisory lock
        (SQLite's single writer already serialises them)."""
        if self.conn.dialect.name == "postgresql":
            await self.conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": ACCOUNT_CREATION_LOCK})

    async def replace_password(self, account_id: str, old_hash: str | None, new_hash: str) -> bool:
        """Compare-and-set: False when the password changed since ``old_hash`` was read."""
        where = t.accounts.c.password_hash.is_(None) if old_hash is None else t.accounts.c.password_hash == old_hash
        result = await self.conn.execute(
            update(t.accounts).where(t.accounts.c.id == account_id, where).values(password_hash=new_hash))
        return bool(result.rowcount)

    async def any_admin(self) -> bool:
        stmt = select(t.accounts.c.id).where(t.accounts.c.is_admin.is_(True)).limit(1)
        return (await self.conn.execute(stmt)).first() is not None

    async def list(self, *, query: str | None = None, limit: int = 50, offset: int = 0) -> list[Account]:
        stmt = select(t.accounts).order_by(t.accounts.c.created_at.desc()).limit(limit).offset(offset)
        if query:
            stmt = stmt.where(t.accounts.c.email.contains(query.strip().lower(), autoescape=True))
        return [account_from_row(r) for r in (await self.conn.execute(stmt)).mappings()]

    async def update(self, account_id: str, **values: Any) -> None:
        await self.conn.execute(update(t.accounts).where(t.accounts.c.id == account_id).values(**values))

    async def credits(self, account_id: str) -> Credits:
        row = (await self.conn.execute(
            select(t.accounts.c.balance, t.accounts.c.held).where(t.accounts.c.id == account_id)
        )).first()
        if row is None:
            return Credits(0, 0)
        return Credits(balance=int(row[0]), held=int(row[1]))

    async def try_hold(self, account_id: str, amount: int) -> bool:
        """Hold ``amount`` iff available stays ≥ 0: one conditional UPDATE, atomic on both engines."""
        return await hot.run(self.conn, _HOLD, {"account_id": account_id, "amount": amount}) == 1

    async def change(self, account_id: str, *, balance: int = 0, held: int = 0) -> None:
        await hot.run(self.conn, _CHANGE, {"account_id": account_id, "balance": balance, "held": held})

    async def change_many(self, changes: dict[str, tuple[int, int]]) -> None:
        """Add ``(balance, held)`` to each account, in one statement (in id order: see settle_many)."""
        rows = [{"account_id": a, "balance": b, "held": h} for a, (b, h) in sorted(changes.items())]
        await hot.run(self.conn, _CHANGE, rows)

    async def try_debit(self, account_id: str, amount: int) -> bool:
        """Lower the balance iff available stays ≥ 0 (admin deductions)."""
        result = await self.conn.execute(
            update(t.accounts)
            .where(t.accounts.c.id == account_id, t.accounts.c.balance - t.accounts.c.held >= amount)
            .values(balance=t.accounts.c.balance - amount)
        )
        return result.rowcount == 1


class ApiKeyRepository:
    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn

    async def add(self, key: ApiKey, key_hash: str) -> None:
        await self.conn.execute(insert(t.api_keys).values(
            id=key.id, account_id=key.account_id, name=key.name, prefix=key.prefix, key_hash=key_hash,
            allowed_models=_json(list(key.allowed_models)) if key.allowed_models else None,
            credit_budget=key.credit_budget, credits_spent=0, rate_limit_rpm=key.rate_limit_rpm,
            created_at=key.created_at,
        ))

    async def get_by_hash(self, key_hash: str) -> tuple[ApiKey, Account] | None:
        stmt = (
            select(t.api_keys, t.accounts.c.id.label("acc_id"))
            .join(t.accounts, t.accounts.c.id == t.api_keys.c.account_id)
            .where(t.api_keys.c.key_hash == key_hash)
        )
        row = (await self.conn.execute(stmt)).mappings().first()
        if row is None:
            return None
        account = await AccountRepository(self.conn).get(row["account_id"])
        assert account is not None
        return api_key_from_row(row), account

    async def list_for_account(self, account_id: str) -> list[ApiKey]:
        stmt = select(t.api_keys).where(t.api_keys.c.account_id == account_id).order_by(t.api_keys.c.created_at.desc())
        return [api_key_from_row(r) for r in (await self.conn.execute(stmt)).mappings()]

    async def revoke(self, account_id: str, key_id: str) -> bool:
        result = await self.conn.execute(
            update(t.api_keys)
            .where(t.api_keys.c.id == key_id, t.api_keys.c.account_id == account_id, t.api_keys.c.revoked_at.is_(None))
            .values(revoked_at=now_ms())
        )
        return result.rowcount == 1

    async def hash_of(self, key_id: str) -> str | None:
        row = (await self.conn.execute(select(t.api_keys.c.key_hash).where(t.api_keys.c.id == key_id))).first()
        return None if row is None else str(row[0])

    async def touch(self, key_ids: Sequence[str], at: int) -> None:
        if key_ids:
            await self.conn.execute(update(t.api_keys).where(t.api_keys.c.id.in_(key_ids)).values(last_used_at=at))

    async def try_spend(self, key_id: str, amount: int) -> bool:
        """Count ``amount`` against the key's budget iff it stays within the budget."""
        return await hot.run(self.conn, _SPEND, {"key_id": key_id, "amount": amount}) == 1

    async def prefix_of(self, key_id: str) -> str | None:
        """A key's prefix never changes (a new key is a new id), so it is read once per process:
        the worker's finishes asked for it once per task."""
        known = _KEY_PREFIXES.get(key_id)
        if known is not None:
            return known
        row = await hot.first_row(self.conn, _KEY_PREFIX, {"key_id": key_id})
        if row is None:
            return None
        if len(_KEY_PREFIXES) >= _KEY_PREFIXES_MAX:
            _KEY_PREFIXES.clear()
        prefix = _KEY_PREFIXES[key_id] = str(row[0])
        return prefix

    async def refund(self, key_id: str, amount: int) -> None:
        await hot.run(self.conn, _REFUND, {"key_id": key_id, "amount": amount})

    async def refund_many(self, refunds: dict[str, int]) -> None:
        """Give each key back ``amount`` of its budget, in one statement."""
        await hot.run(self.conn, _REFUND, [{"key_id": k, "amount": a} for k, a in sorted(refunds.items()) if a])


def ledger_row(account_id: str, kind: LedgerKind, amount: int, *, task_id: str | None = None,
               request_id: str | None = None, note: str | None = None, actor: str | None = None,
               at: int | None = None) -> dict[str, Any]:
    return {"account_id": account_id, "kind": kind.value, "amount": amount, "task_id": task_id,
            "request_id": request_id, "note": note, "actor": actor, "created_at": at or now_ms()}


class LedgerRepository:
    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn

    async def add(self, account_id: str, kind: LedgerKind, amount: int, *, task_id: str | None = None,
                  request_id: str | None = None, note: str | None = None, actor: str | None = None,
                  at: int | None = None) -> None:
        await hot.run(self.conn, _INSERT_LEDGER, ledger_row(account_id, kind, amount, task_id=task_id,
                                                            request_id=request_id, note=note, actor=actor, at=at))

    async def add_many(self, rows: list[dict[str, Any]]) -> None:
        """Entries made by :func:`ledger_row`, in one statement."""
        await hot.run(self.conn, _INSERT_LEDGER, rows)

    async def list(self, account_id: str, *, limit: int, before_id: int | None = None,
                   kind: str | None = None) -> list[LedgerEntry]:
        stmt = select(t.ledger_entries).where(t.ledger_entries.c.account_id == account_id)
        if before_id is not None:
            stmt = stmt.where(t.ledger_entries.c.id < before_id)
        if kind:
            stmt = stmt.where(t.ledger_entries.c.kind == kind)
        stmt = stmt.order_by(t.ledger_entries.c.id.desc()).limit(limit)
        return [
            LedgerEntry(id=int(r["id"]), account_id=r["account_id"], kind=LedgerKind(r["kind"]),
                        amount=int(r["amount"]), task_id=r["task_id"], note=r["note"],
                        created_at=int(r["created_at"]), request_id=r["request_id"])
            for r in (await self.conn.execute(stmt)).mappings()
        ]

    async def sums(self, account_id: str) -> dict[str, int]:
        stmt = (select(t.ledger_entries.c.kind, func.sum(t.ledger_entries.c.amount))
                .where(t.ledger_entries.c.account_id == account_id).group_by(t.ledger_entries.c.kind))
        return {str(k): int(v) for k, v in (await self.conn.execute(stmt)).all()}


class TaskRepository:
    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn

    async def add(self, task: Task) -> None:
        await self.add_many([task])

    async def add_many(self, tasks: Sequence[Task]) -> None:
        """Insert new tasks, in one statement."""
        rows = [{
            "id": task.id, "account_id": task.account_id, "api_key_id": task.api_key_id, "type": task.type,
            "model": task.model, "status": task.status.value, "input": orjson.dumps(task.input).decode(),
            "price": task.price, "charged": 0, "callback_url": task.callback_url, "attempts": task.attempts,
            "run_after": 0, "created_at": task.created_at, "node": task.node, "lease_token": task.lease_token,
            "lease_expires_at": task.lease_expires_at, "started_at": task.started_at,
        } for task in tasks]
        await hot.run(self.conn, _INSERT_TASK, rows)

    async def get(self, task_id: str, account_id: str | None = None) -> Task | None:
        if account_id is None:
            result = await self.conn.execute(_TASK_BY_ID, {"task_id": task_id})
        else:
            result = await self.conn.execute(_TASK_BY_ID_IN_ACCOUNT, {"task_id": task_id, "account_id": account_id})
        row = result.mappings().first()
        return task_from_row(row) if row else None

    async def list(self, account_id: str | None, *, limit: int, before_id: str | None = None,
                   status: str | None = None, model: str | None = None) -> list[Task]:
        stmt = select(t.tasks)
        if account_id is not None:
            stmt = stmt.where(t.tasks.c.account_id == account_id)
        if before_id:
            stmt = stmt.where(t.tasks.c.id < before_id)
        if status:
            stmt = stmt.where(t.tasks.c.status == status)
        if model:
            stmt = stmt.where(t.tasks.c.model == model)
        stmt = stmt.order_by(t.tasks.c.id.desc()).limit(limit)
        return [task_from_row(r) for r in (await self.conn.execute(stmt)).mappings()]

    async def count_unfinished(self) -> dict[str, int]:
        """Queued and running tasks across the cluster (the metrics' queue depth and in-flight)."""
        stmt = (select(t.tasks.c.status, func.count()).where(t.tasks.c.status.in_(("queued", "running")))
                .group_by(t.tasks.c.status))
        return {str(s): int(n) for s, n in (await self.conn.execute(stmt)).all()}

    async def count_active(self, account_id: str) -> int:
        row = await hot.first_row(self.conn, _COUNT_ACTIVE, {"account_id": account_id})
        return int(row[0]) if row else 0

    async def finish(self, task_id: str, *, status: TaskStatus, from_statuses: Sequence[TaskStatus],
                     lease_token: str | None = None, output: Any = None, error: Any = None,
                     charged: int = 0, at: int, route: str | None = None) -> bool:
        """Move a task to a terminal status iff it is still in one of ``from_statuses`` (and, for a
        worker, still holds the lease): the compare-and-set that makes completion exactly-once."""
        params: dict[str, Any] = {"f_id": task_id, "f_from": [s.value for s in from_statuses],
                                  "f_status": status.value, "f_output": _json(output), "f_error": _json(error),
                                  "f_charged": charged, "f_at": at}
        if lease_token is not None:
            params["f_token"] = lease_token
        if route is not None:
            params["f_route"] = route
        result = await self.conn.execute(_finish_statement(lease_token is not None, route is not None), params)
        return result.rowcount == 1

    async def finish_leased_many(self, finishes: Sequence[dict[str, Any]]) -> bool:
        """The finish compare-and-set of many running tasks, each under its own lease token (keys
        ``f_id``, ``f_token``, ``f_status``, ``f_output``, ``f_error`` as values, ``f_charged``,
        ``f_at``, ``f_route``). True iff every one of them moved; False means some had already ended
        and the caller must roll back and finish them one by one. Drivers that count the rows of an
        executemany run it as one statement; others (asyncpg) one statement per task."""
        done = 0
        encoded = [{**f, "f_output": _json(f["f_output"]), "f_error": _json(f["f_error"])} for f in finishes]
        for with_route in (False, True):
            rows = [f for f in encoded if (f.get("f_route") is not None) == with_route]
            if not rows:
                continue
            stmt = _leased_finish_statement(with_route)
            if len(rows) > 1 and self.conn.dialect.supports_sane_multi_rowcount:
                done += await hot.run(self.conn, stmt, rows)
            else:
                for row in rows:
                    done += await hot.run(self.conn, stmt, row)
        return done == len(finishes)

    async def defer(self, task_id: str, *, lease_token: str, remote_job: Any, route: str, poll_at: int) -> bool:
        """A running task's job now runs upstream: drop the worker's lease (its slot is free) and
        hand the task to the remote-job poller, iff this worker still holds the lease."""
        result = await self.conn.execute(
            update(t.tasks)
            .where(t.tasks.c.id == task_id, t.tasks.c.lease_token == lease_token,
                   t.tasks.c.status == TaskStatus.RUNNING.value)
            .values(remote_job=_json(remote_job), route=route, poll_at=poll_at, lease_token=None,
                    lease_expires_at=None))
        return result.rowcount == 1


class IdempotencyRepository:
    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn

    async def get(self, account_id: str, key: str) -> RowMapping | None:
        stmt = select(t.idempotency_keys).where(
            t.idempotency_keys.c.account_id == account_id, t.idempotency_keys.c.key == key)
        return (await self.conn.execute(stmt)).mappings().first()

    async def add(self, account_id: str, key: str, *, route: str, request_hash: str, status_code: int,
                  response_body: bytes, task_id: str | None, at: int) -> None:
        await self.conn.execute(insert(t.idempotency_keys).values(
            account_id=account_id, key=key, route=route, request_hash=request_hash,
            status_code=status_code, response_body=response_body.decode(), task_id=task_id, created_at=at,
        ))

    async def delete_expired(self, account_id: str, key: str, cutoff_ms: int) -> None:
        """Frees a key whose 24 h are over, so it can be claimed again."""
        await self.conn.execute(delete(t.idempotency_keys).where(
            t.idempotency_keys.c.account_id == account_id, t.idempotency_keys.c.key == key,
            t.idempotency_keys.c.created_at < cutoff_ms))

    async def purge_older_than(self, cutoff_ms: int) -> int:
        result = await self.conn.execute(delete(t.idempotency_keys).where(t.idempotency_keys.c.created_at < cutoff_ms))
        return int(result.rowcount or 0)


def _finish_values(with_route: bool) -> dict[str, Any]:
    values: dict[str, Any] = {"status": bindparam("f_status"), "output": bindparam("f_output"),
                              "error": bindparam("f_error"), "charged": bindparam("f_charged"),
                              "finished_at": bindparam("f_at"), "lease_token": None, "lease_expires_at": None,
                              "poll_at": None}
    if with_route:
        values["route"] = bindparam("f_route")
    return values


@functools.cache
def _finish_statement(by_token: bool, with_route: bool) -> Any:
    """The finish compare-and-set, built once per shape (values are bound per call)."""
    c = t.tasks.c
    conds = [c.id == bindparam("f_id"), c.status.in_(bindparam("f_from", expanding=True))]
    if by_token:
        conds.append(c.lease_token == bindparam("f_token"))
    return update(t.tasks).where(and_(*conds)).values(**_finish_values(with_route))


@functools.cache
def _leased_finish_statement(with_route: bool) -> Any:
    """:func:`_finish_statement` for a running task under a lease, without the expanding IN (so it
    can be run as an executemany, and by db/hot.py)."""
    c = t.tasks.c
    return (update(t.tasks)
            .where(c.id == bindparam("f_id"), c.status == TaskStatus.RUNNING.value,
                   c.lease_token == bindparam("f_token"))
            .values(**_finish_values(with_route)))
