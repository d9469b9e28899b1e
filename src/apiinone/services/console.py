"""What the console and admin pages read and change beyond the core use cases: model overrides,
account disabling, worker nodes with their running tasks, recent failures.

Their SQL is in :mod:`apiinone.db.console`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from apiinone.db.channels import KEYS_CHANNEL
from apiinone.db.console import ConsoleRepository
from apiinone.db.database import Database
from apiinone.db.sessions import SessionRepository
from apiinone.domain.accounts import Account
from apiinone.domain.catalog import Catalog
from apiinone.domain.tasks import Task
from apiinone.errors import InvalidParameter, NotFound
from apiinone.ids import now_ms


@dataclass(frozen=True, slots=True)
class ModelOverride:
    model_id: str
    enabled: bool | None
    pricing: dict[str, int] | None
    updated_at: int

    def as_catalog_fields(self) -> dict[str, Any]:
        fields: dict[str, Any] = {}
        if self.enabled is not None:
            fields["enabled"] = self.enabled
        if self.pricing:
            fields["pricing"] = dict(self.pricing)
        return fields


@dataclass(frozen=True, slots=True)
class FailedTask:
    task: Task
    email: str


class ConsoleQueries:
    def __init__(self, db: Database) -> None:
        self.db = db

    # --- model overrides -------------------------------------------------------------------

    async def model_overrides(self) -> dict[str, ModelOverride]:
        async with self.db.uow(write=False) as uow:
            rows = await ConsoleRepository(uow.conn).model_overrides()
        return {
            r["model_id"]: ModelOverride(
                model_id=r["model_id"], enabled=r["enabled"],
                pricing={str(k): int(v) for k, v in r["pricing"].items()} if r["pricing"] else None,
                updated_at=r["updated_at"])
            for r in rows
        }

    async def set_model_override(self, base: Catalog, model_id: str, *, enabled: bool,
                                 pricing: dict[str, int], actor: str | None = None) -> None:
        """Store the admin's choice for a model; fields equal to the file catalog are not stored."""
        spec = base.models.get(model_id)
        if spec is None:
            raise NotFound("model not found")
        if set(pricing) != set(spec.pricing) or any(p < 0 or p > 1_000_000 for p in pricing.values()):
            raise InvalidParameter("a price from 0 to 1000000 credits is needed for every quality", param="pricing")
        enabled_value = None if enabled == spec.enabled else enabled
        pricing_value = None if pricing == spec.pricing else pricing
        async with self.db.uow() as uow:
            await ConsoleRepository(uow.conn).replace_model_override(model_id, enabled=enabled_value,
                                                                     pricing=pricing_value, at=now_ms())
            await uow.audit.add(actor, "model.update", model_id, {"enabled": enabled, "pricing": pricing})
            await uow.commit()

    # --- accounts ----------------------------------------------------------------------------

    async def search_accounts(self, query: str | None, *, limit: int = 50) -> list[Account]:
        async with self.db.uow(write=False) as uow:
            return await uow.accounts.list(query=query or None, limit=limit)

    async def set_disabled(self, account_id: str, disabled: bool, *, actor: str | None = None) -> None:
        """Disabling also ends the account's console sessions in the same transaction."""
        async with self.db.uow() as uow:
            if await uow.accounts.get(account_id) is None:
                raise NotFound("account not found")
            await uow.accounts.update(account_id, disabled=disabled)
            if disabled:
                await SessionRepository(uow.conn).delete_for_account(account_id)
            await uow.audit.add(actor, "account.disable" if disabled else "account.enable", account_id)
            await uow.notify(KEYS_CHANNEL, "")  # every API process re-reads its cached keys
            await uow.commit()

    async def set_display_name(self, account_id: str, name: str) -> None:
        async with self.db.uow() as uow:
            await uow.accounts.update(account_id, display_name=name.strip()[:100] or None)
            await uow.commit()

    async def stats(self) -> dict[str, int]:
        since = now_ms() - 24 * 3600 * 1000
        async with self.db.uow(write=False) as uow:
            accounts, by_status, pending = await ConsoleRepository(uow.conn).dashboard_counts(since)
        return {"accounts": accounts, "tasks_24h": sum(by_status.values()),
                "succeeded_24h": by_status.get("succeeded", 0), "failed_24h": by_status.get("failed", 0),
                "active": by_status.get("queued", 0) + by_status.get("running", 0), "pending_orders": pending}

    # --- workers and failures ----------------------------------------------------------------

    async def nodes(self) -> list[dict[str, Any]]:
        """Worker nodes with the tasks each is running now."""
        async with self.db.uow(write=False) as uow:
            nodes = await uow.queue.nodes()
            running = await ConsoleRepository(uow.conn).running_tasks()
        by_node: dict[str, list[dict[str, str]]] = {}
        for node, task_id, model in running:
            by_node.setdefault(node, []).append({"id": task_id, "model": model})
        return [dict(n) | {"running_tasks": by_node.get(str(n["name"]), [])} for n in nodes]

    async def recent_failures(self, *, limit: int = 20) -> list[FailedTask]:
        async with self.db.uow(write=False) as uow:
            rows = await ConsoleRepository(uow.conn).recent_failures(limit)
        return [FailedTask(task=task, email=email) for task, email in rows]
