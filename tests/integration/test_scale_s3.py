"""S3 storage against a real S3-compatible server on loopback (moto's server mode), through boto3:
objects, presigned URLs, public URLs, retention, and the app serving task images from a bucket."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import boto3
import httpx
import pytest
from moto.server import ThreadedMotoServer

from apiinone.storage import new_image_key, storage_from_url
from apiinone.storage.s3 import S3Options, S3Storage
from tests.conftest import AppHarness, make_settings

pytestmark = pytest.mark.scale

PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 64


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def options(s3_endpoint: str) -> S3Options:
    return S3Options(endpoint_url=s3_endpoint, region="us-east-1", access_key_id="test", secret_access_key="test",
                     addressing_style="path")


@pytest.fixture
def bucket(options: S3Options) -> str:
    name = f"apiinone-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=options.endpoint_url, region_name="us-east-1", aws_access_key_id="test",
                 aws_secret_access_key="test").create_bucket(Bucket=name)
    return name


async def test_put_get_delete_round_trip(bucket: str, options: S3Options) -> None:
    storage = storage_from_url(f"s3://{bucket}/images/v1", s3=options)
    assert isinstance(storage, S3Storage)
    key = new_image_key("image/png")
    await storage.put(key, PNG, "image/png")
    obj = await storage.get(key)
    assert obj is not None and (obj.data, obj.content_type) == (PNG, "image/png")
    head = storage.client.head_object(Bucket=bucket, Key=f"images/v1/{key}")
    assert "immutable" in head["CacheControl"]
    assert storage.public_url(key) is None, "proxied through /files by default"
    await storage.delete(key)
    assert await storage.get(key) is None
    await storage.delete(key)  # a missing key is not an error
    with pytest.raises(ValueError):
        await storage.put("../escape.png", PNG, "image/png")
    with pytest.raises(ValueError):
        await storage.put("ab/x.png", PNG, "image/jpeg")


async def test_presigned_and_public_urls_serve_the_bytes(bucket: str, options: S3Options) -> None:
    storage = S3Storage(bucket, "p", options)
    key = new_image_key("image/png")
    await storage.put(key, PNG, "image/png")
    async with httpx.AsyncClient() as client:
        signed = await client.get(storage.presigned_url(key, 60))
        assert signed.status_code == 200 and signed.content == PNG
        assert "X-Amz-Signature" in storage.presigned_url(key, 60)
    public = S3Storage(bucket, "p", S3Options(public_url="https://cdn.example.com/img/"))
    assert public.public_url(key) == f"https://cdn.example.com/img/p/{key}"


async def test_retention_deletes_only_old_objects_under_the_prefix(bucket: str, options: S3Options) -> None:
    storage = S3Storage(bucket, "kept-for-a-while", options)
    other = S3Storage(bucket, "other", options)
    keys = [new_image_key("image/png") for _ in range(3)]
    for key in keys:
        await storage.put(key, PNG, "image/png")
    await other.put(keys[0], PNG, "image/png")
    assert await storage.purge_older_than(1) == 0, "nothing is a day old yet"
    later = datetime.now(UTC) + timedelta(days=2)
    assert await storage.purge_older_than(1, now=later) == 3
    assert [await storage.get(k) for k in keys] == [None, None, None]
    assert await other.get(keys[0]) is not None, "another prefix is not touched"


async def test_app_serves_task_images_from_the_bucket(tmp_path: Path, sqlite_url: str, bucket: str,
                                                      s3_endpoint: str) -> None:
    common = {"storage_url": f"s3://{bucket}/tasks", "s3_endpoint_url": s3_endpoint, "s3_access_key_id": "test",
              "s3_secret_access_key": "test", "s3_addressing_style": "path"}
    async with AppHarness(make_settings(tmp_path, sqlite_url, **common)) as h:
        caller = await h.caller()
        r = await caller.post("/api/v1/images/generations", json={"model": "local-typeset", "prompt": "S3 works"})
        done = await caller.wait_for(r.json()["task_id"])
        assert done["status"] == "succeeded", done
        url = done["output"]["images"][0]["url"]
        assert url.startswith("http://testserver/files/")
        image = await h.client.get(url.removeprefix("http://testserver"))
        assert image.status_code == 200 and image.content[:8] == PNG[:8]
        key = url.removeprefix("http://testserver/files/")
        stored = h.container.storage
        assert isinstance(stored, S3Storage)
        assert stored.client.head_object(Bucket=bucket, Key=f"tasks/{key}")["ContentLength"] == len(image.content)
    async with AppHarness(make_settings(tmp_path, sqlite_url, s3_presign_s=120, **common)) as h:
        redirect = await h.client.get(f"/files/{key}")
        assert redirect.status_code == 307
        async with httpx.AsyncClient() as client:
            direct = await client.get(redirect.headers["location"])
        assert direct.status_code == 200 and direct.content == image.content
