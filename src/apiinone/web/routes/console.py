"""The console pages: sign-up and login, overview, API keys, tasks, billing, settings, and the
public model pages with their playground.

Every state-changing form is a POST checked against the session's CSRF token (``checked_form``);
success redirects (303) back to the page with a ``done`` notice, a refused input re-renders the
page with the reason.
"""

from __future__ import annotations

import asyncio
import csv
import io
from collections.abc import AsyncIterator
from typing import Any

import orjson
from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse

from apiinone.bootstrap import Container
from apiinone.domain.accounts import Account
from apiinone.domain.catalog import ModelSpec
from apiinone.domain.credits import LedgerKind, format_credits_text, parse_credit_amount
from apiinone.domain.tasks import ASPECT_RATIOS, TaskStatus, iso
from apiinone.errors import ApiError, Forbidden, InvalidParameter, NotFound, RateLimited, Unauthorized
from apiinone.ids import is_task_id, now_ms
from apiinone.params import ascii_int
from apiinone.services.accounts import normalize_email
from apiinone.services.billing import OrderStateConflict, RedemptionFailed
from apiinone.services.sessions import SESSION_COOKIE
from apiinone.services.webhooks import DeliveryService
from apiinone.web import model_pages
from apiinone.web.deps import base_url_of
from apiinone.web.routes.admin_api import node_health
from apiinone.web.routes.pages import (
    Page,
    checked_form,
    clear_session_cookie,
    error_page,
    form_text,
    load_page,
    redirect,
    render,
    safe_next,
    services_of,
    set_session_cookie,
    user_page,
)

router = APIRouter(include_in_schema=False)

EXAMPLE_PROMPT = 'A modern logo design for a coffee shop called "Bean & Brew" with clean typography'
LEDGER_PAGE = 50
TASKS_PAGE = 20
MAX_KEY_BUDGET_CREDITS = 1_000_000_000


def _client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


# --- home, sign-up, login, logout ----------------------------------------------------------


@router.get("/")
async def home() -> Response:
    return RedirectResponse("/models", status_code=303)


def _signup_closed(page: Page) -> Response | None:
    """``APIINONE_SIGNUP=closed``: accounts come from admins and the CLI; the page says so."""
    if page.container.settings.signup == "closed":
        return render(page, "error.html", status=403, title_key="auth.signup_closed.title",
                      body_key="auth.signup_closed.body")
    return None


@router.get("/signup")
async def signup_form(request: Request) -> Response:
    page = await load_page(request)
    if page.account is not None:
        return redirect(page, "/console")
    if (closed := _signup_closed(page)) is not None:
        return closed
    return render(page, "auth.html", mode="signup", email="", next_url="/console")


@router.post("/signup")
async def signup(request: Request) -> Response:
    page = await load_page(request)
    if (closed := _signup_closed(page)) is not None:
        return closed
    form = await checked_form(page)
    email, password = form_text(form, "email", 320), form_text(form, "password", 1000)
    error = None
    try:
        normalize_email(email)
    except InvalidParameter:
        error = "error.email_invalid"
    if error is None and len(password) < 8:
        error = "error.password_short"
    account: Account | None = None
    if error is None:
        try:
            account = await page.container.accounts.create_user(email, password, first_is_admin=True)
        except InvalidParameter as exc:
            error = "error.email_taken" if exc.param == "email" else "error.password_short"
    if error is not None or account is None:
        return render(page, "auth.html", status=400, mode="signup", email=email, next_url="/console",
                      error=page.t(error or "error.generic"))
    return await _start_session(page, account, "/console?done=welcome")


@router.get("/login")
async def login_form(request: Request) -> Response:
    page = await load_page(request)
    next_url = safe_next(request.query_params.get("next"))
    if page.account is not None:
        return redirect(page, next_url)
    return render(page, "auth.html", mode="login", email="", next_url=next_url)


@router.post("/login")
async def login(request: Request) -> Response:
    page = await load_page(request)
    form = await checked_form(page)
    email, password = form_text(form, "email", 320), form_text(form, "password", 1000)
    next_url = safe_next(form_text(form, "next", 2000))
    services = services_of(request)
    address = _client_address(request)

    def refuse(key: str, status: int) -> Response:
        return render(page, "auth.html", status=status, mode="login", email=email, next_url=next_url,
                      error=page.t(key))

    try:
        delay_s = services.throttle.check(email, address)
    except RateLimited as exc:
        response = refuse("error.too_many_logins", 429)
        response.headers["Retry-After"] = str(exc.retry_after)
        return response
    if delay_s:  # this email is being guessed from many addresses: slow down, never lock the owner out
        await asyncio.sleep(delay_s)
    try:
        account = await page.container.accounts.authenticate_password(email, password)
    except Unauthorized:
        services.throttle.failed(email, address)
        return refuse("error.login_failed", 401)
    except Forbidden:
        return refuse("error.account_disabled", 403)
    services.throttle.succeeded(email, address)
    return await _start_session(page, account, next_url)


async def _start_session(page: Page, account: Account, target: str) -> Response:
    created = await services_of(page.request).sessions.create(account.id)
    response = redirect(page, target)
    set_session_cookie(page.request, response, created.cookie_value)
    return response


@router.post("/logout")
async def logout(request: Request) -> Response:
    page = await load_page(request)
    if page.session is None:
        return redirect(page, "/login")
    await checked_form(page)
    await services_of(request).sessions.destroy(request.cookies.get(SESSION_COOKIE))
    response = redirect(page, "/login", done="logged_out")
    clear_session_cookie(request, response)
    return response


# --- overview -------------------------------------------------------------------------------


@router.get("/console")
async def overview(request: Request) -> Response:
    page, account = await user_page(request)
    container = page.container
    async with container.db.uow(write=False) as uow:
        credits = await uow.accounts.credits(account.id)
    tasks, _cursor = await container.tasks.list_tasks(account.id, limit=5)
    keys = [k for k in await container.accounts.list_api_keys(account.id) if not k.revoked]
    models = container.catalog.launched()
    return render(page, "console/overview.html", section="overview", credits=credits, tasks=tasks,
                  active_keys=len(keys), models=models, thumb=_thumbnail)


def _thumbnail(output: dict[str, Any] | None) -> str | None:
    """The picture for a task's row: its first image, or a video's thumbnail."""
    images = (output or {}).get("images") or []
    if images:
        return str(images[0]["url"])
    thumbnail = (output or {}).get("thumbnail")
    return str(thumbnail["url"]) if isinstance(thumbnail, dict) and thumbnail.get("url") else None


# --- API keys -------------------------------------------------------------------------------


async def _keys_page(page: Page, account: Account, *, status: int = 200, created: str | None = None,
                     error: str | None = None) -> Response:
    keys = await page.container.accounts.list_api_keys(account.id)
    return render(page, "console/keys.html", status=status, section="keys", keys=keys,
                  models=page.container.catalog.launched(), created_key=created,
                  error=page.t(error) if error else None)


@router.get("/console/keys")
async def keys_page(request: Request) -> Response:
    page, account = await user_page(request)
    return await _keys_page(page, account)


@router.post("/console/keys")
async def create_key(request: Request) -> Response:
    page, account = await user_page(request)
    form = await checked_form(page)
    name = form_text(form, "name", 200)
    catalog = page.container.catalog
    chosen = [m for m in form.getlist("models") if isinstance(m, str)]
    allowed = []
    for model in chosen:
        spec = catalog.resolve(model)
        if spec is None:
            return await _keys_page(page, account, status=400, error="error.unknown_model")
        allowed.append(spec.id)
    budget_text = form_text(form, "credit_budget", 40)
    budget: int | None = None
    if budget_text:
        try:
            budget = parse_credit_amount(budget_text, param="credit_budget", max_credits=MAX_KEY_BUDGET_CREDITS)
        except InvalidParameter:
            return await _keys_page(page, account, status=400, error="error.budget_invalid")
    created = await page.container.accounts.create_api_key(
        account.id, name or page.t("keys.default_name"), allowed_models=allowed or None, credit_budget=budget)
    return await _keys_page(page, account, status=201, created=created.plaintext)


@router.post("/console/keys/{key_id}/revoke")
async def revoke_key(request: Request, key_id: str) -> Response:
    page, account = await user_page(request)
    await checked_form(page)
    try:
        key_hash = await page.container.accounts.revoke_api_key(account.id, key_id)
    except NotFound:
        return await _keys_page(page, account, status=404, error="error.key_not_found")
    page.container.keys.invalidate(key_hash)
    return redirect(page, "/console/keys", done="key_revoked")


# --- tasks ----------------------------------------------------------------------------------


@router.get("/console/tasks")
async def tasks_page(request: Request) -> Response:
    page, account = await user_page(request)
    q = request.query_params
    status = q.get("status") or None
    if status not in {s.value for s in TaskStatus}:
        status = None
    model = q.get("model") or None
    cursor = q.get("cursor") or None
    if cursor is not None and not is_task_id(cursor):  # a page shows the first page rather than an error
        cursor = None
    tasks, next_cursor = await page.container.tasks.list_tasks(account.id, limit=TASKS_PAGE, cursor=cursor,
                                                               status=status, model=model)
    models = sorted(m.id for m in page.container.catalog.models.values())
    return render(page, "console/tasks.html", section="tasks", tasks=tasks, next_cursor=next_cursor,
                  statuses=[s.value for s in TaskStatus], models=models, status_filter=status or "",
                  model_filter=model or "",
                  thumb=_thumbnail)


async def _task_page(page: Page, account: Account, task_id: str, *, status: int = 200,
                     error: str | None = None) -> Response:
    try:
        task = await page.container.tasks.get_task(account.id, task_id)
    except ApiError:
        return await error_page(page.request, 404, "error.not_found_title", "error.task_not_found")
    deliveries = await _deliveries(page).list_for_task(account.id, task_id)
    public = task.to_public(base_url_of(page.request))
    return render(page, "console/task.html", status=status, section="tasks", task=task, deliveries=deliveries,
                  input_json=orjson.dumps(task.input, option=orjson.OPT_INDENT_2).decode(),
                  task_json=orjson.dumps(public, option=orjson.OPT_INDENT_2).decode(),
                  error=page.t(error) if error else None)


@router.get("/console/tasks/{task_id}")
async def task_page(request: Request, task_id: str) -> Response:
    page, account = await user_page(request)
    return await _task_page(page, account, task_id)


@router.post("/console/tasks/{task_id}/cancel")
async def cancel_task(request: Request, task_id: str) -> Response:
    page, account = await user_page(request)
    await checked_form(page)
    try:
        await page.container.tasks.cancel_task(account.id, task_id)
    except ApiError as exc:
        if exc.status == 404:
            return await error_page(request, 404, "error.not_found_title", "error.task_not_found")
        return await _task_page(page, account, task_id, status=409, error="error.task_not_cancelable")
    return redirect(page, f"/console/tasks/{task_id}", done="task_canceled")


@router.post("/console/tasks/{task_id}/redeliver")
async def redeliver(request: Request, task_id: str) -> Response:
    page, account = await user_page(request)
    await checked_form(page)
    try:
        await _deliveries(page).redeliver(account.id, task_id)
    except ApiError:
        return await error_page(request, 404, "error.not_found_title", "error.not_found")
    return redirect(page, f"/console/tasks/{task_id}", done="redelivery_queued")


def _deliveries(page: Page) -> DeliveryService:
    container = page.container
    return DeliveryService(container.db, on_redeliver=container.webhook_wakeup.set)


# --- billing --------------------------------------------------------------------------------


async def _billing_page(page: Page, account: Account, *, status: int = 200, error: str | None = None) -> Response:
    q = page.request.query_params
    kind = q.get("kind") or ""
    if kind not in {k.value for k in LedgerKind}:
        kind = ""
    cursor = q.get("cursor") or ""
    before = ascii_int(cursor) if cursor else None
    services = services_of(page.request)
    async with page.container.db.uow(write=False) as uow:
        credits = await uow.accounts.credits(account.id)
        entries = await uow.ledger.list(account.id, limit=LEDGER_PAGE + 1, before_id=before, kind=kind or None)
    next_cursor = str(entries[LEDGER_PAGE - 1].id) if len(entries) > LEDGER_PAGE else None
    orders = await services.billing.orders(account.id, limit=20)
    return render(page, "console/billing.html", status=status, section="billing", credits=credits,
                  entries=entries[:LEDGER_PAGE], next_cursor=next_cursor, kind=kind,
                  kinds=[k.value for k in LedgerKind], packs=list(services.billing.packs.values()),
                  orders=orders, error=page.t(error) if error else None)


@router.get("/console/billing")
async def billing_page(request: Request) -> Response:
    page, account = await user_page(request)
    return await _billing_page(page, account)


@router.post("/console/billing/redeem")
async def redeem_code(request: Request) -> Response:
    page, account = await user_page(request)
    form = await checked_form(page)
    try:
        await services_of(request).billing.redeem(account.id, form_text(form, "code", 100))
    except RedemptionFailed:
        return await _billing_page(page, account, status=400, error="error.code_invalid")
    return redirect(page, "/console/billing", done="code_redeemed")


@router.post("/console/billing/orders")
async def create_order(request: Request) -> Response:
    page, account = await user_page(request)
    form = await checked_form(page)
    try:
        checkout = await services_of(request).billing.create_order(account.id, form_text(form, "pack", 100))
    except InvalidParameter:
        return await _billing_page(page, account, status=400, error="error.pack_invalid")
    if checkout.redirect_url:
        return RedirectResponse(checkout.redirect_url, status_code=303)
    return redirect(page, "/console/billing", done="order_created")


@router.post("/console/billing/orders/{order_id}/cancel")
async def cancel_order(request: Request, order_id: str) -> Response:
    page, account = await user_page(request)
    await checked_form(page)
    try:
        await services_of(request).billing.cancel_order(order_id, actor=account.id, account_id=account.id)
    except NotFound:
        return await error_page(request, 404, "error.not_found_title", "error.not_found")
    except OrderStateConflict:
        return await _billing_page(page, account, status=409, error="error.order_not_pending")
    return redirect(page, "/console/billing", done="order_canceled")


@router.get("/console/billing/ledger.csv")
async def ledger_csv(request: Request) -> Response:
    page, account = await user_page(request)
    kind = request.query_params.get("kind") or None
    if kind not in {k.value for k in LedgerKind}:
        kind = None
    db = page.container.db

    async def rows() -> AsyncIterator[str]:
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["id", "created_at", "kind", "amount", "task_id", "request_id", "note"])
        before: int | None = None
        while True:
            async with db.uow(write=False) as uow:
                entries = await uow.ledger.list(account.id, limit=500, before_id=before, kind=kind)
            for e in entries:
                writer.writerow([e.id, iso(e.created_at), e.kind.value, format_credits_text(e.amount), e.task_id or "",
                                 e.request_id or "", e.note or ""])
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
            if len(entries) < 500:
                return
            before = entries[-1].id

    filename = f"apiinone-ledger-{iso(now_ms())}.csv".replace(":", "")
    return StreamingResponse(rows(), media_type="text/csv; charset=utf-8",
                             headers={"Content-Disposition": f'attachment; filename="{filename}"',
                                      "Cache-Control": "no-store"})


# --- settings -------------------------------------------------------------------------------


async def _settings_page(page: Page, account: Account, *, status: int = 200, error: str | None = None) -> Response:
    fresh = await page.container.accounts.get(account.id)
    return render(page, "console/settings.html", status=status, section="settings", profile=fresh,
                  error=page.t(error) if error else None)


@router.get("/console/settings")
async def settings_page(request: Request) -> Response:
    page, account = await user_page(request)
    return await _settings_page(page, account)


@router.post("/console/settings/profile")
async def save_profile(request: Request) -> Response:
    page, account = await user_page(request)
    form = await checked_form(page)
    await services_of(request).queries.set_display_name(account.id, form_text(form, "display_name", 100))
    return redirect(page, "/console/settings", done="profile_saved")


@router.post("/console/settings/password")
async def change_password(request: Request) -> Response:
    page, account = await user_page(request)
    form = await checked_form(page)
    new = form_text(form, "new_password", 1000)
    if len(new) < 8:
        return await _settings_page(page, account, status=400, error="error.password_short")
    assert page.session is not None
    try:
        await page.container.accounts.change_password(account.id, form_text(form, "current_password", 1000), new,
                                                      keep_session_hash=page.session.id_hash)
    except InvalidParameter:
        return await _settings_page(page, account, status=400, error="error.current_password_wrong")
    return redirect(page, "/console/settings", done="password_changed")


@router.post("/console/settings/webhook-secret/rotate")
async def rotate_secret(request: Request) -> Response:
    page, account = await user_page(request)
    await checked_form(page)
    await page.container.accounts.rotate_webhook_secret(account.id)
    return redirect(page, "/console/settings", done="secret_rotated")


# --- model pages ----------------------------------------------------------------------------


def _alive_nodes(nodes: list[dict[str, Any]], model_id: str, lease_s: float) -> list[str]:
    now = now_ms()
    interval_ms = int(max(0.2, lease_s / 3) * 1000)
    return [str(n["name"]) for n in nodes
            if node_health(n, now, interval_ms) == "up" and ("*" in n["models"] or model_id in n["models"])]


def _parameters(container: Container, spec: ModelSpec, page: Page) -> list[dict[str, Any]]:
    kind = container.kinds.get(spec.type)
    schema = kind.parameters_schema(spec) if kind else {"properties": {}}
    required = set(schema.get("required", []))
    rows = []
    for name, prop in schema["properties"].items():
        if name == "model":
            continue
        key = f"param.{name}"
        description = page.t(key) if page.t.has(key) else str(prop.get("description", ""))
        if name == "quality":
            description += " " + ", ".join(f"{q}: {p}" for q, p in spec.pricing.items())
        rows.append({"name": name, "type": prop.get("type", ""), "description": description,
                     "required": name in required, "default": prop.get("default"),
                     "choices": prop.get("enum")})
    return rows


@router.get("/models")
async def models_page(request: Request) -> Response:
    page = await load_page(request)
    container = page.container
    models = [(m, container.pool.is_available(m), model_pages.price_summary(m, page.t))
              for m in container.catalog.launched()]
    return render(page, "models/list.html", section="models", models=models)


@router.get("/models/{model_id}")
async def model_page(request: Request, model_id: str) -> Response:
    page = await load_page(request)
    container = page.container
    catalog = container.catalog
    spec = catalog.resolve(model_id)
    if spec is None or not spec.launched or not spec.enabled:
        return await error_page(request, 404, "error.not_found_title", "error.model_not_found")
    if spec.id != model_id:
        return redirect(page, f"/models/{spec.id}")
    launched = catalog.launched()
    same_endpoint = [m for m in launched if m.type == spec.type and m.id != spec.id]
    related = [r for r in (catalog.resolve(name) for name in spec.related)
               if r is not None and r.launched and r.enabled]
    available = container.pool.is_available(spec)
    nodes = _alive_nodes(await services_of(request).queries.nodes(), spec.id,
                         container.settings.task_lease_s) if available else []
    credits = None
    if page.account is not None:
        async with container.db.uow(write=False) as uow:
            credits = await uow.accounts.credits(page.account.id)
    if spec.type == "chat":
        from apiinone.web.routes.chat_pages import chat_page_context

        return render(page, "models/chat.html", section="models", spec=spec, available=available,
                      description=spec.text("description", page.lang) or "",
                      capabilities=spec.text("capabilities", page.lang) or [],
                      faq=[{"q": _lang_text(f.get("q", {}), page.lang), "a": _lang_text(f.get("a", {}), page.lang)}
                           for f in spec.faq],
                      same_endpoint=same_endpoint, credits=credits,
                      **chat_page_context(spec, base_url_of(request)))
    kind = container.kinds.get(spec.type)
    create_path = kind.create_path if kind is not None else "/api/v1/models"
    speech_formats = container.speech.formats(spec) if spec.type == "speech" else None
    return render(page, "models/detail.html", section="models", spec=spec,
                  available=available,
                  description=spec.text("description", page.lang) or "",
                  capabilities=spec.text("capabilities", page.lang) or [],
                  use_cases=spec.text("use_cases", page.lang) or [],
                  faq=[{"q": _lang_text(f.get("q", {}), page.lang), "a": _lang_text(f.get("a", {}), page.lang)}
                       for f in spec.faq],
                  parameters=_parameters(container, spec, page),
                  curl=model_pages.curl_example(spec, base_url_of(request), create_path, EXAMPLE_PROMPT,
                                               speech_formats),
                  same_endpoint=same_endpoint, related=related, nodes=nodes, credits=credits,
                  base_price=model_pages.base_price_ucr(spec), aspect_ratios=ASPECT_RATIOS,
                  pricing_json=orjson.dumps(spec.pricing).decode(),
                  pricing_ucr_json=model_pages.pricing_ucr_json(spec), create_path=create_path,
                  price_rows=model_pages.price_rows(spec, page.t), facts=model_pages.facts(spec, speech_formats),
                  speech_examples=model_pages.speech_price_examples(spec) if spec.type == "speech" else [],
                  playground=spec.type if spec.type in model_pages.PLAYGROUNDS else None,
                  billing_key=model_pages.BILLING_KEYS.get(spec.type, "model.billing_value"),
                  queued=kind is None or kind.queued)


def _lang_text(texts: dict[str, str], lang: str) -> str:
    return texts.get(lang) or texts.get("en") or next(iter(texts.values()), "")
