"""Request-scoped helpers: the container, the caller's key and account, base URLs."""

from __future__ import annotations

from starlette.requests import Request

from apiinone.bootstrap import Container
from apiinone.domain.accounts import Account, ApiKey
from apiinone.errors import InvalidParameter
from apiinone.params import header_text
from apiinone.services.tasks import MAX_IDEMPOTENCY_KEY_CHARS


def container_of(request: Request) -> Container:
    container: Container = request.app.state.container
    return container


def base_url_of(request: Request) -> str:
    settings = container_of(request).settings
    if settings.public_url:
        return settings.public_url.rstrip("/")
    return str(request.base_url).rstrip("/")


async def authenticate(request: Request) -> tuple[ApiKey, Account]:
    container = container_of(request)
    key, account = await container.keys.authenticate(request.headers.get("authorization"))
    if container.keys.due_for_touch(key.id):
        request.state.touch_key = key.id
    return key, account


def idempotency_key(request: Request) -> str | None:
    """The ``Idempotency-Key`` header as the client's text, 1 to 255 characters (not bytes)."""
    raw = request.headers.get("idempotency-key")
    if raw is None:
        return None
    key = header_text(raw)
    if key is None or not 1 <= len(key) <= MAX_IDEMPOTENCY_KEY_CHARS:
        raise InvalidParameter(f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY_CHARS} characters of UTF-8 text",
                               param="Idempotency-Key")
    return key
