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
