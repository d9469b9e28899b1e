"""Speech calls: validate, hold, speak through the route pool, then capture or release.

A speech call is priced before it runs (characters × the model's ``per_mchar``), so the hold is the
exact price and the capture is all of it. The hold is made before anything is sent upstream; it is
released, and nothing is charged, when every route fails or when the client goes away before its
audio is ready (the upstream call is then stopped). Each call leaves one request-log row.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from apiinone.domain.accounts import Account, ApiKey
from apiinone.domain.catalog import ModelSpec
from apiinone.errors import (
    ContentRefused,
    ModelUnavailable,
    UpstreamFailed,
    UpstreamTimedOut,
)
from apiinone.kinds.speech import KIND as SPEECH
from apiinone.kinds.speech import SpeechRequest
from apiinone.kinds.speech.job import FORMATS, SpeechAudio, SpeechJob
from apiinone.services.metering import DirectHold, Metering, RequestRecord
from apiinone.upstreams.base import (
    ContentPolicyError,
    RouteTarget,
    UpstreamError,
    UpstreamTimeoutError,
    UpstreamUnavailableError,
)
from apiinone.upstreams.pool import RoutePool

log = structlog.get_logger(__name__)

CLIENT_GONE_STATUS = 499
"""The request-log status of a call whose client left before the answer (nginx's convention)."""


class ClientGone(Exception):
    """The client disconnected before its audio was ready: nothing was charged, nothing to answer."""


@dataclass(frozen=True, slots=True)
class SpeechResult:
    audio: SpeechAudio
    model: str
    route: str
    charged: int  # µcr
    request_id: str


class SpeechService:
    def __init__(self, resolve_model: Callable[..., ModelSpec], pool: RoutePool, metering: Metering) -> None:
        self.resolve_model = resolve_model
        """``TaskService.resolve_model``: one place says which model a name is, for every kind."""
        self.pool = pool
        self.metering = metering

    def resolve(self, request: SpeechRequest, key: ApiKey | None) -> tuple[ModelSpec, SpeechRequest]:
        """The speech model (allowed for this key, available) and the request settled for it."""
        spec = self.resolve_model(request.model, key=key, type_=SPEECH.name)
        formats = self.formats(spec)
        request = SPEECH.for_model(request, formats)
        SPEECH.check_for_model(spec, request, formats)
        return spec, request

    def formats(self, spec: ModelSpec) -> frozenset[str]:
        """The formats every configured route of the model can produce (so failover never lands on a
        route that cannot)."""
        found: frozenset[str] | None = None
        for route in self.pool.routes(spec):
            if not self.pool.is_configured(route):
                continue
            adapter = self.pool.adapters.get(route.provider)
            produce = getattr(adapter, "speech_formats", None)
            formats = frozenset(produce()) if callable(produce) else frozenset()
            found = formats if found is None else found & formats
        return found if found is not None else frozenset(FORMATS)

    def price(self, spec: ModelSpec, request: SpeechRequest) -> int:
        return SPEECH.price_ucr(spec, request.characters)

    async def speak(self, account: Account, key: ApiKey | None, request: SpeechRequest, *,
                    client_gone: asyncio.Event | None = None) -> SpeechResult:
        """Raises the API error to answer (nothing charged), or ClientGone; else the audio, charged."""
        spec, request = self.resolve(request, key)
        price = self.price(spec, request)
        hold = await self.metering.open_direct(account, key, price)  # InsufficientCredits: nothing held
        job = SPEECH.job_for(request, spec.upstream_model)
        try:
            audio, route = await self._call(spec, job, client_gone)
        except ClientGone:
            await self._release(hold, spec, None, "canceled", CLIENT_GONE_STATUS)
            log.info("speech_client_gone", model=spec.id, request_id=hold.request_id)
            raise
        except UpstreamError as exc:
            error = _api_error(exc)
            await self._release(hold, spec, None, "failed", error.status)
            raise error from None
        except BaseException:  # canceled (server stopping) or a bug: the hold must not stay open
            await asyncio.shield(self._release(hold, spec, None, "failed", 500))
            raise
        await self.metering.settle_direct(hold, price, RequestRecord(
            type="speech", model=spec.id, status="succeeded", http_status=200, route=route,
            input_tokens=None, output_tokens=None))
        return SpeechResult(audio=audio, model=spec.id, route=route, charged=price, request_id=hold.request_id)

    async def _call(self, spec: ModelSpec, job: SpeechJob,
                    client_gone: asyncio.Event | None) -> tuple[SpeechAudio, str]:
        async def synthesize(adapter: object, target: RouteTarget) -> SpeechAudio:
            speak = getattr(adapter, "synthesize_speech", None)
            if speak is None:
                raise UpstreamError(f"provider {target.provider!r} does not produce speech")
            audio: SpeechAudio = await speak(target, job)
            return audio

        call = asyncio.ensure_future(self.pool.call(spec, synthesize))
        if client_gone is None:
            routed = await call
            return routed.value, routed.route
        gone = asyncio.ensure_future(client_gone.wait())
        try:
            done, _ = await asyncio.wait({call, gone}, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            call.cancel()
            raise
        finally:
            gone.cancel()
        if call not in done:  # the client left first: stop the upstream call
            call.cancel()
            with contextlib.suppress(BaseException):
                await call
            raise ClientGone
        if client_gone.is_set() and call.exception() is None:  # audio, but nobody to give it to
            raise ClientGone
        routed = call.result()
        return routed.value, routed.route

    async def _release(self, hold: DirectHold, spec: ModelSpec, route: str | None, status: str,
                       http_status: int) -> None:
        await self.metering.release_direct(hold, RequestRecord(
            type="speech", model=spec.id, status=status, http_status=http_status, route=route))


def _api_error(exc: UpstreamError) -> ContentRefused | UpstreamFailed | UpstreamTimedOut | ModelUnavailable:
    if isinstance(exc, ContentPolicyError):
        return ContentRefused(exc.message)
    if isinstance(exc, UpstreamTimeoutError):
        return UpstreamTimedOut(exc.message)
    if isinstance(exc, UpstreamUnavailableError):
        return ModelUnavailable(exc.message)
    return UpstreamFailed(exc.message)
