"""Download a user-supplied input image safely before it goes to a provider.

The URL is user-controlled, so the download is bounded in bytes and time, never follows
redirects, and trusts only the bytes: the type comes from magic numbers (not Content-Type) and
Pillow must accept the image's header and structure without a full decode, with a pixel cap
against decompression bombs. Network safety comes from the client's transport, which must be
built with :func:`apiinone.net.egress.guarded_transport`.
"""

from __future__ import annotations

import asyncio
import io
import warnings
from dataclasses import dataclass

import httpx

from apiinone.net.egress import UrlNotAllowed
from apiinone.params import ascii_int


@dataclass(frozen=True, slots=True)
class InputImage:
    """An input image already fetched through the egress guard and sniffed."""

    data: bytes
    content_type: str  # image/png, image/jpeg or image/webp
    filename: str = "image.png"

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_PIXELS",
    "InputFetchError",
    "fetch_input_image",
    "sniff_image_type",
]

DEFAULT_MAX_BYTES = 20 * 1024 * 1024
DEFAULT_MAX_PIXELS = 50_000_000

# content type -> (Pillow format name, file extension)
_FORMATS: dict[str, tuple[str, str]] = {
    "image/png": ("PNG", "png"),
    "image/jpeg": ("JPEG", "jpg"),
    "image/webp": ("WEBP", "webp"),
}


class InputFetchError(Exception):
    """An input image could not be used; ``message`` is safe to show to the API user."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def sniff_image_type(data: bytes) -> str | None:
    """PNG, JPEG or WebP from magic bytes; the server's Content-Type header is not trusted."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


async def _download(client: httpx.AsyncClient, url: str, max_bytes: int) -> bytes:
    headers = {"Accept": "image/png, image/jpeg, image/webp", "Accept-Encoding": "identity"}
    async with client.stream("GET", url, headers=headers, follow_redirects=False) as response:
        if response.is_redirect or 300 <= response.status_code < 400:
            raise InputFetchError("input image URL redirects; redirects are not followed")
        if response.status_code != 200:
            raise InputFetchError(f"input image URL answered HTTP {response.status_code}")
        # Raw bytes only: a compressed body could inflate far past the cap inside one chunk.
        encoding = response.headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            raise InputFetchError("input image must not be sent with a content encoding")
        length = ascii_int(response.headers.get("content-length", "").strip())
        if length is not None and length > max_bytes:
            raise InputFetchError(f"input image is larger than {max_bytes} bytes")
        buffer = bytearray()
        async for chunk in response.aiter_raw():
            buffer += chunk
            if len(buffer) > max_bytes:
                raise InputFetchError(f"input image is larger than {max_bytes} bytes")
        return bytes(buffer)


def _check_image(data: bytes, pillow_format: str, max_pixels: int) -> None:
    """Parse header and structure only; ``verify()`` never decodes the pixel data."""
    from PIL import Image  # imported on first use: it weighs on the idle server's memory

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=[pillow_format]) as image:
                width, height = image.size
                if width <= 0 or height <= 0:
                    raise InputFetchError("input image has no pixels")
                if width * height > max_pixels:
                    raise InputFetchError(f"input image is larger than {max_pixels} pixels")
                image.verify()
    except InputFetchError:
        raise
    except Exception as exc:  # Pillow raises many types on hostile input
        raise InputFetchError("input image is damaged or not a supported image") from exc


async def fetch_input_image(
    client: httpx.AsyncClient,
    url: str,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    total_timeout_s: float = 30.0,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> InputImage:
    """Download, sniff and verify one input image, or raise :class:`InputFetchError`."""
    try:
        async with asyncio.timeout(total_timeout_s):
            data = await _download(client, url, max_bytes)
    except InputFetchError:
        raise
    except UrlNotAllowed as exc:
        raise InputFetchError(f"input image URL is not allowed: {exc.message}") from exc
    except TimeoutError as exc:
        raise InputFetchError(f"downloading the input image took longer than {total_timeout_s:g} s") from exc
    except httpx.TimeoutException as exc:
        raise InputFetchError("downloading the input image timed out") from exc
    except httpx.UnsupportedProtocol as exc:
        raise InputFetchError("input image URL must be http or https") from exc
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        raise InputFetchError("could not download the input image") from exc

    content_type = sniff_image_type(data)
    if content_type is None:
        raise InputFetchError("input image must be PNG, JPEG or WebP")
    pillow_format, extension = _FORMATS[content_type]
    await asyncio.to_thread(_check_image, data, pillow_format, max_pixels)
    return InputImage(data=data, content_type=content_type, filename=f"image.{extension}")


# --------------------------------------------------------------------------- media results

DEFAULT_MAX_RESULT_BYTES = 512 * 1024 * 1024


def sniff_media_type(data: bytes) -> str | None:
    """A video, audio or image type from magic bytes (what the bytes are, whatever the header said)."""
    head = data[:16]
    if len(head) >= 12 and head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in (b"M4A ", b"M4B "):
            return "audio/mp4"
        if brand == b"qt  ":
            return "video/quicktime"
        return "video/mp4"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "video/webm"
    if len(head) >= 12 and head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return "audio/wav"
    if head.startswith(b"ID3") or (len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0):
        return "audio/mpeg"
    if head.startswith(b"OggS"):
        return "audio/ogg"
    if head.startswith(b"fLaC"):
        return "audio/flac"
    return sniff_image_type(data)


MAX_RESULT_REDIRECTS = 3


async def _download_result(client: httpx.AsyncClient, url: str, send: dict[str, str], accept: tuple[str, ...],
                           max_bytes: int) -> bytearray:
    origin = httpx.URL(url).copy_with(path="/", query=None, fragment=None)
    for _hop in range(MAX_RESULT_REDIRECTS + 1):
        async with client.stream("GET", url, headers=send, follow_redirects=False) as response:
            if 300 <= response.status_code < 400 and response.headers.get("location"):
                target = httpx.URL(url).join(response.headers["location"])
                if target.scheme not in ("http", "https"):
                    raise InputFetchError("the result URL redirects to a non-http URL")
                if target.copy_with(path="/", query=None, fragment=None) != origin:
                    send = {k: v for k, v in send.items() if k in ("Accept", "Accept-Encoding")}
                url = str(target)
                continue
            if response.status_code != 200:
                raise InputFetchError(f"the result URL answered HTTP {response.status_code}")
            encoding = response.headers.get("content-encoding", "identity").strip().lower()
            if encoding not in ("", "identity"):
                raise InputFetchError("the result was sent with a content encoding")
            declared = response.headers.get("content-type", "").split(";", 1)[0].strip().lower()
            families = {a.split("/", 1)[0] for a in accept}
            if declared and declared != "application/octet-stream" and declared.split("/", 1)[0] not in families:
                raise InputFetchError(f"the result is {declared}, not one of {', '.join(accept)}")
            length = response.headers.get("content-length", "").strip()
            if length.isdigit() and int(length) > max_bytes:
                raise InputFetchError(f"the result is larger than {max_bytes} bytes")
            buffer = bytearray()
            async for chunk in response.aiter_raw():
                buffer += chunk
                if len(buffer) > max_bytes:
                    raise InputFetchError(f"the result is larger than {max_bytes} bytes")
            return buffer
    raise InputFetchError("the result URL redirects too often")


async def fetch_result_file(client: httpx.AsyncClient, url: str, *, accept: tuple[str, ...],
                            headers: dict[str, str] | None = None, max_bytes: int = DEFAULT_MAX_RESULT_BYTES,
                            total_timeout_s: float = 600.0) -> tuple[bytes, str]:
    """Stream an upstream's result file (a video, a song) through the egress guard: at most
    ``max_bytes`` (refused as soon as the count passes it), no content encoding, and its sniffed
    type must be one of ``accept``. Up to :data:`MAX_RESULT_REDIRECTS` redirects are followed (file
    downloads redirect to storage), each checked by the guard again; ``headers`` (an upstream key)
    go only to the origin they were given for. Returns the bytes and their type."""
    send = {"Accept": ", ".join(accept), "Accept-Encoding": "identity", **(headers or {})}
    try:
        async with asyncio.timeout(total_timeout_s):
            buffer = await _download_result(client, url, send, accept, max_bytes)
    except InputFetchError:
        raise
    except UrlNotAllowed as exc:
        raise InputFetchError(f"the result URL is not allowed: {exc.message}") from exc
    except (TimeoutError, httpx.TimeoutException) as exc:
        raise InputFetchError("downloading the result timed out") from exc
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        raise InputFetchError("could not download the result") from exc
    sniffed = sniff_media_type(bytes(buffer[:16]))
    if sniffed not in accept:
        raise InputFetchError(f"the result is not one of {', '.join(accept)}")
    return bytes(buffer), sniffed
