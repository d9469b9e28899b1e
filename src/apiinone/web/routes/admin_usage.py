"""Admin pages for operators: ``/admin/routes`` (every model's routes with their breaker state and
counters; add, edit, disable, reorder, test), ``/admin/usage`` (across accounts: top accounts,
models and routes, failure rates) and ``/admin/audit`` (every admin change).

Keys are never shown: a route shows the last 4 characters of its key at most.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import Response

from apiinone.bootstrap import Container
from apiinone.domain.catalog import ModelSpec, RouteSpec
from apiinone.domain.routes import StoredRoute
from apiinone.errors import InvalidParameter, NotFound
from apiinone.services.audit import AuditLogReader
from apiinone.services.routes import RouteChange, RouteService
from apiinone.services.usage import DASHBOARD_DAYS, UsageService
from apiinone.upstreams.breaker import RouteHealth
from apiinone.web.routes.pages import Page, admin_page, checked_form, form_text, redirect, render

router = APIRouter(prefix="/admin", include_in_schema=False)
AUDIT_PAGE = 50
_AUDIT_CURSOR = re.compile(r"aud_[0-9A-HJKMNP-TV-Z]{26}")


@dataclass(frozen=True, slots=True)
class RouteView:
    model: ModelSpec
    route: RouteSpec
    source: str  # file | console | edited
    enabled: bool
    configured: bool
    health: RouteHealth
    base_url: str
    upstream_model: str
    key_hint: str | None
    stored: StoredRoute | None


def _route_service(container: Container) -> RouteService:
    assert container.route_admin is not None
    return container.route_admin


def route_views(container: Container) -> list[tuple[ModelSpec, list[RouteView]]]:
    """Every model of the file catalog with its routes as served now, then its disabled ones."""
    stored = {(r.model_id, r.name): r for r in container.stored_routes()}
    file_catalog = container.file_catalog()
    out = []
    for model_id, file_spec in file_catalog.models.items():
        spec = container.catalog.models.get(model_id, file_spec)
        file_names = {r.name for r in file_spec.effective_routes()}
        views = []
        for route in spec.effective_routes():
            resolved = container.pool.resolve(spec, route)
            row = stored.get((model_id, route.name))
            keys = container.pool.usable_keys(resolved) or resolved.keys
            source = ("edited" if route.name in file_names else "console") if row else "file"
            views.append(RouteView(
                model=spec, route=route, source=source,
                enabled=True, configured=container.pool.is_configured(resolved),
                health=container.breakers.snapshot(model_id, route.name), base_url=resolved.base_url,
                upstream_model=resolved.upstream_model,
                key_hint=row.key_hint if row and row.key_hint else (keys[0][-4:] if keys else None), stored=row))
        for row in sorted((r for r in stored.values() if r.model_id == model_id and not r.enabled),
                          key=lambda r: r.name):
            route = row.to_spec()
            views.append(RouteView(
                model=spec, route=route, source="edited" if row.name in file_names else "console", enabled=False,
                configured=False, health=container.breakers.snapshot(model_id, row.name),
                base_url=row.base_url or "", upstream_model=row.upstream_model or spec.upstream_model,
                key_hint=row.key_hint, stored=row))
        out.append((spec, views))
    return out


async def _routes_page(page: Page, *, status: int = 200, error: str | None = None,
                       tested: dict[str, Any] | None = None) -> Response:
    container = page.container
    return render(page, "admin/routes.html", status=status, section="admin", tab="routes",
                  models=route_views(container), providers=sorted(container.adapters.names()),
                  tested=tested, error=error)


@router.get("/routes")
async def routes_page(request: Request) -> Response:
    page, _admin = await admin_page(request)
    return await _routes_page(page)


def _int_field(form: FormData, name: str) -> int | None:
    text = form_text(form, name, 20)
    if not text:
        return None
    if not re.fullmatch(r"-?[0-9]{1,6}", text):
        raise InvalidParameter(f"{name} must be a whole number", param=name)
    return int(text)


def _change_from(form: FormData, *, new: bool) -> RouteChange:
    return RouteChange(
        provider=form_text(form, "provider", 40) or None, base_url=form_text(form, "base_url", 600) or None,
        upstream_model=form_text(form, "upstream_model", 300) if new or "upstream_model" in form else None,
        priority=_int_field(form, "priority"), weight=_int_field(form, "weight"),
        timeout_s=_int_field(form, "timeout_s"), keys_text=form_text(form, "keys", 12_000),
        enabled=True if new else None)


async def _save(page: Page, admin_id: str, model_id: str, name: str, change: RouteChange, done: str) -> Response:
    try:
        await _route_service(page.container).save(admin_id, model_id, name, change)
    except InvalidParameter as exc:
        return await _routes_page(page, status=400, error=page.t("error.route_invalid", reason=exc.message))
    except NotFound:
        return await _routes_page(page, status=404, error=page.t("error.model_not_found"))
    return redirect(page, "/admin/routes", done=done)


@router.post("/routes")
async def add_route(request: Request) -> Response:
    page, admin = await admin_page(request)
    form = await checked_form(page)
    try:
        change = _change_from(form, new=True)
    except InvalidParameter as exc:
        return await _routes_page(page, status=400, error=page.t("error.route_invalid", reason=exc.message))
    return await _save(page, admin.id, form_text(form, "model", 100), form_text(form, "name", 100), change,
                       "route_added")


@router.post("/routes/{model_id}/{name}")
async def edit_route(request: Request, model_id: str, name: str) -> Response:
    page, admin = await admin_page(request)
    form = await checked_form(page)
    try:
        change = _change_from(form, new=False)
    except InvalidParameter as exc:
        return await _routes_page(page, status=400, error=page.t("error.route_invalid", reason=exc.message))
    return await _save(page, admin.id, model_id, name, change, "route_saved")


@router.post("/routes/{model_id}/{name}/{action}")
async def route_action(request: Request, model_id: str, name: str, action: str) -> Response:
    page, admin = await admin_page(request)
    await checked_form(page)
    service = _route_service(page.container)
    try:
        if action in ("disable", "enable"):
            await service.set_enabled(admin.id, model_id, name, action == "enable")
        elif action in ("up", "down"):
            await service.move(admin.id, model_id, name, -1 if action == "up" else 1)
        elif action == "delete":
            row = next((r for r in page.container.stored_routes() if r.model_id == model_id and r.name == name), None)
            if row is None:
                raise NotFound("route not found")
            await service.delete(admin.id, row.id)
        elif action == "test":
            return await _test(page, admin.id, model_id, name)
        else:
            raise NotFound("no such action")
    except InvalidParameter as exc:
        return await _routes_page(page, status=400, error=page.t("error.route_invalid", reason=exc.message))
    except NotFound:
        return await _routes_page(page, status=404, error=page.t("error.not_found"))
    return redirect(page, "/admin/routes", done=f"route_{action}")


async def _test(page: Page, admin_id: str, model_id: str, name: str) -> Response:
    container = page.container
    spec = container.catalog.models.get(model_id)
    if spec is None:
        raise NotFound("model not found")
    route = next((r for r in spec.effective_routes() if r.name == name), None)
    if route is None:
        row = next((r for r in container.stored_routes() if r.model_id == model_id and r.name == name), None)
        if row is None:
            raise NotFound("route not found")
        route = row.to_spec()
    result = await _route_service(container).test(admin_id, container.pool, spec, route)
    return await _routes_page(page, tested={"model": model_id, "name": name, "ok": result.ok,
                                            "latency_ms": result.latency_ms, "message": result.message})


# --- usage across accounts ----------------------------------------------------------------------


@router.get("/usage")
async def usage_page(request: Request) -> Response:
    page, _admin = await admin_page(request)
    days_text = request.query_params.get("days", "7")
    days = int(days_text) if days_text.isdigit() and int(days_text) in DASHBOARD_DAYS else 7
    overview = await UsageService(page.container.db, page.container.catalog_source).across_accounts(days)
    return render(page, "admin/usage.html", section="admin", tab="usage", days=days, periods=DASHBOARD_DAYS,
                  overview=overview)


# --- audit log --------------------------------------------------------------------------------


@router.get("/audit")
async def audit_page(request: Request) -> Response:
    page, _admin = await admin_page(request)
    cursor = request.query_params.get("cursor", "")
    action = request.query_params.get("action", "")[:60]
    entries = await AuditLogReader(page.container.db).entries(
        limit=AUDIT_PAGE + 1, before_id=cursor if _AUDIT_CURSOR.fullmatch(cursor) else None, action=action or None)
    older = None
    if len(entries) > AUDIT_PAGE:
        older = "/admin/audit?" + urlencode({"action": action, "cursor": entries[AUDIT_PAGE - 1].id})
    return render(page, "admin/audit.html", section="admin", tab="audit", entries=entries[:AUDIT_PAGE],
                  action=action, older_url=older)
