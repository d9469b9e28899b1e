"""Reading the audit log (the writes happen in each admin change's own transaction)."""

from __future__ import annotations

from apiinone.db.audit import AuditEntry
from apiinone.db.database import Database


class AuditLogReader:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def entries(self, *, limit: int, before_id: str | None = None, action: str | None = None) -> list[AuditEntry]:
        async with self.db.uow(write=False) as uow:
            return await uow.audit.list(limit=limit, before_id=before_id, action=action)
