"""Task use cases: create (hold + insert + enqueue), read, list, cancel, and the worker's finish.

Every state change and its money movement share one transaction: a task exists iff its hold
does, and a task ends iff its capture or release is written.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from sqlalchemy.exc import IntegrityError

from apiinone.db.channels import TASK_EVENTS_CHANNEL, TASKS_CHANNEL, WEBHOOKS_CHANNEL
from apiinone.db.database import Database
from apiinone.db.uow import SqlUnitOfWork
from apiinone.domain.accounts import Account, ApiKey
from apiinone.domain.catalog import Catalog, ModelSpec
from apiinone.domain.credits import credits_to_ucr
from apiinone.domain.tasks import ACTIVE_STATUSES, DIRECT_ATTEMPTS, Task, TaskStatus
from apiinone.errors import (
    Forbidden,
    IdempotencyConflict,
    InvalidParameter,
    ModelNotFound,
    ModelUnavailable,
    RateLimited,
    TaskNotCancelable,
    TaskNotFound,
)
from apiinone.ids import new_id, now_ms
from apiinone.kinds.base import Deferred
from apiinone.services.group_commit import BatchConflict, GroupCommit
from apiinone.services.metering import HoldAsk, Metering, RequestRecord, Settlement

IDEMPOTENCY_TTL_MS = 24 * 3600 * 1000
MAX_IDEMPOTENCY_KEY_CHARS = 255


@dataclass(frozen=True, slots=True)
class ImageTaskRequest:
    model: str
    prompt: str
    aspect_ratio: str = "1:1"
    quality: str = "medium"
    input_urls: tuple[str, ...] = ()
    callback_url: str | None = None
    n: int = 1
    options: dict[str, Any] = field(default_factory=dict)
    input_files: tuple[dict[str, str], ...] = ()
    """Uploaded inputs already in storage: ``{"key", "content_type", "role": "image" | "mask"}``."""


@dataclass(frozen=True, slots=True)
class IdempotencyClaim:
    key: str
    route: str
    request_hash: str

    @staticmethod
    def for_body(key: str, route: str, body: bytes) -> IdempotencyClaim:
        digest = hashlib.sha256(route.encode() + b"\0" + body).hexdigest()
        return IdempotencyClaim(key=key, route=route, request_hash=digest)


@dataclass(frozen=True, slots=True)
class LeasedFinish:
    """How one leased task ends: a direct task, or a queued one its worker completed (see
    :meth:`TaskService.finish_leased_many`). ``task.lease_token`` is the lease it ends under."""

    task: Task
    status: TaskStatus
    output: dict[str, Any] | None
    error: dict[str, str] | None
    route: str | None
    http_status: int
    key_prefix: str | None


@dataclass(frozen=True, slots=True)
class DirectLease:
    """A task the API process runs itself: it is inserted ``running`` under this lease, which the
    process renews while the call lasts (see ``services/direct.py``)."""

    node: str
    token: str
    expires_at: int


@dataclass(frozen=True, slots=True)
class CreateResult:
    task: Task
    replayed: bool = False
    replay_status: int | None = None
    replay_body: bytes | None = None


async def read_account_task(db: Database, account_id: str, task_id: str) -> Task:
    """One account's task; another account's task is as unknown as a missing one (404, never 403)."""
    async with db.uow(write=False) as uow:
        task = await uow.tasks.get(task_id, account_id)
    if task is None:
        raise TaskNotFound(f"no task {task_id!r} in this account")
    return task


@dataclass(frozen=True, slots=True)
class _Create:
    task: Task
    max_active_tasks: int | None


class TaskService:
    def __init__(self, db: Database, catalog_source: Callable[[], Catalog], *,
                 is_available: Callable[[ModelSpec], bool], base_url: Callable[[], str],
                 on_task_created: Callable[[], None] = lambda: None,
                 on_task_finished: Callable[[Task], None] = lambda task: None,
                 create_path_of: Callable[[str], str | None] = lambda type_: None,
                 metering: Metering | None = None,
                 on_remote_cancel: Callable[[Task], Awaitable[None]] | None = None,
                 on_task_progress: Callable[[Task], None] = lambda task: None) -> None:
        self.db = db
        self.create_path_of = create_path_of
        self.metering = metering or Metering(db)
        self.catalog_source = catalog_source
        self.is_available = is_available
        self.base_url = base_url
        self.on_task_created = on_task_created
        self.on_task_finished = on_task_finished
        self.on_remote_cancel = on_remote_cancel
        """Cancels a canceled task's job upstream (best effort, after the commit)."""
        self.on_task_progress = on_task_progress
        self._creates: GroupCommit[_Create, None] = GroupCommit(db, self._create_many, name="task-create")
        self._completions: GroupCommit[LeasedFinish, Task | None] = GroupCommit(
            db, self.finish_leased_many, name="task-complete", lock_order=0)

    def resolve_model(self, name: str, *, key: ApiKey | None = None, type_: str | None = None) -> ModelSpec:
        """The launched model ``name`` names, checked for this key, this route's type and an upstream."""
        spec = self.catalog_source().resolve(name)
        if spec is None or not spec.launched or not spec.enabled:
            raise ModelNotFound(f"model {name!r} does not exist; see GET /api/v1/models", param="model")
        if type_ is not None and spec.type != type_:
            path = self.create_path_of(spec.type)
            where = f"; use {path}" if path else ""
            raise InvalidParameter(f"model {spec.id!r} is a {spec.type} model, not a {type_} model{where}",
                                   param="model")
        if key is not None and not key.may_use(spec.id):
            raise Forbidden(f"this API key may not use model {spec.id!r}")
        if not self.is_available(spec):
            raise ModelUnavailable(f"model {spec.id!r} has no configured upstream right now")
        return spec

    async def create_image_task(self, account: Account, key: ApiKey | None, request: ImageTaskRequest, *,
                                idempotency: IdempotencyClaim | None = None,
                                render: Callable[[Task], bytes] | None = None,
                                status_code: int = 202, max_active_tasks: int | None = None,
                                direct: DirectLease | None = None) -> CreateResult:
        """The image kind's input and price, then :meth:`create_task`; with ``direct`` the task is
        inserted running under that lease instead of queued, for this process to run."""
        spec = self.resolve_model(request.model, key=key, type_="image")
        if request.quality not in spec.pricing:
            raise InvalidParameter(f"quality must be one of {', '.join(spec.pricing)}", param="quality")
        price = credits_to_ucr(spec.price(request.quality)) * request.n  # µcr
        task_input: dict[str, Any] = {
            "prompt": request.prompt, "aspect_ratio": request.aspect_ratio, "quality": request.quality,
            "input_urls": list(request.input_urls),
        }
        if request.n != 1:
            task_input["n"] = request.n
        if request.options:
            task_input["options"] = request.options
        if request.input_files:
            task_input["input_files"] = [dict(f) for f in request.input_files]
        return await self.create_task(account, key, spec, task_input, price, callback_url=request.callback_url,
                                      idempotency=idempotency, render=render, status_code=status_code,
                                      max_active_tasks=max_active_tasks, direct=direct)

    async def create_task(self, account: Account, key: ApiKey | None, spec: ModelSpec, task_input: dict[str, Any],
                          price: int, *, callback_url: str | None = None,
                          idempotency: IdempotencyClaim | None = None,
                          render: Callable[[Task], bytes] | None = None,
                          status_code: int = 202, max_active_tasks: int | None = None,
                          direct: DirectLease | None = None) -> CreateResult:
        """Hold ``price`` (µcr), insert the task (of ``spec.type``) and enqueue it, in one transaction.

        With an idempotency claim the first response is stored in the same transaction, before the
        hold, so two concurrent requests with one key create one task: the loser's insert conflicts
        (on PostgreSQL it waits for the winner's commit), it rolls back and replays the winner's
        response, and it never touches the credits the winner holds."""
        now = now_ms()
        task = Task(id=new_id("tsk", now), account_id=account.id, api_key_id=key.id if key else None,
                    model=spec.id, type=spec.type, status=TaskStatus.QUEUED, input=task_input, price=price,
                    created_at=now, callback_url=callback_url)
        if direct is not None:
            task = dataclasses.replace(task, status=TaskStatus.RUNNING, node=direct.node, lease_token=direct.token,
                                       lease_expires_at=direct.expires_at, attempts=DIRECT_ATTEMPTS, started_at=now)
        if idempotency is None:  # the hot path: group-committed with its neighbours
            await self._creates.submit(_Create(task, max_active_tasks))
            if direct is None:
                self.on_task_created()
            return CreateResult(task=task)
        replay = await self._replay(account.id, idempotency)
        if replay is not None:
            return replay
        try:
            async with self.db.uow() as uow:
                await uow.idempotency.delete_expired(account.id, idempotency.key, now - IDEMPOTENCY_TTL_MS)
                body = render(task) if render else orjson.dumps(task.to_public(self.base_url()))
                await uow.idempotency.add(account.id, idempotency.key, route=idempotency.route,
                                          request_hash=idempotency.request_hash, status_code=status_code,
                                          response_body=body, task_id=task.id, at=now)
                [refused] = await self._create_many(uow, [_Create(task, max_active_tasks)])
                if refused is not None:
                    raise refused
                await uow.commit()
        except IntegrityError:
            replay = await self._replay(account.id, idempotency)
            if replay is None:
                raise
            return replay
        if direct is None:
            self.on_task_created()
        return CreateResult(task=task)

    async def _create_many(self, uow: SqlUnitOfWork, creates: list[_Create]) -> list[Exception | None]:
        """Hold and insert many tasks in the caller's transaction (a group commit, or an idempotent
        create's own), each refused exactly as it would be alone: the holds first, which lock each
        account's row, so concurrent creates of an account count its active tasks one at a time
        (also across processes); then the active-task limit, counted once per account. A task over
        the limit rolls the transaction back: raised alone, redone one by one in a batch."""
        results = await self.metering.hold_many(uow, [
            HoldAsk(c.task.account_id, c.task.api_key_id, c.task.price, task_id=c.task.id, at=c.task.created_at)
            for c in creates])
        active: dict[str, int] = {}
        for create, refused in zip(creates, results, strict=True):
            if refused is not None or create.max_active_tasks is None:
                continue
            account_id = create.task.account_id
            if account_id not in active:
                active[account_id] = await uow.tasks.count_active(account_id)
            if active[account_id] >= create.max_active_tasks:
                if len(creates) > 1:
                    raise BatchConflict("an account reached its active-task limit: each create alone")
                raise RateLimited(f"this account already has {create.max_active_tasks} queued or running tasks")
            active[account_id] += 1
        created = [c.task for c, r in zip(creates, results, strict=True) if r is None]
        await uow.tasks.add_many(created)
        if any(task.status is TaskStatus.QUEUED for task in created):
            await uow.notify(TASKS_CHANNEL)  # once for the batch: workers in other processes lease
        return results

    async def _replay(self, account_id: str, claim: IdempotencyClaim) -> CreateResult | None:
        async with self.db.uow(write=False) as uow:
            row = await uow.idempotency.get(account_id, claim.key)
            if row is None or row["created_at"] < now_ms() - IDEMPOTENCY_TTL_MS:
                return None
            if row["request_hash"] != claim.request_hash:
                raise IdempotencyConflict()
            task = await uow.tasks.get(row["task_id"], account_id) if row["task_id"] else None
        if task is None:
            return None
        return CreateResult(task=task, replayed=True, replay_status=int(row["status_code"]),
                            replay_body=str(row["response_body"]).encode())

    async def unfinished_counts(self) -> dict[str, int]:
        async with self.db.uow(write=False) as uow:
            return await uow.tasks.count_unfinished()

    async def get_task(self, account_id: str, task_id: str) -> Task:
        return await read_account_task(self.db, account_id, task_id)

    async def list_tasks(self, account_id: str | None, *, limit: int = 20, cursor: str | None = None,
                         status: str | None = None, model: str | None = None) -> tuple[list[Task], str | None]:
        if status is not None and status not in {s.value for s in TaskStatus}:
            raise InvalidParameter("status must be one of " + ", ".join(s.value for s in TaskStatus), param="status")
        if model:
            spec = self.catalog_source().resolve(model)
            model = spec.id if spec else model
        async with self.db.uow(write=False) as uow:
            tasks = await uow.tasks.list(account_id, limit=limit + 1, before_id=cursor, status=status, model=model)
        next_cursor = tasks[limit - 1].id if len(tasks) > limit else None
        return tasks[:limit], next_cursor

    async def cancel_task(self, account_id: str, task_id: str) -> Task:
        async with self.db.uow() as uow:
            task = await uow.tasks.get(task_id, account_id)
            if task is None:
                raise TaskNotFound(f"no task {task_id!r} in this account")
            if task.status.is_terminal:
                raise TaskNotCancelable(f"task {task_id} has already {task.status.value}")
            finished = await self._finish(uow, task, TaskStatus.CANCELED, from_statuses=ACTIVE_STATUSES,
                                          error={"code": "canceled", "message": "canceled by the client"})
            if finished is None:
                raise TaskNotCancelable(f"task {task_id} has already ended")
            await uow.commit()
        self.on_task_finished(finished)
        if task.remote_job is not None and self.on_remote_cancel is not None:
            await self.on_remote_cancel(task)
        return finished

    async def complete_task(self, task: Task, lease_token: str, output: dict[str, Any], *,
                            route: str | None = None) -> Task | None:
        """Succeed a leased task: capture the price. None if the lease was lost (canceled, or
        taken over after expiry), in which case nothing is charged by this worker. Group-committed
        with the other completions (and direct writes) of the same few loop turns."""
        finished = await self._completions.submit(LeasedFinish(
            dataclasses.replace(task, lease_token=lease_token), TaskStatus.SUCCEEDED, output, None, route, 202, None))
        if finished is not None:
            self.on_task_finished(finished)
        return finished

    async def defer_task(self, task: Task, lease_token: str, deferred: Deferred) -> Task | None:
        """The task's job was submitted upstream: record it and free the worker's slot."""
        async with self.db.uow() as uow:
            moved = await uow.tasks.defer(task.id, lease_token=lease_token, remote_job=deferred.remote_job,
                                          route=deferred.route, poll_at=now_ms() + deferred.poll_after_ms)
            current = await uow.tasks.get(task.id) if moved else None
            await uow.commit()
        return current

    async def lease_remote_jobs(self, *, node: str, token: str, limit: int, lease_ms: int,
                                models: Sequence[str] | None = None) -> list[Task]:
        """Due remote jobs for the poller, each leased under ``token`` until ``lease_ms`` from now."""
        async with self.db.uow() as uow:
            leased = await uow.remote_jobs.lease_due(node=node, token=token, limit=limit, now=now_ms(),
                                                     lease_ms=lease_ms, models=models)
            await uow.commit()
        return leased

    async def reschedule_remote_job(self, task: Task, token: str, *, poll_at: int,
                                    progress: int | None) -> Task | None:
        """The job is still running upstream: look again at ``poll_at``. A progress that moved
        is saved and announced (an SSE ``running`` event). None if the lease was lost."""
        moved = progress is not None and progress != task.progress
        async with self.db.uow() as uow:
            kept = await uow.remote_jobs.reschedule(task.id, token=token, poll_at=poll_at,
                                                    progress=progress if moved else None)
            if kept and moved:
                await uow.notify(TASK_EVENTS_CHANNEL, f"running {task.id}")
            await uow.commit()
        if not kept:
            return None
        if moved:
            task.progress = progress
            self.on_task_progress(task)
        return task

    async def fail_task(self, task: Task, code: str, message: str, *, lease_token: str | None,
                        from_statuses: Sequence[TaskStatus] = (TaskStatus.RUNNING,)) -> Task | None:
        async with self.db.uow() as uow:
            finished = await self._finish(uow, task, TaskStatus.FAILED, from_statuses=from_statuses,
                                          lease_token=lease_token, error={"code": code, "message": message})
            await uow.commit()
        if finished is not None:
            self.on_task_finished(finished)
        return finished

    async def finish_leased_many(self, uow: SqlUnitOfWork, ops: list[LeasedFinish]) -> list[Exception | Task | None]:
        """End many leased tasks in the caller's transaction (their group commit) with a handful of
        statements: one compare-and-set per task (one executemany where the driver counts its rows),
        then their money and request-log rows together. A task that had already ended is None when
        it is alone; in a batch, BatchConflict: the group commit then ends each alone."""
        now = now_ms()
        finishes = []
        settlements = []
        finished: list[Task] = []
        for op in ops:
            task = op.task
            charged = task.price if op.status is TaskStatus.SUCCEEDED else 0
            finishes.append({"f_id": task.id, "f_token": task.lease_token, "f_status": op.status.value,
                             "f_output": op.output, "f_error": op.error,
                             "f_charged": charged, "f_at": now, "f_route": op.route})
            done = dataclasses.replace(task, status=op.status, output=op.output, error=op.error, charged=charged,
                                       finished_at=now, lease_token=None, lease_expires_at=None,
                                       route=op.route if op.route is not None else task.route)
            key_prefix = op.key_prefix
            if key_prefix is None and task.api_key_id is not None:
                key_prefix = await uow.api_keys.prefix_of(task.api_key_id)
            settlements.append(Settlement(
                task.account_id, task.api_key_id, task.price, charged, op.status is TaskStatus.SUCCEEDED, now,
                task_id=task.id, key_prefix=key_prefix,
                record=RequestRecord(type=done.type, model=done.model, status=op.status.value,
                                     http_status=op.http_status, route=done.route,
                                     latency_ms=max(0, now - done.created_at), task_id=task.id)))
            finished.append(done)
        if not await uow.tasks.finish_leased_many(finishes):
            if len(ops) == 1:
                return [None]  # it had already ended (canceled, or swept): nothing was written
            raise BatchConflict("a direct task of the batch had already ended")
        await self.metering.settle_many(uow, settlements)
        for ended in finished:
            await self._announce(uow, ended, now)
        return list(finished)

    async def _finish(self, uow: SqlUnitOfWork, task: Task, status: TaskStatus, *,
                      from_statuses: Sequence[TaskStatus] | frozenset[TaskStatus],
                      lease_token: str | None = None, output: dict[str, Any] | None = None,
                      error: dict[str, str] | None = None, route: str | None = None,
                      http_status: int = 202) -> Task | None:
        now = now_ms()
        charged = task.price if status is TaskStatus.SUCCEEDED else 0
        if not await uow.tasks.finish(task.id, status=status, from_statuses=list(from_statuses),
                                      lease_token=lease_token, output=output, error=error,
                                      charged=charged, at=now, route=route):
            return None
        if status is TaskStatus.SUCCEEDED:
            await self.metering.capture(uow, account_id=task.account_id, api_key_id=task.api_key_id,
                                        held=task.price, charged=charged, task_id=task.id, at=now)
        else:
            await self.metering.release(uow, account_id=task.account_id, api_key_id=task.api_key_id,
                                        held=task.price, task_id=task.id, at=now)
        finished = await uow.tasks.get(task.id)
        assert finished is not None
        # a queued create was answered 202 with the task; latency runs from then to the end
        await self.metering.record(
            uow, account_id=task.account_id, api_key_id=task.api_key_id, credits=charged, at=now,
            record=RequestRecord(type=finished.type, model=finished.model, status=status.value,
                                 http_status=http_status, route=finished.route,
                                 latency_ms=max(0, now - finished.created_at), task_id=task.id))
        await self._announce(uow, finished, now)
        return finished

    async def _announce(self, uow: SqlUnitOfWork, finished: Task, now: int) -> None:
        """Tell waiters in other processes, and queue the task's webhook if it has one."""
        await uow.notify(TASK_EVENTS_CHANNEL, f"{finished.status.value} {finished.id}")
        if finished.callback_url:
            await uow.webhooks.enqueue(
                delivery_id=new_id("msg", now), task_id=finished.id, account_id=finished.account_id,
                url=finished.callback_url, payload=orjson.dumps(finished.to_public(self.base_url())), at=now)
            await uow.notify(WEBHOOKS_CHANNEL)
