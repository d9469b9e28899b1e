"""The remote-job poller: follows jobs that run upstream (video, audio) without a worker slot.

A worker submits a job and defers the task (``tasks.remote_job``, ``route``, ``poll_at``); from then
on this poller owns it. Each round it leases due jobs (a per-row lease in the database, so several
pollers never look at one job at once and a dead poller's jobs come back when the lease runs out),
asks the kind to look at each once, with at most ``concurrency`` looks in flight, and then either
reschedules the job (with its progress, backed off as the job ages, with jitter so thousands of
jobs do not poll in step), succeeds the task (the kind has copied the result into storage; the
price is captured) or fails it (released). All state is in the database: a restart loses nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import httpx
import structlog

from apiinone.domain.catalog import Catalog
from apiinone.domain.tasks import Task
from apiinone.ids import new_id, now_ms
from apiinone.kinds import KindRegistry
from apiinone.kinds.base import Finished, RemoteKind, RunContext, StillRunning, TaskFailure
from apiinone.services.tasks import TaskService
from apiinone.storage.base import Storage
from apiinone.upstreams.base import UpstreamError
from apiinone.upstreams.pool import RoutePool
from apiinone.worker.wakeup import Wakeup

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class PollerOptions:
    node: str
    concurrency: int = 256
    """Looks in flight at once (each is one upstream request, or a result download)."""
    batch: int = 200
    lease_s: float = 120.0
    """How long one look may take before another poller may take the job over."""
    poll_s: float = 1.0
    """How often the poller asks the database for due jobs when it has nothing to do."""
    min_interval_s: float = 1.0
    max_interval_s: float = 30.0
    job_timeout_s: float = 6 * 3600.0
    models: tuple[str, ...] | None = None
    run_options: Mapping[str, Any] = field(default_factory=dict)


def next_interval_s(age_s: float, options: PollerOptions, rng: random.Random | None = None) -> float:
    """Young jobs are looked at often, old ones less (a tenth of their age, within bounds), with
    ±20 % jitter so jobs submitted together spread out."""
    base = min(options.max_interval_s, max(options.min_interval_s, age_s / 10))
    return base * (rng or random).uniform(0.8, 1.2)


class RemoteJobPoller:
    def __init__(self, tasks: TaskService, catalog_source: Callable[[], Catalog], pool: RoutePool,
                 kinds: KindRegistry, storage: Storage, fetch_client: httpx.AsyncClient, options: PollerOptions,
                 *, files_base_url: Callable[[], str], wakeup: Wakeup | None = None) -> None:
        self.tasks = tasks
        self.catalog_source = catalog_source
        self.pool = pool
        self.kinds = kinds
        self.storage = storage
        self.fetch_client = fetch_client
        self.options = options
        self.files_base_url = files_base_url
        self.wakeup = wakeup or Wakeup()
        self._inflight: dict[str, asyncio.Task[None]] = {}
        self._stopping = asyncio.Event()
        self._loop: asyncio.Task[None] | None = None
        self.looks = 0
        """Looks made so far (benchmarks read it)."""

    @property
    def in_flight(self) -> int:
        return len(self._inflight)

    async def start(self) -> None:
        self._loop = asyncio.create_task(self._run(), name="remote-job-poller")

    async def stop(self, drain_s: float = 5.0) -> None:
        """Stop leasing; looks still running get ``drain_s``, then their leases simply run out."""
        self._stopping.set()
        self.wakeup.set()
        if self._loop is not None:
            await asyncio.wait([self._loop], timeout=10)
        if self._inflight:
            await asyncio.wait(list(self._inflight.values()), timeout=drain_s)
        for job in list(self._inflight.values()):
            job.cancel()

    async def _run(self) -> None:
        while not self._stopping.is_set():
            free = self.options.concurrency - len(self._inflight)
            leased: list[Task] = []
            if free > 0:
                try:
                    leased = await self.tasks.lease_remote_jobs(
                        node=self.options.node, token=new_id("poll"), limit=min(free, self.options.batch),
                        lease_ms=int(self.options.lease_s * 1000), models=self.options.models)
                except Exception as exc:  # database down: keep the loop alive and retry
                    log.warning("remote_job_lease_failed", error=str(exc))
                for task in leased:
                    self._inflight[task.id] = asyncio.create_task(self._look_guarded(task), name=f"poll-{task.id}")
            if len(leased) < min(max(free, 1), self.options.batch) and not self._stopping.is_set():
                await self.wakeup.wait(self.options.poll_s)

    async def _look_guarded(self, task: Task) -> None:
        try:
            await self.look(task)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("remote_job_look_crashed", task_id=task.id)
            with contextlib.suppress(Exception):  # look again later rather than spin on it
                await self.tasks.reschedule_remote_job(task, task.lease_token or "", progress=None,
                                                       poll_at=now_ms() + int(self.options.max_interval_s * 1000))
        finally:
            self._inflight.pop(task.id, None)
            self.looks += 1
            self.wakeup.set()

    def context(self, task: Task) -> tuple[RemoteKind, RunContext] | None:
        spec = self.catalog_source().resolve(task.model)
        kind = self.kinds.queued(task.type)
        if spec is None or kind is None or not hasattr(kind, "follow"):
            return None
        ctx = RunContext(spec=spec, pool=self.pool, storage=self.storage, fetch_client=self.fetch_client,
                         files_base_url=self.files_base_url(), timeout_s=self.options.lease_s,
                         options=self.options.run_options)
        return cast(RemoteKind, kind), ctx

    async def look(self, task: Task) -> None:
        """Look at one leased job once and move it on."""
        token = task.lease_token or ""
        found = self.context(task)
        if found is None:
            await self.tasks.fail_task(task, "model_unavailable", "no upstream serves this model any more",
                                       lease_token=token)
            return
        kind, ctx = found
        now = now_ms()
        age_s = (now - (task.started_at or task.created_at)) / 1000
        if age_s > self.options.job_timeout_s:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(kind.cancel_remote(ctx, task), 10)
            await self.tasks.fail_task(task, "timeout", "the upstream job did not finish in time", lease_token=token)
            return
        try:
            outcome = await asyncio.wait_for(kind.follow(ctx, task), self.options.lease_s * 0.8)
        except TaskFailure as exc:
            finished = await self.tasks.fail_task(task, exc.code, exc.message, lease_token=token)
            log.info("remote_job_failed", task_id=task.id, code=exc.code, lease_lost=finished is None)
            return
        except (UpstreamError, TimeoutError) as exc:
            message = exc.message if isinstance(exc, UpstreamError) else "timed out"
            log.warning("remote_job_look_failed", task_id=task.id, route=task.route, error=message[:200])
            outcome = StillRunning(progress=None)
        if isinstance(outcome, Finished):
            finished = await self.tasks.complete_task(task, token, outcome.output, route=outcome.route)
            log.info("remote_job_succeeded", task_id=task.id, model=task.model, route=task.route,
                     lease_lost=finished is None, age_s=round(age_s, 1))
            return
        interval_s = next_interval_s(age_s, self.options)
        if outcome.poll_after_ms is not None:
            interval_s = max(interval_s, outcome.poll_after_ms / 1000)
        await self.tasks.reschedule_remote_job(task, token, progress=outcome.progress,
                                               poll_at=now_ms() + int(interval_s * 1000))


__all__ = ["PollerOptions", "RemoteJobPoller", "next_interval_s"]
