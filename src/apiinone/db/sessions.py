"""SQL of console sessions (``web_sessions``): only digests of the cookies are stored."""

from __future__ import annotations

from sqlalchemy import delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from apiinone.db import tables as t


class SessionRepository:
    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn

    async def add(self, id_hash: str, account_id: str, csrf_token: str, *, at: int, expires_at: int) -> None:
        await self.conn.execute(insert(t.web_sessions).values(
            id_hash=id_hash, account_id=account_id, csrf_token=csrf_token, created_at=at, expires_at=expires_at))

    async def get(self, id_hash: str) -> tuple[str, str, int] | None:
        row = (await self.conn.execute(
            select(t.web_sessions.c.account_id, t.web_sessions.c.csrf_token, t.web_sessions.c.expires_at)
            .where(t.web_sessions.c.id_hash == id_hash)
        )).first()
        return None if row is None else (str(row[0]), str(row[1]), int(row[2]))

    async def delete(self, id_hash: str) -> None:
        await self.conn.execute(delete(t.web_sessions).where(t.web_sessions.c.id_hash == id_hash))

    async def delete_for_account(self, account_id: str, *, keep: str | None = None) -> int:
        stmt = delete(t.web_sessions).where(t.web_sessions.c.account_id == account_id)
        if keep is not None:
            stmt = stmt.where(t.web_sessions.c.id_hash != keep)
        return int((await self.conn.execute(stmt)).rowcount or 0)

    async def delete_expired(self, now: int) -> int:
        return int((await self.conn.execute(
            delete(t.web_sessions).where(t.web_sessions.c.expires_at < now))).rowcount or 0)

    async def extend(self, id_hash: str, expires_at: int) -> None:
        await self.conn.execute(
            update(t.web_sessions).where(t.web_sessions.c.id_hash == id_hash).values(expires_at=expires_at))
