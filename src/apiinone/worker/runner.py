"""The task runner: lease → the task's kind runs it (inputs, route pool, storage) → finish, with heartbeats.

A lease is a token plus an expiry; every lease gets its own token, so a task this worker leases
again after its lease ran out is a new lease, and the earlier run can no longer finish it.
The heartbeat extends the expiry of every task this worker is
still running; if the process dies (or a run is abandoned, e.g. its finish failed while the database
was down) the expiry passes and another worker leases the task again. Finishing
is a compare-and-set on the token, so a task is charged at most once whoever finishes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import httpx
import structlog

from apiinone.db.channels import TASK_EVENTS_CHANNEL, TASKS_CHANNEL
from apiinone.db.database import Database
from apiinone.domain.catalog import Catalog
from apiinone.domain.tasks import DIRECT_ATTEMPTS, Task, TaskStatus
from apiinone.ids import new_id, now_ms
from apiinone.kinds import KindRegistry
from apiinone.kinds.base import Deferred, RunContext, TaskFailure
from apiinone.kinds.image.job import GeneratedImage
from apiinone.services.events import notify_payloads
from apiinone.services.tasks import TaskService
from apiinone.storage.base import Storage
from apiinone.upstreams.pool import RoutePool
from apiinone.worker.remote_jobs import RemoteJobPoller
from apiinone.worker.wakeup import Wakeup

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class WorkerOptions:
    node: str
    concurrency: int = 8
    lease_s: float = 30.0
    max_attempts: int = 3
    poll_s: float = 1.0
    task_timeout_s: float = 600.0
    drain_s: float = 20.0
    models: tuple[str, ...] | None = None
    model_limits: Mapping[str, int] = field(default_factory=dict)
    """Most tasks of one model this node runs at once (``--models a=4``); others share ``concurrency``."""
    cluster_caps: Mapping[str, int] = field(default_factory=dict)
    """Most tasks of one model running at once across the cluster (``APIINONE_MODEL_CONCURRENCY``)."""

    @property
    def heartbeat_interval_s(self) -> float:
        return max(0.2, self.lease_s / 3)


class TaskWorker:
    def __init__(self, db: Database, tasks: TaskService, catalog_source: Callable[[], Catalog],
                 pool: RoutePool, kinds: KindRegistry, storage: Storage, fetch_client: httpx.AsyncClient,
                 options: WorkerOptions, *, files_base_url: Callable[[], str], wakeup: Wakeup | None = None,
                 on_task_started: Callable[[Task], None] = lambda task: None,
                 on_task_images: Callable[[str, Mapping[str, GeneratedImage]], None] = lambda task_id, images: None,
                 remote_jobs: RemoteJobPoller | None = None) -> None:
        self.db = db
        self.tasks = tasks
        self.catalog_source = catalog_source
        self.pool = pool
        self.kinds = kinds
        self.storage = storage
        self.fetch_client = fetch_client
        self.options = options
        self.files_base_url = files_base_url
        self.wakeup = wakeup or Wakeup()
        self.on_task_started = on_task_started
        self.on_task_images = on_task_images
        self._tokens: dict[str, str] = {}
        """The lease token of each task this worker runs."""
        self._running: dict[str, asyncio.Task[None]] = {}
        self._running_models: dict[str, str] = {}
        self._stopping = asyncio.Event()
        self._loops: list[asyncio.Task[None]] = []
        self.remote_jobs = remote_jobs
        """Follows the jobs this worker's tasks deferred upstream; started and stopped with it."""

    @property
    def running_count(self) -> int:
        return len(self._running)

    async def start(self) -> None:
        await self._heartbeat_once()
        self._loops = [asyncio.create_task(self._lease_loop(), name="lease-loop"),
                       asyncio.create_task(self._heartbeat_loop(), name="heartbeat-loop")]
        if self.remote_jobs is not None:
            await self.remote_jobs.start()

    async def stop(self) -> None:
        """Stop leasing, give running tasks ``drain_s`` to finish, hand the rest back to the queue.

        The loops are asked to stop rather than cancelled: cancelling a coroutine in the middle of
        a database call can leave its pooled connection unusable."""
        self._stopping.set()
        self.wakeup.set()
        if self.remote_jobs is not None:
            await self.remote_jobs.stop()
        if self._loops:
            await asyncio.wait(self._loops, timeout=10)
        if self._running:
            await asyncio.wait(list(self._running.values()), timeout=self.options.drain_s)
        for task_id, job in list(self._running.items()):
            async with self.db.uow() as uow:
                await uow.queue.requeue(task_id, self._tokens.get(task_id, ""))
                await uow.commit()
            job.cancel()
        for loop in self._loops:
            if not loop.done():
                loop.cancel()
        async with self.db.uow() as uow:
            await uow.queue.stop_node(self.options.node, now_ms())
            await uow.commit()

    async def _lease_loop(self) -> None:
        while not self._stopping.is_set():
            free = self.options.concurrency - len(self._running)
            leased: Sequence[Task] = []
            if free > 0:
                try:
                    leased = await self.lease(free)
                except Exception as exc:  # database down: keep the loop alive and retry
                    log.warning("lease_failed", error=str(exc))
                    await asyncio.sleep(self.options.poll_s)
                    continue
                for task in leased:
                    earlier = self._running.get(task.id)
                    if earlier is not None:  # our own run outlived its lease: the new lease wins
                        earlier.cancel()
                    self._tokens[task.id] = task.lease_token or ""
                    self._running_models[task.id] = task.model
                    self._running[task.id] = asyncio.create_task(self._run_guarded(task), name=task.id)
                    self.on_task_started(task)
            idle = (len(leased) < max(free, 1) or free <= 0) and not self._stopping.is_set()
            if idle and await self.wakeup.wait(self.options.poll_s):
                # the tasks of one group commit end in the same loop turn: let them all free their
                # slots, then lease for all of them in one transaction, not one each
                await asyncio.sleep(0)

    async def lease(self, limit: int) -> list[Task]:
        now = now_ms()
        running = list(self._running_models.values())
        node_free = {m: max(0, n - running.count(m)) for m, n in self.options.model_limits.items()}
        async with self.db.uow() as uow:
            leased = await uow.queue.lease(
                node=self.options.node, token=new_id("lease"), limit=limit, now=now,
                lease_ms=int(self.options.lease_s * 1000), max_attempts=self.options.max_attempts,
                models=self.options.models, model_limits=node_free, cluster_caps=self.options.cluster_caps,
            )
            for payload in notify_payloads("running", [task.id for task in leased]):
                await uow.notify(TASK_EVENTS_CHANNEL, payload)  # live events in other processes
            await uow.commit()
        return leased

    async def _heartbeat_once(self) -> None:
        now = now_ms()
        async with self.db.uow() as uow:
            running = list(self._running)
            await uow.queue.extend([self._tokens[t] for t in running if t in self._tokens],
                                   now + int(self.options.lease_s * 1000), task_ids=running)
            await uow.queue.heartbeat_node(
                name=self.options.node, models=self.options.models, concurrency=self.options.concurrency,
                running=len(self._running), pid=os.getpid(), hostname=socket.gethostname(), now=now,
                model_limits=self.options.model_limits,
                heartbeat_interval_ms=int(self.options.heartbeat_interval_s * 1000))
            await uow.commit()
        await self._fail_exhausted(now)

    async def _heartbeat_loop(self) -> None:
        interval = self.options.heartbeat_interval_s
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), interval)
            if self._stopping.is_set():
                return
            try:
                await self._heartbeat_once()
            except Exception as exc:
                log.warning("heartbeat_failed", error=str(exc))

    async def _fail_exhausted(self, now: int) -> None:
        async with self.db.uow(write=False) as uow:
            exhausted = await uow.queue.exhausted(now=now, max_attempts=self.options.max_attempts)
        for task in exhausted:
            message = ("the server process answering this request stopped before it answered"
                       if task.attempts >= DIRECT_ATTEMPTS else "the task did not finish in time on any worker")
            await self.tasks.fail_task(task, "timeout", message, lease_token=task.lease_token)

    async def _run_guarded(self, task: Task) -> None:
        me = asyncio.current_task()
        try:
            await self.run_task(task)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("task_crashed", task_id=task.id)
            with contextlib.suppress(Exception):
                await self.tasks.fail_task(task, "internal_error", "the worker failed while running the task",
                                           lease_token=task.lease_token)
        finally:
            if self._running.get(task.id) is me:  # not a later lease of the same task
                self._running.pop(task.id, None)
                self._running_models.pop(task.id, None)
                self._tokens.pop(task.id, None)
            self.wakeup.set()
            if task.model in self.options.cluster_caps and not self._stopping.is_set():
                await self._announce_free_slot()

    async def _announce_free_slot(self) -> None:
        """A capped model's slot opened: wake the other nodes now rather than at their next poll."""
        with contextlib.suppress(Exception):
            async with self.db.uow() as uow:
                await uow.notify(TASKS_CHANNEL)
                await uow.commit()

    async def run_task(self, task: Task) -> None:
        started = now_ms()
        token = task.lease_token or ""
        spec = self.catalog_source().resolve(task.model)
        kind = self.kinds.queued(task.type)
        if spec is None or kind is None:
            await self.tasks.fail_task(task, "model_unavailable", "no upstream serves this model any more",
                                       lease_token=token)
            return
        ctx = RunContext(spec=spec, pool=self.pool, storage=self.storage, fetch_client=self.fetch_client,
                         files_base_url=self.files_base_url(), timeout_s=self.options.task_timeout_s,
                         hooks={"images": self.on_task_images})
        try:
            outcome = await kind.run(ctx, task)
        except TaskFailure as exc:
            await self.tasks.fail_task(task, exc.code, exc.message, lease_token=token)
            return
        if isinstance(outcome, Deferred):
            if self.remote_jobs is not None:  # the first look comes no later than the poller's longest interval
                cap_ms = int(self.remote_jobs.options.max_interval_s * 1000)
                outcome = Deferred(outcome.remote_job, outcome.route, min(outcome.poll_after_ms, cap_ms))
            deferred = await self.tasks.defer_task(task, token, outcome)
            if deferred is not None and self.remote_jobs is not None and outcome.poll_after_ms <= 0:
                self.remote_jobs.wakeup.set()
            log.info("task_deferred", task_id=task.id, model=task.model, route=outcome.route,
                     deferred=deferred is not None, ms=now_ms() - started)
            return
        finished = await self.tasks.complete_task(task, token, outcome.output, route=outcome.route)
        log.info("task_finished", task_id=task.id, model=task.model, route=outcome.route,
                 status=finished.status.value if finished else "lease_lost", ms=now_ms() - started)


__all__ = ["TaskStatus", "TaskWorker", "WorkerOptions"]
