"""Fault injection: an upstream that hangs, resets mid-body or answers garbage, and a full disk
under the storage. Each ends in a clear task error (or a clean 503 before any task exists), with
nothing charged and nothing lost: the task is terminal, its hold released, the ledger balanced."""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from apiinone.storage.base import StoredObject
from tests.conftest import AppHarness, Caller, make_settings
from tests.fakes.fake_openai import FakeOpenAI

GPT = {"model": "gpt-image-1.5-official", "prompt": "Bean & Brew", "quality": "medium"}
TYPESET = {"model": "local-typeset", "prompt": "Bean & Brew", "quality": "medium"}


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as upstream:
        yield upstream


@pytest.fixture
async def harness_on_fake(tmp_path: Path, sqlite_url: str, fake: FakeOpenAI) -> AsyncIterator[AppHarness]:
    settings = make_settings(tmp_path, sqlite_url, openai_api_key=fake.api_key, openai_base_url=fake.base_url,
                             openai_timeout_s=1.0, openai_max_retries=1, openai_backoff_s=0.01)
    async with AppHarness(settings) as h:
        yield h


async def _money(caller: Caller) -> tuple[Any, dict[str, int]]:
    credits = (await caller.get("/api/v1/account")).json()["credits"]
    entries = (await caller.get("/api/v1/account/ledger", params={"limit": 100})).json()["data"]
    kinds: dict[str, int] = {}
    for entry in entries:
        kinds[entry["kind"]] = kinds.get(entry["kind"], 0) + 1
    return credits, kinds


async def _assert_failed_cleanly(caller: Caller, task: dict[str, Any], before: Any) -> dict[str, Any]:
    done = await caller.wait_for(task["task_id"], timeout=60)
    assert done["status"] == "failed", done
    assert done["error"]["code"] in ("upstream_error", "timeout", "internal_error", "storage_error"), done
    assert done["error"]["message"] and done["credits"]["charged"] == 0 and done["output"] is None
    credits, kinds = await _money(caller)
    assert credits == before, "a failed task must cost nothing"
    assert kinds.get("hold") == kinds.get("release") == 1 and "capture" not in kinds, kinds
    return done


@pytest.mark.parametrize("fault", ["hang", "reset", "garbage", "bad_image"])
async def test_misbehaving_upstream_fails_the_task_cleanly(harness_on_fake: AppHarness, fake: FakeOpenAI,
                                                           fault: str) -> None:
    caller = await harness_on_fake.caller(credits=100)
    before = (await caller.get("/api/v1/account")).json()["credits"]
    fake.fault_next(fault, count=10)  # every attempt, on every retry
    r = await caller.post("/api/v1/images/generations", json=GPT)
    assert r.status_code == 202, r.text
    await _assert_failed_cleanly(caller, r.json(), before)
    # the upstream recovers: the next task succeeds and is charged once
    fake.state.failures.clear()
    ok = await caller.post("/api/v1/images/generations", json=GPT)
    assert (await caller.wait_for(ok.json()["task_id"], timeout=60))["status"] == "succeeded"


@pytest.mark.parametrize("fault", ["reset", "garbage"])
async def test_misbehaving_upstream_on_the_synchronous_v1_route(harness_on_fake: AppHarness, fake: FakeOpenAI,
                                                                fault: str) -> None:
    caller = await harness_on_fake.caller(credits=100)
    before = (await caller.get("/api/v1/account")).json()["credits"]
    fake.fault_next(fault, count=10)
    r = await caller.post("/v1/images/generations", json={"model": "gpt-image-1.5-official", "prompt": "x"})
    assert r.status_code in (502, 504), r.text
    assert r.json()["error"]["type"] == "server_error" and r.headers["x-task-id"]
    assert (await caller.get("/api/v1/account")).json()["credits"] == before


# --- a full disk under the storage ---------------------------------------------------------


class FullDisk:
    """Storage whose disk is full: every write fails with ENOSPC, reads still work."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    async def put(self, key: str, data: bytes, content_type: str) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), key)

    async def get(self, key: str) -> StoredObject | None:
        result: StoredObject | None = await self.inner.get(key)
        return result

    async def delete(self, key: str) -> None:
        await self.inner.delete(key)

    def public_url(self, key: str) -> str | None:
        url: str | None = self.inner.public_url(key)
        return url


@contextlib.contextmanager
def tiny_tmpfs(path: Path) -> Iterator[bool]:
    """A 256 KiB tmpfs filled to the brim, where the machine lets us mount one (else False)."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(path)],
                             capture_output=True, check=False).returncode == 0
    try:
        if mounted:
            with contextlib.suppress(OSError), (path / "filler").open("wb") as filler:
                while True:
                    filler.write(b"\0" * 4096)
                    filler.flush()
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


@pytest.fixture(params=["enospc-fake", "tmpfs"])
async def full_disk(request: pytest.FixtureRequest, tmp_path: Path, sqlite_url: str) -> AsyncIterator[AppHarness]:
    files = tmp_path / "files"
    with tiny_tmpfs(files) if request.param == "tmpfs" else contextlib.nullcontext(False) as mounted:
        settings = make_settings(tmp_path, sqlite_url, storage_url=f"file://{files}", storage_fsync=False)
        h = AppHarness(settings)
        if not mounted:  # no mount here: the same fault from a storage that says ENOSPC
            h.container.storage = FullDisk(h.container.storage)
        async with h:
            yield h


async def test_full_disk_fails_the_task_cleanly(full_disk: AppHarness) -> None:
    caller = await full_disk.caller(credits=100)
    before = (await caller.get("/api/v1/account")).json()["credits"]
    r = await caller.post("/api/v1/images/generations", json=TYPESET)
    assert r.status_code == 202, r.text
    await _assert_failed_cleanly(caller, r.json(), before)


async def test_full_disk_refuses_an_edit_upload_before_any_task(full_disk: AppHarness) -> None:
    from tests.integration.test_openai_compat import png_bytes

    caller = await full_disk.caller(credits=100)
    before = await _money(caller)
    r = await caller.post("/v1/images/edits", data={"model": "local-typeset", "prompt": "x"},
                          files={"image": (f"{uuid.uuid4().hex}.png", png_bytes((256, 256)), "image/png")})
    assert r.status_code == 503, r.text
    assert r.json()["error"]["type"] == "server_error"
    assert await _money(caller) == before
    assert (await caller.get("/api/v1/tasks")).json()["data"] == []
