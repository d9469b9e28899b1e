"""The webhook delivery worker: lease due deliveries, POST them signed, record every attempt.

Deliveries live in the database (enqueued with the task's end), so a crash loses none: an attempt
cut off by a crash is retried once its lease runs out. Concurrency is bounded twice: ``concurrency``
attempts in flight per process, and at most ``account_concurrency`` of them for any one account,
so a slow or dead receiver holds a few slots and every other account keeps the rest.

Each attempt goes through the egress-guarded client (the address is checked again at connect
time), follows no redirect, and must be answered within ``timeout_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import httpx
import structlog

from apiinone import __version__
from apiinone.db.channels import WEBHOOKS_CHANNEL
from apiinone.db.database import Database
from apiinone.domain.tasks import Task
from apiinone.domain.webhooks import (
    DEFAULT_RETRY_SCHEDULE_S,
    AttemptOutcome,
    Delivery,
    DeliveryAttempt,
    outcome_of,
)
from apiinone.ids import now_ms
from apiinone.net.egress import EgressPolicy, UrlNotAllowed, guarded_transport
from apiinone.webhooks.signing import webhook_headers
from apiinone.worker.wakeup import Wakeup

if TYPE_CHECKING:
    from apiinone.bootstrap import Container

__all__ = ["WEBHOOKS_CHANNEL", "DeliveryClients", "DeliveryOptions", "DeliveryWorker", "start_delivery_worker"]

log = structlog.get_logger(__name__)

#: The receiver's answer is read this far (so the connection can be reused) and then dropped.
MAX_RESPONSE_BYTES = 64 * 1024
MAX_ERROR_CHARS = 500
POOL_SIZE = 8


@dataclass(frozen=True, slots=True)
class DeliveryOptions:
    concurrency: int = 64
    account_concurrency: int = 8
    timeout_s: float = 10.0
    lease_s: float = 60.0
    poll_s: float = 1.0
    retry_schedule_s: tuple[float, ...] = DEFAULT_RETRY_SCHEDULE_S

    def __post_init__(self) -> None:
        if self.lease_s <= self.timeout_s:
            raise ValueError("the webhook lease must outlast the webhook timeout, or slow attempts go out twice")
        if self.concurrency < 1 or self.account_concurrency < 1:
            raise ValueError("webhook concurrency must be at least 1")


class DeliveryClients:
    """Egress-guarded httpx clients (no redirects, no proxies from the environment) used as one.

    httpcore's pool does work linear in its size on every request and response, so the attempts
    in flight are spread over pools of ``POOL_SIZE`` connections rather than one big pool; each
    attempt borrows the least busy one, and there is always one with room."""

    def __init__(self, policy: EgressPolicy, options: DeliveryOptions) -> None:
        pools = -(-options.concurrency // POOL_SIZE)
        size = min(POOL_SIZE, options.concurrency)
        limits = httpx.Limits(max_connections=size, max_keepalive_connections=size)
        self._clients = [
            httpx.AsyncClient(
                transport=guarded_transport(policy, limits=limits, trust_env=False), follow_redirects=False,
                timeout=httpx.Timeout(options.timeout_s), trust_env=False,
                headers={"user-agent": f"apiinone-webhooks/{__version__}", "content-type": "application/json"},
            )
            for _ in range(pools)
        ]
        self._busy = [0] * pools

    @contextlib.asynccontextmanager
    async def borrow(self) -> AsyncIterator[httpx.AsyncClient]:
        index = min(range(len(self._busy)), key=self._busy.__getitem__)
        self._busy[index] += 1
        try:
            yield self._clients[index]
        finally:
            self._busy[index] -= 1

    async def aclose(self) -> None:
        for client in self._clients:
            await client.aclose()


class _AttemptLog:
    """Group commit for attempt records: a writer task writes every result that piled up in one
    transaction, and again until none is left, while each attempt waits for its own result. Under
    load this turns one transaction per delivery into one per batch."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._waiting: list[tuple[Delivery, DeliveryAttempt, AttemptOutcome, asyncio.Future[bool]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def record(self, delivery: Delivery, attempt: DeliveryAttempt, outcome: AttemptOutcome) -> bool:
        """Whether the delivery was moved on (False: this worker's lease had run out)."""
        result: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiting.append((delivery, attempt, outcome, result))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_all(), name="webhook-attempt-log")
        return await result

    async def _write_all(self) -> None:
        try:
            while self._waiting:
                batch, self._waiting = self._waiting, []
                await self._write(batch)
        finally:
            for *_result, future in self._waiting:  # left only if this task was cancelled
                future.cancel()
            self._waiting = []

    async def aclose(self, wait_s: float) -> None:
        if self._writer is not None and not self._writer.done():
            await asyncio.wait([self._writer], timeout=wait_s)
            self._writer.cancel()

    async def _write(self, batch: list[tuple[Delivery, DeliveryAttempt, AttemptOutcome, asyncio.Future[bool]]]) -> None:
        try:
            async with self.db.uow() as uow:
                kept = await uow.webhooks.record_attempts([(d, a, o) for d, a, o, _f in batch])
                await uow.commit()
        except Exception as exc:
            for *_result, future in batch:
                future.set_exception(exc)
            return
        except BaseException:
            for *_result, future in batch:
                future.cancel()
            raise
        for (*_result, future), ok in zip(batch, kept, strict=True):
            future.set_result(ok)


class DeliveryWorker:
    def __init__(self, db: Database, client: DeliveryClients, options: DeliveryOptions,
                 wakeup: Wakeup | None = None) -> None:
        self.db = db
        self.client = client
        self._log = _AttemptLog(db)
        self.options = options
        self.wakeup = wakeup or Wakeup()
        self._in_flight: dict[str, tuple[asyncio.Task[None], str, int]] = {}  # id → (job, account, lease)
        self._stopping = asyncio.Event()
        self._loop: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._loop = asyncio.create_task(self._lease_loop(), name="webhook-lease-loop")

    async def stop(self) -> None:
        """Stop leasing, let attempts in flight finish (they are bounded by the timeout), and hand
        back the leases of any that do not, so the next process sends them at once."""
        self._stopping.set()
        self.wakeup.set()
        if self._loop is not None:
            await asyncio.wait([self._loop], timeout=10)
            if not self._loop.done():
                self._loop.cancel()
        jobs = [job for job, _account, _lease in self._in_flight.values()]
        if jobs:
            await asyncio.wait(jobs, timeout=self.options.timeout_s + 2)
        leftover = [(delivery_id, lease) for delivery_id, (job, _a, lease) in self._in_flight.items() if not job.done()]
        for job, _account, _lease in self._in_flight.values():
            job.cancel()
        await self._log.aclose(wait_s=5)
        if leftover:
            with contextlib.suppress(Exception):
                async with self.db.uow() as uow:
                    await uow.webhooks.release(leftover)
                    await uow.commit()

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    def _busy_accounts(self) -> Counter[str]:
        return Counter(account for _job, account, _lease in self._in_flight.values())

    async def _lease_loop(self) -> None:
        while not self._stopping.is_set():
            wait_s = self.options.poll_s
            free = self.options.concurrency - len(self._in_flight)
            if free > 0:
                try:
                    leased, more, next_due = await self.lease(free)
                except Exception as exc:  # database down: keep the loop alive and retry
                    log.warning("webhook_lease_failed", error=str(exc))
                    leased, more, next_due = [], False, None
                for delivery, secrets in leased:
                    self._launch(delivery, secrets)
                if leased and more:
                    continue
                if next_due is not None:
                    wait_s = min(wait_s, max(0.0, (next_due - now_ms()) / 1000))
            if not self._stopping.is_set():
                await self.wakeup.wait(max(wait_s, 0.01))

    async def lease(self, free: int) -> tuple[list[tuple[Delivery, list[str]]], bool, int | None]:
        """Lease up to ``free`` due deliveries, never more per account than its free slots.

        Returns the leased deliveries with their signing secrets, whether more may be due now, and
        when the soonest delivery not yet due falls due (to sleep just that long)."""
        busy = self._busy_accounts()
        cap = self.options.account_concurrency
        saturated = [account for account, n in busy.items() if n >= cap]
        limit = min(free * 4, 1000)
        now = now_ms()
        if self.db.is_sqlite:  # one writer per file: look without the write lock first
            async with self.db.uow(write=False) as uow:
                soonest = await uow.webhooks.upcoming(now=now, limit=1, exclude_accounts=saturated)
            if not soonest or soonest[0][2] > now:
                return [], False, soonest[0][2] if soonest else None
        async with self.db.uow() as uow:
            upcoming = await uow.webhooks.upcoming(now=now, limit=limit, exclude_accounts=saturated)
            picked: list[str] = []
            next_due: int | None = None
            for delivery_id, account_id, due_at in upcoming:
                if due_at > now:
                    next_due = due_at
                    break
                if len(picked) < free and busy[account_id] < cap:
                    busy[account_id] += 1
                    picked.append(delivery_id)
            lease_until = now + int(self.options.lease_s * 1000)
            leased = await uow.webhooks.lease(picked, now=now, lease_until=lease_until)
            secrets = await uow.webhooks.signing_secrets({d.account_id for d in leased}, now=now)
            await uow.commit()
        more = len(upcoming) == limit and next_due is None
        return [(d, secrets.get(d.account_id, [])) for d in leased], more, next_due

    def _launch(self, delivery: Delivery, secrets: list[str]) -> None:
        assert delivery.lease_expires_at is not None
        job = asyncio.create_task(self._attempt_guarded(delivery, secrets), name=f"webhook-{delivery.id}")
        self._in_flight[delivery.id] = (job, delivery.account_id, delivery.lease_expires_at)

    async def _attempt_guarded(self, delivery: Delivery, secrets: list[str]) -> None:
        try:
            await self.attempt(delivery, secrets)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("webhook_attempt_crashed", delivery_id=delivery.id)
        finally:
            entry = self._in_flight.get(delivery.id)
            if entry is not None and entry[0] is asyncio.current_task():
                del self._in_flight[delivery.id]
            self.wakeup.set()

    async def attempt(self, delivery: Delivery, secrets: Sequence[str]) -> DeliveryAttempt:
        """POST one delivery and record the attempt with what it means for the delivery."""
        assert delivery.lease_expires_at is not None
        body = delivery.payload.encode()
        attempted_at = now_ms()
        started = time.monotonic()
        status_code, error = await self._post(delivery, secrets, body)
        duration_ms = int((time.monotonic() - started) * 1000)
        outcome = outcome_of(status_code, attempts_before=delivery.attempts, at=now_ms(),
                             schedule_s=self.options.retry_schedule_s)
        attempt = DeliveryAttempt(delivery_id=delivery.id, attempted_at=attempted_at, duration_ms=duration_ms,
                                  status_code=status_code, error=error, next_attempt_at=outcome.next_attempt_at)
        kept = await self._log.record(delivery, attempt, outcome)
        log.info("webhook_attempt", delivery_id=delivery.id, task_id=delivery.task_id, status_code=status_code,
                 error=error, outcome=outcome.status.value, attempt=outcome.attempts, ms=duration_ms,
                 lease_lost=not kept)
        return attempt

    async def _post(self, delivery: Delivery, secrets: Sequence[str], body: bytes) -> tuple[int | None, str | None]:
        """The receiver's status code, or why there is none; never raises for the receiver's faults."""
        try:
            headers = webhook_headers(secrets, delivery.id, body)
            async with (
                asyncio.timeout(self.options.timeout_s),
                self.client.borrow() as client,
                client.stream("POST", delivery.url, content=body, headers=headers) as response,
            ):
                read = 0
                async for chunk in response.aiter_raw():
                    read += len(chunk)
                    if read > MAX_RESPONSE_BYTES:
                        break
                return response.status_code, None
        except TimeoutError:
            return None, f"no answer within {self.options.timeout_s:g} s"
        except UrlNotAllowed as exc:
            return None, f"url_not_allowed: {exc.message}"[:MAX_ERROR_CHARS]
        except ValueError as exc:  # no usable secret (the account is gone): nothing to sign with
            return None, f"cannot sign: {exc}"[:MAX_ERROR_CHARS]
        except httpx.HTTPError as exc:
            return None, (f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)[:MAX_ERROR_CHARS]


def options_from(container: Container) -> DeliveryOptions:
    s = container.settings
    return DeliveryOptions(
        concurrency=s.webhook_concurrency, account_concurrency=s.webhook_account_concurrency,
        timeout_s=s.webhook_timeout_s, lease_s=s.webhook_lease_s, poll_s=s.webhook_poll_s,
        retry_schedule_s=tuple(s.webhook_retry_schedule_s),
    )


class _RunningDelivery:
    """What ``start_delivery_worker`` hands back: stops the worker, its client and its hook."""

    def __init__(self, container: Container, worker: DeliveryWorker, hook: Callable[[Task], None]) -> None:
        self.container = container
        self.worker = worker
        self.hook = hook

    async def stop(self) -> None:
        with contextlib.suppress(ValueError):
            self.container.task_finished_hooks.remove(self.hook)
        await self.worker.stop()
        await self.worker.client.aclose()


async def start_delivery_worker(container: Container) -> _RunningDelivery:
    """Start delivering for ``container``; a task finished in this process wakes it at once, other
    processes' finishes arrive by PostgreSQL NOTIFY or the poll."""
    options = options_from(container)
    worker = DeliveryWorker(container.db, DeliveryClients(container.egress, options), options,
                            wakeup=container.webhook_wakeup)

    def wake_on_callback(task: Task) -> None:
        if task.callback_url:
            container.webhook_wakeup.set()

    container.task_finished_hooks.append(wake_on_callback)
    await worker.start()
    return _RunningDelivery(container, worker, wake_on_callback)
