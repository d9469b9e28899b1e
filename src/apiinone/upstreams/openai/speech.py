"""OpenAI's speech endpoint (``POST {base_url}/audio/speech``) for the ``openai`` provider.

The answer is the audio itself (OpenAI streams it chunked); it is read whole, with a size cap,
because the caller is charged only once the audio is complete. Failures are classified by
:func:`~apiinone.upstreams.openai.images.error_from_response`, the protocol's one place for that.
"""

from __future__ import annotations

from typing import Any

import httpx
import orjson

from apiinone.kinds.speech.job import CONTENT_TYPES, FORMATS, SpeechAudio, SpeechJob
from apiinone.upstreams.base import RouteTarget, UpstreamError, UpstreamTimeoutError
from apiinone.upstreams.openai.images import error_from_response

MAX_AUDIO_BYTES = 64 * 1024 * 1024
"""Far above 4096 characters of speech in any format (about 30 MB of WAV at 24 kHz)."""


class OpenAISpeech:
    """The ``/audio/speech`` half of :class:`~apiinone.upstreams.openai.adapter.OpenAIAdapter`."""

    _client: httpx.AsyncClient

    def speech_formats(self) -> frozenset[str]:
        return frozenset(FORMATS)

    async def synthesize_speech(self, target: RouteTarget, job: SpeechJob) -> SpeechAudio:
        body: dict[str, Any] = {"model": target.upstream_model, "input": job.input, "voice": job.voice,
                                "response_format": job.response_format}
        if job.speed != 1.0:
            body["speed"] = job.speed
        if job.instructions:
            body["instructions"] = job.instructions
        headers = {"Content-Type": "application/json", "Accept": "application/octet-stream"}
        if target.api_key:
            headers["Authorization"] = f"Bearer {target.api_key}"
        request = self._client.build_request("POST", f"{target.base_url}/audio/speech", content=orjson.dumps(body),
                                             headers=headers, timeout=target.timeout_s)
        try:
            response = await self._client.send(request, stream=True)
            try:
                if response.status_code != 200:
                    await response.aread()
                    raise error_from_response(target, response)
                data = await _read_capped(response)
            finally:
                await response.aclose()
        except httpx.TimeoutException as exc:
            raise UpstreamTimeoutError(f"no answer within {target.timeout_s:g} s ({type(exc).__name__})") from None
        except httpx.TransportError as exc:
            raise UpstreamError(target.redact(f"could not reach upstream ({type(exc).__name__}: {exc})"),
                                retryable=True) from None
        if not data:
            raise UpstreamError("upstream answered no audio", retryable=True)
        return SpeechAudio(data=data, content_type=CONTENT_TYPES[job.response_format])


async def _read_capped(response: httpx.Response) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > MAX_AUDIO_BYTES:
            raise UpstreamError(f"upstream audio is larger than {MAX_AUDIO_BYTES} bytes")
        chunks.append(chunk)
    return b"".join(chunks)
