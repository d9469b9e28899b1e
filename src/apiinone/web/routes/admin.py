"""Admin pages (``/admin``): users and their credits, redemption codes, orders, models and their
prices, worker nodes, recent failures. A signed-in non-admin gets 403; a visitor goes to /login.

Every credit change made here is a ledger entry with the admin as its actor.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from apiinone.domain.credits import UCR_PER_CREDIT, LedgerKind, parse_credit_amount
from apiinone.errors import InvalidParameter, NotFound
from apiinone.ids import now_ms
from apiinone.services.billing import MAX_CODE_CREDITS, MAX_CODES_PER_BATCH, OrderStateConflict
from apiinone.web.routes.admin_api import node_health
from apiinone.web.routes.pages import (
    Page,
    admin_page,
    checked_form,
    form_text,
    redirect,
    render,
    services_of,
)

router = APIRouter(prefix="/admin", include_in_schema=False)
ORDER_STATUSES = ("pending", "paid", "canceled")
MAX_ADMIN_CHANGE_CREDITS = 1_000_000_000
MAX_PRICE_CREDITS = 1_000_000


@router.get("")
async def overview(request: Request) -> Response:
    page, _admin = await admin_page(request)
    queries = services_of(request).queries
    return render(page, "admin/overview.html", section="admin", tab="overview", stats=await queries.stats(),
                  failures=await queries.recent_failures(limit=20), nodes=_nodes_view(page, await queries.nodes()))


# --- users --------------------------------------------------------------------------------


async def _users_page(page: Page, *, status: int = 200, error: str | None = None) -> Response:
    query = page.request.query_params.get("q", "").strip()
    users = await services_of(page.request).queries.search_accounts(query, limit=100)
    return render(page, "admin/users.html", status=status, section="admin", tab="users", users=users, q=query,
                  error=page.t(error) if error else None)


@router.get("/users")
async def users(request: Request) -> Response:
    page, _admin = await admin_page(request)
    return await _users_page(page)


@router.post("/users/{account_id}/credits")
async def change_credits(request: Request, account_id: str) -> Response:
    """Grant (a ``grant`` entry) or deduct (a negative ``adjustment``), always with the admin as actor."""
    page, admin = await admin_page(request)
    form = await checked_form(page)
    try:
        amount = parse_credit_amount(form_text(form, "amount", 40), param="amount",
                                     max_credits=MAX_ADMIN_CHANGE_CREDITS)
    except InvalidParameter:
        return await _users_page(page, status=400, error="error.amount_invalid")
    deduct = form_text(form, "action", 10) == "deduct"
    note = form_text(form, "note", 500) or None
    try:
        await page.container.accounts.grant(
            account_id, -amount if deduct else amount, kind=LedgerKind.ADJUSTMENT if deduct else LedgerKind.GRANT,
            note=note, actor=admin.id)
    except NotFound:
        return await _users_page(page, status=404, error="error.not_found")
    except InvalidParameter:
        return await _users_page(page, status=400, error="error.deduct_too_much")
    return redirect(page, "/admin/users", q=page.request.query_params.get("q", ""),
                    done="credits_deducted" if deduct else "credits_granted")


@router.post("/users/{account_id}/disable")
async def disable_user(request: Request, account_id: str) -> Response:
    return await _set_disabled(request, account_id, True)


@router.post("/users/{account_id}/enable")
async def enable_user(request: Request, account_id: str) -> Response:
    return await _set_disabled(request, account_id, False)


async def _set_disabled(request: Request, account_id: str, disabled: bool) -> Response:
    page, admin = await admin_page(request)
    await checked_form(page)
    if account_id == admin.id:
        return await _users_page(page, status=400, error="error.cannot_disable_self")
    try:
        await services_of(request).queries.set_disabled(account_id, disabled, actor=admin.id)
    except NotFound:
        return await _users_page(page, status=404, error="error.not_found")
    page.container.keys.invalidate()  # cached keys of the account must stop (or start) working now
    return redirect(page, "/admin/users", done="user_disabled" if disabled else "user_enabled")


# --- redemption codes -----------------------------------------------------------------------


async def _codes_page(page: Page, *, status: int = 200, error: str | None = None,
                      created: Any = None) -> Response:
    batches = await services_of(page.request).billing.code_batches()
    return render(page, "admin/codes.html", status=status, section="admin", tab="codes", batches=batches,
                  created=created, error=page.t(error) if error else None)


@router.get("/codes")
async def codes(request: Request) -> Response:
    page, _admin = await admin_page(request)
    return await _codes_page(page)


@router.post("/codes")
async def create_codes(request: Request) -> Response:
    page, admin = await admin_page(request)
    form = await checked_form(page)
    count_text = form_text(form, "count", 40)
    if not (count_text.isascii() and count_text.isdigit() and 1 <= int(count_text) <= MAX_CODES_PER_BATCH):
        return await _codes_page(page, status=400, error="error.codes_invalid")
    try:
        amount = parse_credit_amount(form_text(form, "credits", 40), param="credits", max_credits=MAX_CODE_CREDITS)
        created = await services_of(request).billing.create_codes(
            count=int(count_text), amount=amount, batch=form_text(form, "batch", 60), actor=admin.id)
    except InvalidParameter:
        return await _codes_page(page, status=400, error="error.codes_invalid")
    return await _codes_page(page, status=201, created=created)


# --- orders -------------------------------------------------------------------------------


async def _orders_page(page: Page, *, status: int = 200, error: str | None = None) -> Response:
    wanted = page.request.query_params.get("status") or ""
    if wanted not in ORDER_STATUSES:
        wanted = ""
    orders = await services_of(page.request).billing.orders(None, status=wanted or None, limit=200)
    return render(page, "admin/orders.html", status=status, section="admin", tab="orders", orders=orders,
                  order_status=wanted, order_statuses=ORDER_STATUSES, error=page.t(error) if error else None)


@router.get("/orders")
async def orders(request: Request) -> Response:
    page, _admin = await admin_page(request)
    return await _orders_page(page)


@router.post("/orders/{order_id}/paid")
async def mark_paid(request: Request, order_id: str) -> Response:
    page, admin = await admin_page(request)
    form = await checked_form(page)
    try:
        await services_of(request).billing.mark_paid(
            order_id, actor=admin.id, note=form_text(form, "note", 500) or None,
            external_id=form_text(form, "reference", 200) or None)
    except NotFound:
        return await _orders_page(page, status=404, error="error.not_found")
    except OrderStateConflict:
        return await _orders_page(page, status=409, error="error.order_not_pending")
    return redirect(page, "/admin/orders", done="order_paid")


@router.post("/orders/{order_id}/cancel")
async def cancel_order(request: Request, order_id: str) -> Response:
    page, admin = await admin_page(request)
    form = await checked_form(page)
    try:
        await services_of(request).billing.cancel_order(order_id, actor=admin.id,
                                                        note=form_text(form, "note", 500) or None)
    except NotFound:
        return await _orders_page(page, status=404, error="error.not_found")
    except OrderStateConflict:
        return await _orders_page(page, status=409, error="error.order_not_pending")
    return redirect(page, "/admin/orders", done="order_canceled")


# --- models -------------------------------------------------------------------------------


async def _models_page(page: Page, *, status: int = 200, error: str | None = None) -> Response:
    container = page.container
    base = container.base_catalog or container.catalog
    overrides = await services_of(page.request).queries.model_overrides()
    rows = []
    for spec in base.models.values():
        effective = container.catalog.models.get(spec.id, spec)
        rows.append({"spec": spec, "effective": effective, "overridden": spec.id in overrides,
                     "available": container.pool.is_available(effective),
                     "file_pricing": ", ".join(f"{q} {p}" for q, p in spec.pricing.items())})
    return render(page, "admin/models.html", status=status, section="admin", tab="models", rows=rows,
                  error=page.t(error) if error else None)


@router.get("/models")
async def models(request: Request) -> Response:
    page, _admin = await admin_page(request)
    return await _models_page(page)


@router.post("/models/{model_id}")
async def save_model(request: Request, model_id: str) -> Response:
    page, admin = await admin_page(request)
    form = await checked_form(page)
    container = page.container
    base = container.base_catalog or container.catalog
    spec = base.models.get(model_id)
    if spec is None:
        return await _models_page(page, status=404, error="error.model_not_found")
    pricing: dict[str, int] = {}  # catalog prices are credits; image prices are whole credits
    for quality in spec.pricing:
        try:
            price = parse_credit_amount(form_text(form, f"price_{quality}", 40), param=f"price_{quality}",
                                        max_credits=MAX_PRICE_CREDITS, allow_zero=True)
        except InvalidParameter:
            return await _models_page(page, status=400, error="error.price_invalid")
        if price % UCR_PER_CREDIT:
            return await _models_page(page, status=400, error="error.price_invalid")
        pricing[quality] = price // UCR_PER_CREDIT
    queries = services_of(request).queries
    try:
        await queries.set_model_override(base, model_id, enabled=form.get("enabled") == "on", pricing=pricing,
                                         actor=admin.id)
    except InvalidParameter:
        return await _models_page(page, status=400, error="error.price_invalid")
    await container.refresh_model_overrides()
    return redirect(page, "/admin/models", done="model_saved")


# --- worker nodes -------------------------------------------------------------------------


def _nodes_view(page: Page, nodes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    now = now_ms()
    interval_ms = int(max(0.2, page.container.settings.task_lease_s / 3) * 1000)
    return [n | {"health": node_health(n, now, interval_ms)} for n in nodes]


@router.get("/nodes")
async def nodes(request: Request) -> Response:
    page, _admin = await admin_page(request)
    queries = services_of(request).queries
    return render(page, "admin/nodes.html", section="admin", tab="nodes",
                  nodes=_nodes_view(page, await queries.nodes()), failures=await queries.recent_failures(limit=50))
