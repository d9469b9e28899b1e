"""Speech from ``espeak-ng``, run as a subprocess: the text goes in on stdin (never through a
shell or the command line), WAV comes out on stdout, and a process that overruns the route's
timeout is killed.

espeak-ng writes its WAV header before it knows the length (sizes ``0x7ffff...``), so the header is
rewritten with the real sizes. ``pcm`` is what OpenAI's ``pcm`` is: raw 16-bit little-endian mono
samples at 24 kHz, resampled from espeak-ng's 22,050 Hz (``audioop.ratecv``, in a thread). Other
formats need an encoder this package does not have, so they are not offered (the speech service
answers 400 for them).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import struct
import warnings
from array import array

from apiinone.kinds.speech.job import CONTENT_TYPES, PCM_SAMPLE_RATE, SpeechAudio, SpeechJob
from apiinone.upstreams.base import RouteTarget, UpstreamError, UpstreamTimeoutError

ESPEAK_VOICES = {"zh": "cmn", "zh-cn": "cmn"}
"""Public voice names that espeak-ng spells differently; the others are espeak-ng's own names."""

BASE_WPM = 175  # espeak-ng's default rate: speed 1.0
MIN_WPM, MAX_WPM = 80, 450  # the range espeak-ng speaks in (speed is clamped to it)
FORMATS = frozenset({"wav", "pcm"})
MAX_OUTPUT_BYTES = 64 * 1024 * 1024


class LocalSpeechProvider:
    provider = "local-speech"
    needs_key = False

    def __init__(self, binary: str | None = None, *, max_processes: int | None = None) -> None:
        self.binary = binary if binary is not None else shutil.which("espeak-ng")
        self._slots = asyncio.Semaphore(max_processes or max(1, os.cpu_count() or 1))

    def __repr__(self) -> str:
        return f"LocalSpeechProvider(binary={self.binary!r})"

    @property
    def installed(self) -> bool:
        """The route pool counts this provider's routes as configured only where this is true."""
        return bool(self.binary) and os.access(str(self.binary), os.X_OK)

    def speech_formats(self) -> frozenset[str]:
        return FORMATS if self.installed else frozenset()

    async def aclose(self) -> None:
        """Nothing to close: each call's process ends with the call."""

    def wpm(self, speed: float) -> int:
        return max(MIN_WPM, min(MAX_WPM, round(BASE_WPM * speed)))

    async def synthesize_speech(self, target: RouteTarget, job: SpeechJob) -> SpeechAudio:
        if job.response_format not in FORMATS:
            raise UpstreamError(f"local-speech produces only {', '.join(sorted(FORMATS))}")
        if not self.installed:
            raise UpstreamError("espeak-ng is not installed on this server", retryable=True)
        wav = await self._speak(job.input, ESPEAK_VOICES.get(job.voice.lower(), job.voice), self.wpm(job.speed),
                                target.timeout_s)
        if job.response_format == "wav":
            return SpeechAudio(data=wav, content_type=CONTENT_TYPES["wav"])
        rate, samples = read_wav_samples(wav)
        pcm = await asyncio.to_thread(resample, samples, rate, PCM_SAMPLE_RATE)  # minutes of audio: off the loop
        return SpeechAudio(data=pcm, content_type=CONTENT_TYPES["pcm"])

    async def _speak(self, text: str, voice: str, wpm: int, timeout_s: float) -> bytes:
        assert self.binary is not None
        async with self._slots:
            process = await asyncio.create_subprocess_exec(
                self.binary, "--stdin", "--stdout", "-v", voice, "-s", str(wpm),
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            try:
                out, err = await asyncio.wait_for(process.communicate(text.encode("utf-8")), timeout_s)
            except BaseException as exc:  # timeout, or the caller went away: never leave it running
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
                if isinstance(exc, TimeoutError):
                    raise UpstreamTimeoutError(f"espeak-ng did not finish within {timeout_s:g} s") from None
                raise
        message = err.decode("utf-8", "replace").strip()[:200]
        if process.returncode != 0 or len(out) <= 44:
            # an unknown voice prints an error and no audio; it will not work on another try either
            raise UpstreamError(f"espeak-ng produced no audio ({message or f'exit {process.returncode}'})")
        if len(out) > MAX_OUTPUT_BYTES:
            raise UpstreamError("espeak-ng produced more audio than allowed")
        return fix_wav_header(out)


def fix_wav_header(wav: bytes) -> bytes:
    """The RIFF and ``data`` chunk sizes set from the bytes actually written."""
    if wav[:4] != b"RIFF" or wav[8:12] != b"WAVE":
        raise UpstreamError("espeak-ng wrote something that is not WAV")
    offset = 12
    while offset + 8 <= len(wav):
        chunk_id = wav[offset:offset + 4]
        size = struct.unpack_from("<I", wav, offset + 4)[0]
        if chunk_id == b"data":
            data_size = len(wav) - offset - 8
            data_size -= data_size % 2
            fixed = bytearray(wav[:offset + 8 + data_size])
            struct.pack_into("<I", fixed, 4, len(fixed) - 8)
            struct.pack_into("<I", fixed, offset + 4, data_size)
            return bytes(fixed)
        offset += 8 + size + (size & 1)
    raise UpstreamError("espeak-ng wrote WAV without a data chunk")


def read_wav_samples(wav: bytes) -> tuple[int, array[int]]:
    """(sample rate, 16-bit mono samples) of a PCM WAV as espeak-ng writes it."""
    offset, rate, samples = 12, 0, array("h")
    while offset + 8 <= len(wav):
        chunk_id = wav[offset:offset + 4]
        size = struct.unpack_from("<I", wav, offset + 4)[0]
        body = wav[offset + 8:offset + 8 + size]
        if chunk_id == b"fmt ":
            audio_format, channels, rate, _, _, bits = struct.unpack_from("<HHIIHH", body)
            if (audio_format, channels, bits) != (1, 1, 16):
                raise UpstreamError("espeak-ng wrote WAV that is not 16-bit mono PCM")
        elif chunk_id == b"data":
            samples.frombytes(body[: len(body) - len(body) % 2])
        offset += 8 + size + (size & 1)
    if not rate:
        raise UpstreamError("espeak-ng wrote WAV without a format chunk")
    if samples.itemsize != 2:  # pragma: no cover - array('h') is 16-bit on every supported platform
        raise UpstreamError("16-bit samples are not available")
    return rate, samples


def resample(samples: array[int], rate: int, target_rate: int) -> bytes:
    """16-bit mono samples at ``target_rate``, little-endian (C speed: the standard library's
    ``audioop``, or the ``audioop-lts`` package that carries it on Python 3.13 and later)."""
    data = samples.tobytes()
    if struct.pack("=h", 1) != struct.pack("<h", 1):  # pragma: no cover - big-endian hosts
        swapped = array("h", samples)
        swapped.byteswap()
        data = swapped.tobytes()
    if rate == target_rate or not data:
        return data
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import audioop

    converted, _ = audioop.ratecv(data, 2, 1, rate, target_rate, None)
    return converted
