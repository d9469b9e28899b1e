"""Storage backends for generated images, and the helpers that name and pick them."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from apiinone.storage.base import Storage, StoredObject
from apiinone.storage.filesystem import FileSystemStorage, normalize_content_type, validate_key
from apiinone.storage.memory import MemoryStorage

if TYPE_CHECKING:
    from apiinone.storage.s3 import S3Options

__all__ = [
    "FileSystemStorage",
    "MemoryStorage",
    "Storage",
    "StoredObject",
    "new_image_key",
    "storage_from_url",
    "validate_key",
]

_EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp", "image/gif": "gif",
               "video/mp4": "mp4", "video/webm": "webm", "video/quicktime": "mov", "audio/mpeg": "mp3",
               "audio/wav": "wav", "audio/mp4": "m4a", "audio/ogg": "ogg", "audio/flac": "flac"}


def new_image_key(content_type: str) -> str:
    """A fresh, unguessable key such as ``Ab/AbX...Q.png``.

    The URL of an image is its only credential (served without an API key), so the name carries
    192 random bits; the two-character shard directory keeps any one directory small.
    """
    ext = _EXTENSIONS.get(normalize_content_type(content_type), "bin")
    token = secrets.token_urlsafe(24)  # 32 characters of [A-Za-z0-9_-]
    return f"{token[:2]}/{token}.{ext}"


def storage_from_url(url: str, *, s3: S3Options | None = None, fsync: bool = True) -> Storage:
    """Builds the backend ``APIINONE_STORAGE_URL`` names.

    ``file:///abs/path`` (also ``file://./relative`` and a bare path), ``memory://``, and
    ``s3://bucket/prefix`` (endpoint and credentials in ``s3``, from the ``APIINONE_S3_*`` settings).
    ``fsync`` makes file storage flush each image to disk before it is renamed into place.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "memory":
        return MemoryStorage()
    if scheme == "file":
        host = parts.netloc
        if host in ("", "localhost"):
            path = unquote(parts.path)
        elif host in (".", "..", "~"):
            path = host + unquote(parts.path)
        else:
            raise ValueError(f"file storage URL must be file:///absolute/path, got {url!r}")
        if not path or path == "/":
            raise ValueError(f"file storage URL needs a directory, got {url!r}")
        return FileSystemStorage(Path(path), fsync=fsync)
    if scheme == "s3":
        from apiinone.storage.s3 import S3Options, S3Storage

        return S3Storage(parts.netloc, unquote(parts.path), s3 or S3Options())
    if scheme == "" and url.strip():
        return FileSystemStorage(Path(url), fsync=fsync)
    raise ValueError(f"unsupported storage URL {url!r}: use file:///path, s3://bucket/prefix or memory://")
