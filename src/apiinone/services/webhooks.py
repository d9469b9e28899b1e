"""Webhook delivery use cases for API clients and the dashboard: the log, and redelivery."""

from __future__ import annotations

from collections.abc import Callable

from apiinone.db.channels import WEBHOOKS_CHANNEL
from apiinone.db.database import Database
from apiinone.domain.webhooks import Delivery
from apiinone.errors import NotFound, TaskNotFound
from apiinone.ids import now_ms


class DeliveryService:
    def __init__(self, db: Database, *, on_redeliver: Callable[[], None] = lambda: None) -> None:
        self.db = db
        self.on_redeliver = on_redeliver

    async def list_for_task(self, account_id: str, task_id: str) -> list[Delivery]:
        """A task's deliveries with every attempt; 404 for a task of another account."""
        async with self.db.uow(write=False) as uow:
            if await uow.tasks.get(task_id, account_id) is None:
                raise TaskNotFound(f"no task {task_id!r} in this account")
            return await uow.webhooks.list_for_task(task_id, account_id)

    async def redeliver(self, account_id: str, task_id: str) -> Delivery:
        """Send the task's latest delivery again now, with the same ``webhook-id`` (receivers
        dedupe on it) and a fresh retry schedule."""
        async with self.db.uow() as uow:
            if await uow.tasks.get(task_id, account_id) is None:
                raise TaskNotFound(f"no task {task_id!r} in this account")
            deliveries = await uow.webhooks.list_for_task(task_id, account_id)
            if not deliveries:
                raise NotFound("this task has no webhook delivery: it has no callback_url or has not ended yet")
            await uow.webhooks.restart(deliveries[0].id, now=now_ms())
            await uow.notify(WEBHOOKS_CHANNEL)
            await uow.commit()
        self.on_redeliver()
        async with self.db.uow(write=False) as uow:
            return (await uow.webhooks.list_for_task(task_id, account_id))[0]
