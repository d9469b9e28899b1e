"""OpenAI's ``POST /v1/audio/speech`` for the fake OpenAI server (:mod:`tests.fakes.fake_openai`).

Checked the way OpenAI documents it: ``model`` (``tts-1``, ``tts-1-hd``, ``gpt-4o-mini-tts``),
``input`` (at most 4096 characters), ``voice`` (its built-in voices), ``response_format``
(``mp3`` default, ``opus``, ``aac``, ``flac``, ``wav``, ``pcm``), ``speed`` 0.25–4.0,
``instructions`` (not for ``tts-1`` / ``tts-1-hd``), ``stream_format`` (``audio``; ``sse`` not for
``tts-1*``); errors in OpenAI's envelope. The answer is streamed (chunked) like OpenAI's, with its
content type, and is real audio where that needs no codec library: WAV and PCM (24 kHz 16-bit mono,
a tone whose length follows the input and ``speed``) and MP3 (silent MPEG-1 Layer III frames of the
same length). ``opus``, ``aac`` and ``flac`` answers carry the right container signature but are
not decodable audio.
"""

from __future__ import annotations

import math
import struct
from array import array
from collections.abc import AsyncIterator
from typing import Any

SPEECH_MODELS = ("tts-1", "tts-1-hd", "gpt-4o-mini-tts")
VOICES = ("alloy", "ash", "ballad", "coral", "echo", "fable", "onyx", "nova", "sage", "shimmer", "verse")
FORMATS = ("mp3", "opus", "aac", "flac", "wav", "pcm")
CONTENT_TYPES = {"mp3": "audio/mpeg", "opus": "audio/opus", "aac": "audio/aac", "flac": "audio/flac",
                 "wav": "audio/wav", "pcm": "audio/pcm"}
SPEECH_PARAMS = frozenset({"model", "input", "voice", "instructions", "response_format", "speed", "stream_format"})
SAMPLE_RATE = 24_000
SECONDS_PER_CHAR = 0.06
MAX_INPUT_CHARS = 4096


class SpeechInvalid(Exception):
    def __init__(self, message: str, param: str | None, code: str | None) -> None:
        super().__init__(message)
        self.body = {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": code}}


def _invalid_value(param: str, value: object, allowed: tuple[str, ...]) -> SpeechInvalid:
    listed = ", ".join(f"'{a}'" for a in allowed[:-1]) + f", and '{allowed[-1]}'"
    return SpeechInvalid(f"Invalid value: '{value}'. Supported values are: {listed}.", param, "invalid_value")


def validate_speech(params: Any) -> dict[str, Any]:
    """The request as OpenAI would accept it, or SpeechInvalid with OpenAI's message and code."""
    if not isinstance(params, dict):
        raise SpeechInvalid("We could not parse the JSON body of your request.", None, None)
    for key in params:
        if key not in SPEECH_PARAMS:
            raise SpeechInvalid(f"Unrecognized request argument supplied: {key}", None, None)
    for key in ("model", "input", "voice"):
        if key not in params:
            raise SpeechInvalid(f"Missing required parameter: '{key}'.", key, "missing_required_parameter")
    model, text, voice = params["model"], params["input"], params["voice"]
    if model not in SPEECH_MODELS:
        raise _invalid_value("model", model, SPEECH_MODELS)
    if not isinstance(text, str):
        raise SpeechInvalid(f"Invalid type for 'input': expected a string, but got {type(text).__name__} instead.",
                            "input", "invalid_type")
    if len(text) > MAX_INPUT_CHARS:
        raise SpeechInvalid(f"Invalid 'input': string too long. Expected a string with maximum length "
                            f"{MAX_INPUT_CHARS}, but got a string with length {len(text)} instead.",
                            "input", "string_above_max_length")
    if isinstance(voice, dict) and isinstance(voice.get("id"), str):
        pass  # a custom voice
    elif voice not in VOICES:
        raise _invalid_value("voice", voice, VOICES)
    fmt = params.get("response_format", "mp3")
    if fmt not in FORMATS:
        raise _invalid_value("response_format", fmt, FORMATS)
    speed = params.get("speed", 1.0)
    if isinstance(speed, bool) or not isinstance(speed, int | float):
        raise SpeechInvalid("Invalid type for 'speed': expected a decimal.", "speed", "invalid_type")
    if speed < 0.25:
        raise SpeechInvalid(f"Invalid 'speed': decimal below minimum value. Expected a value >= 0.25, but got "
                            f"{speed} instead.", "speed", "decimal_below_min_value")
    if speed > 4.0:
        raise SpeechInvalid(f"Invalid 'speed': decimal above maximum value. Expected a value <= 4, but got "
                            f"{speed} instead.", "speed", "decimal_above_max_value")
    if "instructions" in params and model in ("tts-1", "tts-1-hd"):
        raise SpeechInvalid("Instructions are not supported for tts-1 and tts-1-hd.", "instructions", None)
    stream_format = params.get("stream_format", "audio")
    if stream_format not in ("audio", "sse"):
        raise _invalid_value("stream_format", stream_format, ("sse", "audio"))
    if stream_format == "sse":
        raise SpeechInvalid("stream_format 'sse' is not supported by this fake.", "stream_format", None)
    return {"model": model, "input": text, "voice": voice, "response_format": fmt, "speed": float(speed)}


def duration_s(text: str, speed: float) -> float:
    return max(0.1, len(text) * SECONDS_PER_CHAR / speed)


def pcm_tone(seconds: float) -> bytes:
    count = int(SAMPLE_RATE * seconds)
    samples = array("h", (int(6000 * math.sin(2 * math.pi * 220 * i / SAMPLE_RATE)) for i in range(count)))
    return samples.tobytes()


def wav_of(pcm: bytes, rate: int = SAMPLE_RATE) -> bytes:
    header = struct.pack("<4sI4s4sIHHIIHH4sI", b"RIFF", 36 + len(pcm), b"WAVE", b"fmt ", 16, 1, 1, rate,
                         rate * 2, 2, 16, b"data", len(pcm))
    return header + pcm


_MP3_FRAME = bytes([0xFF, 0xFB, 0x94, 0xC0]) + bytes(384 - 4)
"""One silent MPEG-1 Layer III frame: 128 kbit/s, 48 kHz, mono, all-zero side info (1152 samples)."""


def audio_for(request: dict[str, Any]) -> bytes:
    seconds = duration_s(request["input"], request["speed"])
    fmt = request["response_format"]
    if fmt in ("wav", "pcm"):
        pcm = pcm_tone(seconds)
        return wav_of(pcm) if fmt == "wav" else pcm
    if fmt == "mp3":
        return _MP3_FRAME * max(1, round(seconds * 48_000 / 1152))
    signature = {"opus": b"OggS", "aac": b"\xff\xf1", "flac": b"fLaC"}[fmt]
    return signature + bytes(1024)


async def chunked(data: bytes, size: int = 16_384) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i:i + size]
