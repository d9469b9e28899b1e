"""Images in S3-compatible object storage (AWS S3, MinIO, Ceph, R2, ...), through boto3.

Selected by ``APIINONE_STORAGE_URL=s3://bucket/prefix`` with the ``APIINONE_S3_*`` settings. boto3
is blocking, so every call runs in a worker thread (boto3 clients are thread-safe) and never stalls
the event loop. How clients fetch the images:

* default: proxied, ``/files/{key}`` on any API process reads the object from the bucket;
* ``APIINONE_S3_PRESIGN_S=N``: ``/files/{key}`` redirects to a presigned GET URL valid N seconds,
  so the bytes come straight from the bucket while the URL stored on the task never expires;
* ``APIINONE_S3_PUBLIC_URL=https://cdn.example.com/images``: image URLs point there directly (a
  public bucket or a CDN in front of it).

Retention: ``purge_older_than`` deletes objects under the prefix older than N days (``apiinone
storage purge``); where the store supports it, a bucket lifecycle rule does the same with no job.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any, Literal

from apiinone.storage.base import StoredObject
from apiinone.storage.filesystem import content_type_for_key, normalize_content_type, validate_key

if TYPE_CHECKING:
    from apiinone.config import Settings

__all__ = ["S3Options", "S3Storage"]

_DELETE_BATCH = 1000  # the most keys one DeleteObjects call takes


@dataclass(frozen=True, slots=True)
class S3Options:
    endpoint_url: str | None = None
    region: str = "us-east-1"
    access_key_id: str | None = None
    secret_access_key: str | None = None
    addressing_style: Literal["auto", "path", "virtual"] = "auto"
    presign_s: int = 0
    public_url: str | None = None

    @staticmethod
    def from_settings(settings: Settings) -> S3Options:
        return S3Options(
            endpoint_url=settings.s3_endpoint_url, region=settings.s3_region,
            access_key_id=settings.s3_access_key_id, secret_access_key=settings.s3_secret_access_key,
            addressing_style=settings.s3_addressing_style, presign_s=settings.s3_presign_s,
            public_url=settings.s3_public_url,
        )


class S3Storage:
    """Objects live at ``{prefix}{key}`` in ``bucket``; keys are validated like on the file system."""

    def __init__(self, bucket: str, prefix: str = "", options: S3Options | None = None) -> None:
        if not bucket:
            raise ValueError("s3 storage needs a bucket: s3://bucket/prefix")
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.options = options or S3Options()

    @property
    def presign_s(self) -> int:
        return self.options.presign_s

    @cached_property
    def client(self) -> Any:
        """Created on first use (creating a boto3 client reads config files and takes ~100 ms)."""
        import boto3
        from botocore.config import Config

        o = self.options
        return boto3.session.Session().client(
            "s3", endpoint_url=o.endpoint_url, region_name=o.region,
            aws_access_key_id=o.access_key_id, aws_secret_access_key=o.secret_access_key,
            config=Config(s3={"addressing_style": o.addressing_style}, signature_version="s3v4",
                          retries={"max_attempts": 3, "mode": "standard"}, max_pool_connections=32,
                          connect_timeout=5, read_timeout=30),
        )

    def object_key(self, key: str) -> str:
        return self.prefix + validate_key(key)

    async def put(self, key: str, data: bytes, content_type: str) -> None:
        ctype = normalize_content_type(content_type)
        implied = content_type_for_key(key)
        if implied is not None and implied != ctype:
            raise ValueError(f"content type {ctype!r} does not match the extension of {key!r}")
        await asyncio.to_thread(
            self.client.put_object, Bucket=self.bucket, Key=self.object_key(key), Body=data, ContentType=ctype,
            CacheControl="public, max-age=31536000, immutable",
        )

    async def get(self, key: str) -> StoredObject | None:
        return await asyncio.to_thread(self._get_sync, self.object_key(key))

    def _get_sync(self, object_key: str) -> StoredObject | None:
        client = self.client
        try:
            response = client.get_object(Bucket=self.bucket, Key=object_key)
        except client.exceptions.NoSuchKey:
            return None
        with response["Body"] as body:
            data = body.read()
        return StoredObject(data=data, content_type=response.get("ContentType") or "application/octet-stream")

    async def delete(self, key: str) -> None:
        """Removes the object; deleting a missing key is not an error (S3 semantics agree)."""
        await asyncio.to_thread(self.client.delete_object, Bucket=self.bucket, Key=self.object_key(key))

    def public_url(self, key: str) -> str | None:
        """A direct URL when a public base is configured, else None: ``/files/{key}`` serves it."""
        object_key = self.object_key(key)
        if self.options.public_url:
            return f"{self.options.public_url.rstrip('/')}/{object_key}"
        return None

    def presigned_url(self, key: str, expires_s: int | None = None) -> str:
        """A GET URL for the object signed for ``expires_s`` (computed locally: no network call)."""
        url: str = self.client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": self.object_key(key)},
            ExpiresIn=expires_s or self.options.presign_s or 3600,
        )
        return url

    async def purge_older_than(self, days: float, *, now: datetime | None = None) -> int:
        """Deletes every object under the prefix last modified more than ``days`` ago; returns how many."""
        cutoff = (now or datetime.now(UTC)) - timedelta(days=days)
        return await asyncio.to_thread(self._purge_sync, cutoff)

    def _purge_sync(self, cutoff: datetime) -> int:
        client = self.client
        old: list[str] = []
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix):
            old += [obj["Key"] for obj in page.get("Contents", ()) if obj["LastModified"] < cutoff]
        for start in range(0, len(old), _DELETE_BATCH):
            batch = old[start:start + _DELETE_BATCH]
            client.delete_objects(Bucket=self.bucket,
                                  Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True})
        return len(old)
