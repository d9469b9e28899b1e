"""Shared machinery of the server-rendered pages: the session and language of a request, CSRF
checks, rendering with the message catalog, and the console's services.

Pages never raise the API's JSON errors at the browser: a missing login redirects to ``/login``,
a non-admin gets an HTML 403, a form without a valid CSRF token gets an HTML 403 and changes
nothing.
"""

from __future__ import annotations

import functools
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import structlog
from fastapi import FastAPI
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.staticfiles import StaticFiles

from apiinone.bootstrap import ConsoleServices, Container
from apiinone.domain.accounts import Account
from apiinone.domain.credits import UCR_PER_CREDIT, format_credits_text
from apiinone.ids import now_ms
from apiinone.services.sessions import (
    SESSION_COOKIE,
    WebSession,
    anonymous_csrf_token,
    csrf_matches,
)
from apiinone.web.deps import base_url_of, container_of
from apiinone.web.i18n import LANG_COOKIE, SUPPORTED_LANGS, Translator, choose_lang

if TYPE_CHECKING:
    import jinja2

log = structlog.get_logger(__name__)

PRE_SESSION_COOKIE = "aio_pre"
STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
# Pages load only their own script and styles; images, audio and video may come from object storage
# or a CDN, and the speech playground plays the audio it received from a blob: URL.
PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: https: http:; "
                               "media-src 'self' blob: https: http:; script-src 'self'; "
                               "style-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'self'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}


def services_of(request: Request) -> ConsoleServices:
    services: ConsoleServices = request.app.state.container.console
    return services


class LoginRequired(Exception):
    """The page needs a signed-in account: send the browser to /login."""


class AdminOnly(Exception):
    """The page is for administrators only (HTML 403)."""


class CsrfRejected(Exception):
    """A state-changing form arrived without this session's CSRF token (HTML 403, nothing done)."""


@dataclass
class Page:
    request: Request
    lang: str
    remember_lang: bool
    t: Translator
    session: WebSession | None
    pre_session: str
    new_pre_session: bool

    @property
    def account(self) -> Account | None:
        return self.session.account if self.session else None

    @property
    def csrf_token(self) -> str:
        if self.session is not None:
            return self.session.csrf_token
        return anonymous_csrf_token(services_of(self.request).secret_key, self.pre_session)

    @property
    def container(self) -> Container:
        return container_of(self.request)


async def load_page(request: Request) -> Page:
    choice = choose_lang(request.query_params.get("lang"), request.cookies.get(LANG_COOKIE),
                         request.headers.get("accept-language"))
    session = await services_of(request).sessions.load(request.cookies.get(SESSION_COOKIE))
    pre = request.cookies.get(PRE_SESSION_COOKIE) or ""
    new_pre = session is None and not (16 <= len(pre) <= 100)
    if new_pre:
        pre = secrets.token_urlsafe(24)
    return Page(request=request, lang=choice.lang, remember_lang=choice.remember, t=Translator(choice.lang),
                session=session, pre_session=pre, new_pre_session=new_pre)


async def user_page(request: Request) -> tuple[Page, Account]:
    page = await load_page(request)
    if page.account is None:
        raise LoginRequired()
    return page, page.account


async def admin_page(request: Request) -> tuple[Page, Account]:
    page, account = await user_page(request)
    if not account.is_admin:
        raise AdminOnly()
    return page, account


async def checked_form(page: Page) -> FormData:
    """The posted form, after its CSRF token matched (else CsrfRejected: nothing is changed)."""
    form = await page.request.form()
    token = form.get("csrf_token")
    if not isinstance(token, str) or not csrf_matches(page.csrf_token, token):
        raise CsrfRejected()
    if page.session is None and page.new_pre_session:
        raise CsrfRejected()
    return form


def form_text(form: FormData, name: str, limit: int = 5000) -> str:
    value = form.get(name)
    return value.strip()[:limit] if isinstance(value, str) else ""


def safe_next(value: str | None, default: str = "/console") -> str:
    """Only same-site paths: never ``//host`` or a full URL (no open redirect)."""
    if value and value.startswith("/") and not value.startswith("//") and "\\" not in value:
        return value
    return default


# --- rendering -------------------------------------------------------------------------------


def when(ms: int | None) -> str:
    if ms is None:
        return "—"
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def usd(credits: int) -> str:
    """Whole credits (catalog prices, cents) as dollars: 1 credit = USD 0.01."""
    return f"${credits / 100:,.2f}"


def ucr_usd(ucr: int) -> str:
    """µcr as dollars to the cent, rounded half up (display only; the ledger stays exact)."""
    dollars = (Decimal(ucr) / (UCR_PER_CREDIT * 100)).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)
    return f"${dollars:,}"


def signed_credits(ucr: int) -> str:
    return ("+" if ucr > 0 else "") + format_credits_text(ucr)


@functools.cache
def environment() -> jinja2.Environment:
    """Built on the first page rendered: an API-only server never loads Jinja."""
    from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

    env = Environment(loader=PackageLoader("apiinone", "web/templates"), autoescape=select_autoescape(["html"]),
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["when"] = when
    env.filters["usd"] = usd
    env.filters["credits"] = format_credits_text  # µcr → "99.997475"
    env.filters["ucr_usd"] = ucr_usd
    env.filters["signed_credits"] = signed_credits
    return env


def _lang_links(request: Request) -> dict[str, str]:
    links = {}
    for lang in SUPPORTED_LANGS:
        query = {k: v for k, v in request.query_params.items() if k not in ("lang", "done")}
        query["lang"] = lang
        links[lang] = f"{request.url.path}?{urlencode(query)}"
    return links


def _ago(t: Translator) -> Any:
    def ago(ms: int | None) -> str:
        if ms is None:
            return t("time.never")
        seconds = max(0, (now_ms() - ms) // 1000)
        if seconds < 60:
            return t("time.seconds_ago", n=seconds)
        if seconds < 3600:
            return t("time.minutes_ago", n=seconds // 60)
        if seconds < 86400:
            return t("time.hours_ago", n=seconds // 3600)
        return t("time.days_ago", n=seconds // 86400)

    return ago


def render(page: Page, template: str, *, status: int = 200, section: str = "", **values: Any) -> HTMLResponse:
    request = page.request
    done = request.query_params.get("done")
    notice = values.pop("notice", None)
    if notice is None and done and page.t.has(f"flash.{done}"):
        notice = page.t(f"flash.{done}")
    context: dict[str, Any] = {
        "_": page.t, "lang": page.lang, "account": page.account, "csrf_token": page.csrf_token,
        "path": request.url.path, "lang_links": _lang_links(request), "section": section,
        "notice": notice, "error": values.pop("error", None), "ago": _ago(page.t),
        "base_url": base_url_of(request), "signup_open": page.container.settings.signup == "open",
    }
    context.update(values)
    html = environment().get_template(template).render(context)
    response = HTMLResponse(html, status_code=status, headers=PAGE_HEADERS)
    finish(page, response)
    return response


def finish(page: Page, response: Response) -> Response:
    """Cookies every page response may carry: the remembered language, the pre-login token."""
    secure = cookies_secure(page.request)
    if page.remember_lang:
        response.set_cookie(LANG_COOKIE, page.lang, max_age=365 * 86400, httponly=True, samesite="lax",
                            secure=secure)
    if page.new_pre_session:
        response.set_cookie(PRE_SESSION_COOKIE, page.pre_session, max_age=86400, httponly=True, samesite="lax",
                            secure=secure)
    return response


def redirect(page: Page, url: str, **query: str) -> Response:
    target = f"{url}?{urlencode(query)}" if query else url
    return finish(page, RedirectResponse(target, status_code=303))


def cookies_secure(request: Request) -> bool:
    public = container_of(request).settings.public_url or ""
    return public.lower().startswith("https://")


def set_session_cookie(request: Request, response: Response, value: str) -> None:
    max_age = container_of(request).settings.session_ttl_days * 86400
    response.set_cookie(SESSION_COOKIE, value, max_age=max_age, httponly=True, samesite="lax",
                        secure=cookies_secure(request), path="/")


def clear_session_cookie(request: Request, response: Response) -> None:
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="lax", secure=cookies_secure(request))


async def error_page(request: Request, status: int, title_key: str, body_key: str) -> HTMLResponse:
    page = await load_page(request)
    return render(page, "error.html", status=status, title_key=title_key, body_key=body_key)


# --- wiring ------------------------------------------------------------------------------------


def install(app: FastAPI) -> None:
    """Mount the console, admin and model pages, their static files and their error pages."""
    from apiinone.web.routes import admin, admin_usage, console, console_api, console_usage

    app.include_router(console.router)
    app.include_router(console_api.router)
    app.include_router(admin.router)
    app.include_router(console_usage.router)
    app.include_router(admin_usage.router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    async def login_required(request: Request, _exc: Exception) -> Response:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/login?{urlencode({'next': target})}", status_code=303)

    async def admin_only(request: Request, _exc: Exception) -> Response:
        return await error_page(request, 403, "error.forbidden_title", "error.admin_only")

    async def csrf_rejected(request: Request, _exc: Exception) -> Response:
        return await error_page(request, 403, "error.forbidden_title", "error.csrf")

    app.add_exception_handler(LoginRequired, login_required)
    app.add_exception_handler(AdminOnly, admin_only)
    app.add_exception_handler(CsrfRejected, csrf_rejected)
