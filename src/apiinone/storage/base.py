"""Where generated images live. Keys are unguessable; URLs are served without an API key."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class StoredObject:
    data: bytes
    content_type: str


class Storage(Protocol):
    async def put(self, key: str, data: bytes, content_type: str) -> None: ...

    async def get(self, key: str) -> StoredObject | None: ...

    async def delete(self, key: str) -> None: ...

    def public_url(self, key: str) -> str | None:
        """A direct URL (e.g. presigned S3) or None when the app itself serves ``/files/{key}``."""
        ...
