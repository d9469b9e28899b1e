"""Storage backends and key helpers: roundtrips, key validation, atomic writes, unguessable keys."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from apiinone.storage import (
    FileSystemStorage,
    MemoryStorage,
    Storage,
    new_image_key,
    storage_from_url,
    validate_key,
)
from apiinone.storage.s3 import S3Storage

BAD_KEYS = [
    "",
    "../etc/passwd",
    "ab/../../secret.png",
    "ab/..",
    "/etc/passwd",
    "ab//cd.png",
    "ab/cd.png/",
    ".hidden.png",
    "ab/.tmp-x.part",
    "ab\\cd.png",
    "ab/cd?.png",
    "ab/c d.png",
    "ab/ü.png",
    "x" * 600,
]


def make_fs(tmp_path: Path) -> Storage:
    return FileSystemStorage(tmp_path / "files")


def make_mem(tmp_path: Path) -> Storage:
    return MemoryStorage()


BACKENDS = pytest.mark.parametrize("make", [make_fs, make_mem], ids=["filesystem", "memory"])


@BACKENDS
async def test_put_get_delete_roundtrip(make: Callable[[Path], Storage], tmp_path: Path) -> None:
    storage = make(tmp_path)
    key = new_image_key("image/png")
    data = b"\x89PNG\r\n\x1a\n" + os.urandom(1000)
    assert await storage.get(key) is None
    await storage.put(key, data, "image/png")
    obj = await storage.get(key)
    assert obj is not None
    assert obj.data == data
    assert obj.content_type == "image/png"
    await storage.put(key, b"replaced", "image/png")
    obj = await storage.get(key)
    assert obj is not None and obj.data == b"replaced"
    await storage.delete(key)
    assert await storage.get(key) is None
    await storage.delete(key)  # deleting twice is fine
    assert storage.public_url(key) is None


@BACKENDS
async def test_content_types(make: Callable[[Path], Storage], tmp_path: Path) -> None:
    storage = make(tmp_path)
    for ctype in ("image/jpeg", "image/webp", "image/png"):
        key = new_image_key(ctype)
        await storage.put(key, b"x", ctype)
        obj = await storage.get(key)
        assert obj is not None and obj.content_type == ctype
    await storage.put("meta/task.bin", b"{}", "application/json")
    obj = await storage.get("meta/task.bin")
    assert obj is not None and obj.content_type == "application/json"


@BACKENDS
@pytest.mark.parametrize("key", BAD_KEYS)
async def test_key_validation_rejects_traversal(
    make: Callable[[Path], Storage], tmp_path: Path, key: str
) -> None:
    storage = make(tmp_path)
    with pytest.raises(ValueError):
        await storage.put(key, b"x", "image/png")
    with pytest.raises(ValueError):
        await storage.get(key)
    with pytest.raises(ValueError):
        await storage.delete(key)
    assert not (tmp_path / "etc").exists()
    assert not (tmp_path / "secret.png").exists()


def test_validate_key_accepts_generated_keys() -> None:
    for _ in range(200):
        key = new_image_key("image/webp")
        assert validate_key(key) == key


async def test_filesystem_writes_atomically_into_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "files"
    storage = FileSystemStorage(root)
    key = new_image_key("image/png")
    await storage.put(key, b"first", "image/png")
    target = root / key
    assert target.read_bytes() == b"first"
    assert target.resolve().is_relative_to(root.resolve())

    # The data goes through a temp file in the same directory and one os.replace onto the target.
    calls: list[tuple[str, str]] = []
    real_replace = os.replace

    def spy(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        calls.append((str(src), str(dst)))
        assert target.read_bytes() == b"first"  # the old content stays whole until the rename
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    await storage.put(key, b"second", "image/png")
    assert len(calls) == 1
    src, dst = calls[0]
    assert Path(dst) == target
    assert Path(src).parent == target.parent and Path(src).name.startswith(".tmp-")
    assert target.read_bytes() == b"second"
    # No temp files are left behind.
    assert sorted(p.name for p in target.parent.iterdir()) == [target.name]


async def test_filesystem_failed_write_leaves_old_file_and_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = FileSystemStorage(tmp_path)
    await storage.put("ab/x.png", b"good", "image/png")

    def boom(src: object, dst: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        await storage.put("ab/x.png", b"bad", "image/png")
    assert (tmp_path / "ab" / "x.png").read_bytes() == b"good"
    assert [p.name for p in (tmp_path / "ab").iterdir()] == ["x.png"]


@pytest.mark.parametrize("fsync", [False, True])
async def test_filesystem_fsync_is_a_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fsync: bool) -> None:
    flushed: list[int] = []
    real_fsync = os.fsync

    def spy(fd: int) -> None:
        flushed.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    storage = storage_from_url(f"file://{tmp_path}", fsync=fsync)
    await storage.put("ab/x.png", b"x", "image/png")
    assert (tmp_path / "ab" / "x.png").read_bytes() == b"x"
    assert len(flushed) == (1 if fsync else 0)


async def test_filesystem_makes_a_removed_directory_again(tmp_path: Path) -> None:
    storage = FileSystemStorage(tmp_path)
    await storage.put("ab/x.png", b"x", "image/png")
    (tmp_path / "ab" / "x.png").unlink()
    (tmp_path / "ab").rmdir()  # removed behind the storage's back (e.g. a retention sweep)
    await storage.put("ab/y.png", b"y", "image/png")
    assert (tmp_path / "ab" / "y.png").read_bytes() == b"y"


async def test_filesystem_rejects_mismatched_content_type(tmp_path: Path) -> None:
    storage = FileSystemStorage(tmp_path)
    with pytest.raises(ValueError):
        await storage.put("ab/x.png", b"x", "image/jpeg")
    await storage.put("ab/x.jpg", b"x", "image/JPG; charset=binary")
    obj = await storage.get("ab/x.jpg")
    assert obj is not None and obj.content_type == "image/jpeg"


async def test_filesystem_get_of_a_directory_is_none(tmp_path: Path) -> None:
    storage = FileSystemStorage(tmp_path)
    await storage.put("ab/x.png", b"x", "image/png")
    assert await storage.get("ab") is None
    assert await storage.get("ab/x.png/y.png") is None


def test_new_image_key_is_unique_and_unguessable() -> None:
    keys = {new_image_key("image/png") for _ in range(5000)}
    assert len(keys) == 5000
    for key in list(keys)[:50]:
        m = re.fullmatch(r"([A-Za-z0-9_-]{2})/([A-Za-z0-9_-]{32})\.png", key)
        assert m is not None, key
        assert m.group(2).startswith(m.group(1))  # shard dir = first two characters
    assert new_image_key("image/jpeg").endswith(".jpg")
    assert new_image_key("image/webp").endswith(".webp")


def test_storage_from_url(tmp_path: Path) -> None:
    fs = storage_from_url(f"file://{tmp_path}/files")
    assert isinstance(fs, FileSystemStorage)
    assert fs.root == (tmp_path / "files").resolve()
    assert isinstance(storage_from_url("memory://"), MemoryStorage)
    rel = storage_from_url("file://./data/files")
    assert isinstance(rel, FileSystemStorage)
    assert rel.root == (Path.cwd() / "data" / "files").resolve()
    s3 = storage_from_url("s3://bucket/some/prefix")
    assert isinstance(s3, S3Storage) and (s3.bucket, s3.prefix) == ("bucket", "some/prefix/")
    with pytest.raises(ValueError):
        storage_from_url("ftp://example.com/x")
    with pytest.raises(ValueError):
        storage_from_url("file://otherhost/x")
