"""An in-process storage for tests and throwaway runs: same contract, nothing touches disk."""

from __future__ import annotations

from apiinone.storage.base import StoredObject
from apiinone.storage.filesystem import normalize_content_type, validate_key

__all__ = ["MemoryStorage"]


class MemoryStorage:
    """Keeps objects in a dict; validates keys like the real backends so tests catch bad keys."""

    def __init__(self) -> None:
        self._objects: dict[str, StoredObject] = {}

    async def put(self, key: str, data: bytes, content_type: str) -> None:
        validate_key(key)
        self._objects[key] = StoredObject(data=bytes(data), content_type=normalize_content_type(content_type))

    async def get(self, key: str) -> StoredObject | None:
        validate_key(key)
        return self._objects.get(key)

    async def delete(self, key: str) -> None:
        validate_key(key)
        self._objects.pop(key, None)

    def public_url(self, key: str) -> str | None:
        """Always None: the app serves ``/files/{key}`` itself."""
        validate_key(key)
        return None

    def keys(self) -> list[str]:
        """Stored keys, sorted (for test assertions)."""
        return sorted(self._objects)

    def __len__(self) -> int:
        return len(self._objects)
