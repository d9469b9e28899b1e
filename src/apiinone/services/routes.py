"""Upstream routes for operators: what they see (``RouteStatusService``: configuration, breaker
state and counters, never a key) and how they manage them from the console (``RouteService``:
add, edit, disable, reorder, test).

Rows live in ``upstream_routes`` with their keys sealed (``sealing.SecretBox``); every change is
written with its audit entry in one transaction, then ``on_change`` re-applies the rows to the
catalog of this process (other processes pick them up with their refresher, ``RouteRefresher``).
A key is never returned: the console shows its last 4 characters.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit

import structlog
from sqlalchemy.engine import RowMapping

from apiinone.db.database import Database
from apiinone.domain.catalog import Catalog, ModelSpec, RouteSpec
from apiinone.domain.routes import MAX_KEYS, ROUTE_NAME, StoredRoute, key_hint, split_keys
from apiinone.domain.tasks import iso
from apiinone.errors import InvalidParameter, NotFound
from apiinone.ids import new_id, now_ms
from apiinone.sealing import SealError, SecretBox
from apiinone.upstreams.base import UpstreamError
from apiinone.upstreams.breaker import BreakerBoard, BreakerState
from apiinone.upstreams.pool import RoutePool

log = structlog.get_logger(__name__)

TEST_TIMEOUT_S = 120.0
TEST_PROMPT = "apiinone route test: the word OK on a plain background"


@dataclass(frozen=True, slots=True)
class RouteChange:
    """A form's values; ``None`` leaves a field as it is (or as the file route has it)."""

    provider: str | None = None
    base_url: str | None = None
    upstream_model: str | None = None
    priority: int | None = None
    weight: int | None = None
    timeout_s: int | None = None
    keys_text: str = ""  # blank: keep the stored keys (or the file route's api_key_env)
    enabled: bool | None = None


@dataclass(frozen=True, slots=True)
class RouteTestResult:
    ok: bool
    latency_ms: int
    message: str


def _check_url(value: str) -> str:
    value = value.strip()
    parts = urlsplit(value)
    if len(value) > 500 or parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidParameter("base_url must be an http(s) URL of at most 500 characters", param="base_url")
    return value.rstrip("/")


def _bounded(value: int | None, param: str, low: int, high: int) -> int | None:
    if value is not None and not low <= value <= high:
        raise InvalidParameter(f"{param} must be from {low} to {high}", param=param)
    return value


def stored_route_from_row(row: RowMapping, box: SecretBox) -> StoredRoute:
    keys: tuple[str, ...] = ()
    unreadable = False
    if row["keys_encrypted"]:
        try:
            keys = split_keys(box.open(row["keys_encrypted"]))
        except SealError:
            unreadable = True
    return StoredRoute(
        id=row["id"], model_id=row["model_id"], name=row["name"], provider=row["provider"],
        base_url=row["base_url"], upstream_model=row["upstream_model"], priority=int(row["priority"]),
        weight=int(row["weight"]), timeout_s=row["timeout_s"], enabled=bool(row["enabled"]),
        key_hint=row["key_hint"], created_at=int(row["created_at"]), updated_at=int(row["updated_at"]),
        keys=keys, keys_unreadable=unreadable)


class RouteService:
    def __init__(self, db: Database, box: SecretBox, *, file_catalog: Callable[[], Catalog],
                 providers: Callable[[], list[str]], on_change: Callable[[], Awaitable[None]]) -> None:
        self.db = db
        self.box = box
        self.file_catalog = file_catalog
        self.providers = providers
        self.on_change = on_change

    async def stored(self) -> list[StoredRoute]:
        async with self.db.uow(write=False) as uow:
            rows = await uow.routes.all()
        return [stored_route_from_row(r, self.box) for r in rows]

    def _model(self, model_id: str) -> ModelSpec:
        spec = self.file_catalog().models.get(model_id)
        if spec is None:
            raise NotFound("model not found")
        return spec

    def _file_route(self, spec: ModelSpec, name: str) -> RouteSpec | None:
        return next((r for r in spec.effective_routes() if r.name == name), None)

    async def save(self, actor_id: str | None, model_id: str, name: str, change: RouteChange) -> StoredRoute:
        """Add a route, or change one (a file route is changed by storing a row of its name)."""
        spec = self._model(model_id)
        name = name.strip()
        if not ROUTE_NAME.fullmatch(name):
            raise InvalidParameter("name: letters, digits, '.', '_' or '-', at most 64", param="name")
        if change.provider is not None and change.provider not in self.providers():
            raise InvalidParameter(f"provider must be one of {', '.join(sorted(self.providers()))}", param="provider")
        base_url = _check_url(change.base_url) if change.base_url else None
        if change.upstream_model is not None and len(change.upstream_model) > 200:
            raise InvalidParameter("upstream_model must be at most 200 characters", param="upstream_model")
        _bounded(change.priority, "priority", -1000, 1000)
        _bounded(change.weight, "weight", 0, 1000)
        _bounded(change.timeout_s, "timeout_s", 1, 3600)
        keys = split_keys(change.keys_text)
        if len(keys) > MAX_KEYS or any(len(k) > 500 for k in keys):
            raise InvalidParameter(f"at most {MAX_KEYS} keys of at most 500 characters", param="keys")
        file_route = self._file_route(spec, name)
        now = now_ms()
        async with self.db.uow() as uow:
            row = await uow.routes.find(model_id, name)
            values: dict[str, Any] = {"updated_at": now}
            for field_name, value in (("provider", change.provider), ("base_url", base_url),
                                      ("priority", change.priority), ("weight", change.weight),
                                      ("timeout_s", change.timeout_s), ("enabled", change.enabled)):
                if value is not None:
                    values[field_name] = value
            if change.upstream_model is not None:
                values["upstream_model"] = change.upstream_model.strip() or None
            if keys:
                values["keys_encrypted"] = self.box.seal(",".join(keys))
                values["key_hint"] = key_hint(keys)
            if row is None:
                base = file_route
                provider = values.get("provider") or (base.provider if base else None)
                if provider is None:
                    raise InvalidParameter("a new route needs a provider", param="provider")
                if base is None and not values.get("base_url") and provider != "local-typeset":
                    raise InvalidParameter("a new route needs a base_url", param="base_url")
                route_id = new_id("rte", now)
                values = {
                    "id": route_id, "model_id": model_id, "name": name, "provider": provider,
                    "base_url": base.base_url if base else None,
                    "upstream_model": base.upstream_model if base else None,
                    "priority": base.priority if base else 0, "weight": base.weight if base else 1,
                    "timeout_s": int(base.timeout_s) if base and base.timeout_s else None, "enabled": True,
                    "keys_encrypted": None, "key_hint": None, "created_at": now,
                } | values
                await uow.routes.add(values)
                action = "route.edit_file" if base else "route.create"
            else:
                route_id = row["id"]
                await uow.routes.update(route_id, values)
                action = "route.update"
            detail = {k: v for k, v in values.items()
                      if k not in ("keys_encrypted", "id", "created_at", "updated_at")}
            if keys:
                detail["keys"] = f"{len(keys)} key(s), {key_hint(keys)}"
            await uow.audit.add(actor_id, action, f"{model_id}/{name}", detail)
            saved = await uow.routes.get(route_id)
            await uow.commit()
        assert saved is not None
        await self.on_change()
        return stored_route_from_row(saved, self.box)

    async def set_enabled(self, actor_id: str | None, model_id: str, name: str, enabled: bool) -> None:
        await self.save(actor_id, model_id, name, RouteChange(enabled=enabled))

    async def move(self, actor_id: str | None, model_id: str, name: str, delta: int) -> None:
        """Reorder: a lower priority is tried first."""
        current = next((r for r in self.effective_routes(model_id) if r.name == name), None)
        stored = {r.name: r for r in await self.stored() if r.model_id == model_id}
        priority = stored[name].priority if name in stored else (current.priority if current else None)
        if priority is None:
            raise NotFound("route not found")
        await self.save(actor_id, model_id, name, RouteChange(priority=max(-1000, min(1000, priority + delta))))

    def effective_routes(self, model_id: str) -> tuple[RouteSpec, ...]:
        return self._model(model_id).effective_routes()

    async def delete(self, actor_id: str | None, route_id: str) -> None:
        """Remove a console row: an added route goes, an edited file route is the file's again."""
        async with self.db.uow() as uow:
            row = await uow.routes.get(route_id)
            if row is None:
                raise NotFound("route not found")
            await uow.routes.delete(route_id)
            await uow.audit.add(actor_id, "route.delete", f"{row['model_id']}/{row['name']}")
            await uow.commit()
        await self.on_change()

    async def test(self, actor_id: str | None, pool: RoutePool, spec: ModelSpec, route: RouteSpec) -> RouteTestResult:
        """One real call on exactly this route (no failover, breakers untouched)."""
        single = replace(spec, routes=(route,))
        found = pool.target(single, route.name)
        started = time.perf_counter()
        if found is None:
            result = RouteTestResult(False, 0, f"provider {route.provider!r} has no adapter here")
        else:
            adapter, target = found
            try:
                message = await asyncio.wait_for(_one_call(adapter, target, spec), TEST_TIMEOUT_S)
                result = RouteTestResult(True, int((time.perf_counter() - started) * 1000), message)
            except UpstreamError as exc:
                result = RouteTestResult(False, int((time.perf_counter() - started) * 1000),
                                         target.redact(exc.message)[:300])
            except TimeoutError:
                result = RouteTestResult(False, int(TEST_TIMEOUT_S * 1000), "no answer in time")
            except NotImplementedError as exc:
                result = RouteTestResult(False, 0, str(exc))
        async with self.db.uow() as uow:
            await uow.audit.add(actor_id, "route.test", f"{spec.id}/{route.name}",
                                {"ok": result.ok, "latency_ms": result.latency_ms, "message": result.message})
            await uow.commit()
        return result


async def _one_call(adapter: Any, target: Any, spec: ModelSpec) -> str:
    if spec.type == "image" and hasattr(adapter, "generate_images"):
        from apiinone.kinds.image.job import ImageJob

        quality = min(spec.pricing, key=lambda q: spec.pricing[q]) if spec.pricing else "medium"
        result = await adapter.generate_images(target, ImageJob(prompt=TEST_PROMPT, aspect_ratio="1:1",
                                                                quality=quality, upstream_model=target.upstream_model))
        return f"{len(result.images)} image(s)"
    if spec.type == "chat" and hasattr(adapter, "chat"):
        from apiinone.kinds.chat.job import ChatRequest

        body = {"model": spec.id, "messages": [{"role": "user", "content": "Say OK."}], "max_tokens": 5}
        answer = await adapter.chat(target, ChatRequest(body=body, max_output_tokens=5))
        return f"{answer.usage.input_tokens}+{answer.usage.output_tokens} tokens"
    raise NotImplementedError(f"no test call for {spec.type} models on provider {target.provider!r}")


class RouteStatusService:
    def __init__(self, catalog_source: Callable[[], Catalog], pool: RoutePool, breakers: BreakerBoard) -> None:
        self.catalog_source = catalog_source
        self.pool = pool
        self.breakers = breakers

    async def list_routes(self, *, refresh: bool = True) -> list[dict[str, Any]]:
        """Every route of every model, as ``GET /api/v1/admin/routes`` shows it (API.md)."""
        if refresh:  # counters of the other processes, flushed at their last sync
            await self.breakers.refresh()
        rows: list[dict[str, Any]] = []
        for spec in sorted(self.catalog_source().models.values(), key=lambda m: m.id):
            for route in self.pool.routes(spec):
                health = self.breakers.snapshot(spec.id, route.name)
                state = health.state
                if state is BreakerState.OPEN and not self.breakers.is_open(spec.id, route.name):
                    state = BreakerState.HALF_OPEN  # cooled down: the next call is its probe
                rows.append({
                    "model": spec.id, "name": route.name, "provider": route.provider,
                    "base_url": route.base_url or None, "upstream_model": route.upstream_model,
                    "priority": route.priority, "weight": route.weight,
                    "configured": self.pool.is_configured(route),
                    "keys": len(route.keys), "keys_usable": len(self.pool.usable_keys(route)),
                    "state": state.value, "consecutive_failures": health.consecutive_failures,
                    "requests": health.requests, "failures": health.failures,
                    "latency_ms_p50": health.latency_ms_p50, "last_error": health.last_error,
                    "last_error_at": iso(health.last_error_at),
                    "open_until": iso(health.open_until) if state is BreakerState.OPEN else None,
                })
        return rows


class RouteRefresher:
    """Keeps this process's catalog in step with the console's rows (other processes change them)."""

    def __init__(self, db: Database, box: SecretBox, apply: Callable[[list[StoredRoute]], None],
                 interval_s: float = 5.0) -> None:
        self.db = db
        self.box = box
        self.apply = apply
        self.interval_s = interval_s
        self._seen: tuple[int, int] | None = None
        self._task: asyncio.Task[None] | None = None

    async def refresh(self, *, force: bool = False) -> None:
        async with self.db.uow(write=False) as uow:
            seen = await uow.routes.fingerprint()
            if seen == self._seen and not force:
                return
            rows = await uow.routes.all()
        self.apply([stored_route_from_row(r, self.box) for r in rows])
        self._seen = seen

    async def start(self) -> None:
        try:
            await self.refresh(force=True)
        except Exception as exc:  # not migrated yet, or the database is briefly down
            log.warning("stored_routes_load_failed", error=str(exc))
        self._task = asyncio.create_task(self._loop(), name="stored-routes")

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.refresh()
            except Exception as exc:
                log.warning("stored_routes_refresh_failed", error=str(exc))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
