"""Live task status: wait for a task to end, or stream its status changes, without holding a
database connection while nothing happens.

Signals say only "task X changed". In one process the task service (a task ended) and the worker
(a task started) publish them directly; between processes PostgreSQL NOTIFY on
``apiinone_task_events`` carries them (sent inside the transaction that changes the task, so a
signal never precedes its commit). A waiter subscribes first, then reads the task in a short
read-only unit of work, then sleeps on an ``asyncio.Event`` until a signal or the poll interval,
which is the floor when no signal can reach this process (SQLite with a worker in another process).

Events are derived from the task row (``created_at``, ``started_at``, the terminal status), so
their ids are stable — ``1`` queued, ``2`` running, ``3`` the end — and a stream resumes from any
``Last-Event-ID`` without an event log.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from apiinone.db.channels import TASK_EVENTS_CHANNEL
from apiinone.db.database import Database
from apiinone.domain.tasks import Task, iso
from apiinone.services.tasks import read_account_task

if TYPE_CHECKING:
    from apiinone.kinds.image.job import GeneratedImage

__all__ = [
    "TASK_EVENTS_CHANNEL",
    "TaskEvent",
    "TaskEvents",
    "TaskWatch",
    "events_of",
    "notify_payloads",
]

_NOTIFY_MAX_BYTES = 7900  # PostgreSQL caps a NOTIFY payload at 8000 bytes


@dataclass(frozen=True, slots=True)
class TaskEvent:
    """One Server-Sent Event: ``id`` orders events of a task, ``event`` is the status reached."""

    id: int
    event: str
    data: dict[str, Any]


PROGRESS_EVENT_BASE = 1000
"""A ``running`` event that reports progress P has id 1000 + P; the end of a task that reported
progress has id 2000, so ids keep growing and a stream resumes from any ``Last-Event-ID``."""
END_AFTER_PROGRESS_ID = 2000


def events_of(task: Task, base_url: str) -> list[TaskEvent]:
    """Every status change the task has gone through so far, oldest first.

    The terminal event carries the whole task object; the others say which status was reached
    and when. A task canceled or failed before any worker took it has no ``running`` event. A
    task whose upstream reports ``progress`` has one more ``running`` event with the latest
    progress (ids from :data:`PROGRESS_EVENT_BASE`), sent again whenever it moves."""
    events = [TaskEvent(1, "queued", {"task_id": task.id, "status": "queued", "at": iso(task.created_at)})]
    if task.started_at is not None:
        events.append(TaskEvent(2, "running", {"task_id": task.id, "status": "running",
                                               "at": iso(task.started_at), "node": task.node}))
    if task.progress is not None and not task.status.is_terminal:
        events.append(TaskEvent(PROGRESS_EVENT_BASE + task.progress, "running",
                                {"task_id": task.id, "status": "running", "progress": task.progress}))
    if task.status.is_terminal:
        end_id = 3 if task.progress is None else END_AFTER_PROGRESS_ID
        events.append(TaskEvent(end_id, task.status.value, task.to_public(base_url)))
    return events


def notify_payloads(status: str, task_ids: Iterable[str]) -> list[str]:
    """``"<status> <id> <id> ..."`` NOTIFY payloads, split to stay under PostgreSQL's size cap."""
    payloads: list[str] = []
    current = status
    for task_id in task_ids:
        if len(current) + 1 + len(task_id) > _NOTIFY_MAX_BYTES:
            payloads.append(current)
            current = status
        current = f"{current} {task_id}"
    if current != status:
        payloads.append(current)
    return payloads


class TaskWatch:
    """One waiter's mailbox for one task: a level-triggered flag plus the newest task object a
    publisher handed over (so an in-process finish needs no database read), and the generated
    images by output URL when the worker that made them runs in this process (so a synchronous
    answer needs no storage read)."""

    __slots__ = ("_flag", "images", "latest", "task_id")

    def __init__(self, task_id: str) -> None:
        self.task_id = task_id
        self.latest: Task | None = None
        self.images: dict[str, GeneratedImage] = {}
        self._flag = asyncio.Event()

    def signal(self, task: Task | None = None) -> None:
        if task is not None:
            self.latest = task
        self._flag.set()

    async def changed(self, timeout_s: float) -> bool:
        """Wait for a signal at most ``timeout_s``; True if one came."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._flag.wait(), max(0.0, timeout_s))
        fired = self._flag.is_set()
        self._flag.clear()
        return fired


class TaskEvents:
    """The hub of task signals, and the two use cases built on it: wait for the end, stream events."""

    def __init__(self, db: Database, *, poll_s: float, keepalive_s: float = 15.0) -> None:
        self.db = db
        self.poll_s = poll_s
        self.keepalive_s = keepalive_s
        self._watches: dict[str, set[TaskWatch]] = {}

    # ------------------------------------------------------------------------------- publishing

    def publish(self, task: Task) -> None:
        """A task changed in this process (the worker started it, or it ended here)."""
        for watch in self._watches.get(task.id, ()):
            watch.signal(task)

    def offer_images(self, task_id: str, images: Mapping[str, GeneratedImage]) -> None:
        """The worker in this process stored these images (by output URL) for the task; waiters
        keep them until they answer. Nobody waiting: nothing is kept."""
        for watch in self._watches.get(task_id, ()):
            watch.images.update(images)

    def on_notify(self, payload: str) -> None:
        """A NOTIFY from any process. An empty payload means "we may have missed some": the
        listener (re)connected, so every waiter re-reads its task."""
        _status, _, ids = payload.partition(" ")
        if not ids:
            self.wake_all()
            return
        for task_id in ids.split():
            for watch in self._watches.get(task_id, ()):
                watch.signal()

    def wake(self, task_id: str) -> None:
        """Make this task's waiters look again now (e.g. their client went away)."""
        for watch in self._watches.get(task_id, ()):
            watch.signal()

    def wake_all(self) -> None:
        for watches in self._watches.values():
            for watch in watches:
                watch.signal()

    @property
    def watched_tasks(self) -> int:
        return len(self._watches)

    @contextlib.contextmanager
    def watch(self, task_id: str) -> Iterator[TaskWatch]:
        watch = TaskWatch(task_id)
        self._watches.setdefault(task_id, set()).add(watch)
        try:
            yield watch
        finally:
            watches = self._watches.get(task_id)
            if watches is not None:
                watches.discard(watch)
                if not watches:
                    del self._watches[task_id]

    # -------------------------------------------------------------------------------- use cases

    async def read(self, account_id: str, task_id: str) -> Task:
        return await read_account_task(self.db, account_id, task_id)

    async def wait_for_end(self, account_id: str, task_id: str, timeout_s: float, *,
                           stop: asyncio.Event | None = None) -> Task:
        """The task once it has ended, or as it is after ``timeout_s`` or once ``stop`` is set
        (set it, then :meth:`wake` the task). Never cancelled from outside mid-read, so pooled
        connections are never abandoned half way through a query."""
        task, _images = await self.wait_for_output(account_id, task_id, timeout_s, stop=stop)
        return task

    async def wait_for_output(self, account_id: str, task_id: str, timeout_s: float, *,
                              stop: asyncio.Event | None = None) -> tuple[Task, dict[str, GeneratedImage]]:
        """:meth:`wait_for_end`, plus the images a worker in this process offered for the task,
        by output URL (empty when it ran elsewhere). Match them against ``task.output``: a task
        finished by another worker has other URLs."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        with self.watch(task_id) as watch:
            task = await self.read(account_id, task_id)
            while not task.status.is_terminal:
                remaining = deadline - loop.time()
                if remaining <= 0 or (stop is not None and stop.is_set()):
                    return task, watch.images
                await watch.changed(min(remaining, self.poll_s))
                latest = watch.latest
                if latest is not None and latest.status.is_terminal and latest.account_id == account_id:
                    return latest, watch.images
                task = await self.read(account_id, task_id)
            return task, watch.images

    async def stream(self, account_id: str, task_id: str, base_url: str, *,
                     after: int = 0) -> AsyncIterator[TaskEvent | None]:
        """The task's events after ``after``, ending with the terminal one. ``None`` items are
        keep-alive ticks (nothing happened for ``keepalive_s``) so idle connections stay open
        through proxies and a gone client is noticed."""
        loop = asyncio.get_running_loop()
        with self.watch(task_id) as watch:
            last_sent_at = loop.time()
            while True:
                task = await self.read(account_id, task_id)
                for event in events_of(task, base_url):
                    if event.id > after:
                        after = event.id
                        last_sent_at = loop.time()
                        yield event
                if task.status.is_terminal:
                    return
                await watch.changed(self.poll_s)
                if loop.time() - last_sent_at >= self.keepalive_s:
                    last_sent_at = loop.time()
                    yield None
