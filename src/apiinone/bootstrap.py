"""The one place that wires adapters to use cases. Both ``create_app`` and the standalone worker
build their object graph here, from one Settings object."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import httpx
import structlog

from apiinone.config import Settings
from apiinone.db.channels import KEYS_CHANNEL, ROUTES_CHANNEL, TASK_EVENTS_CHANNEL, TASKS_CHANNEL, WEBHOOKS_CHANNEL
from apiinone.db.database import Database
from apiinone.db.route_health import SqlRouteHealthStore
from apiinone.domain.catalog import Catalog, ModelSpec, RouteSpec
from apiinone.domain.routes import StoredRoute, merge_routes
from apiinone.domain.tasks import Task
from apiinone.kinds import KindRegistry
from apiinone.kinds.base import RemoteKind, RunContext
from apiinone.kinds.video.media import MAX_RESULT_BYTES_OPTION
from apiinone.net.egress import EgressPolicy, guarded_transport
from apiinone.ratelimit import RateLimiter
from apiinone.sealing import SecretBox
from apiinone.services import group_commit
from apiinone.services.accounts import AccountService, ApiKeyAuthenticator
from apiinone.services.billing import BillingService, packs_from_setting
from apiinone.services.console import ConsoleQueries
from apiinone.services.direct import DirectTasks
from apiinone.services.events import TaskEvents
from apiinone.services.metering import Metering
from apiinone.services.routes import RouteRefresher, RouteService, RouteStatusService
from apiinone.services.sessions import LoginThrottle, SessionService
from apiinone.services.speech import SpeechService
from apiinone.services.tasks import TaskService
from apiinone.storage import storage_from_url
from apiinone.storage.base import Storage
from apiinone.storage.s3 import S3Options
from apiinone.telemetry.tracing import Tracer, tracer_from_settings
from apiinone.upstreams.breaker import BreakerBoard
from apiinone.upstreams.pool import RouteDefaults, RoutePool
from apiinone.upstreams.registry import AdapterRegistry
from apiinone.worker.remote_jobs import PollerOptions, RemoteJobPoller
from apiinone.worker.runner import TaskWorker, WorkerOptions
from apiinone.worker.wakeup import PostgresListener, Wakeup

MODEL_OVERRIDES_REFRESH_S = 10.0


log = structlog.get_logger(__name__)


@dataclass
class ConsoleServices:
    """What the console pages use besides the API's services."""

    sessions: SessionService
    billing: BillingService
    queries: ConsoleQueries
    throttle: LoginThrottle
    secret_key: str


@dataclass
class Container:
    settings: Settings
    db: Database
    catalog: Catalog
    kinds: KindRegistry
    adapters: AdapterRegistry
    breakers: BreakerBoard
    pool: RoutePool
    routes: RouteStatusService
    storage: Storage
    egress: EgressPolicy
    fetch_client: httpx.AsyncClient
    accounts: AccountService
    keys: ApiKeyAuthenticator
    metering: Metering
    tasks: TaskService
    direct: DirectTasks
    task_wakeup: Wakeup
    webhook_wakeup: Wakeup
    rate_limits: RateLimiter
    task_events: TaskEvents
    console: ConsoleServices = None  # type: ignore[assignment]  # set by build_container
    listeners: list[PostgresListener] = field(default_factory=list)
    background: list[asyncio.Task[None]] = field(default_factory=list)
    delivery: Any = None
    worker: TaskWorker | None = None
    task_finished_hooks: list[Callable[..., None]] = field(default_factory=list)
    base_catalog: Catalog | None = None
    route_admin: RouteService | None = None
    route_refresher: RouteRefresher | None = None
    tracer: Tracer | None = None
    _model_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    _stored_routes: list[StoredRoute] = field(default_factory=list)
    _merged_routes: dict[str, tuple[RouteSpec, ...]] = field(default_factory=dict)

    def catalog_source(self) -> Catalog:
        return self.catalog

    @functools.cached_property
    def speech(self) -> SpeechService:
        """Direct speech calls (built on first use: it only reads what is wired above)."""
        return SpeechService(self.tasks.resolve_model, self.pool, self.metering)

    async def refresh_model_overrides(self) -> None:
        overrides = await self.console.queries.model_overrides()
        self.apply_model_overrides({model_id: o.as_catalog_fields() for model_id, o in overrides.items()})

    async def _keep_model_overrides_fresh(self) -> None:
        """Other API processes change overrides too: re-read them every few seconds."""
        while True:
            await asyncio.sleep(MODEL_OVERRIDES_REFRESH_S)
            try:
                await self.refresh_model_overrides()
            except Exception as exc:  # database briefly down: keep the last known overrides
                log.warning("model_overrides_refresh_failed", error=str(exc))

    async def start(self, *, worker: bool = False, delivery: bool = False, console: bool = True) -> None:
        """Start what this process runs in the background, in one place: cross-process signals,
        breaker sync, the model-override refresher, and optionally a task worker and webhook delivery."""
        await self.start_listeners()
        self.background.append(asyncio.create_task(self.direct.keep_leases(), name="direct-leases"))
        if console:
            try:
                await self.refresh_model_overrides()
            except Exception as exc:  # a database that is not migrated yet must not stop the app
                log.warning("model_overrides_load_failed", error=str(exc))
            self.background.append(asyncio.create_task(self._keep_model_overrides_fresh(), name="model-overrides"))
        if worker:
            await self.make_worker().start()
        if delivery:
            from apiinone.webhooks.delivery import start_delivery_worker

            self.delivery = await start_delivery_worker(self)

    async def stop(self) -> None:
        """Stop the background work started by :meth:`start` (the worker drains first)."""
        if self.delivery is not None:
            await self.delivery.stop()
            self.delivery = None
        if self.worker is not None:
            await self.worker.stop()
        await group_commit.drain(self.db)
        for task in self.background:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.background.clear()

    def file_catalog(self) -> Catalog:
        """The catalog file's models with the admin's model overrides, before console routes."""
        if self.base_catalog is None:
            self.base_catalog = self.catalog
        return self.base_catalog.with_overrides(self._model_overrides)

    def _rebuild_catalog(self) -> None:
        self.catalog = self.file_catalog().with_routes(self._merged_routes)

    def apply_model_overrides(self, overrides: dict[str, dict[str, Any]]) -> None:
        """Admin edits (enabled, pricing) over the file catalog: the API and TaskService see them."""
        self._model_overrides = overrides
        self._rebuild_catalog()

    def apply_stored_routes(self, rows: list[StoredRoute]) -> None:
        """Routes made in the console, merged with the file's: the pool serves them from now on.
        Merged once per change, so the pool's per-route state stays with the same route objects."""
        file_models = self.file_catalog().models
        by_model: dict[str, list[StoredRoute]] = {}
        for row in rows:
            by_model.setdefault(row.model_id, []).append(row)
        self._stored_routes = rows
        self._merged_routes = {model_id: merge_routes(file_models[model_id].effective_routes(), model_rows)
                               for model_id, model_rows in by_model.items() if model_id in file_models}
        self._rebuild_catalog()

    def stored_routes(self) -> list[StoredRoute]:
        return list(self._stored_routes)

    def model_public(self, spec: ModelSpec) -> dict[str, Any]:
        kind = self.kinds.get(spec.type)
        return spec.to_public(self.pool.is_available(spec), kind.parameters_schema(spec) if kind else None)

    def base_url(self) -> str:
        return self.settings.base_url()

    def make_worker(self, node: str | None = None, concurrency: int | None = None,
                    models: tuple[str, ...] | None = None, model_limits: dict[str, int] | None = None) -> TaskWorker:
        s = self.settings
        caps = {}
        for name, cap in s.model_concurrency.items():
            spec = self.catalog.resolve(name)
            caps[spec.id if spec else name] = cap
        options = WorkerOptions(
            node=node or s.node_name or socket.gethostname(), concurrency=concurrency or s.worker_concurrency,
            lease_s=s.task_lease_s, max_attempts=s.task_max_attempts, poll_s=s.worker_poll_s, models=models,
            model_limits=model_limits or {}, cluster_caps=caps,
        )
        poller = RemoteJobPoller(
            self.tasks, self.catalog_source, self.pool, self.kinds, self.storage, self.fetch_client,
            PollerOptions(node=options.node, concurrency=s.remote_job_concurrency, lease_s=s.remote_job_lease_s,
                          poll_s=s.remote_job_poll_s, min_interval_s=s.remote_job_min_interval_s,
                          max_interval_s=s.remote_job_max_interval_s, job_timeout_s=s.remote_job_timeout_s,
                          models=models, run_options=self.run_options()),
            files_base_url=self.base_url)
        self.worker = TaskWorker(self.db, self.tasks, self.catalog_source, self.pool, self.kinds, self.storage,
                                 self.fetch_client, options, files_base_url=self.base_url,
                                 wakeup=self.task_wakeup, on_task_started=self.task_events.publish,
                                 on_task_images=self.task_events.offer_images, remote_jobs=poller)
        return self.worker

    def run_options(self) -> dict[str, Any]:
        return {MAX_RESULT_BYTES_OPTION: self.settings.remote_result_max_bytes}

    async def cancel_remote_job(self, task: Task) -> None:
        """A client canceled a task whose job runs upstream: ask the upstream to stop it, where its
        protocol allows (best effort: the task is already canceled and released)."""
        spec = self.catalog.resolve(task.model)
        kind = self.kinds.queued(task.type)
        if spec is None or kind is None or not hasattr(kind, "cancel_remote"):
            return
        ctx = RunContext(spec=spec, pool=self.pool, storage=self.storage, fetch_client=self.fetch_client,
                         files_base_url=self.base_url(), timeout_s=10.0, options=self.run_options())
        try:
            canceled = await asyncio.wait_for(cast(RemoteKind, kind).cancel_remote(ctx, task), 10.0)
        except Exception as exc:
            log.warning("remote_cancel_failed", task_id=task.id, error=type(exc).__name__)
            return
        log.info("remote_job_canceled", task_id=task.id, route=task.route, upstream_canceled=canceled)

    def _invalidate_cached_keys(self, key_hash: str) -> None:
        self.keys.invalidate(key_hash or None)

    async def start_listeners(self) -> None:
        """Cross-process signals (NOTIFY on PostgreSQL) and the breakers' shared state."""
        if self.db.dialect == "postgresql":
            listener = PostgresListener(self.db.url, {TASKS_CHANNEL: self.task_wakeup,
                                                      WEBHOOKS_CHANNEL: self.webhook_wakeup,
                                                      TASK_EVENTS_CHANNEL: self.task_events.on_notify,
                                                      KEYS_CHANNEL: self._invalidate_cached_keys,
                                                      ROUTES_CHANNEL: self.breakers.wake})
            await listener.start()
            self.listeners.append(listener)
        await self.breakers.start()
        if self.route_refresher is not None:  # console routes reach workers too
            await self.route_refresher.start()

    async def aclose(self) -> None:
        if self.route_refresher is not None:
            await self.route_refresher.stop()
        shutdown = getattr(self.tracer, "shutdown", None)
        if shutdown is not None:
            shutdown()  # flush the last spans
        for listener in self.listeners:
            await listener.stop()
        await self.breakers.stop()
        await self.adapters.aclose()
        await self.rate_limits.aclose()
        await self.fetch_client.aclose()
        await self.db.dispose()


def build_container(settings: Settings, *, tracer: Tracer | None = None) -> Container:
    """``tracer``: spans go there (tests pass an in-memory one); default from OTEL_* settings."""
    db = Database(settings.resolved_database_url, pool_size=settings.db_pool_size,
                  busy_timeout_ms=settings.sqlite_busy_timeout_ms)
    catalog = Catalog.load(settings.models_file)
    kinds = KindRegistry()
    kinds.validate_catalog(catalog.models.values())
    adapters = AdapterRegistry(settings)
    breakers = BreakerBoard(SqlRouteHealthStore(db), failures=settings.breaker_failures,
                            cooldown_s=settings.breaker_cooldown_s, sync_s=settings.breaker_sync_s)
    tracer = tracer or tracer_from_settings(settings)
    pool = RoutePool(adapters, breakers, attempts=settings.route_attempts, backoff_s=settings.route_backoff_s,
                     tracer=tracer,
                     defaults=RouteDefaults(base_urls={"openai": settings.openai_base_url},
                                            keys={"openai": settings.openai_api_key},
                                            timeout_s=settings.openai_timeout_s))
    egress = EgressPolicy.from_setting(settings.egress_allow)
    fetch_client = httpx.AsyncClient(transport=guarded_transport(egress), follow_redirects=False,
                                     timeout=httpx.Timeout(30.0, connect=10.0), trust_env=False)
    task_wakeup = Wakeup()
    webhook_wakeup = Wakeup()
    container = Container(
        settings=settings, db=db, catalog=catalog, base_catalog=catalog, kinds=kinds, adapters=adapters,
        breakers=breakers, pool=pool,
        routes=None,  # type: ignore[arg-type]  # set just below: it reads the container's catalog
        storage=storage_from_url(settings.resolved_storage_url, s3=S3Options.from_settings(settings),
                                 fsync=settings.storage_fsync),
        egress=egress, fetch_client=fetch_client,
        accounts=AccountService(db, starter_credits=settings.starter_credits),
        keys=ApiKeyAuthenticator(db, ttl_s=settings.key_cache_ttl_s),
        metering=Metering(db),
        tasks=None,  # type: ignore[arg-type]  # set just below: it needs the container's callbacks
        direct=None,  # type: ignore[arg-type]  # set just below: it runs through the task service
        task_wakeup=task_wakeup, webhook_wakeup=webhook_wakeup, rate_limits=RateLimiter.from_settings(settings),
        # PostgreSQL NOTIFY reaches waiters from any process, so polling there is only a safety net
        task_events=TaskEvents(db, poll_s=settings.worker_poll_s if db.is_sqlite else max(5.0, settings.worker_poll_s)),
    )
    container.routes = RouteStatusService(container.catalog_source, pool, breakers)
    container.console = ConsoleServices(
        sessions=SessionService(db, ttl_ms=settings.session_ttl_days * 86400 * 1000),
        billing=BillingService(db, packs=packs_from_setting(settings.credit_packs)),
        queries=ConsoleQueries(db),
        throttle=LoginThrottle(max_failures=settings.login_max_failures),
        secret_key=settings.resolved_secret_key(),
    )
    container.task_finished_hooks.append(container.task_events.publish)
    container.tracer = tracer
    box = SecretBox(container.console.secret_key)
    container.route_refresher = RouteRefresher(db, box, container.apply_stored_routes)

    async def routes_changed() -> None:
        assert container.route_refresher is not None
        await container.route_refresher.refresh(force=True)

    container.route_admin = RouteService(db, box, file_catalog=container.file_catalog,
                                         providers=adapters.names, on_change=routes_changed)

    def on_task_finished(task: object) -> None:
        for hook in container.task_finished_hooks:
            hook(task)

    container.tasks = TaskService(
        db, container.catalog_source, is_available=pool.is_available, base_url=container.base_url,
        on_task_created=task_wakeup.set, on_task_finished=on_task_finished, metering=container.metering,
        create_path_of=lambda type_: (kind.create_path if (kind := kinds.get(type_)) else None),
        on_remote_cancel=container.cancel_remote_job, on_task_progress=container.task_events.publish,
    )
    container.direct = DirectTasks(db, container.tasks, node=settings.node_name or socket.gethostname(),
                                   lease_s=settings.task_lease_s)
    return container
